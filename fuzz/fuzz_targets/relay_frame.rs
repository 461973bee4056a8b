//! `RelayFrameDecoder` over the input split in chunks; decoded frames re-encode to themselves
//! (see `meshnode::wire::fuzzing::relay_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshnode::wire::fuzzing::relay_frame(data);
});
