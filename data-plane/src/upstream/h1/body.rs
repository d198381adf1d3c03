//! The response body, read straight from the upstream connection by whoever polls it (the
//! client connection's task): no channel, no extra task. When it ends cleanly on a
//! reusable connection, the connection goes back to the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::uri::Authority;
use http_body::{Frame, SizeHint};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

use super::head::ResponseFraming;
use super::{Client, Conn, Error};

/// Longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Free space kept in the read buffer before each read.
const READ_RESERVE: usize = 16 * 1024;

/// The connection while a response is being read.
pub(super) enum Io {
    /// The request had no body: the whole stream is here.
    Whole(TcpStream),
    /// The request had a body, written by its own task.
    Split { read: OwnedReadHalf, writer: Writer },
}

/// The request body's writer: still writing, or done and holding the write half.
pub(super) enum Writer {
    Running(WriterTask),
    Done(OwnedWriteHalf),
}

/// The task writing a request body. Dropping it stops the task: whoever gives up on the
/// exchange (a timeout, a client that left) must not leave an upload running upstream.
pub(super) struct WriterTask(pub(super) JoinHandle<Result<OwnedWriteHalf, Error>>);

impl Drop for WriterTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Future for WriterTask {
    type Output = Result<OwnedWriteHalf, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|joined| joined.unwrap_or(Err(Error::Protocol("the request body writer stopped"))))
    }
}

impl Io {
    fn reader(&mut self) -> Pin<&mut (dyn AsyncRead + Send + Unpin)> {
        match self {
            Io::Whole(stream) => Pin::new(stream),
            Io::Split { read, .. } => Pin::new(read),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Eof,
    Done,
}

pub struct Body {
    io: Option<Io>,
    buf: BytesMut,
    state: State,
    keep_alive: bool,
    pool: Arc<Client>,
    authority: Authority,
    /// How long the connection is pooled after the body, in milliseconds (kept small: every
    /// response moves this struct); 0: the pool's default.
    idle_ms: u32,
}

impl Body {
    pub(super) fn new(
        io: Io,
        buf: BytesMut,
        framing: ResponseFraming,
        keep_alive: bool,
        pool: Arc<Client>,
        authority: Authority,
        idle: Option<std::time::Duration>,
    ) -> Self {
        let idle_ms = idle.map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32);
        let state = match framing {
            ResponseFraming::Empty | ResponseFraming::Length(0) => State::Done,
            ResponseFraming::Length(n) => State::Length(n),
            ResponseFraming::Chunked => State::ChunkSize,
            ResponseFraming::Eof => State::Eof,
        };
        let mut body = Self {
            io: Some(io),
            buf,
            state,
            keep_alive,
            pool,
            authority,
            idle_ms,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// Reads more from the connection. `Ok(0)`: the upstream closed it.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < READ_RESERVE / 4 {
            self.buf.reserve(READ_RESERVE);
        }
        let read = ready!(tokio_util::io::poll_read_buf(
            io.reader(),
            cx,
            &mut self.buf
        ));
        Poll::Ready(read.map_err(Error::Io))
    }

    /// The body ended cleanly: pool the connection if it can carry another exchange.
    fn finish(&mut self) {
        self.state = State::Done;
        let Some(io) = self.io.take() else { return };
        // Bytes after the end of the response mean the upstream does not frame its
        // messages as we do: never reuse such a connection.
        if !self.keep_alive || !self.buf.is_empty() {
            return;
        }
        let stream = match io {
            Io::Whole(stream) => stream,
            Io::Split { read, writer } => {
                // Reusable only if the request body was completely written.
                let write = match writer {
                    Writer::Done(write) => write,
                    Writer::Running(mut running) => {
                        match futures::FutureExt::now_or_never(&mut running) {
                            Some(Ok(write)) => write,
                            _ => return,
                        }
                    }
                };
                match read.reunite(write) {
                    Ok(stream) => stream,
                    Err(_) => return,
                }
            }
        };
        let buf = std::mem::take(&mut self.buf);
        let idle =
            (self.idle_ms > 0).then(|| std::time::Duration::from_millis(self.idle_ms.into()));
        self.pool.put(&self.authority, Conn { stream, buf }, idle);
    }

    /// A request body that failed after the response started (over the limit, client
    /// gone) fails the response too: the upstream answered a request it never fully got.
    fn upload_failed(&mut self) -> Option<Error> {
        let Some(Io::Split { writer, .. }) = &mut self.io else {
            return None;
        };
        let Writer::Running(running) = writer else {
            return None;
        };
        if !running.0.is_finished() {
            return None;
        }
        match futures::FutureExt::now_or_never(running)? {
            Ok(write) => {
                *writer = Writer::Done(write);
                None
            }
            Err(error) => Some(error),
        }
    }

    /// Takes one line (without CRLF) from the buffer, if a whole one is there.
    fn take_line(&mut self) -> Result<Option<Bytes>, Error> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(end) if end > MAX_LINE => Err(Error::Protocol("chunk line too long")),
            Some(end) => {
                let line = self.buf.split_to(end).freeze();
                self.buf.advance(2);
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_LINE => Err(Error::Protocol("chunk line too long")),
            None => Ok(None),
        }
    }
}

