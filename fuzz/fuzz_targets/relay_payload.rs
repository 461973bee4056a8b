//! See `meshnode::proto::relaypath::fuzzing::relay_payload`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshnode::proto::relaypath::fuzzing::relay_payload(data);
});
