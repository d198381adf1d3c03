//! The thinnest proxies this runtime allows, as a yardstick for `bench/run`: what throughput a
//! proxy on this machine gets when it does nothing but move a request and its response.
//!
//! ```text
//! floor raw   LISTEN UPSTREAM   tokio + httparse: the request head is found and written to
//!                               the upstream as it came, the response read to its
//!                               Content-Length and written back. No headers added, no log.
//! floor hyper LISTEN UPSTREAM   hyper's HTTP/1.1 server and client connection, the request
//!                               passed through untouched.
//! ```
//!
//! One current-thread runtime (one core, as one data-plane worker) and one upstream
//! connection per client connection, so no pool is involved either. Requests with a body,
//! chunked responses and pipelining are not handled (`raw` closes the connection): this
//! measures the floor, it is not a proxy.

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
    let parsed = match args.as_slice() {
        [mode, listen, upstream] => {
            let mode = match mode.as_str() {
                "raw" => Some(Mode::Raw),
                "hyper" => Some(Mode::Hyper),
                _ => None,
            };
            mode.zip(listen.parse().ok())
                .zip(upstream.parse().ok())
                .map(|((m, l), u)| (m, l, u))
        }
        _ => None,
    };
    let Some((mode, listen, upstream)) = parsed else {
        eprintln!("usage: floor raw|hyper LISTEN-ADDR UPSTREAM-ADDR");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("floor: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(mode, listen, upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("floor: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(mode: Mode, listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
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

/// Reads into `buffer` from `filled` until `complete` finds the end of a head; `None` on a
/// clean close.
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

async fn raw(mut client: TcpStream, mut upstream: TcpStream) -> std::io::Result<()> {
    let mut request = vec![0; BUFFER];
    let mut response = vec![0; BUFFER];
    let mut length = 0;
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
        upstream.write_all(&request[..end]).await?;
        let head = read_head(&mut upstream, &mut response, |bytes| {
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
                    Ok(Some(end))
                }
                httparse::Status::Partial => Ok(None),
            }
        })
        .await?;
        let Some((end, mut filled)) = head else {
            return Ok(());
        };
        let whole = end + length;
        if whole > response.len() {
            return Err(invalid("a response larger than the buffer"));
        }
        while filled < whole {
            let read = upstream.read(&mut response[filled..whole]).await?;
            if read == 0 {
                return Err(invalid("the upstream closed mid-body"));
            }
            filled += read;
        }
        client.write_all(&response[..whole]).await?;
    }
}

async fn through_hyper(client: TcpStream, upstream: TcpStream) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    // HTTP/1.1 serves one request at a time: the lock is never contended.
    let sender = std::sync::Mutex::new(sender);
    let service = hyper::service::service_fn(move |request| {
        match sender.lock() {
            Ok(mut sender) => sender.send_request(request),
            Err(poisoned) => poisoned.into_inner().send_request(request),
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await
        .map_err(std::io::Error::other)
}
