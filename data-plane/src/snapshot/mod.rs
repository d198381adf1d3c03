//! Receiving snapshots: from the control plane's stream, or from the cache file when the
//! control plane is away. Either way a snapshot is built into a `Runtime` first and swapped
//! in only if that succeeds.

pub mod cache;
pub mod client;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pavilion_proto::delta::{DeltaError, Parts};
use pavilion_proto::{Snapshot, SnapshotDelta, SnapshotFrame};
use prost::Message;

use crate::auth::AuthContext;
use crate::metrics::Metrics;
use crate::pipeline::Shared;
use crate::runtime::{BuildError, Runtime};

/// Applies snapshots to the proxy and keeps the cache file current.
#[derive(Clone)]
pub struct Applier {
    shared: Arc<Shared>,
    metrics: Metrics,
    cache: Option<PathBuf>,
    auth: AuthContext,
    /// Runs the active health checks of the rules that have them.
    prober: Arc<crate::upstream::probe::Prober>,
    /// The encoding of the snapshot served, split: the base a delta applies to. Its routes
    /// are the runtime's own copies and its tail a copy, so no received message stays
    /// alive for it.
    running: Arc<Mutex<Option<Parts>>>,
}

/// Fields 3 to 5 of an encoded snapshot; `None` when it does not split (never for what a
/// control plane sends).
fn tail_of(encoded: &Bytes) -> Option<Bytes> {
    Parts::split(encoded).ok().map(|parts| parts.tail)
}

