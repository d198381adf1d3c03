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
    Running(JoinHandle<Result<OwnedWriteHalf, Error>>),
    Done(OwnedWriteHalf),
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
}

impl Body {
    pub(super) fn new(
        io: Io,
        buf: BytesMut,
        framing: ResponseFraming,
        keep_alive: bool,
        pool: Arc<Client>,
        authority: Authority,
    ) -> Self {
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
            if let Io::Split {
                writer: Writer::Running(running),
                ..
            } = io
            {
                running.abort();
            }
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
                            Some(Ok(Ok(write))) => write,
                            _ => {
                                running.abort();
                                return;
                            }
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
        self.pool.put(&self.authority, Conn { stream, buf });
    }

    /// Takes one line (without CRLF) from the buffer, if a whole one is there.
    fn take_line(&mut self) -> Result<Option<Bytes>, Error> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
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

fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits)
        .map_err(|_| Error::Protocol("invalid chunk size"))?
        .trim();
    if digits.is_empty() || digits.len() > 16 {
        return Err(Error::Protocol("invalid chunk size"));
    }
    u64::from_str_radix(digits, 16).map_err(|_| Error::Protocol("invalid chunk size"))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
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

impl Drop for Body {
    fn drop(&mut self) {
        // Dropped before its end (the client went away): the connection is in an unknown
        // state and closes with `io`; a request body still being written is abandoned.
        if let Some(Io::Split {
            writer: Writer::Running(running),
            ..
        }) = &self.io
        {
            running.abort();
        }
    }
}
