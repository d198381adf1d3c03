//! Upstreams: backend targets parsed once per snapshot, their balancing, health, circuit
//! and retries, and the pooled clients (HTTP/1.1, h2c, HTTPS) shared by every snapshot so
//! a reload keeps connections.

pub mod balance;
pub mod breaker;
pub mod endpoint;
pub mod h1;
mod pool;
pub mod probe;
pub mod retry;

pub use balance::Backends;
pub use pool::Upstreams;

use std::time::Duration;

use http::uri::{Authority, Scheme};
use rustls_pki_types::CertificateDer;

/// How a backend is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC backends).
    H2c,
    /// HTTP/1.1 over TLS, verified against the web PKI plus `--upstream-ca`.
    Https,
    /// HTTPS offering HTTP/2 by ALPN (`upstreamTls.http2`), HTTP/1.1 when the backend
    /// declines; the backend's own authority is the host either way.
    HttpsAlpn,
}

/// One backend, parsed once per snapshot so requests only clone its parts.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: Box<str>,
    pub protocol: Protocol,
    pub scheme: Scheme,
    pub authority: Authority,
    /// For `https://`: the TLS server name when it is not the URL's host.
    pub server_name: Option<Box<str>>,
    /// Its position among its rule's backends.
    pub slot: usize,
    /// The rule's `connections`; `None`: no cap, the pool's idle timeout.
    pub pooling: Option<std::sync::Arc<Pooling>>,
}

/// A rule's `connections` for one of its backends.
#[derive(Debug)]
pub struct Pooling {
    /// Places for requests in flight, shared by every worker and carried across snapshots
    /// while the cap stays the same; `None`: no cap.
    pub places: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// The cap, for errors.
    pub max: u32,
    /// How long a request waits for a place.
    pub queue_timeout: Duration,
    /// How long an unused connection is kept; `None`: the pool's default.
    pub idle_timeout: Option<Duration>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("backend `{url}`: {e}"))?;
        let (protocol, scheme) = match uri.scheme_str() {
            Some("http") => (Protocol::Http1, Scheme::HTTP),
            Some("h2c") => (Protocol::H2c, Scheme::HTTP),
            Some("https") => (Protocol::Https, Scheme::HTTPS),
            _ => {
                return Err(format!(
                    "backend `{url}`: scheme must be http, https or h2c"
                ));
            }
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty() && !a.as_str().contains('@'))
            .cloned()
            .ok_or_else(|| format!("backend `{url}`: needs a host and no credentials"))?;
        // A written port must be a real one: `http::Uri` keeps any text after the colon.
        let has_port = authority
            .as_str()
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.ends_with(']'));
        if has_port && authority.port_u16().is_none_or(|p| p == 0) {
            return Err(format!("backend `{url}`: invalid port"));
        }
        Ok(Self {
            url: url.into(),
            protocol,
            scheme,
            authority,
            server_name: None,
            slot: 0,
            pooling: None,
        })
    }
}

/// Which client speaks HTTP/1.1 to `http://` backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Http1Client {
    /// The inline client (`upstream/h1`): the request's own task writes and reads.
    #[default]
    Inline,
    /// hyper-util's pooled client, for comparison (`bench/`).
    Hyper,
}

/// Connection settings for upstreams.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub http1_client: Http1Client,
    /// CA certificates trusted for `https://` backends besides the web PKI roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            http1_client: Http1Client::Inline,
            extra_roots: Vec::new(),
        }
    }
}

/// The TLS client settings for `https://` backends: web PKI roots plus `extra_roots`.
/// Built once at start (it can fail on a bad CA certificate), then shared by all workers.
pub fn tls_config(options: &UpstreamOptions) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in &options.extra_roots {
        roots.add(certificate.clone())?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Why an upstream exchange failed, as far as the client is concerned.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unresolvable, TLS not trusted, timeout).
    #[error("{0}")]
    Unreachable(String),
    /// The connection broke or the upstream spoke nonsense.
    #[error("{0}")]
    Failed(String),
    #[error("request body exceeds the configured limit")]
    BodyTooLarge,
    /// Every place under the rule's `connections.max` stayed taken for its queue timeout:
    /// nothing was sent.
    #[error("all {max} connections to the backend stayed busy for {waited:?}")]
    Busy { max: u32, waited: Duration },
    /// The client's request body broke (malformed chunked framing, cut off): the client's
    /// fault, not the upstream's.
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
}
