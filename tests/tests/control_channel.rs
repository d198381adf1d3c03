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
