//! What a hostile client tries, against upstreams nobody here wrote: paths that a
//! normalising server reads differently from a naive gateway, spoofed identity and
//! forwarding headers, connections that idle, hoard or never read, broken request bodies,
//! malformed hosts and targets, and oversized header blocks.

use std::time::Duration;

use pavilion_data::connection::ConnectionLimits;
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::python::PythonUpstream;
use pavilion_tests::raw::{self, Action, RawUpstream};
use pavilion_tests::snapshot::{api_key, catch_all, prefix_rule, route, snapshot};
use pavilion_tests::{Upstream, eventually};

const KEY: &str = "pvk_ops_secret";

/// `/admin` needs an API key, `/` is public; both rules reach the same `backend`.
fn protected_and_public(backend: &str, ignore_case: bool) -> proto::Snapshot {
    let mut admin = prefix_rule("/admin", &[(backend, 1)]);
    admin.auth = Some(proto::Auth {
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    });
    if let Some(path) = &mut admin.matches[0].path {
        path.ignore_case = ignore_case;
    }
    let mut snap = snapshot(
        "v1",
        vec![route(
            "shop/site",
            &[],
            vec![admin, prefix_rule("/", &[(backend, 1)])],
        )],
    );
    snap.api_keys = vec![api_key("shop", "ops", KEY, &["read", "admin"], 0)];
    snap
}

async fn gateway(config: Config, snap: proto::Snapshot) -> DataPlane {
    let dp = pavilion_data::start(config)
        .await
        .expect("data plane starts");
    dp.apply(snap).await.expect("snapshot applies");
    dp
}

/// `GET target` with optional extra header lines; the status and the whole answer.
async fn get(dp: &DataPlane, target: &str, extra: &str) -> (u16, String) {
    let request =
        format!("GET {target} HTTP/1.1\r\nhost: site.test\r\n{extra}connection: close\r\n\r\n");
    let answer = raw::exchange(dp.addr, request.as_bytes()).await;
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{target}: not an HTTP response: {answer:?}"));
    (status, answer)
}

/// Every way of writing `/admin/…` that some server decodes into it, with what the
/// gateway answers without a key: 401 when it reads the path as `/admin` too, 400 when the
/// path cannot be read one way only, 404 from the upstream when it is another resource.
const VARIANTS: &[(&str, u16)] = &[
    ("/admin/secret.txt", 401),
    ("/%61dmin/secret.txt", 401),
    ("/adm%69n/secret.txt", 401),
    ("/%41dmin/secret.txt", 404),
    ("//admin/secret.txt", 401),
    ("///admin//secret.txt", 401),
    ("/./admin/secret.txt", 401),
    ("/%2e/admin/secret.txt", 401),
    ("/public/../admin/secret.txt", 401),
    ("/public/%2e%2e/admin/secret.txt", 401),
    ("/admin;x=1/secret.txt", 401),
    ("/admin/secret.txt;x", 401),
    ("/%2fadmin/secret.txt", 400),
    ("/%2Fadmin/secret.txt", 400),
    ("/admin%2fsecret.txt", 400),
    ("/public/..%2fadmin/secret.txt", 400),
    ("/%5cadmin/secret.txt", 400),
    ("/\\admin/secret.txt", 400),
    ("/%C0%AFadmin/secret.txt", 400),
    ("/%C1%A1dmin/secret.txt", 400),
    ("/%E0%80%AFadmin/secret.txt", 400),
    ("/admin%00/secret.txt", 400),
    ("/%EF%BD%81dmin/secret.txt", 404),
    ("/%EF%BC%85%36%31dmin/secret.txt", 404),
    ("/ADMIN/secret.txt", 404),
];

#[tokio::test]
async fn a_protected_prefix_cannot_be_reached_through_a_public_rule_on_a_normalising_file_server() {
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("admin")).unwrap();
    std::fs::write(site.path().join("admin/secret.txt"), "admin secret\n").unwrap();
    std::fs::write(site.path().join("index.html"), "public\n").unwrap();
    let files = PythonUpstream::file_server(site.path());
    let dp = gateway(Config::local(), protected_and_public(&files.url(), false)).await;

    for (target, expected) in VARIANTS {
        let (status, answer) = get(&dp, target, "").await;
        assert!(
            !answer.contains("admin secret"),
            "{target} leaked: {answer}"
        );
        assert_eq!(status, *expected, "{target}: {answer}");
    }
    // With the key, the normalised path is what the upstream serves.
    let key = format!("x-api-key: {KEY}\r\n");
    for target in [
        "/%61dmin/secret.txt",
        "//admin/secret.txt",
        "/x/../admin/secret.txt",
    ] {
        let (status, answer) = get(&dp, target, &key).await;
        assert_eq!(status, 200, "{target}: {answer}");
        assert!(answer.ends_with("admin secret\n"), "{target}: {answer}");
    }
    let (status, _) = get(&dp, "/", "").await;
    assert_eq!(status, 200, "the public rule still serves");
}

