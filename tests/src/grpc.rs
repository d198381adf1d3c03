//! A real gRPC server for the tests (tonic, h2c on loopback): the four call kinds of the
//! `Echo` service, with deadlines reported back and failures on request — a status with a
//! message and binary trailing metadata, or a stream that fails midway.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

/// Generated code for package `pavilion.testing.v1`.
pub mod proto {
    tonic::include_proto!("pavilion.testing.v1");
}

use proto::echo_server::{Echo, EchoServer};
use proto::{EchoReply, EchoRequest};

/// The binary metadata every failure carries in its trailers.
pub const DETAIL: &[u8] = &[0, 1, 2, 254, 255];

fn grpc_timeout(metadata: &MetadataMap) -> String {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[derive(Default)]
struct Service;

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let request = request.into_inner();
        tokio::time::sleep(Duration::from_millis(request.delay_ms)).await;
        if request.fail_with != 0 {
            let mut metadata = MetadataMap::new();
            metadata.insert_bin("x-detail-bin", MetadataValue::from_bytes(DETAIL));
            return Err(Status::with_metadata(
                tonic::Code::from(request.fail_with),
                format!("failed as asked: {}", request.message),
                metadata,
            ));
        }
        let mut response = Response::new(EchoReply {
            message: request.message,
            index: 0,
            grpc_timeout: timeout,
        });
        response
            .metadata_mut()
            .insert_bin("x-meta-bin", MetadataValue::from_bytes(DETAIL));
        Ok(response)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let request = request.into_inner();
        let (count, fail_after) = (request.count, request.fail_after);
        // With a failure, the stream ends on it.
        let last = if fail_after > 0 {
            count.min(fail_after + 1)
        } else {
            count
        };
        let stream = tokio_stream::iter(0..last)
            .throttle(Duration::from_millis(request.delay_ms.max(10)))
            .map(move |index| {
                if fail_after > 0 && index >= fail_after {
                    Err(Status::aborted(format!("failed after {fail_after}")))
                } else {
                    Ok(EchoReply {
                        message: format!("{} {index}", request.message),
                        index,
                        grpc_timeout: String::new(),
                    })
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut stream = request.into_inner();
        let mut messages = Vec::new();
        while let Some(request) = stream.next().await {
            messages.push(request?.message);
        }
        Ok(Response::new(EchoReply {
            index: messages.len() as u32,
            message: messages.join(","),
            grpc_timeout: String::new(),
        }))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let mut index = 0;
        let stream = request.into_inner().map(move |request| {
            index += 1;
            request.map(|r| EchoReply {
                message: r.message,
                index,
                grpc_timeout: String::new(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The echo server on a free loopback port; stops when dropped.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoServer::new(Service))
                .serve_with_incoming(incoming)
                .await;
        });
        Self { addr, task }
    }

    /// `h2c://127.0.0.1:PORT`, the backend URL of a gRPC rule.
    pub fn url(&self) -> String {
        format!("h2c://{}", self.addr)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
