//! `pavilion-control validate` and `crds`, run as the user runs them.

use std::process::Command;

fn control() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pavilion-control"))
}

#[test]
fn the_examples_are_valid() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/config");
    let output = control().args(["validate", examples]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("documents valid"));
}

#[test]
fn problems_are_reported_as_file_line_field_message_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &good,
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: ok }\nspec:\n  rules:\n    - backends: [{ url: http://127.0.0.1:9000 }]\n",
    )
    .unwrap();
    std::fs::write(
        &bad,
        "# comment\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: bad }\nspec:\n  rules:\n    - backends: [{ url: 'ftp://x' }]\n      timout: 3s\n---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: zero }\nspec:\n  rules:\n    - backends: []\n",
    )
    .unwrap();
    let output = control()
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let bad = bad.display();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    // The unknown field with the fields a rule has (the list grows with the product).
    assert!(
        lines[0].starts_with(&format!(
            "{bad}:8: spec.rules[0].timout: unknown field `timout`, expected one of `matches`, `backends`, `timeout`, `auth`"
        )),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        format!("{bad}:15: spec.rules[0].backends: at least one backend is required")
    );
}

#[test]
fn a_missing_file_is_a_problem_not_a_crash() {
    let output = control()
        .args(["validate", "/nonexistent/routes.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .starts_with("/nonexistent/routes.yaml:1: file: cannot read")
    );
}

#[test]
fn crds_prints_every_definition() {
    let output = control().arg("crds").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for name in [
        "routes",
        "shards",
        "tenantplacements",
        "ratelimitpolicies",
        "corspolicies",
        "apikeys",
        "tokenrevocations",
    ] {
        assert!(
            text.contains(&format!("name: {name}.gateway.pavilion.dev")),
            "{name}"
        );
    }
}

#[test]
fn gateway_policies_are_judged_against_the_gateway_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("global.yaml");
    std::fs::write(
        &file,
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: { name: global, namespace: edge }\nspec:\n  targetRef: { kind: Gateway, name: default }\n  limits: [{ key: [clientIp], requests: 10, per: 1s }]\n",
    )
    .unwrap();
    let validate = |extra: &[&str]| {
        control()
            .env_remove("PAVILION_GATEWAY_NAMESPACE")
            .arg("validate")
            .args(extra)
            .arg(&file)
            .output()
            .unwrap()
    };

    let output = validate(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!(
            "{}:5: spec.targetRef: only policies in the gateway namespace `pavilion-system` may target the Gateway, not one in `edge`",
            file.display()
        )
    );

    let output = validate(&["--gateway-namespace", "edge"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let output = control()
        .env("PAVILION_GATEWAY_NAMESPACE", "edge")
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success());

    let output = validate(&["--gateway-namespace", "Not_A_Namespace"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--gateway-namespace"));
}

#[test]
fn empty_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = control().arg("validate").arg(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("no resources"), "{stdout}");
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "# nothing here\n").unwrap();
    let output = control().arg("validate").arg(&empty).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn standard_input_is_read_for_a_dash_and_problems_name_their_line() {
    use std::io::Write;
    let mut child = control()
        .args(["validate", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: orders }\nspec:\n  rules:\n    - matches: [{ path: { type: PathPrefix, value: /a } }]\n      backends:\n        - url: http://127.0.0.1:9000\n        - url: ftp://x\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("<stdin>:9: spec.rules[0].backends[1].url: "),
        "{stdout}"
    );
}
