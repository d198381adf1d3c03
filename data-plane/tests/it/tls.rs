//! TLS termination with real handshakes: SNI and wildcards, ALPN, certificate rotation
//! under an open connection, client certificates, the HTTPS redirect, security headers.

use std::path::Path;
use std::time::Duration;

use http::Request;
use http_body_util::Full;
use pavilion_data::tls::{CertificateFiles, TlsOptions};
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::client::HttpClient;
use pavilion_tests::snapshot::{catch_all, prefix_rule, route, snapshot};
use pavilion_tests::tls::{TestCa, TlsConnection};
use pavilion_tests::{Upstream, eventually};
use rustls_pki_types::CertificateDer;

/// Writes a certificate/key pair for `names` into `dir` as `<stem>.crt`/`<stem>.key`.
fn write_pair(
    ca: &TestCa,
    dir: &Path,
    stem: &str,
    names: &[&str],
) -> (CertificateFiles, CertificateDer<'static>) {
    let (cert, key, der) = ca.leaf_pem(names);
    let files = CertificateFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    // Written aside and renamed in, as a Kubernetes Secret mount swaps its files.
    for (path, text) in [(&files.cert, cert), (&files.key, key)] {
        let aside = path.with_extension("tmp");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, path).unwrap();
    }
    (files, der)
}

async fn tls_data_plane(
    certificates: Vec<CertificateFiles>,
    client_ca: Option<&Path>,
    redirect: bool,
) -> (DataPlane, Upstream) {
    let mut config = Config::local();
    config.tls = Some(TlsOptions {
        certificates,
        client_ca: client_ca.map(Path::to_owned),
    });
    if redirect {
        config.redirect_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    let dp = pavilion_data::start(config)
        .await
        .expect("data plane starts");
    let upstream = Upstream::start("secure").await.unwrap();
    dp.apply(catch_all("v1", "shop/tls", &upstream.url()))
        .await
        .unwrap();
    (dp, upstream)
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (default, default_der) = write_pair(&ca, dir.path(), "default", &["default.example.com"]);
    let (api, api_der) = write_pair(&ca, dir.path(), "api", &["api.example.com"]);
    let (apps, apps_der) = write_pair(&ca, dir.path(), "apps", &["*.apps.example.com"]);
    let (dp, _upstream) = tls_data_plane(vec![default, api, apps], None, false).await;

    let h2 = ca.client_config(&[b"h2", b"http/1.1"], None);
    let mut connection = TlsConnection::open(dp.addr, "API.example.com", h2.clone())
        .await
        .unwrap();
    assert_eq!(connection.peer, api_der, "exact name (case-insensitive)");
    assert_eq!(connection.alpn.as_deref(), Some(&b"h2"[..]));
    let reply = connection.get("/orders").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-upstream"), Some("secure"));
    assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        reply.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));

    let connection = TlsConnection::open(dp.addr, "shop.apps.example.com", h2.clone())
        .await
        .unwrap();
    assert_eq!(connection.peer, apps_der, "a wildcard covers one label");
    // `*.apps.example.com` does not cover `a.b.apps.example.com`: the default answers.
    let connection =
        TlsConnection::open(dp.addr, "a.b.apps.example.com", ca.client_config(&[], None)).await;
    assert!(
        connection.is_err(),
        "the default certificate does not name it, so the client refuses"
    );
    let http1 = ca.client_config(&[b"http/1.1"], None);
    let mut connection = TlsConnection::open(dp.addr, "default.example.com", http1)
        .await
        .unwrap();
    assert_eq!(connection.peer, default_der);
    assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(connection.get("/x").await.unwrap().status, 200);

    // TLS 1.2 is offered too, TLS 1.1 and below are not (rustls cannot even speak them).
    let mut tls12 = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate_der()).unwrap();
        roots
    })
    .with_no_client_auth();
    tls12.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut connection =
        TlsConnection::open(dp.addr, "api.example.com", std::sync::Arc::new(tls12))
            .await
            .unwrap();
    assert_eq!(connection.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(connection.get("/x").await.unwrap().status, 200);

    // Cleartext on the TLS port is not served.
    assert!(
        HttpClient::http1()
            .get(&format!("http://{}/x", dp.addr))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn rotated_certificates_are_served_to_new_connections_and_open_ones_keep_working() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (files, first_der) = write_pair(&ca, dir.path(), "api", &["api.example.com"]);
    let (dp, _upstream) = tls_data_plane(vec![files], None, false).await;
    let config = ca.client_config(&[b"http/1.1"], None);

    let mut open = TlsConnection::open(dp.addr, "api.example.com", config.clone())
        .await
        .unwrap();
    assert_eq!(open.peer, first_der);
    assert_eq!(open.get("/before").await.unwrap().status, 200);

    let (_, second_der) = write_pair(&ca, dir.path(), "api", &["api.example.com"]);
    assert_ne!(first_der, second_der);
    eventually(
        "the new certificate is served",
        Duration::from_secs(10),
        || {
            let (config, second_der) = (config.clone(), second_der.clone());
            async move {
                let fresh = TlsConnection::open(dp.addr, "api.example.com", config)
                    .await
                    .ok()?;
                (fresh.peer == second_der).then_some(())
            }
        },
    )
    .await;
    let reply = open.get("/after").await.unwrap();
    assert_eq!(
        reply.status, 200,
        "the connection opened before the rotation still serves"
    );
    assert_eq!(reply.json()["path"], "/after");
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_pair(&ca, dir.path(), "api", &["api.example.com"]);
    let clients = TestCa::new();
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, clients.certificate_pem()).unwrap();
    let (dp, _upstream) = tls_data_plane(vec![files], Some(&client_ca), false).await;

    let attempt = |identity| {
        let config = ca.client_config(&[b"http/1.1"], identity);
        async move {
            let mut connection = TlsConnection::open(dp.addr, "api.example.com", config).await?;
            // With TLS 1.3 the server judges the client certificate after the client
            // thinks the handshake is done: the refusal shows on the first exchange.
            connection.get("/who").await
        }
    };
    let reply = attempt(Some(clients.leaf(&["client-a"]))).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(attempt(None).await.is_err(), "no client certificate");
    let stranger = TestCa::new();
    assert!(
        attempt(Some(stranger.leaf(&["client-a"]))).await.is_err(),
        "a certificate from another CA"
    );
}

