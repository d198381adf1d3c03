//! The fuzz targets' inputs — fuzz/seeds/TARGET (by hand, and past crashes) and
//! fuzz/corpus/TARGET (what `cargo fuzz` found) — replayed through the same entry points the
//! targets call: what a fuzz run once found stays fixed, on stable and in the ordinary suite.

use std::path::PathBuf;

use pavilion_control::fuzzing::{REQUEST_SIGNING_KEY, request_snapshot};
use pavilion_data::fuzzing::RequestHarness;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs: Vec<_> = ["seeds", "corpus"]
        .iter()
        .flat_map(|kind| {
            let dir = fuzz.join(kind).join(target);
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        })
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 5,
        "{target}: a corpus of {} inputs",
        inputs.len()
    );
    inputs
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    for (path, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn documents() {
    replay("documents", pavilion_control::fuzzing::documents);
}

#[test]
fn path() {
    replay("path", pavilion_data::fuzzing::path);
}

#[test]
fn response_head() {
    replay("response_head", pavilion_data::fuzzing::response_head);
}

#[test]
fn request() {
    let harness = RequestHarness::new(&request_snapshot(), REQUEST_SIGNING_KEY);
    replay("request", |data| harness.request(data));
}

#[test]
fn credentials() {
    let harness = RequestHarness::new(&request_snapshot(), REQUEST_SIGNING_KEY);
    replay("credentials", |data| harness.credentials(data));
}
