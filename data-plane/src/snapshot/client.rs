//! The data plane's side of the snapshot stream: connect to one of the control planes,
//! announce the version already served, apply each snapshot and answer ACK or NACK;
//! on any failure reconnect — to the next control plane — with jittered backoff.

use std::time::Duration;

use pavilion_proto::v1::snapshot_discovery_client::SnapshotDiscoveryClient;
use pavilion_proto::{Node, SnapshotDelta, SnapshotFrame, SnapshotRequest, SnapshotResponse};
use prost::Message;
use std::path::PathBuf;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::Applier;
use crate::metrics::Metrics;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest snapshot message taken (gRPC's default, 4 MiB, is about 20 000 plain routes —
/// or far fewer with policies attached; above the limit every snapshot would be refused).
pub const MAX_SNAPSHOT_BYTES: usize = 512 << 20;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Control-plane gRPC URLs, tried in turn.
    pub endpoints: Vec<String>,
    pub node_id: String,
    /// For `https://` endpoints: the CA to trust, and this node's client certificate —
    /// read again for every connection, so rotated files are used from the next one on
    /// (an open stream keeps the certificate it was opened with).
    pub tls: Option<ControlPlaneTls>,
}

/// Files of the control channel's TLS, as the flags name them.
#[derive(Clone, Debug)]
pub struct ControlPlaneTls {
    /// CA certificates (PEM) the control plane's certificate must chain to.
    pub ca: PathBuf,
    /// This data plane's client certificate and key (PEM), for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the control plane's certificate must carry, when it is not the URL's host.
    pub server_name: Option<String>,
}

impl ControlPlaneTls {
    /// Reads the files; an unreadable one stops the start.
    pub fn client_config(&self) -> Result<ClientTlsConfig, (PathBuf, std::io::Error)> {
        let read = |path: &PathBuf| std::fs::read(path).map_err(|e| (path.clone(), e));
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("invalid control-plane address: {0}")]
    Address(tonic::transport::Error),
    #[error("cannot read {}: {source}", path.display())]
    Files {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect: {0}")]
    Connect(tonic::transport::Error),
    #[error("stream failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

/// Runs until `shutdown` turns true.
pub async fn run(
    options: ClientOptions,
    applier: Applier,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0usize.. {
        let endpoint = &options.endpoints[attempt % options.endpoints.len()];
        let outcome = tokio::select! {
            outcome = stream(endpoint, &options, &applier, &metrics, &mut backoff) => outcome,
            () = crate::stopped(&mut shutdown) => return,
        };
        metrics.control_plane_connected.set(0);
        let error = outcome.err().unwrap_or(StreamError::Closed);
        tracing::warn!(%endpoint, %error, retry_in_ms = backoff.as_millis() as u64, "snapshot stream down; serving the current snapshot");
        // Equal jitter: half fixed, half random, so replicas do not reconnect in lockstep.
        let delay = backoff / 2 + backoff.mul_f64(fastrand::f64() / 2.0);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::stopped(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn stream(
    endpoint: &str,
    options: &ClientOptions,
    applier: &Applier,
    metrics: &Metrics,
    backoff: &mut Duration,
) -> Result<(), StreamError> {
    let node_id = &options.node_id;
    let mut channel = Endpoint::from_shared(endpoint.to_owned()).map_err(StreamError::Address)?;
    if let Some(tls) = options
        .tls
        .as_ref()
        .filter(|_| endpoint.starts_with("https://"))
    {
        let tls = tls
            .client_config()
            .map_err(|(path, source)| StreamError::Files { path, source })?;
        channel = channel.tls_config(tls).map_err(StreamError::Address)?;
    }
    let channel = channel
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(StreamError::Connect)?;
    let (requests, outgoing) = mpsc::channel(4);
    let hello = SnapshotRequest {
        node: Some(Node {
            id: node_id.to_owned(),
            build_version: format!(
                "{} {}",
                pavilion_telemetry::build::VERSION,
                pavilion_telemetry::build::GIT_SHA
            ),
            accepts_deltas: true,
        }),
        version_info: applier.current_version(),
        ..Default::default()
    };
    requests
        .send(hello)
        .await
        .map_err(|_| StreamError::Closed)?;
    let mut responses = SnapshotDiscoveryClient::new(channel)
        .max_decoding_message_size(MAX_SNAPSHOT_BYTES)
        .stream_snapshots(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    metrics.control_plane_connected.set(1);
    *backoff = FIRST_BACKOFF;
    tracing::info!(%endpoint, version = %applier.current_version(), "snapshot stream open");

    while let Some(response) = responses.message().await? {
        let answer = answer(applier, response).await;
        requests
            .send(answer)
            .await
            .map_err(|_| StreamError::Closed)?;
    }
    Err(StreamError::Closed)
}

/// ACK (the new version) or NACK (the version still served, and why).
async fn answer(applier: &Applier, response: SnapshotResponse) -> SnapshotRequest {
    let outcome = if !response.delta.is_empty() {
        match SnapshotDelta::decode(response.delta) {
            Err(error) => Err(format!("the snapshot delta cannot be decoded: {error}")),
            Ok(delta) if delta.version != response.version => Err(format!(
                "the delta's version {} differs from the response's {}",
                delta.version, response.version
            )),
            Ok(delta) => applier.apply_delta(&delta).await.map_err(|e| e.to_string()),
        }
    } else {
        whole(applier, &response).await
    };
    match outcome {
        Ok(()) => SnapshotRequest {
            version_info: response.version,
            response_nonce: response.nonce,
            ..Default::default()
        },
        Err(error_detail) => SnapshotRequest {
            version_info: applier.current_version(),
            response_nonce: response.nonce,
            error_detail,
            ..Default::default()
        },
    }
}

/// Applies a response that carries its snapshot whole.
async fn whole(applier: &Applier, response: &SnapshotResponse) -> Result<(), String> {
    let snapshot = if response.snapshot.is_empty() {
        Err("the response carries no snapshot".to_owned())
    } else {
        SnapshotFrame::decode(response.snapshot.clone())
            .map_err(|error| format!("the snapshot cannot be decoded: {error}"))
    };
    match snapshot {
        Err(error) => Err(error),
        Ok(snapshot) if snapshot.version != response.version => Err(format!(
            "the snapshot's version {} differs from the response's {}",
            snapshot.version, response.version
        )),
        Ok(snapshot) => applier
            .apply_frame(snapshot, response.snapshot.clone())
            .await
            .map_err(|e| e.to_string()),
    }
}
