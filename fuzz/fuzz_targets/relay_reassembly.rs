//! See `meshnode::proto::relaypath::fuzzing::relay_reassembly`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshnode::proto::relaypath::fuzzing::relay_reassembly(data);
});
