//! A purpose-built HTTP/1.1 upstream client. The generic client (hyper-util's) runs every
//! upstream connection as a task of its own and hands requests, responses and body chunks
//! across channels; here the request's own future writes the request and reads the
//! response head, and the response body is read by whoever polls it. One worker thread
//! owns each pool, so the pool lock is never contended. Measured in `bench/`.
//!
//! Bodies are full duplex: when the request has a body, a small task writes it while the
//! response is read, so an upstream may answer (and stream) before the upload ends.

mod body;
mod head;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use foldhash::fast::RandomState;
use http::uri::Authority;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use crate::body::{BodyError, RequestBody};
pub use body::Body;
use body::{Io, Writer, WriterTask};
use head::{MAX_HEAD_BYTES, RequestFraming, encode_request, parse_response};

/// Idle connections kept per upstream authority and worker.
const MAX_IDLE_PER_AUTHORITY: usize = 1024;
/// Initial read buffer of a connection.
const READ_BUFFER: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeResponse,
    #[error("request body exceeds the configured limit")]
    BodyTooLarge,
    #[error("the client's request body failed: {0}")]
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
}

/// An open connection with whatever it already read.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

struct Idle {
    conn: Conn,
    /// When the connection is closed unless reused (its rule's idle timeout from the time
    /// it was put back).
    expires: Instant,
}

pub struct Client {
    idle: Mutex<HashMap<Authority, VecDeque<Idle>, RandomState>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Client {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
            idle_timeout,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Authority, VecDeque<Idle>, RandomState>> {
        // Every critical section is a push or pop: a poisoned pool is still consistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection, if any. Connections the upstream closed
    /// while idle are noticed here without a syscall: their readiness is already known.
    fn checkout(&self, authority: &Authority) -> Option<Conn> {
        let mut idle = self.lock();
        let queue = idle.get_mut(authority)?;
        let now = Instant::now();
        while let Some(entry) = queue.pop_back() {
            if entry.expires <= now {
                continue;
            }
            let mut probe = [0u8; 1];
            match entry.conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(entry.conn),
                // Closed (Ok(0)), unexpected bytes, or an error: not usable.
                _ => continue,
            }
        }
        None
    }

    /// Pools `conn` for `idle` (the client's idle timeout when `None`).
    fn put(&self, authority: &Authority, conn: Conn, idle_for: Option<Duration>) {
        let mut idle = self.lock();
        let queue = match idle.get_mut(authority) {
            Some(queue) => queue,
            None => idle.entry(authority.clone()).or_default(),
        };
        let now = Instant::now();
        while queue.front().is_some_and(|e| e.expires <= now) {
            queue.pop_front();
        }
        if queue.len() < MAX_IDLE_PER_AUTHORITY {
            let expires = now + idle_for.unwrap_or(self.idle_timeout);
            queue.push_back(Idle { conn, expires });
        }
    }

    /// Drops connections idle for longer than their idle timeout, for every upstream: those
    /// of backends no longer in use (old pod addresses) would otherwise stay open forever.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, queue| {
            queue.retain(|entry| entry.expires > now);
            !queue.is_empty()
        });
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, Error> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let connecting = async {
            let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| Error::Connect(format!("cannot resolve {host}: {e}")))?
                    .collect(),
            };
            let mut last = Error::Connect(format!("{host} has no address"));
            for address in addresses {
                match TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Error::Connect(format!("{address}: {e}")),
                }
            }
            Err(last)
        };
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                Error::Connect(format!("no connection within {:?}", self.connect_timeout))
            })??;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
        })
    }

    /// Sends `request` to `authority` and returns once the response head is read; the
    /// connection is pooled afterwards for `idle` (`None`: the client's idle timeout).
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        idle: Option<Duration>,
        request: Request<RequestBody>,
    ) -> Result<Response<Body>, Error> {
        let (parts, body) = request.into_parts();
        let framing = if body.is_end_stream() {
            RequestFraming::None
        } else if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            RequestFraming::Length
        } else {
            RequestFraming::Chunked
        };
        let mut head = BytesMut::new();
        encode_request(&parts, framing, &mut head);
        let head = head.freeze();
        let method = parts.method;

        if framing != RequestFraming::None {
            // Boxed: the full-duplex exchange is large, and most requests have no body —
            // they should not carry its size around (every move of a future copies it).
            return Box::pin(self.send_with_body(authority, idle, head, body, framing, method))
                .await;
        }
        // A pooled connection can turn out closed just as it is reused; a request without
        // a body that is safe to repeat is then sent once more on a fresh connection.
        let replayable = matches!(
            method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        if let Some(conn) = self.checkout(authority) {
            match self.exchange(conn, authority, idle, &head, &method).await {
                Err(Error::ClosedBeforeResponse | Error::Io(_)) if replayable => {}
                outcome => return outcome,
            }
        }
        let conn = self.connect(authority).await?;
        self.exchange(conn, authority, idle, &head, &method).await
    }

    async fn send_with_body(
        self: &Arc<Self>,
        authority: &Authority,
        idle: Option<Duration>,
        head: Bytes,
        body: RequestBody,
        framing: RequestFraming,
        method: Method,
    ) -> Result<Response<Body>, Error> {
        let conn = match self.checkout(authority) {
            Some(conn) => conn,
            None => self.connect(authority).await?,
        };
        self.exchange_with_body(conn, authority, idle, head, body, framing, &method)
            .await
    }

    /// A request without a body: write the head, read the response head.
    async fn exchange(
        self: &Arc<Self>,
        mut conn: Conn,
        authority: &Authority,
        idle: Option<Duration>,
        head: &Bytes,
        method: &Method,
    ) -> Result<Response<Body>, Error> {
        conn.stream.write_all(head).await.map_err(Error::Io)?;
        let response = read_head(&mut conn.stream, &mut conn.buf, method).await?;
        Ok(response.into_response(
            Io::Whole(conn.stream),
            conn.buf,
            self.clone(),
            authority.clone(),
            idle,
        ))
    }

    /// A request with a body: a task writes it while the response head is read.
    #[allow(clippy::too_many_arguments)]
    async fn exchange_with_body(
        self: &Arc<Self>,
        conn: Conn,
        authority: &Authority,
        idle: Option<Duration>,
        head: Bytes,
        body: RequestBody,
        framing: RequestFraming,
        method: &Method,
    ) -> Result<Response<Body>, Error> {
        let Conn { stream, mut buf } = conn;
        let (mut read, write) = stream.into_split();
        let mut running = WriterTask(tokio::spawn(write_body(
            write,
            head,
            body,
            framing == RequestFraming::Chunked,
        )));
        let (response, writer) = tokio::select! {
            // The upload first: when it failed (body over the limit, malformed or cut off
            // by the client), that is the error to report, not what the upstream makes of
            // the truncated request (often closing the connection at once).
            biased;
            written = &mut running => match written {
                Ok(write) => (read_head(&mut read, &mut buf, method).await, Writer::Done(write)),
                Err(error) => return Err(error),
            },
            response = read_head(&mut read, &mut buf, method) => (response, Writer::Running(running)),
        };
        match response {
            Ok(response) => Ok(response.into_response(
                Io::Split { read, writer },
                buf,
                self.clone(),
                authority.clone(),
                idle,
            )),
            Err(error) => Err(error),
        }
    }
}

