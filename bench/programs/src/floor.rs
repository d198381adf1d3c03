//! The thinnest proxies this runtime allows, as a yardstick for `bench/run`: what throughput a
//! proxy on this machine gets when it does nothing but move a request and its response.
//!
//! ```text
//! floor raw   LISTEN UPSTREAM [WORKERS]   tokio + httparse: the request head is found and
//!                                         written to the upstream as it came, the response
//!                                         read to its Content-Length and written back.
//!                                         No headers added, no log.
//! floor hyper LISTEN UPSTREAM [WORKERS]   hyper's HTTP/1.1 server, the request head
//!                                         written out from hyper's request as it came and
//!                                         the response read as `raw` does, in one task.
//! ```
//!
//! One current-thread runtime per worker (one unless WORKERS says more, as the data plane's
//! `--workers`) and one upstream connection per client connection, so no pool is involved
//! either. Requests with a body, chunked responses and pipelining are not handled (`raw`
//! closes the connection): this measures the floor, it is not a proxy.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Room for one request or response head and a small body.
const BUFFER: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Clone, Copy)]
enum Mode {
    Raw,
    Hyper,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, listen, upstream, workers) = match args.as_slice() {
        [mode, listen, upstream, rest @ ..] if rest.len() <= 1 => {
            let mode = match mode.as_str() {
                "raw" => Some(Mode::Raw),
                "hyper" => Some(Mode::Hyper),
                _ => None,
            };
            let workers = rest.first().map_or(Some(1), |w| w.parse::<usize>().ok());
            (mode, listen.parse().ok(), upstream.parse().ok(), workers)
        }
        _ => (None, None, None, None),
    };
    let (Some(mode), Some(listen), Some(upstream), Some(workers @ 1..)) =
        (mode, listen, upstream, workers)
    else {
        eprintln!("usage: floor raw|hyper LISTEN-ADDR UPSTREAM-ADDR [WORKERS]");
        return ExitCode::from(2);
    };
    match run(mode, listen, upstream, workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("floor: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One thread per worker, each with its own current-thread runtime accepting on the same
/// socket — the data plane's shape.
fn run(
    mode: Mode,
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let threads = (0..workers)
        .map(|_| {
            let listener = listener.try_clone()?;
            Ok(std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(serve(mode, listener, upstream))
            }))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for thread in threads {
        thread
            .join()
            .map_err(|_| std::io::Error::other("a worker panicked"))??;
    }
    Ok(())
}

async fn serve(
    mode: Mode,
    listener: std::net::TcpListener,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let result = async {
                client.set_nodelay(true)?;
                let upstream = TcpStream::connect(upstream).await?;
                upstream.set_nodelay(true)?;
                match mode {
                    Mode::Raw => raw(client, upstream).await,
                    Mode::Hyper => through_hyper(client, upstream).await,
                }
            };
            if let Err(error) = result.await {
                eprintln!("floor: connection ended: {error}");
            }
        });
    }
}

/// Reads into `buffer` until `complete` finds the end of a head: that end and how much was
/// read; `None` on a clean close.
async fn read_head(
    stream: &mut TcpStream,
    buffer: &mut [u8],
    mut complete: impl FnMut(&[u8]) -> std::io::Result<Option<usize>>,
) -> std::io::Result<Option<(usize, usize)>> {
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            return Err(std::io::Error::other("head larger than the buffer"));
        }
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            return Ok(None);
        }
        filled += read;
        if let Some(end) = complete(&buffer[..filled])? {
            return Ok(Some((end, filled)));
        }
    }
}

fn invalid(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
}

/// The upstream connection of one client connection and the buffer its responses are read
/// into.
struct Upstream {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Upstream {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buffer: vec![0; BUFFER],
        }
    }

    /// Writes a request head and reads the whole response (head and Content-Length body),
    /// showing `head` the parsed response head; `None` when the upstream closed first.
    async fn exchange(
        &mut self,
        request: &[u8],
        mut head: impl FnMut(&httparse::Response),
    ) -> std::io::Result<Option<(usize, &[u8])>> {
        self.stream.write_all(request).await?;
        let mut length = 0;
        let read = read_head(&mut self.stream, &mut self.buffer, |bytes| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(bytes).map_err(invalid)? {
                httparse::Status::Complete(end) => {
                    let value = parsed
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .ok_or_else(|| invalid("a response without Content-Length"))?
                        .value;
                    length = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<usize>().ok())
                        .ok_or_else(|| invalid("an invalid Content-Length"))?;
                    head(&parsed);
                    Ok(Some(end))
                }
                httparse::Status::Partial => Ok(None),
            }
        })
        .await?;
        let Some((end, mut filled)) = read else {
            return Ok(None);
        };
        let whole = end + length;
        if whole > self.buffer.len() {
            return Err(invalid("a response larger than the buffer"));
        }
        while filled < whole {
            let read = self.stream.read(&mut self.buffer[filled..whole]).await?;
            if read == 0 {
                return Err(invalid("the upstream closed mid-body"));
            }
            filled += read;
        }
        Ok(Some((end, &self.buffer[..whole])))
    }
}

/// Request heads pass through as they came; responses go back as they came.
async fn raw(mut client: TcpStream, upstream: TcpStream) -> std::io::Result<()> {
    let mut upstream = Upstream::new(upstream);
    let mut request = vec![0; BUFFER];
    loop {
        let head = read_head(&mut client, &mut request, |bytes| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::Request::new(&mut headers)
                .parse(bytes)
                .map_err(invalid)?
            {
                httparse::Status::Complete(end) => Ok(Some(end)),
                httparse::Status::Partial => Ok(None),
            }
        })
        .await?;
        let Some((end, filled)) = head else {
            return Ok(());
        };
        if filled != end {
            return Err(invalid("a request body or a pipelined request"));
        }
        let Some((_, response)) = upstream.exchange(&request[..end], |_| ()).await? else {
            return Ok(());
        };
        client.write_all(response).await?;
    }
}

/// hyper's server side; the request head written out again from hyper's request, the
/// response read as `raw` does, in the same task (as the data plane's inline client does).
async fn through_hyper(client: TcpStream, upstream: TcpStream) -> std::io::Result<()> {
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    // HTTP/1.1 serves one request at a time: the lock is never contended.
    let upstream = std::sync::Arc::new(tokio::sync::Mutex::new(Upstream::new(upstream)));
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let upstream = upstream.clone();
        async move {
            let mut head = Vec::with_capacity(256);
            head.extend_from_slice(request.method().as_str().as_bytes());
            head.push(b' ');
            let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
            head.extend_from_slice(target.as_bytes());
            head.extend_from_slice(b" HTTP/1.1\r\n");
            for (name, value) in request.headers() {
                head.extend_from_slice(name.as_str().as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(value.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            let mut upstream = upstream.lock().await;
            let mut response = hyper::Response::builder();
            let exchanged = upstream
                .exchange(&head, |parsed| {
                    response = std::mem::take(&mut response).status(parsed.code.unwrap_or(502));
                    for header in parsed.headers.iter() {
                        response = std::mem::take(&mut response).header(header.name, header.value);
                    }
                })
                .await?;
            let Some((end, whole)) = exchanged else {
                return Err(invalid("the upstream closed"));
            };
            let body = http_body_util::Full::new(Bytes::copy_from_slice(&whole[end..]));
            response.body(body).map_err(invalid)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await
        .map_err(std::io::Error::other)
}