#[tokio::test]
async fn a_wsgi_application_reads_every_admitted_path_as_the_gateway_matched_it() {
    let app = PythonUpstream::wsgi();
    let dp = gateway(Config::local(), protected_and_public(&app.url(), false)).await;
    for (target, expected) in VARIANTS {
        let (status, answer) = get(&dp, target, "").await;
        assert!(
            !answer.contains("admin secret"),
            "{target} leaked: {answer}"
        );
        // What the file server answered 404 is another resource here, served as public.
        let expected = if *expected == 404 { 200 } else { *expected };
        assert_eq!(status, expected, "{target}: {answer}");
    }
    // What the upstream receives is the path that was matched (`;parameters` included).
    let key = format!("x-api-key: {KEY}\r\n");
    for (target, forwarded) in [
        ("/%61dmin//x/./y", "/admin/x/y"),
        ("/admin;v=1/x", "/admin;v=1/x"),
        ("/a%20b/%7euser", "/a b/~user"),
    ] {
        let (status, answer) = get(&dp, target, &key).await;
        assert_eq!(status, 200, "{target}: {answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["raw_path"], forwarded, "{target}");
    }
}

#[tokio::test]
async fn ignore_case_protects_a_prefix_on_a_case_insensitive_upstream() {
    let app = PythonUpstream::wsgi();
    let dp = gateway(Config::local(), protected_and_public(&app.url(), true)).await;
    for target in ["/ADMIN/x", "/Admin/x", "/%41dmin/x"] {
        let (status, answer) = get(&dp, target, "").await;
        assert_eq!(status, 401, "{target}: {answer}");
    }
}

#[tokio::test]
async fn identity_and_forwarding_headers_cannot_be_spoofed_with_underscores() {
    let app = PythonUpstream::wsgi();
    let dp = gateway(Config::local(), protected_and_public(&app.url(), false)).await;
    let spoofed = "X_Auth_Key_Id: root\r\nx_auth_subject: root\r\nX_Forwarded_For: 10.6.6.6\r\n\
                   X_Real_IP: 10.6.6.6\r\nx_request_id: forged\r\nX-Real-IP: 10.6.6.6\r\n\
                   Forwarded: for=10.6.6.6\r\nX-Forwarded-Port: 1\r\nx_custom: kept\r\n";
    let environ = |answer: &str| -> serde_json::Value {
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        body["environ"].clone()
    };
    // A public rule: no identity at all.
    let (status, answer) = get(&dp, "/public", spoofed).await;
    assert_eq!(status, 200, "{answer}");
    let env = environ(&answer);
    assert!(env.get("HTTP_X_AUTH_KEY_ID").is_none(), "{env}");
    assert!(env.get("HTTP_X_AUTH_SUBJECT").is_none(), "{env}");
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{env}");
    assert_eq!(env["HTTP_X_REAL_IP"], "127.0.0.1", "{env}");
    assert_eq!(
        env["HTTP_X_FORWARDED_PORT"],
        dp.addr.port().to_string(),
        "{env}"
    );
    assert!(env.get("HTTP_FORWARDED").is_none(), "{env}");
    assert_ne!(env["HTTP_X_REQUEST_ID"], "forged", "{env}");
    assert_eq!(env["HTTP_X_CUSTOM"], "kept", "other underscore names pass");
    // A protected rule: only the gateway's statement of the key.
    let (status, answer) = get(&dp, "/admin/x", &format!("{spoofed}x-api-key: {KEY}\r\n")).await;
    assert_eq!(status, 200, "{answer}");
    let env = environ(&answer);
    assert_eq!(env["HTTP_X_AUTH_KEY_ID"], "ops", "{env}");
}

#[tokio::test]
async fn malformed_hosts_and_missing_hosts_are_refused() {
    let upstream = RawUpstream::start(|_, _| Action::Reply(ok())).await;
    let dp = gateway(
        Config::local(),
        catch_all("v1", "shop/all", &upstream.url()),
    )
    .await;
    for host in [
        "a..",
        "a/x",
        "a, b",
        "a b",
        "a..b.test",
        "a:99999",
        "[::1",
        "x@y",
    ] {
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let answer = raw::exchange(dp.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{host}: {answer}");
        assert!(
            answer.contains("\"code\":\"bad_request\""),
            "{host}: {answer}"
        );
    }
    for (case, request) in [
        ("no Host", "GET / HTTP/1.1\r\nconnection: close\r\n\r\n"),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\nconnection: close\r\n\r\n",
        ),
        (
            "absolute-form without Host",
            "GET http://a.test/ HTTP/1.1\r\nconnection: close\r\n\r\n",
        ),
    ] {
        let answer = raw::exchange(dp.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{case}: {answer}");
        assert!(answer.contains("x-request-id: "), "{case}: {answer}");
    }
    assert!(
        upstream.requests_text().is_empty(),
        "nothing reached the upstream"
    );
    // HTTP/1.0 may omit the Host; an empty Host means "no host".
    for request in [
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nhost:\r\nconnection: close\r\n\r\n",
    ] {
        let answer = raw::exchange(dp.addr, request.as_bytes()).await;
        assert!(answer.contains(" 200 "), "{request:?}: {answer}");
    }
}

fn ok() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
}

#[tokio::test]
async fn an_absolute_form_target_without_a_path_is_forwarded_with_its_slash() {
    let upstream = RawUpstream::start(|_, _| Action::Reply(ok())).await;
    let dp = gateway(
        Config::local(),
        catch_all("v1", "shop/all", &upstream.url()),
    )
    .await;
    let answer = raw::exchange(
        dp.addr,
        b"GET http://a.test?x=1 HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let request = &upstream.requests_text()[0];
    assert!(request.starts_with("GET /?x=1 HTTP/1.1\r\n"), "{request}");
    assert!(request.contains("host: a.test\r\n"), "{request}");
}

#[tokio::test]
async fn too_many_header_fields_get_431_in_the_json_envelope() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = gateway(
        Config::local(),
        catch_all("v1", "shop/all", &upstream.url()),
    )
    .await;
    let fields: String = (0..150).map(|i| format!("x-field-{i}: v\r\n")).collect();
    let (status, answer) = get(&dp, "/", &fields).await;
    assert_eq!(status, 431, "{answer}");
    assert!(
        answer.contains("\"code\":\"headers_too_large\""),
        "{answer}"
    );
    assert!(
        answer.contains("more than 100 request header fields"),
        "{answer}"
    );
    let fields: String = (0..90).map(|i| format!("x-field-{i}: v\r\n")).collect();
    assert_eq!(get(&dp, "/", &fields).await.0, 200);
}

/// A data plane with one worker and short connection timeouts.
fn short_timeouts(max_per_worker: usize) -> Config {
    let mut config = Config::local();
    config.workers = 1;
    config.connections = ConnectionLimits {
        idle_timeout: Duration::from_millis(300),
        send_timeout: Duration::from_millis(300),
        max_per_worker,
        header_timeout: Duration::from_secs(30),
    };
    config
}

async fn metrics(dp: &DataPlane) -> String {
    pavilion_tests::metrics(dp.admin_addr).await
}

/// Reads until the server closes; `Err` after 5 s.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> Result<Vec<u8>, String> {
    let mut received = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(stream, &mut received),
    )
    .await
    .map_err(|_| "the connection stayed open".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(received)
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_but_streams_in_flight_are_not() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = gateway(
        short_timeouts(100),
        catch_all("v1", "shop/all", &upstream.url()),
    )
    .await;
    // Connects and never sends a byte.
    let mut silent = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    assert_eq!(closed_by_server(&mut silent).await.unwrap(), b"");
    // One request, then nothing on the kept-alive connection.
    let mut idle = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut idle, b"GET /fast HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_by_server(&mut idle).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    // A response that pauses longer than the idle timeout between chunks is in flight, not idle.
    let (status, answer) = get(&dp, "/stream/3/700", "").await;
    assert_eq!(status, 200);
    assert!(
        answer.contains("chunk 2"),
        "the stream ran to its end: {answer}"
    );
    let text = metrics(&dp).await;
    assert!(
        text.contains("pavilion_connections_closed_total{reason=\"idle\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let upstream = RawUpstream::start(|_, _| Action::Reply(ok())).await;
    let mut config = short_timeouts(100);
    // Idle and send timeouts far away: only the header timeout can end this.
    config.connections.idle_timeout = Duration::from_secs(30);
    config.connections.send_timeout = Duration::from_secs(30);
    config.connections.header_timeout = Duration::from_millis(500);
    let dp = gateway(config, catch_all("v1", "shop/all", &upstream.url())).await;
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ")
        .await
        .unwrap();
    // Slowloris: one more byte every 50 ms, never the end of the head (at most 10 s).
    let (sent, answer) = trickle(&mut stream).await;
    assert!(sent < TRICKLE, "still open after {sent} trickled bytes");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(upstream.requests.lock().unwrap().is_empty());
    // A client that sends its head at once is served as usual.
    let (status, _) = get(&dp, "/", "").await;
    assert_eq!(status, 200);
}

/// Bytes a trickle sends at most (one per 50 ms: 10 s).
const TRICKLE: usize = 200;

/// Sends one byte every 50 ms — up to [`TRICKLE`], or until the gateway closes — while
/// reading what it answers: the bytes sent, and the answer.
async fn trickle(stream: &mut tokio::net::TcpStream) -> (usize, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sent = 0;
    let mut answer = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if sent == TRICKLE || stream.write_all(b"x").await.is_err() {
                    break;
                }
                sent += 1;
            }
        }
    }
    (sent, String::from_utf8_lossy(&answer).into_owned())
}

