//! `FrameDecoder` over the input split in chunks (see `meshnode::wire::fuzzing::frame_decode`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshnode::wire::fuzzing::frame_decode(data);
});