#[tokio::test]
async fn the_redirect_listener_sends_plain_http_to_https_with_path_and_query() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_pair(&ca, dir.path(), "api", &["api.example.com"]);
    let (dp, _upstream) = tls_data_plane(vec![files], None, true).await;
    let redirect = dp.redirect_addr.expect("a redirect listener");

    let request = Request::post(format!("http://{redirect}/orders/7?expand=items&x=%20"))
        .header("host", "api.example.com:8080")
        .body(Full::from("kept by 308"))
        .unwrap();
    let reply = HttpClient::http1().send(request).await.unwrap();
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some(
            format!(
                "https://api.example.com:{}/orders/7?expand=items&x=%20",
                dp.addr.port()
            )
            .as_str()
        )
    );
    assert!(reply.header("x-request-id").is_some());
    assert_eq!(
        reply.header("strict-transport-security"),
        None,
        "HSTS is only sent over TLS"
    );

    // Without a host there is nowhere to send the client.
    let mut stream = tokio::net::TcpStream::connect(redirect).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /x HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(answer.contains(r#""code":"bad_request""#), "{answer}");

    // A redirect listener without TLS would redirect to a port that does not speak it.
    let mut config = Config::local();
    config.redirect_listen = Some("127.0.0.1:0".parse().unwrap());
    assert!(matches!(
        pavilion_data::start(config).await,
        Err(pavilion_data::Error::RedirectWithoutTls)
    ));
}

#[tokio::test]
async fn security_headers_by_default_and_per_route() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    let mut relaxed = route(
        "shop/embeddable",
        &["embed.example.com"],
        vec![prefix_rule("/", &[(&upstream.url(), 1)])],
    );
    relaxed.security_headers = Some(proto::SecurityHeaders {
        frame_options: Some(String::new()),
        content_security_policy: Some("frame-ancestors https://partner.example.com".into()),
        ..Default::default()
    });
    let strict = route(
        "shop/api",
        &["api.example.com"],
        vec![prefix_rule("/api", &[(&upstream.url(), 1)])],
    );
    dp.apply(snapshot("v1", vec![relaxed, strict]))
        .await
        .unwrap();

    let client = HttpClient::http1();
    let get = |host: &'static str, path: &'static str| {
        let request = Request::get(format!("http://{}{path}", dp.addr))
            .header("host", host)
            .body(Full::default())
            .unwrap();
        client.send(request)
    };
    let reply = get("api.example.com", "/api/x").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        reply.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(
        reply.header("strict-transport-security"),
        None,
        "no HSTS over cleartext"
    );

    let reply = get("embed.example.com", "/page").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("x-frame-options"),
        None,
        "removed for this route"
    );
    assert_eq!(
        reply.header("content-security-policy"),
        Some("frame-ancestors https://partner.example.com")
    );
    assert_eq!(
        reply.header("x-content-type-options"),
        Some("nosniff"),
        "the other defaults stay"
    );

    // The gateway's own errors carry them too.
    let reply = get("api.example.com", "/nothing-here").await.unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));

    // An invalid value is refused with the snapshot, not served.
    let mut broken = route(
        "shop/broken",
        &[],
        vec![prefix_rule("/", &[(&upstream.url(), 1)])],
    );
    broken.security_headers = Some(proto::SecurityHeaders {
        referrer_policy: Some("a\nb".into()),
        ..Default::default()
    });
    let error = dp.apply(snapshot("v2", vec![broken])).await.unwrap_err();
    assert!(error.to_string().contains("shop/broken"), "{error}");
    assert_eq!(dp.version(), "v1");
}

#[tokio::test]
async fn a_tls_connection_that_sends_nothing_after_the_handshake_is_closed_when_idle() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (pair, _) = write_pair(&ca, dir.path(), "api", &["api.example.com"]);
    let mut config = Config::local();
    config.tls = Some(TlsOptions {
        certificates: vec![pair],
        client_ca: None,
    });
    config.connections.idle_timeout = Duration::from_millis(300);
    let dp = pavilion_data::start(config).await.unwrap();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[alpn], None));
        let tcp = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("api.example.com").unwrap();
        let mut stream = connector.connect(name, tcp).await.expect("handshake");
        let mut received = Vec::new();
        let closed = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut received),
        )
        .await;
        assert!(
            closed.is_ok(),
            "{}: the idle TLS connection stayed open",
            String::from_utf8_lossy(alpn)
        );
    }
}
