//! JWKS documents, fetched from the identity provider and kept in memory.
//!
//! * One entry per URI, shared by every rule and worker that names it.
//! * Refreshed on a schedule; when a fetch fails the keys in hand stay in use, so tokens
//!   keep validating while the IdP is down.
//! * A token with an unknown `kid` asks for an early refetch — single-flight (concurrent
//!   askers wait for the same fetch) and at most once per `min_refetch_gap`, so a flood of
//!   made-up kids cannot hammer the IdP.
//! * Fetches run on the data plane's control runtime, never on a proxy worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use prometheus::IntCounterVec;
use tokio::sync::watch;
use tokio::time::Instant;

use super::keys::{self, VerifyKey};

/// Largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct JwksOptions {
    /// How often every document is fetched again.
    pub refresh_every: Duration,
    /// Least time between two fetches of one document caused by unknown kids (and between
    /// retries after a failure).
    pub min_refetch_gap: Duration,
    /// Time a fetch may take.
    pub fetch_timeout: Duration,
    /// How long a request waits for a fetch it triggered (or the first one).
    pub request_wait: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            refresh_every: Duration::from_secs(300),
            min_refetch_gap: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            request_wait: Duration::from_secs(3),
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What every entry needs to fetch.
struct Fetcher {
    client: HttpClient,
    options: JwksOptions,
    /// The runtime fetches run on.
    handle: tokio::runtime::Handle,
    fetches: IntCounterVec,
}

/// Every JWKS document in use.
pub struct JwksCache {
    fetcher: Arc<Fetcher>,
    entries: Mutex<HashMap<Box<str>, Weak<JwksEntry>>>,
}

/// One document's keys and fetch state.
pub struct JwksEntry {
    uri: Box<str>,
    keys: ArcSwap<Vec<VerifyKey>>,
    state: Mutex<FetchState>,
    /// Bumped after every fetch attempt; waiters watch it.
    attempts: watch::Sender<u64>,
    fetcher: Arc<Fetcher>,
}

#[derive(Default)]
struct FetchState {
    in_flight: bool,
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
}

impl JwksCache {
    /// Must be called on the runtime fetches should run on.
    pub fn new(
        options: JwksOptions,
        tls: rustls::ClientConfig,
        fetches: IntCounterVec,
    ) -> Arc<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.fetch_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let fetcher = Fetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
            options,
            handle: tokio::runtime::Handle::current(),
            fetches,
        };
        Arc::new(Self {
            fetcher: Arc::new(fetcher),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The entry for `uri`, created (and its first fetch started) when new.
    pub fn entry(&self, uri: &str) -> Arc<JwksEntry> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(uri).and_then(Weak::upgrade) {
            return entry;
        }
        let entry = Arc::new(JwksEntry {
            uri: uri.into(),
            keys: ArcSwap::from_pointee(Vec::new()),
            state: Mutex::new(FetchState::default()),
            attempts: watch::channel(0).0,
            fetcher: self.fetcher.clone(),
        });
        entries.insert(uri.into(), Arc::downgrade(&entry));
        entry.try_fetch(true);
        entry
    }

    /// Refreshes due documents and forgets unused ones, until `shutdown`.
    pub async fn refresh(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let tick = (self.fetcher.options.min_refetch_gap / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = crate::stopped(&mut shutdown) => return,
            }
            let live: Vec<Arc<JwksEntry>> = {
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                entries.retain(|_, entry| entry.strong_count() > 0);
                entries.values().filter_map(Weak::upgrade).collect()
            };
            for entry in live {
                if entry.refresh_due() {
                    entry.try_fetch(true);
                }
            }
        }
    }
}

/// Ends a fetch when dropped.
struct FetchDone(Arc<JwksEntry>);

impl Drop for FetchDone {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_flight = false;
        self.0.attempts.send_modify(|n| *n += 1);
    }
}

impl JwksEntry {
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The keys in hand.
    pub fn keys(&self) -> arc_swap::Guard<Arc<Vec<VerifyKey>>> {
        self.keys.load()
    }

    fn refresh_due(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let options = &self.fetcher.options;
        match (state.last_attempt, state.last_success) {
            _ if state.in_flight => false,
            (None, _) => true,
            // Failing: retry at the refetch pace.
            (Some(attempt), success) if success != Some(attempt) => {
                attempt.elapsed() >= options.min_refetch_gap
            }
            (_, Some(success)) => success.elapsed() >= options.refresh_every,
            (Some(_), None) => true,
        }
    }

    /// Starts a fetch unless one is running or (`scheduled` false) one ran too recently.
    /// True when a fetch is now in flight.
    fn try_fetch(self: &Arc<Self>, scheduled: bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.in_flight {
            return true;
        }
        let gap = self.fetcher.options.min_refetch_gap;
        if !scheduled && state.last_attempt.is_some_and(|at| at.elapsed() < gap) {
            return false;
        }
        state.in_flight = true;
        state.last_attempt = Some(Instant::now());
        // Whatever ends the fetch (done, a panic, the task dropped unpolled when the runtime
        // shuts down), the guard clears the flag and wakes waiters: refreshing never stalls.
        let done = FetchDone(self.clone());
        self.fetcher.handle.spawn(async move {
            done.0.clone().fetch().await;
            drop(done);
        });
        true
    }

    /// Waits for fresh keys after a token named a kid we do not have (or before the first
    /// fetch finished). False when no fetch was allowed or it did not end in time.
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>) -> bool {
        // Subscribed before the check, so a fetch ending in between is not missed.
        let mut attempts = self.attempts.subscribe();
        if !self.try_fetch(false) {
            // A fetch that ended since we looked may hold the key after all.
            return attempts.has_changed().unwrap_or(false);
        }
        let wait = self.fetcher.options.request_wait;
        matches!(
            tokio::time::timeout(wait, attempts.changed()).await,
            Ok(Ok(()))
        )
    }

    async fn fetch(self: Arc<Self>) {
        let result =
            tokio::time::timeout(self.fetcher.options.fetch_timeout, self.download()).await;
        let result = result.unwrap_or_else(|_| Err("timed out".into()));
        let outcome = match result {
            Ok(keys) => {
                tracing::debug!(uri = %self.uri, keys = keys.len(), "fetched JWKS");
                self.keys.store(Arc::new(keys));
                "ok"
            }
            Err(error) => {
                let kept = self.keys.load().len();
                tracing::warn!(uri = %self.uri, %error, kept, "cannot fetch JWKS; keeping the keys in hand");
                "error"
            }
        };
        self.fetcher
            .fetches
            .with_label_values(&[&*self.uri, outcome])
            .inc();
        if outcome == "ok" {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.last_success = state.last_attempt;
        }
    }

    async fn download(&self) -> Result<Vec<VerifyKey>, String> {
        let request = http::Request::get(&*self.uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| e.to_string())?;
        let response = self
            .fetcher
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("reading the document: {e}"))?
            .to_bytes();
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            match keys::from_jwk(jwk) {
                Ok(key) => keys.push(key),
                Err(why) => {
                    tracing::debug!(uri = %self.uri, kid = jwk.common.key_id.as_deref().unwrap_or_default(), why, "skipping a JWKS key")
                }
            }
        }
        if keys.is_empty() {
            return Err("the document holds no usable signing key".into());
        }
        Ok(keys)
    }
}
