//! Resource files: the YAML/JSON document reader and the compiler.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pavilion_control::fuzzing::documents(data));
