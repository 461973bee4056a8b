//! The DATI reader over arbitrary bytes: as a whole file, as the records after a valid header,
//! and as edits (flip, cut, insert, delete) to a valid file, checking that intact records still
//! read back and that no forged record is accepted (see `meshnode::dati::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshnode::dati::fuzzing::run(data);
});
