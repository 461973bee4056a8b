//! `TransferUnit::decode` on arbitrary bytes: never panics, never allocates past the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshnode::TransferUnit::decode(data, meshnode::unit::DEFAULT_PAYLOAD_LIMIT);
});
