//! The control channel as an attacker meets it: with mutual TLS only a data plane holding
//! a certificate of the right CA receives snapshots, and only under a name its certificate
//! carries; without TLS, streams per address are capped and NACK reasons bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pavilion_control::{Config as ControlConfig, ControlPlane, GrpcTls, SourceSpec, StreamLimits};
use pavilion_data::snapshot::client::ControlPlaneTls;
use pavilion_data::{Config as DataConfig, DataPlane};
use pavilion_proto::v1::snapshot_discovery_client::SnapshotDiscoveryClient;
use pavilion_proto::{Node, SnapshotRequest, SnapshotResponse};
use pavilion_tests::eventually;
use pavilion_tests::tls::TestCa;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const PATIENCE: Duration = Duration::from_secs(5);
const SERVER_NAME: &str = "control.pavilion.test";

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn route_file(dir: &Path) {
    write(
        dir,
        "r.yaml",
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: r, namespace: shop }\nspec:\n  rules:\n    - backends: [{ url: 'http://127.0.0.1:9' }]\n",
    );
}

/// Files of a CA and the certificates it signs, in a temp dir.
struct Pki {
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Self {
            ca: TestCa::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        write(pki.dir.path(), "ca.pem", &pki.ca.certificate_pem());
        pki
    }

    fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Certificate and key files for `name`.
    fn leaf(&self, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key, _) = self.ca.leaf_pem(&[name]);
        (
            write(self.dir.path(), &format!("{name}.pem"), &cert),
            write(self.dir.path(), &format!("{name}.key"), &key),
        )
    }

    /// A tonic client configuration trusting the CA, with `name`'s certificate if given.
    fn client(&self, name: Option<&str>) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.certificate_pem()))
            .domain_name(SERVER_NAME);
        if let Some(name) = name {
            let (cert, key, _) = self.ca.leaf_pem(&[name]);
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

async fn control_plane(mut config: ControlConfig) -> ControlPlane {
    config.api_tokens = vec![pavilion_tests::API_TOKEN.into()];
    pavilion_control::start(config)
        .await
        .expect("control plane starts")
}

async fn status(cp: &ControlPlane) -> Value {
    pavilion_tests::control_api(cp.http_addr, "/v1/status")
        .await
        .json()
}

/// An open snapshot stream, as a client holds it.
struct Stream {
    requests: mpsc::Sender<SnapshotRequest>,
    _responses: tonic::Streaming<SnapshotResponse>,
    first: SnapshotResponse,
}

/// Opens a snapshot stream as `node` and waits for the first snapshot.
async fn open(channel: Channel, node: &str) -> Result<Stream, tonic::Status> {
    let (requests, outgoing) = mpsc::channel(4);
    requests
        .send(SnapshotRequest {
            node: Some(Node {
                id: node.into(),
                build_version: "test".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut responses = SnapshotDiscoveryClient::new(channel)
        .stream_snapshots(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let first = responses
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("closed"))?;
    Ok(Stream {
        requests,
        _responses: responses,
        first,
    })
}

async fn tls_channel(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn with_mutual_tls_only_certified_nodes_receive_snapshots_under_their_own_name() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let pki = Pki::new();
    let config_dir = tempfile::tempdir().unwrap();
    route_file(config_dir.path());
    let (cert, key) = pki.leaf(SERVER_NAME);
    let cp = control_plane(ControlConfig {
        grpc_tls: Some(GrpcTls {
            cert,
            key,
            client_ca: Some(pki.ca_path()),
        }),
        ..ControlConfig::local(SourceSpec::Dir(config_dir.path().to_owned()))
    })
    .await;

    // A real data plane with its certificate gets the snapshot.
    let (dp_cert, dp_key) = pki.leaf("dp-1");
    let mut config = DataConfig::local();
    config.node_id = "dp-1".into();
    config.control_planes = vec![format!("https://{}", cp.grpc_addr)];
    config.control_plane_tls = Some(ControlPlaneTls {
        ca: pki.ca_path(),
        identity: Some((dp_cert, dp_key)),
        server_name: Some(SERVER_NAME.into()),
    });
    let dp: DataPlane = pavilion_data::start(config).await.unwrap();
    eventually(
        "the certified data plane runs the snapshot",
        PATIENCE,
        || async { (!dp.version().is_empty()).then_some(()) },
    )
    .await;
    let nodes = eventually("the node in the status", PATIENCE, || async {
        let status = status(&cp).await;
        (status["nodes"].as_array()?.len() == 1).then(|| status["nodes"].clone())
    })
    .await;
    assert_eq!(nodes[0]["id"], "dp-1");
    assert_eq!(nodes[0]["authenticated"], true);

    // A certificate for another name cannot report as dp-1.
    let channel = tls_channel(cp.grpc_addr, pki.client(Some("dp-2")))
        .await
        .unwrap();
    let refused = open(channel, "dp-1").await.err().unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("dp-2"), "{refused:?}");
    // Under its own name it may.
    let channel = tls_channel(cp.grpc_addr, pki.client(Some("dp-2")))
        .await
        .unwrap();
    assert!(open(channel, "dp-2").await.is_ok());

    // No client certificate, a certificate of another CA, or no TLS at all: no snapshot.
    let no_certificate = match tls_channel(cp.grpc_addr, pki.client(None)).await {
        Ok(channel) => open(channel, "dp-3").await.is_err(),
        Err(_) => true,
    };
    assert!(
        no_certificate,
        "a client without a certificate got a snapshot"
    );
    let stranger = Pki::new();
    let mut foreign = stranger.client(Some("dp-4"));
    foreign = foreign.ca_certificate(Certificate::from_pem(pki.ca.certificate_pem()));
    let foreign_ok = match tls_channel(cp.grpc_addr, foreign).await {
        Ok(channel) => open(channel, "dp-4").await.is_ok(),
        Err(_) => false,
    };
    assert!(!foreign_ok, "a certificate of another CA got a snapshot");
    let cleartext = match Endpoint::from_shared(format!("http://{}", cp.grpc_addr))
        .unwrap()
        .connect()
        .await
    {
        Ok(channel) => open(channel, "dp-5").await.is_ok(),
        Err(_) => false,
    };
    assert!(!cleartext, "a cleartext client got a snapshot");
    dp.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn a_data_plane_refuses_to_start_with_a_scheme_that_contradicts_its_tls_settings() {
    let pki = Pki::new();
    let mut config = DataConfig::local();
    config.control_planes = vec!["http://127.0.0.1:1".into()];
    config.control_plane_tls = Some(ControlPlaneTls {
        ca: pki.ca_path(),
        identity: None,
        server_name: None,
    });
    let error = pavilion_data::start(config).await.err().unwrap();
    assert!(error.to_string().contains("--control-plane-ca"), "{error}");
}

async fn cleartext(cp: &ControlPlane) -> Channel {
    Endpoint::from_shared(format!("http://{}", cp.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn streams_per_address_are_capped() {
    let config_dir = tempfile::tempdir().unwrap();
    route_file(config_dir.path());
    let cp = control_plane(ControlConfig {
        streams: StreamLimits {
            per_peer: 2,
            total: 100,
        },
        ..ControlConfig::local(SourceSpec::Dir(config_dir.path().to_owned()))
    })
    .await;
    let _held = [
        open(cleartext(&cp).await, "fake-1").await.unwrap(),
        open(cleartext(&cp).await, "fake-2").await.unwrap(),
    ];
    let refused = open(cleartext(&cp).await, "fake-3").await.err().unwrap();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("127.0.0.1"), "{refused:?}");
    cp.stop().await;
}

#[tokio::test]
async fn a_nack_reason_is_kept_only_in_part() {
    let config_dir = tempfile::tempdir().unwrap();
    route_file(config_dir.path());
    let cp = control_plane(ControlConfig::local(SourceSpec::Dir(
        config_dir.path().to_owned(),
    )))
    .await;
    let stream = open(cleartext(&cp).await, "noisy").await.unwrap();
    stream
        .requests
        .send(SnapshotRequest {
            response_nonce: stream.first.nonce.clone(),
            error_detail: "x".repeat(100_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let error = eventually("the NACK in the status", PATIENCE, || async {
        let status = status(&cp).await;
        status["nodes"][0]["lastError"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(error.len(), 1024);
    cp.stop().await;
}

/// The certificate a TLS client meets at `addr` now (as a data plane holding `identity`).
async fn served_certificate(
    addr: SocketAddr,
    dir: &Path,
) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap())
        .unwrap();
    let chain =
        vec![rustls_pki_types::CertificateDer::from_pem_file(dir.join("data-plane.crt")).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("data-plane.key")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn certificates_from_pavilion_control_certs_secure_both_halves_and_rotate_without_a_restart()
{
    use pavilion_control::certs::{CertsRequest, generate};
    use rustls_pki_types::pem::PemObject;
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let pki = tempfile::tempdir().unwrap();
    let request = CertsRequest {
        out_dir: pki.path().to_owned(),
        control_plane_names: vec![SERVER_NAME.into(), "127.0.0.1".into()],
        data_plane_names: vec!["*.pavilion-data".into()],
        days: 30,
        new_ca: false,
    };
    generate(&request).unwrap();
    let file = |name: &str| pki.path().join(name);
    let config_dir = tempfile::tempdir().unwrap();
    route_file(config_dir.path());
    let cp = control_plane(ControlConfig {
        grpc_tls: Some(GrpcTls {
            cert: file("control-plane.crt"),
            key: file("control-plane.key"),
            client_ca: Some(file("ca.crt")),
        }),
        api_tls: true,
        ..ControlConfig::local(SourceSpec::Dir(config_dir.path().to_owned()))
    })
    .await;
    let data_plane = |node: &str, dir: &Path| {
        let mut config = DataConfig::local();
        config.node_id = node.into();
        config.control_planes = vec![format!("https://{}", cp.grpc_addr)];
        config.control_plane_tls = Some(ControlPlaneTls {
            ca: file("ca.crt"),
            identity: Some((dir.join("data-plane.crt"), dir.join("data-plane.key"))),
            server_name: Some(SERVER_NAME.into()),
        });
        pavilion_data::start(config)
    };

    // One wildcard certificate serves every pod's node id.
    let dp1 = data_plane("pod-1.pavilion-data", pki.path()).await.unwrap();
    eventually("pod-1 runs the snapshot", PATIENCE, || async {
        (!dp1.version().is_empty()).then_some(())
    })
    .await;

    // The API is HTTPS now: the probe the images use sees it, cleartext does not.
    // (The probe blocks: it runs off the test's single-threaded runtime.)
    let probe = |url: String| {
        tokio::task::spawn_blocking(move || pavilion_telemetry::probe::probe(&url, PATIENCE))
    };
    probe(format!("https://{}/health", cp.http_addr))
        .await
        .unwrap()
        .unwrap();
    let cleartext = probe(format!("http://{}/health", cp.http_addr))
        .await
        .unwrap();
    assert!(cleartext.is_err(), "{cleartext:?}");

    // Without a client certificate, or with one of another CA's (another `certs` run): no
    // snapshot.
    let ca_pem = std::fs::read_to_string(file("ca.crt")).unwrap();
    let trusting = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .domain_name(SERVER_NAME)
    };
    let anonymous = match tls_channel(cp.grpc_addr, trusting()).await {
        Ok(channel) => open(channel, "pod-2.pavilion-data").await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !anonymous,
        "a data plane without a certificate got a snapshot"
    );
    let other = tempfile::tempdir().unwrap();
    generate(&CertsRequest {
        out_dir: other.path().to_owned(),
        ..request.clone()
    })
    .unwrap();
    let foreign = trusting().identity(Identity::from_pem(
        std::fs::read(other.path().join("data-plane.crt")).unwrap(),
        std::fs::read(other.path().join("data-plane.key")).unwrap(),
    ));
    let foreign = match tls_channel(cp.grpc_addr, foreign).await {
        Ok(channel) => open(channel, "pod-3.pavilion-data").await.is_ok(),
        Err(_) => false,
    };
    assert!(!foreign, "a certificate of another CA got a snapshot");

    // Rotation: `certs` again in the same directory keeps the CA and replaces the leaves;
    // the control plane serves the new certificate to new connections without a restart.
    let before = served_certificate(cp.grpc_addr, pki.path()).await;
    let ca_before = std::fs::read(file("ca.crt")).unwrap();
    generate(&request).unwrap();
    assert_eq!(std::fs::read(file("ca.crt")).unwrap(), ca_before);
    let rotated =
        rustls_pki_types::CertificateDer::from_pem_file(file("control-plane.crt")).unwrap();
    assert_ne!(before, rotated);
    eventually(
        "the rotated certificate is served",
        Duration::from_secs(10),
        || async { (served_certificate(cp.grpc_addr, pki.path()).await == rotated).then_some(()) },
    )
    .await;
    // A data plane with the new client certificate joins; the first keeps receiving.
    let dp2 = data_plane("pod-2.pavilion-data", pki.path()).await.unwrap();
    eventually("pod-2 runs the snapshot", PATIENCE, || async {
        (!dp2.version().is_empty()).then_some(())
    })
    .await;
    let first = dp1.version();
    write(
        config_dir.path(),
        "r2.yaml",
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: r2, namespace: shop }\nspec:\n  rules:\n    - backends: [{ url: 'http://127.0.0.1:9' }]\n",
    );
    eventually("both run the next snapshot", PATIENCE, || async {
        (dp1.version() != first && dp1.version() == dp2.version()).then_some(())
    })
    .await;
    dp1.stop().await;
    dp2.stop().await;
    cp.stop().await;
}
