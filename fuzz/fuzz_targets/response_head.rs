//! The inline HTTP/1.1 client's response-head parser and chunk-size reader.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pavilion_data::fuzzing::response_head(data));