/// Reads until a complete response head is in `buf`.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    method: &Method,
) -> Result<head::ResponseHead, Error> {
    let mut read_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_response(buf, method)? {
                return Ok(head);
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(Error::Protocol("response head too large"));
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUFFER);
        }
        let n = tokio::io::AsyncReadExt::read_buf(io, buf)
            .await
            .map_err(Error::Io)?;
        if n == 0 {
            return Err(if read_any {
                Error::Protocol("the upstream closed the connection mid-head")
            } else {
                Error::ClosedBeforeResponse
            });
        }
        read_any = true;
    }
}

impl head::ResponseHead {
    fn into_response(
        self,
        io: Io,
        buf: BytesMut,
        pool: Arc<Client>,
        authority: Authority,
        idle: Option<Duration>,
    ) -> Response<Body> {
        let body = Body::new(
            io,
            buf,
            self.framing,
            self.keep_alive,
            pool,
            authority,
            idle,
        );
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Writes the head and the body (chunk-framed if `chunked`), then hands back the write half.
async fn write_body(
    mut write: OwnedWriteHalf,
    head: Bytes,
    mut body: RequestBody,
    chunked: bool,
) -> Result<OwnedWriteHalf, Error> {
    write.write_all(&head).await.map_err(Error::Io)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e {
            BodyError::TooLarge => Error::BodyTooLarge,
            BodyError::Client(e) => Error::ClientBody(e),
        })?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            let mut framed =
                bytes::Buf::chain(bytes::Buf::chain(size.as_bytes(), &mut data), &b"\r\n"[..]);
            write.write_all_buf(&mut framed).await.map_err(Error::Io)?;
        } else {
            write.write_all_buf(&mut data).await.map_err(Error::Io)?;
        }
    }
    if chunked {
        write.write_all(b"0\r\n\r\n").await.map_err(Error::Io)?;
    }
    Ok(write)
}

/// The response-head parser on arbitrary bytes, for the fuzz targets: the head's status
/// and fields when one was read.
#[doc(hidden)]
pub fn parse_response_for_fuzzing(
    buf: &mut bytes::BytesMut,
    method: &http::Method,
) -> Option<(http::StatusCode, http::HeaderMap)> {
    head::parse_response(buf, method)
        .ok()
        .flatten()
        .map(|head| (head.status, head.headers))
}

/// The chunk-size reader on an arbitrary line, for the fuzz targets.
#[doc(hidden)]
pub fn chunk_size_for_fuzzing(line: &[u8]) -> Option<u64> {
    body::chunk_size(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sweeping_closes_connections_idle_past_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let client = Client::new(Duration::from_secs(1), Duration::from_millis(50));
        let conn = client.connect(&authority).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        client.put(&authority, conn, None);
        client.sweep();
        assert_eq!(client.lock().len(), 1, "still fresh");
        tokio::time::sleep(Duration::from_millis(80)).await;
        client.sweep();
        assert!(
            client.lock().is_empty(),
            "expired entries and their authority are gone"
        );
        let mut byte = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(&mut accepted, &mut byte)
            .await
            .unwrap();
        assert_eq!(read, 0, "the swept connection is closed");
    }

    #[tokio::test]
    async fn a_connection_keeps_its_own_idle_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let client = Client::new(Duration::from_secs(1), Duration::from_secs(60));
        let short = client.connect(&authority).await.unwrap();
        let _short_peer = listener.accept().await.unwrap();
        let long = client.connect(&authority).await.unwrap();
        let _long_peer = listener.accept().await.unwrap();
        let long_port = long.stream.local_addr().unwrap().port();
        client.put(&authority, long, None);
        client.put(&authority, short, Some(Duration::from_millis(30)));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let reused = client
            .checkout(&authority)
            .expect("the default-timeout one is kept");
        assert_eq!(reused.stream.local_addr().unwrap().port(), long_port);
        assert!(
            client.checkout(&authority).is_none(),
            "the short one expired"
        );
    }
}
