//! The access log: one line per request at a few percent of the request's cost.
//!
//! ```text
//!  worker thread: Entry ──format──▶ its own buffer ──(32 KiB, or every 50 ms)──┐
//!  worker thread: Entry ──format──▶ its own buffer ──────────────────────────┤ bounded queue
//!                                                                            ▼ (full: dropped, counted)
//!                                             writer thread ──▶ stdout | file (rotated by size)
//! ```
//!
//! A request only formats its line into memory its worker owns (no lock, no allocation
//! once the buffer has grown); whole buffers go to one writer thread, so lines never
//! interleave, and a sink that blocks (a pipe nobody reads, a stuck disk) fills the queue
//! and costs dropped lines — counted in `pavilion_access_log_dropped_total` — never a
//! stalled request. Workers hand in what they hold when they stop, and
//! [`AccessLog::close`] waits until the writer has written everything handed in.

mod format;
mod sink;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, Registry};

pub use format::{Entry, Layout};
use sink::Sink;
pub use sink::{Destination, FileSink};

/// A worker hands its buffer to the writer once it holds this much…
const FLUSH_AT: usize = 32 * 1024;
/// …or when it has held lines this long.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffers queued for the writer (with [`FLUSH_AT`]: about 8 MiB); past it, lines drop.
const QUEUE: usize = 256;

/// How the access log is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLogOptions {
    pub layout: Layout,
    pub destination: Destination,
}

/// A handle to the access log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    queue: SyncSender<Message>,
    dropped: IntCounter,
}

enum Message {
    Lines {
        bytes: Vec<u8>,
        count: u64,
    },
    /// Write out everything before this, flush the sink, then answer.
    Sync(SyncSender<()>),
}

/// The lines a thread has formatted and not yet handed to the writer of `owner`.
struct Local {
    owner: Option<Arc<Inner>>,
    bytes: Vec<u8>,
    count: u64,
}

impl Local {
    fn owned_by(&self, log: &Arc<Inner>) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|owner| Arc::ptr_eq(owner, log))
    }

    fn hand_in(&mut self) {
        if let Some(owner) = &self.owner
            && self.count > 0
        {
            let bytes = std::mem::replace(&mut self.bytes, Vec::with_capacity(FLUSH_AT + 1024));
            owner.send(bytes, std::mem::take(&mut self.count));
        }
    }
}

impl Drop for Local {
    /// A worker thread that ends loses nothing it formatted.
    fn drop(&mut self) {
        self.hand_in();
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local { owner: None, bytes: Vec::new(), count: 0 })
    };
}

impl Inner {
    fn send(&self, bytes: Vec<u8>, count: u64) {
        match self.queue.try_send(Message::Lines { bytes, count }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc_by(count)
            }
        }
    }
}

impl AccessLog {
    /// Opens the destination and starts the writer thread; registers the dropped-lines
    /// counter in `registry`.
    pub fn start(options: &AccessLogOptions, registry: &Registry) -> std::io::Result<Self> {
        let dropped = IntCounter::new(
            "pavilion_access_log_dropped_total",
            "Access log lines dropped because the destination could not keep up (or failed); requests are never held back for the log.",
        )
        .expect("a valid metric");
        registry
            .register(Box::new(dropped.clone()))
            .map_err(std::io::Error::other)?;
        Self::with_sink(options.layout, Sink::open(&options.destination)?, dropped)
    }

    fn with_sink(layout: Layout, sink: Sink, dropped: IntCounter) -> std::io::Result<Self> {
        let (queue, received) = std::sync::mpsc::sync_channel(QUEUE);
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("pavilion-access-log".into())
            .spawn(move || write_out(received, sink, counted))?;
        Ok(Self {
            inner: Arc::new(Inner {
                layout,
                queue,
                dropped,
            }),
        })
    }

    /// Logs one request. On a thread bound by [`AccessLog::flush_periodically`] (a
    /// worker) the line joins the thread's buffer; elsewhere it is handed in at once.
    pub fn log(&self, entry: &Entry<'_>) {
        let buffered = LOCAL
            .try_with(|local| {
                let Ok(mut local) = local.try_borrow_mut() else {
                    return false;
                };
                if !local.owned_by(&self.inner) {
                    return false;
                }
                entry.write(self.inner.layout, &mut local.bytes);
                local.count += 1;
                if local.bytes.len() >= FLUSH_AT {
                    local.hand_in();
                }
                true
            })
            .unwrap_or(false);
        if !buffered {
            let mut bytes = Vec::with_capacity(512);
            entry.write(self.inner.layout, &mut bytes);
            self.inner.send(bytes, 1);
        }
    }

    /// Makes the calling thread buffer this log's lines (what it held for another log is
    /// handed in first).
    fn bind_here(&self) {
        LOCAL.with_borrow_mut(|local| {
            if !local.owned_by(&self.inner) {
                local.hand_in();
                local.owner = Some(self.inner.clone());
                local.bytes.reserve(FLUSH_AT + 1024);
            }
        });
    }

    /// Runs on a worker (a single-threaded runtime): binds the worker thread's buffer to
    /// this log and hands its lines in every [`FLUSH_EVERY`], so a quiet worker's last
    /// lines show promptly.
    pub async fn flush_periodically(self) {
        self.bind_here();
        let mut ticks = tokio::time::interval(FLUSH_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.flush_here();
        }
    }

    /// Hands in what the calling thread holds.
    pub fn flush_here(&self) {
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut() {
                local.hand_in();
            }
        });
    }

    /// Blocks until everything handed in so far is written and the destination flushed,
    /// or `timeout` passed (a destination that blocks); true when it was written. For
    /// the end of a graceful stop, after the workers have handed in their buffers.
    pub fn close(&self, timeout: Duration) -> bool {
        self.flush_here();
        let deadline = Instant::now() + timeout;
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        let mut message = Message::Sync(done);
        loop {
            match self.inner.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        finished
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }
}

