//! `meshnode.toml` parsing on arbitrary text: never panics; errors name the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshnode::config::fuzzing::config_parse(data);
});
