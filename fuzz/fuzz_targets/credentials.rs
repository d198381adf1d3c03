//! Credentials: JWTs (raw, and fuzzed claims signed by a trusted key), API keys, cookies.
#![no_main]
use std::sync::LazyLock;

use pavilion_control::fuzzing::{REQUEST_SIGNING_KEY, request_snapshot};
use pavilion_data::fuzzing::RequestHarness;

static HARNESS: LazyLock<RequestHarness> =
    LazyLock::new(|| RequestHarness::new(&request_snapshot(), REQUEST_SIGNING_KEY));

libfuzzer_sys::fuzz_target!(|data: &[u8]| HARNESS.credentials(data));
