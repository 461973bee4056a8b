//! `DatagramOpener::open` with a fixed test key, plus a seal/open round trip and a tamper check
//! (see `meshnode::wire::fuzzing::datagram_open`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshnode::wire::fuzzing::datagram_open(data);
});
