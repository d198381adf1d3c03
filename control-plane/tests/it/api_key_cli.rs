//! `pavilion-control api-key new`, run as an operator runs it: the resource on stdout is
//! valid as it stands, holds the SHA-256 of the key printed (once) on stderr, and nothing
//! else carries the key.

use std::process::Command;

use sha2::{Digest, Sha256};

fn control() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pavilion-control"))
}

#[test]
fn a_new_key_validates_and_matches_its_hash() {
    let output = control()
        .args([
            "api-key",
            "new",
            "--id",
            "mobile-app",
            "--namespace",
            "shop",
            "--scopes",
            "read,write",
            "--expires",
            "2030-01-01T00:00:00Z",
            "--description",
            "Mobile app, production",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");

    let key = stderr
        .trim_end()
        .strip_prefix("api key (shown once, store it now): ")
        .unwrap_or_else(|| panic!("unexpected stderr: {stderr}"));
    assert!(key.starts_with("pvk_") && key.len() == 4 + 43, "{key}");
    assert!(!stdout.contains(key), "the key never goes to stdout");

    let document: serde_json::Value = serde_yaml_ng::from_str(&stdout).unwrap();
    assert_eq!(document["kind"], "ApiKey");
    assert_eq!(document["metadata"]["name"], "mobile-app");
    assert_eq!(document["metadata"]["namespace"], "shop");
    assert_eq!(document["spec"]["keyId"], "mobile-app");
    assert_eq!(
        document["spec"]["scopes"],
        serde_json::json!(["read", "write"])
    );
    assert_eq!(document["spec"]["expiresAt"], "2030-01-01T00:00:00Z");
    assert_eq!(document["spec"]["description"], "Mobile app, production");
    let expected: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(document["spec"]["sha256"], expected.as_str());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.yaml");
    std::fs::write(&file, &stdout).unwrap();
    let validated = control().arg("validate").arg(&file).output().unwrap();
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stdout)
    );
}

#[test]
fn defaults_and_fresh_keys_every_time() {
    let run = || {
        let output = control()
            .args(["api-key", "new", "--id", "ci"])
            .output()
            .unwrap();
        assert!(output.status.success());
        (
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (first, first_key) = run();
    let (second, second_key) = run();
    assert_ne!(first_key, second_key);
    assert_ne!(first, second);
    let document: serde_json::Value = serde_yaml_ng::from_str(&first).unwrap();
    assert_eq!(document["metadata"]["namespace"], "default");
    assert_eq!(document["spec"]["scopes"], serde_json::json!(["read"]));
    assert!(document["spec"].get("expiresAt").is_none());
}

#[test]
fn a_bad_request_prints_no_key() {
    let output = control()
        .args(["api-key", "new", "--id", "ci", "--scopes", "read,delete"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spec.scopes[1] (--scopes): `delete` is not a scope"),
        "{stderr}"
    );
    assert!(!stderr.contains("pvk_"), "{stderr}");
}
