//! The path normaliser: normalised paths are final.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pavilion_data::fuzzing::path(data));
