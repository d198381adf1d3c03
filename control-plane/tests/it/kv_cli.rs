//! `pavilion-control kv`, run as a Swarm user runs it, against a real `nats-server -js`.

use std::process::{Command, Output};

use pavilion_tests::nats::NatsServer;

fn kv(nats: &NatsServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pavilion-control"))
        .arg("kv")
        .arg("--nats")
        .arg(format!("{}?bucket=cli", nats.url()))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const ROUTE: &str = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: orders, namespace: shop }\nspec:\n  rules:\n    - backends: [{ url: http://127.0.0.1:9000 }]\n";
const CREDENTIALS: &str = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: { name: mobile-app, namespace: shop }\nspec:\n  sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n  scopes: [read]\n---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: TokenRevocation\nmetadata: { name: incident-42, namespace: shop }\nspec:\n  jtis: [a1b2]\n";
const POLICY: &str = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: { name: orders-cors, namespace: shop }\nspec:\n  targetRef: { kind: Route, name: orders }\n  allowOrigins: ['https://app.example.com']\n";

#[test]
fn put_get_list_delete() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let route = dir.path().join("route.yaml");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&route, ROUTE).unwrap();
    std::fs::write(&policy, POLICY).unwrap();

    // The policy alone targets a route the bucket does not hold yet: written, with a
    // warning (it takes effect once the route is there, as on Kubernetes).
    let early = kv(&nats, &["put", policy.to_str().unwrap()]);
    assert!(early.status.success(), "{}", stdout(&early));
    assert!(
        stdout(&early).contains(
            "warning: spec.targetRef: no accepted Route `orders` in namespace `shop`; accepted, it takes effect once the target is"
        ),
        "{}",
        stdout(&early)
    );
    assert!(stdout(&early).ends_with("put corspolicy.shop.orders-cors\n"));

    let put = kv(&nats, &["put", route.to_str().unwrap()]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(stdout(&put), "put route.shop.orders\n");
    // Validated against what the bucket holds now, the policy has nothing to warn about.
    let put = kv(&nats, &["put", policy.to_str().unwrap()]);
    assert_eq!(stdout(&put), "put corspolicy.shop.orders-cors\n");

    // API keys and revocations live under their own kinds' keys.
    let credentials = dir.path().join("credentials.yaml");
    std::fs::write(&credentials, CREDENTIALS).unwrap();
    let put = kv(&nats, &["put", credentials.to_str().unwrap()]);
    assert_eq!(
        stdout(&put),
        "put apikey.shop.mobile-app\nput tokenrevocation.shop.incident-42\n"
    );
    let get = kv(&nats, &["get", "apikey.shop.mobile-app"]);
    let document: serde_json::Value = serde_yaml_ng::from_str(&stdout(&get)).unwrap();
    assert_eq!(document["kind"], "ApiKey");
    assert_eq!(document["spec"]["scopes"][0], "read");
    assert!(
        kv(&nats, &["delete", "apikey.shop.mobile-app"])
            .status
            .success()
    );
    assert!(
        kv(&nats, &["delete", "tokenrevocation.shop.incident-42"])
            .status
            .success()
    );

    let get = kv(&nats, &["get", "route.shop.orders"]);
    assert!(get.status.success());
    let document: serde_json::Value = serde_yaml_ng::from_str(&stdout(&get)).unwrap();
    assert_eq!(
        document["spec"]["rules"][0]["backends"][0]["url"],
        "http://127.0.0.1:9000"
    );
    assert_eq!(document["kind"], "Route");

    let list = stdout(&kv(&nats, &["list"]));
    assert_eq!(
        list,
        "corspolicy.shop.orders-cors\tno status yet\nroute.shop.orders\tno status yet\n"
    );

    assert!(
        kv(&nats, &["delete", "corspolicy.shop.orders-cors"])
            .status
            .success()
    );
    let missing = kv(&nats, &["delete", "corspolicy.shop.orders-cors"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no key `corspolicy.shop.orders-cors`")
    );
    // A key in the wrong shape gets the format explained.
    let wrong = kv(&nats, &["get", "orders"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains(
            "`orders` is not a key: keys are <kind>.<namespace>.<name>, e.g. route.shop.orders"
        ),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert_eq!(
        kv(&nats, &["get", "corspolicy.shop.orders-cors"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let port = pavilion_tests::free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_pavilion-control"))
        .args(["kv", "--nats", &format!("nats://127.0.0.1:{port}"), "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains(&format!("cannot connect to nats://127.0.0.1:{port}")),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `pavilion-control ARGS…` with `stdin` as standard input.
fn control_with_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pavilion-control"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn flags_after_the_subcommand_standard_input_and_no_bucket_made_by_reading() {
    let nats = NatsServer::start();
    let address = format!("{}?bucket=late", nats.url());

    // Reading a bucket that does not exist says so, and creates nothing.
    let list = Command::new(env!("CARGO_BIN_EXE_pavilion-control"))
        .args(["kv", "list", "--nats", &address])
        .output()
        .unwrap();
    assert_eq!(list.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&list.stderr).contains("no bucket `late`"),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let get = Command::new(env!("CARGO_BIN_EXE_pavilion-control"))
        .args(["kv", "get", "route.shop.orders", "--nats", &address])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&get.stderr).contains("no bucket `late`"));

    // `--nats` after the subcommand, the document on standard input.
    let put = control_with_stdin(&["kv", "put", "-", "--nats", &address], ROUTE);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(stdout(&put), "put route.shop.orders\n");
    // Empty input is an error, not a silent success.
    let empty = control_with_stdin(&["kv", "put", "-", "--nats", &address], "");
    assert_eq!(empty.status.code(), Some(1));
    assert!(
        stdout(&empty).contains("no resources"),
        "{}",
        stdout(&empty)
    );

    let list = Command::new(env!("CARGO_BIN_EXE_pavilion-control"))
        .args(["kv", "list", "--nats", &address])
        .output()
        .unwrap();
    assert_eq!(stdout(&list), "route.shop.orders\tno status yet\n");
}
