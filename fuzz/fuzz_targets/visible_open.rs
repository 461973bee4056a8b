//! `DatagramOpener::open_visible` (discovery packets) with a fixed test key, plus a round trip
//! and a tamper check (see `meshnode::wire::fuzzing::visible_open`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshnode::wire::fuzzing::visible_open(data);
});