/// The writer thread: runs until every handle is gone.
fn write_out(received: Receiver<Message>, mut sink: Sink, dropped: IntCounter) {
    let mut failing = false;
    for message in received {
        match message {
            Message::Lines { bytes, count } => {
                if let Err(error) = sink.write(&bytes) {
                    dropped.inc_by(count);
                    if !failing {
                        // Said once per failure spell (to the general log, which may
                        // still work when a log file's disk is full).
                        tracing::error!(%error, "cannot write the access log; dropping lines");
                    }
                    failing = true;
                } else {
                    failing = false;
                }
            }
            Message::Sync(done) => {
                let _ = sink.flush();
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn entry(n: usize, path: &str) -> (String, Entry<'_>) {
        let id = format!("req-{n}");
        (
            id,
            Entry {
                request_id: "",
                trace_id: "0af7651916cd43dd8448eb211c80319c",
                client: [127, 0, 0, 1].into(),
                method: "GET",
                path,
                status: 200,
                route: "ns/route",
                upstream: "http://127.0.0.1:8080",
                error: "-",
                flags: "-",
                identity: None,
                tenant: "-",
                duration: Duration::from_micros(250),
            },
        )
    }

    fn log_lines(log: &AccessLog, count: usize) {
        for n in 0..count {
            let (id, mut line) = entry(n, "/a/somewhat/longer/path/for/the/test");
            line.request_id = &id;
            log.log(&line);
        }
    }

    /// The lines of a sink, each checked to be one whole JSON object.
    fn whole_lines(reader: impl std::io::Read) -> Vec<serde_json::Value> {
        BufReader::new(reader)
            .lines()
            .map(|line| {
                let line = line.unwrap();
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
            })
            .collect()
    }

    /// A log writing into a pipe, and the pipe's reading end.
    fn piped() -> (AccessLog, std::io::PipeReader) {
        let (reader, writer) = std::io::pipe().unwrap();
        let log = AccessLog::with_sink(
            Layout::Json,
            Sink::Writer(Box::new(writer)),
            IntCounter::new("dropped", "test").unwrap(),
        )
        .unwrap();
        (log, reader)
    }

    #[test]
    fn a_sink_that_blocks_costs_counted_lines_never_a_stalled_caller() {
        let (log, reader) = piped();
        // Nobody reads the pipe: once it and the queue are full, lines must drop. The
        // logging thread is a worker-like one (bound, buffering); when it ends it hands in
        // its last buffer.
        const LINES: usize = 200_000;
        let worker = {
            let log = log.clone();
            std::thread::spawn(move || {
                log.bind_here();
                log_lines(&log, LINES);
            })
        };
        worker.join().unwrap();
        let dropped = log.dropped();
        assert!(dropped > 0, "a blocked sink drops lines");
        // Now read: every line that was not counted as dropped arrives, whole.
        let reading = std::thread::spawn(move || whole_lines(reader));
        assert!(log.close(Duration::from_secs(30)), "the writer catches up");
        drop(log);
        let lines = reading.join().unwrap();
        assert_eq!(lines.len() as u64 + dropped, LINES as u64);
        assert!(
            lines
                .iter()
                .all(|line| line["target"] == "pavilion::access")
        );
    }

    #[test]
    fn lines_from_threads_that_never_bound_are_written_at_once() {
        let (log, reader) = piped();
        let reading = std::thread::spawn(move || whole_lines(reader));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                // Few enough never to fill the queue, whatever the timing.
                std::thread::spawn(move || log_lines(&log, 50))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(log.close(Duration::from_secs(30)));
        assert_eq!(log.dropped(), 0);
        drop(log);
        assert_eq!(reading.join().unwrap().len(), 200);
    }

    #[test]
    fn a_file_rotates_by_size_and_keeps_only_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let options = AccessLogOptions {
            layout: Layout::Json,
            destination: Destination::File(FileSink {
                path: path.clone(),
                max_bytes: 64 * 1024,
                keep: 2,
            }),
        };
        let log = AccessLog::start(&options, &Registry::new()).unwrap();
        // Buffered as on a worker: 32 KiB chunks, about two per file.
        log.bind_here();
        log_lines(&log, 1000);
        assert!(log.close(Duration::from_secs(30)));
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["access.log", "access.log.1", "access.log.2"]);
        let mut total = 0;
        for name in &names {
            let file = dir.path().join(name);
            assert!(std::fs::metadata(&file).unwrap().len() <= 64 * 1024);
            total += whole_lines(std::fs::File::open(&file).unwrap()).len();
        }
        // The oldest lines went with the files past `keep`; the newest are all there.
        assert!(total < 1000, "{total}");
        let newest = whole_lines(std::fs::File::open(&path).unwrap());
        assert_eq!(newest.last().unwrap()["request_id"], "req-999");
        assert_eq!(log.dropped(), 0);

        // Someone else removed the files (an operator, an outside logrotate): the next
        // rotation finds nothing to move and logging goes on in a new file.
        for name in &names {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        log_lines(&log, 1000);
        assert!(log.close(Duration::from_secs(30)));
        assert_eq!(log.dropped(), 0);
        let after = whole_lines(std::fs::File::open(&path).unwrap());
        assert_eq!(after.last().unwrap()["request_id"], "req-999");

        // A restarted data plane appends to the current file.
        drop(log);
        let before = std::fs::metadata(&path).unwrap().len();
        let log = AccessLog::start(&options, &Registry::new()).unwrap();
        log_lines(&log, 1);
        assert!(log.close(Duration::from_secs(30)));
        assert!(std::fs::metadata(&path).unwrap().len() > before);
    }
}