/// A body trickled slower than the upstream will wait for: the rule's timeout (until the
/// response headers) ends it with 504, and the connection with it.
#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_ends_at_the_rules_timeout() {
    use tokio::io::AsyncWriteExt;
    // Answers only once the whole body is in, as most upstreams do.
    let upstream = RawUpstream::start(|_, _| Action::Reply(ok())).await;
    let mut rule = prefix_rule("/", &[(&upstream.url(), 1)]);
    rule.timeout_ms = 500;
    let mut config = short_timeouts(100);
    config.connections.idle_timeout = Duration::from_secs(30);
    config.connections.send_timeout = Duration::from_secs(30);
    let dp = gateway(
        config,
        snapshot("v1", vec![route("shop/slow", &[], vec![rule])]),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let (sent, answer) = trickle(&mut stream).await;
    assert!(sent < TRICKLE, "the trickle ran its course: {answer}");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("\"code\":\"upstream_timeout\""), "{answer}");
}

#[tokio::test]
async fn a_worker_at_its_connection_cap_refuses_new_ones_in_json() {
    let upstream = Upstream::start("u").await.unwrap();
    let mut config = short_timeouts(2);
    config.connections.idle_timeout = Duration::from_secs(30);
    let dp = gateway(config, catch_all("v1", "shop/all", &upstream.url())).await;
    let held: Vec<_> = hold_connections(dp.addr, 2).await;
    eventually(
        "both connections counted",
        Duration::from_secs(5),
        || async {
            metrics(&dp)
                .await
                .contains("pavilion_connections_open 2")
                .then_some(())
        },
    )
    .await;
    let answer = raw::exchange(dp.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"code\":\"too_many_connections\""),
        "{answer}"
    );
    assert!(answer.contains("x-request-id: "), "{answer}");
    drop(held);
    eventually("a slot is free again", Duration::from_secs(5), || async {
        let answer = raw::exchange(
            dp.addr,
            b"GET /fast HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    let refused = counter(
        &metrics(&dp).await,
        "pavilion_connections_closed_total{reason=\"limit\"}",
    );
    assert!(refused >= 1, "{refused}");
}

/// The value of one series in a metrics text (0 when absent).
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

async fn hold_connections(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..n {
        streams.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    streams
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_after_the_send_timeout() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = gateway(
        short_timeouts(100),
        catch_all("v1", "shop/all", &upstream.url()),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /blob/268435456 HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    eventually(
        "the stalled connection is dropped",
        Duration::from_secs(10),
        || async {
            let text = metrics(&dp).await;
            (text.contains("pavilion_connections_closed_total{reason=\"send_timeout\"} 1")
                && text.contains("pavilion_connections_open 0"))
            .then_some(())
        },
    )
    .await;
    // What the client finally reads ends well short of the 256 MiB.
    let mut received = 0usize;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received < 256 << 20, "received {received}");
}

#[tokio::test]
async fn a_broken_request_body_is_the_clients_400_and_no_upstream_failure() {
    let upstream = Upstream::start("u").await.unwrap();
    let mut rule = prefix_rule("/", &[(&upstream.url(), 1)]);
    rule.concurrency = Some(proto::ConcurrencyLimit {
        policy: "shop/adaptive".into(),
        min: 1,
        max: 50,
        initial: 50,
        adaptive: true,
    });
    let dp = gateway(
        Config::local(),
        snapshot("v1", vec![route("shop/upload", &[], vec![rule])]),
    )
    .await;
    for i in 0..60 {
        let request = format!(
            "POST /consume HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\nzz{i}\r\n"
        );
        let answer = raw::exchange(dp.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
        assert!(
            answer.contains("the request body could not be read"),
            "{answer}"
        );
    }
    let text = metrics(&dp).await;
    assert!(
        text.contains("pavilion_concurrency_limit{policy=\"shop/adaptive\"} 50"),
        "the limit did not move: {text}"
    );
    assert!(
        text.contains("pavilion_requests_total{class=\"4xx\",route=\"shop/upload\"} 60"),
        "{text}"
    );
    assert!(
        !text.contains("pavilion_requests_total{class=\"5xx\",route=\"shop/upload\"} 6"),
        "{text}"
    );
    let answer = raw::exchange(
        dp.addr,
        b"POST /consume HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
