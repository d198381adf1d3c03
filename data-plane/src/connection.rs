//! What the listener knows about one client connection, so that no connection can hold a
//! worker's resources for free: how many requests are in flight on it (their response
//! bodies included), since when none is, and since when a write to it is stuck.
//!
//! A connection with no request in flight for the idle timeout is closed gracefully (a new
//! connection that never sends anything included); one whose writes make no progress for
//! the send timeout — a client that stopped reading — is dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::{ResponseBody, ResponseBodyError};

/// Timeouts and caps of client connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// A connection without a request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A connection whose writes make no progress for this long is dropped.
    pub send_timeout: Duration,
    /// Open client connections per worker; more are refused.
    pub max_per_worker: usize,
    /// Time a client has to send a whole request head from its first byte (slowloris).
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_per_worker: 10_000,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Shared by a connection's IO, its requests and its watchdog.
pub struct ConnState {
    opened: Instant,
    /// Requests whose response is not completely sent (or dropped) yet.
    active: AtomicUsize,
    /// Milliseconds after `opened` when `active` last fell to 0.
    idle_since: AtomicU64,
    /// Milliseconds after `opened` + 1 when a write started to wait; 0 while none does.
    blocked_since: AtomicU64,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Marks a request in flight until the guard (carried by its response body) drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// How long the connection has had no request in flight; `None` while it has one.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// How long a write has been waiting for the client to read; `None` when none waits.
    pub fn blocked_for(&self) -> Option<Duration> {
        match self.blocked_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(
                self.now_ms().saturating_sub(since - 1),
            )),
        }
    }

    fn write_polled<T>(&self, poll: &Poll<T>) {
        match poll {
            Poll::Pending => {
                if self.blocked_since.load(Ordering::Relaxed) == 0 {
                    self.blocked_since
                        .store(self.now_ms() + 1, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => self.blocked_since.store(0, Ordering::Relaxed),
        }
    }
}

/// One request in flight on a connection.
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle clock starts before the count reaches 0, so a watchdog that sees 0
        // never reads a stale start.
        self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped
/// (an SSE stream or a long download is not an idle connection).
pub struct Tracked {
    body: ResponseBody,
    _in_flight: InFlight,
}

impl Tracked {
    pub fn new(body: ResponseBody, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client connection's IO, noting when writes wait on the client.
pub struct Watched<IO> {
    io: IO,
    state: Arc<ConnState>,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, state: Arc<ConnState>) -> Self {
        Self { io, state }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.state.write_polled(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.state.write_polled(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.state.write_polled(&poll);
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The open connections of one worker — upgraded ones (WebSocket tunnels) included; wakes
/// the drain when the last one ends.
#[derive(Default)]
pub(crate) struct Open {
    pub(crate) count: AtomicUsize,
    none_left: Notify,
}

/// Counts a connection as open until it drops.
pub(crate) struct OpenGuard {
    open: Arc<Open>,
    gauge: prometheus::IntGauge,
}

impl Open {
    pub(crate) fn enter(self: &Arc<Self>, gauge: &prometheus::IntGauge) -> OpenGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        OpenGuard {
            open: self.clone(),
            gauge: gauge.clone(),
        }
    }

    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        if self.open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.none_left.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_millis(30);

    #[tokio::test]
    async fn idle_time_counts_only_without_requests_in_flight() {
        let state = ConnState::new();
        tokio::time::sleep(STEP).await;
        assert!(state.idle_for().unwrap() >= STEP, "idle from the start");
        let first = state.begin();
        let second = state.begin();
        tokio::time::sleep(STEP).await;
        assert_eq!(state.idle_for(), None);
        drop(first);
        assert_eq!(state.idle_for(), None, "one is still in flight");
        drop(second);
        assert!(state.idle_for().unwrap() < STEP, "the idle clock restarted");
        tokio::time::sleep(STEP).await;
        assert!(state.idle_for().unwrap() >= STEP);
    }

    #[tokio::test]
    async fn a_write_is_blocked_until_one_completes() {
        let state = ConnState::new();
        assert_eq!(state.blocked_for(), None);
        state.write_polled(&Poll::<()>::Pending);
        tokio::time::sleep(STEP).await;
        state.write_polled(&Poll::<()>::Pending);
        assert!(
            state.blocked_for().unwrap() >= STEP,
            "counted from the first wait"
        );
        state.write_polled(&Poll::Ready(()));
        assert_eq!(state.blocked_for(), None);
    }
}