/// RFC 9112 §7.1: 1-16 hex digits, then optional whitespace and `;extensions`. Nothing
/// more lenient: two parties reading one chunk size differently is how bodies are smuggled.
pub(super) fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let invalid = || Error::Protocol("invalid chunk size");
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_end == 0 || digits_end > 16 {
        return Err(invalid());
    }
    let rest = &line[digits_end..];
    let extensions = rest.iter().position(|b| *b == b';').unwrap_or(rest.len());
    if !rest[..extensions].iter().all(|b| matches!(b, b' ' | b'\t')) {
        return Err(invalid());
    }
    let digits = std::str::from_utf8(&line[..digits_end]).map_err(|_| invalid())?;
    u64::from_str_radix(digits, 16).map_err(|_| invalid())
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Some(error) = this.upload_failed() {
            this.io = None;
            this.state = State::Done;
            return Poll::Ready(Some(Err(error)));
        }
        loop {
            let step: Result<Option<Bytes>, Error> = match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    this.finish();
                    continue;
                }
                State::Length(remaining) | State::ChunkData(remaining) if !this.buf.is_empty() => {
                    let take = remaining.min(this.buf.len() as u64);
                    let data = this.buf.split_to(take as usize).freeze();
                    this.state = match this.state {
                        State::Length(_) => State::Length(remaining - take),
                        _ if remaining == take => State::ChunkEnd,
                        _ => State::ChunkData(remaining - take),
                    };
                    // The client side knows the length too and may drop the body right
                    // after the last byte without asking for the end: pool the
                    // connection now.
                    if matches!(this.state, State::Length(0)) {
                        this.finish();
                    }
                    Ok(Some(data))
                }
                State::Eof if !this.buf.is_empty() => Ok(Some(this.buf.split().freeze())),
                State::ChunkSize => match this.take_line() {
                    Ok(Some(line)) => match chunk_size(&line) {
                        Ok(0) => {
                            this.state = State::Trailers;
                            continue;
                        }
                        Ok(size) => {
                            this.state = State::ChunkData(size);
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                },
                State::ChunkEnd if this.buf.len() >= 2 => {
                    if &this.buf[..2] != b"\r\n" {
                        Err(Error::Protocol("chunk not followed by CRLF"))
                    } else {
                        this.buf.advance(2);
                        this.state = State::ChunkSize;
                        continue;
                    }
                }
                // Trailer fields are dropped: HTTP/1.1 upstreams rarely send them and
                // nothing downstream of this hop asked for them.
                State::Trailers => match this.take_line() {
                    Ok(Some(line)) if line.is_empty() => {
                        this.finish();
                        continue;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                },
                State::Length(_) | State::ChunkData(_) | State::ChunkEnd | State::Eof => Ok(None),
            };
            match step {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(error) => {
                    this.io = None;
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(error)));
                }
                Ok(None) => match ready!(this.poll_fill(cx)) {
                    Ok(0) if matches!(this.state, State::Eof) => {
                        this.keep_alive = false;
                        this.finish();
                    }
                    Ok(0) => {
                        this.io = None;
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Error::Protocol(
                            "the upstream closed the connection mid-body",
                        ))));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        this.io = None;
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(error)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_size;

    #[test]
    fn chunk_sizes_are_read_strictly() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"FF;name=value").unwrap(), 255);
        assert_eq!(chunk_size(b"10 ;x").unwrap(), 16);
        for bad in [
            &b""[..],
            b"+5",
            b" 5",
            b"5 5",
            b"0x5",
            b"g",
            b"11111111111111111",
            b"5\t1",
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