/// Why a snapshot sent as a delta was not applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaApplyError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error("the snapshot the delta makes cannot be decoded: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl Applier {
    pub fn new(
        shared: Arc<Shared>,
        metrics: Metrics,
        cache: Option<PathBuf>,
        auth: AuthContext,
        prober: Arc<crate::upstream::probe::Prober>,
    ) -> Self {
        Self {
            shared,
            metrics,
            cache,
            auth,
            prober,
            running: Arc::default(),
        }
    }

    /// The version being served; empty before the first snapshot.
    pub fn current_version(&self) -> String {
        self.shared.runtime.load().version.clone()
    }

    /// Builds and swaps in `snapshot`, then writes it to the cache. In-flight requests
    /// finish on the runtime they started with.
    pub async fn apply(&self, snapshot: Snapshot) -> Result<(), BuildError> {
        let encoded = Bytes::from(snapshot.encode_to_vec());
        let frame = SnapshotFrame::decode(encoded.clone())
            .expect("an encoded Snapshot always reads as a SnapshotFrame");
        self.apply_frame(frame, encoded).await
    }

    /// Applies the snapshot `delta` makes of the one served (which must be its base). The
    /// result is checked against the delta's version by hashing its parts; the encoding
    /// is put together only for the cache file.
    pub async fn apply_delta(&self, delta: &SnapshotDelta) -> Result<(), DeltaApplyError> {
        let parts = {
            let running = self.lock_running();
            let base = running
                .as_ref()
                .filter(|base| base.version == delta.base)
                .ok_or_else(|| DeltaError::WrongBase {
                    base: delta.base.clone(),
                    running: self.current_version(),
                })?;
            pavilion_proto::delta::apply_parts(&base.routes, &base.tail, delta)?
        };
        // The tail is fields 3 to 5 of a snapshot: read alone, it is a frame without
        // version and routes.
        let frame = SnapshotFrame {
            version: parts.version.clone(),
            routes: parts.routes.clone(),
            ..SnapshotFrame::decode(parts.tail.clone())?
        };
        // Where each route was in the base: the runtime built from it takes those over
        // without looking for them.
        let mut kept = Vec::with_capacity(frame.routes.len());
        for piece in &delta.routes {
            if piece.keep_count == 0 {
                kept.push(None);
            } else {
                kept.extend((piece.keep_from..piece.keep_from + piece.keep_count).map(Some));
            }
        }
        let encoded = self.cache.is_some().then(|| parts.encode());
        self.install(&frame, Some(&parts.tail), Some(&kept))?;
        if let Some(encoded) = encoded {
            self.store(encoded).await;
        }
        Ok(())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, Option<Parts>> {
        // Replaced whole under the lock: a poisoned one still holds a consistent value.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`apply`](Self::apply) for a snapshot as it arrived: `encoded`, read as `frame`.
    pub async fn apply_frame(
        &self,
        frame: SnapshotFrame,
        encoded: Bytes,
    ) -> Result<(), BuildError> {
        // A snapshot whose encoding does not split takes the next one whole: the control
        // plane resends on a NACK.
        self.install(&frame, tail_of(&encoded).as_ref(), None)?;
        self.store(encoded).await;
        Ok(())
    }

    /// Writes the snapshot served to the cache file.
    async fn store(&self, encoded: Bytes) {
        if let Some(path) = self.cache.clone() {
            let written = tokio::task::spawn_blocking(move || cache::write(&path, &encoded)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot write the snapshot cache"),
                Err(error) => tracing::warn!(%error, "snapshot cache writer failed"),
            }
        }
    }

    /// Builds and swaps in the snapshot `frame` (`tail`: its fields 3 to 5 as encoded;
    /// `None` when unknown, and the next snapshot then comes whole); `kept`: where its
    /// routes were in the one served, when a delta says.
    fn install(
        &self,
        frame: &SnapshotFrame,
        tail: Option<&Bytes>,
        kept: Option<&[Option<u32>]>,
    ) -> Result<(), BuildError> {
        let started = std::time::Instant::now();
        let previous = self.shared.runtime.load();
        let built = match kept {
            Some(kept) => Runtime::build_delta(frame, kept, &previous, &self.metrics, &self.auth),
            None => Runtime::build_frame(frame, &previous, &self.metrics, &self.auth),
        };
        match built {
            Ok(runtime) => {
                drop(previous);
                if self.shared.limiter.redis_reachable().is_none() {
                    let policies = Runtime::redis_policies(runtime.fresh_rules());
                    if !policies.is_empty() {
                        tracing::warn!(
                            policies = %policies.join(", "),
                            "these policies count in Redis but this data plane has no --redis: their failureMode decides every request"
                        );
                    }
                }
                self.prober.watch(&runtime);
                // Deltas apply to what is served from now on.
                *self.lock_running() = tail.map(|tail| Parts {
                    version: frame.version.clone(),
                    routes: runtime.encoded_routes().to_vec(),
                    tail: Bytes::copy_from_slice(tail),
                });
                let replaced = self.shared.runtime.swap(Arc::new(runtime));
                // Freeing 10 000 routes takes milliseconds: not before this one is counted
                // as applied (and answered). The last request on it may free it instead.
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn_blocking(move || drop(replaced));
                }
                self.metrics.retire_gone_routes();
                self.metrics.snapshots_applied.inc();
                self.metrics.serving(&frame.version);
                tracing::info!(
                    version = %frame.version,
                    routes = frame.routes.len(),
                    build_ms = started.elapsed().as_millis() as u64,
                    "snapshot applied"
                );
                Ok(())
            }
            Err(error) => {
                self.metrics.snapshots_rejected.inc();
                tracing::warn!(version = %frame.version, %error, "snapshot refused");
                Err(error)
            }
        }
    }

    /// Serves the cached snapshot, if there is a usable one. Problems are logged, not fatal:
    /// the control plane will send a fresh snapshot.
    pub fn restore_from_cache(&self) -> bool {
        let Some(path) = &self.cache else {
            return false;
        };
        let read = cache::read_encoded(path).and_then(|encoded| {
            Ok(encoded
                .map(|encoded| {
                    Ok::<_, prost::DecodeError>((SnapshotFrame::decode(encoded.clone())?, encoded))
                })
                .transpose()?)
        });
        match read {
            Ok(None) => false,
            Ok(Some((frame, encoded))) => {
                let installed = self
                    .install(&frame, tail_of(&encoded).as_ref(), None)
                    .is_ok();
                if installed {
                    tracing::info!(path = %path.display(), version = %frame.version, "serving the cached snapshot");
                }
                installed
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring an unreadable snapshot cache");
                false
            }
        }
    }
}
