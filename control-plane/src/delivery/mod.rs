//! Snapshot delivery over gRPC with xDS semantics: every response carries a version and a
//! nonce — the whole snapshot, or (to a data plane that takes them) a delta from the one it
//! runs; the data plane ACKs or NACKs each one; a node that connects late gets the current
//! snapshot at once, and a node that could not apply a delta gets that version whole.

pub mod nodes;
pub mod peer;

use std::sync::Arc;
use std::time::Duration;

use pavilion_proto::v1::snapshot_discovery_server::SnapshotDiscovery;
use pavilion_proto::{SnapshotRequest, SnapshotResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::controller::ShipmentReceiver;
use crate::metrics::Metrics;
use nodes::Nodes;
use pavilion_proto::delta::Parts;
use peer::{StreamLimits, Streams};

/// How long a new stream may take to name its node.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SnapshotService {
    shipments: ShipmentReceiver,
    nodes: Arc<Nodes>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
    streams: Arc<Streams>,
}

impl SnapshotService {
    pub fn new(
        shipments: ShipmentReceiver,
        nodes: Arc<Nodes>,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
        limits: StreamLimits,
    ) -> Self {
        Self {
            shipments,
            nodes,
            metrics,
            shutdown,
            streams: Streams::new(limits),
        }
    }
}

#[tonic::async_trait]
impl SnapshotDiscovery for SnapshotService {
    type StreamSnapshotsStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn stream_snapshots(
        &self,
        request: Request<Streaming<SnapshotRequest>>,
    ) -> Result<Response<Self::StreamSnapshotsStream>, Status> {
        let address = request.remote_addr();
        // With mutual TLS, the names the client certificate vouches for.
        let certificate = request.peer_certs().map(|chain| {
            chain
                .first()
                .map(|leaf| peer::certificate_names(leaf))
                .unwrap_or_default()
        });
        let slot = self
            .streams
            .admit(address.map(|a| a.ip()))
            .inspect_err(|status| {
                tracing::warn!(
                    address = address.map(tracing::field::display),
                    reason = status.message(),
                    "snapshot stream refused"
                );
            })?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no first request naming the node"))??
            .ok_or_else(|| Status::invalid_argument("the stream ended before naming the node"))?;
        let node = first.node.clone().unwrap_or_default();
        peer::check_node_id(&node.id, certificate.as_deref()).inspect_err(|status| {
            tracing::warn!(address = address.map(tracing::field::display), node = %node.id, reason = status.message(), "snapshot stream refused");
        })?;

        let (responses, stream) = mpsc::channel(2);
        let stream_state = NodeStream {
            shipments: self.shipments.clone(),
            nodes: self.nodes.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(async move {
            let _slot = slot;
            let nodes = stream_state.nodes.clone();
            let connection = nodes.connect(
                &node.id,
                &node.build_version,
                address,
                &first.version_info,
                certificate.is_some(),
            );
            tracing::info!(node = %node.id, address = address.map(tracing::field::display), version = %first.version_info, "data plane connected");
            stream_state
                .serve(
                    &connection,
                    first.version_info,
                    node.accepts_deltas,
                    inbound,
                    responses,
                )
                .await;
            tracing::info!(node = %node.id, "data plane disconnected");
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// What a node said about the latest response.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Accepted,
    Refused,
    /// About an older response, or a request that answers none.
    Stale,
}

struct NodeStream {
    shipments: ShipmentReceiver,
    nodes: Arc<Nodes>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
}

impl NodeStream {
    async fn serve(
        mut self,
        connection: &nodes::Connection<'_>,
        running: String,
        accepts_deltas: bool,
        mut inbound: Streaming<SnapshotRequest>,
        responses: mpsc::Sender<Result<SnapshotResponse, Status>>,
    ) {
        let mut nonce: u64 = 0;
        // The split snapshot the node will run once it applied what it was sent: the base
        // of the next delta. `None`: unknown (the next snapshot goes whole).
        let mut base: Option<Arc<Parts>> = None;
        let mut sent_delta = false;
        // The version the node said it runs, until there is a snapshot to compare it with:
        // the current one can be the first base.
        let mut announced = Some(running.clone()).filter(|v| !v.is_empty());
        // What the node has or was last sent; nothing is sent twice in a row.
        let mut sent_version = running;
        loop {
            let latest = self.shipments.borrow_and_update().clone();
            if let Some(shipment) = &latest
                && let Some(version) = announced.take()
                && shipment.snapshot.version == version
            {
                base.clone_from(&shipment.parts);
            }
            if let Some(shipment) = latest.filter(|p| p.snapshot.version != sent_version) {
                nonce += 1;
                let delta = base
                    .as_ref()
                    .filter(|_| accepts_deltas)
                    .and_then(|base| shipment.delta_from(base));
                sent_delta = delta.is_some();
                self.metrics
                    .snapshots_sent
                    .with_label_values(&[if sent_delta { "delta" } else { "full" }])
                    .inc();
                let response = SnapshotResponse {
                    version: shipment.snapshot.version.clone(),
                    nonce: nonce.to_string(),
                    snapshot: if sent_delta {
                        bytes::Bytes::new()
                    } else {
                        shipment.encoded.clone()
                    },
                    delta: delta.unwrap_or_default(),
                };
                if responses.send(Ok(response)).await.is_err() {
                    return;
                }
                connection.sent(&shipment.snapshot.version);
                sent_version.clone_from(&shipment.snapshot.version);
                base.clone_from(&shipment.parts);
            }
            tokio::select! {
                changed = self.shipments.changed() => if changed.is_err() { return },
                _ = self.shutdown.changed() => return,
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        let answer = self.answer(connection, &request, nonce, &sent_version, sent_delta);
                        if answer == Answer::Refused {
                            // Whatever it runs, it is not what a delta would be based on.
                            base = None;
                            if sent_delta {
                                // Perhaps only the delta could not be applied: send the
                                // same version whole (once: a whole one refused stays so).
                                sent_version.clear();
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(error = %status, "snapshot stream failed");
                        return;
                    }
                },
            }
        }
    }

    /// Records an ACK or NACK — only for the latest response: an answer to an older nonce
    /// is about a version that is no longer current (xDS ignores those too). A refused
    /// delta is not recorded as a refusal: the same version follows whole, and only its
    /// answer says whether the node takes it.
    fn answer(
        &self,
        connection: &nodes::Connection<'_>,
        request: &SnapshotRequest,
        nonce: u64,
        sent: &str,
        sent_delta: bool,
    ) -> Answer {
        if request.response_nonce != nonce.to_string() {
            tracing::debug!(node = %connection.id(), nonce = %request.response_nonce, "ignoring an answer to an older snapshot");
            return Answer::Stale;
        }
        let error_detail = peer::bounded_detail(&request.error_detail);
        if !error_detail.is_empty() && sent_delta {
            tracing::info!(
                node = %connection.id(),
                version = %sent,
                reason = %error_detail,
                "a data plane could not apply a delta; sending the snapshot whole"
            );
            return Answer::Refused;
        }
        if error_detail.is_empty() {
            self.metrics.acks.inc();
            connection.acked(&request.version_info);
            Answer::Accepted
        } else {
            self.metrics.nacks.inc();
            tracing::warn!(
                node = %connection.id(),
                refused = %sent,
                running = %request.version_info,
                error = %error_detail,
                "data plane refused a snapshot"
            );
            connection.nacked(&request.version_info, sent, error_detail);
            Answer::Refused
        }
    }
}
