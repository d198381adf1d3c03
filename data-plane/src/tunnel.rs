//! Byte tunnels between two upgraded connections (WebSocket). Frames are never reassembled:
//! bytes go on as they arrive, so a message of any size streams through in bounded memory,
//! and pings, pongs and close frames pass like any other frame. A side that closes its
//! connection has its half-close passed on, and the tunnel ends when both have closed, when
//! either fails, or when neither sent a byte for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// Why a tunnel ended (the `reason` label of `pavilion_websockets_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their connections (after their close handshake, normally).
    Closed,
    /// Neither side sent anything for the idle timeout.
    Idle,
    /// A side reset its connection or the upgrade failed.
    Error,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::Idle => "idle",
            Ended::Error => "error",
        }
    }
}

/// How long the other direction may go on after one side closed its connection: long
/// enough for the close handshake's answer, short enough that a peer ignoring the close
/// does not hold the tunnel.
const LINGER: Duration = Duration::from_secs(2);

/// Waits for both upgrades, then relays until the tunnel ends.
pub async fn relay(client: OnUpgrade, upstream: OnUpgrade, idle: Duration) -> Ended {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "a WebSocket upgrade did not complete");
            return Ended::Error;
        }
    };
    let started = Instant::now();
    let heard = Arc::new(AtomicU64::new(0));
    let client = Heard::new(TokioIo::new(client), started, heard.clone());
    let upstream = Heard::new(TokioIo::new(upstream), started, heard.clone());
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let mut out = std::pin::pin!(one_way(client_read, upstream_write));
    let mut back = std::pin::pin!(one_way(upstream_read, client_write));
    let (mut out_done, mut back_done) = (false, false);
    // Set when the first direction ended.
    let mut linger_until: Option<Instant> = None;
    loop {
        let quiet_until = started + Duration::from_millis(heard.load(Ordering::Relaxed)) + idle;
        let wake = linger_until.map_or(quiet_until, |l| l.min(quiet_until));
        let ended = tokio::select! {
            result = out.as_mut(), if !out_done => { out_done = true; result }
            result = back.as_mut(), if !back_done => { back_done = true; result }
            () = tokio::time::sleep_until(wake) => {
                if linger_until.is_some_and(|l| Instant::now() >= l) {
                    return Ended::Closed;
                }
                let heard = Duration::from_millis(heard.load(Ordering::Relaxed));
                if started.elapsed() >= heard + idle {
                    return Ended::Idle;
                }
                continue;
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, "a WebSocket tunnel failed");
            return Ended::Error;
        }
        if out_done && back_done {
            return Ended::Closed;
        }
        linger_until.get_or_insert_with(|| Instant::now() + LINGER);
    }
}

/// Copies one direction until its reader ends, then passes the end on.
async fn one_way(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> io::Result<()> {
    tokio::io::copy(&mut from, &mut to).await?;
    to.shutdown().await
}

/// A connection that notes when it last delivered bytes (milliseconds since the tunnel
/// started), in a clock both directions share.
struct Heard<IO> {
    io: IO,
    started: Instant,
    heard: Arc<AtomicU64>,
}

impl<IO> Heard<IO> {
    fn new(io: IO, started: Instant, heard: Arc<AtomicU64>) -> Self {
        Self { io, started, heard }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Heard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.started.elapsed().as_millis() as u64;
            self.heard.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Heard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
