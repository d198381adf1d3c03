//! Upstreams: backend targets parsed once per snapshot, their balancing, health, circuit
//! and retries, and the pooled clients (HTTP/1.1, h2c, HTTPS) shared by every snapshot so
//! a reload keeps connections.

pub mod balance;
pub mod breaker;
pub mod endpoint;
pub mod h1;
pub mod probe;
pub mod retry;

pub use balance::Backends;

use std::time::Duration;

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;

use crate::body::{BodyError, RequestBody, ResponseBody};

/// How a backend is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC backends).
    H2c,
    /// HTTP/1.1 over TLS, verified against the web PKI plus `--upstream-ca`.
    Https,
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
        })
    }
}

/// Connection settings for upstreams.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// CA certificates trusted for `https://` backends besides the web PKI roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
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
    /// The client's request body broke (malformed chunked framing, cut off): the client's
    /// fault, not the upstream's.
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
}

/// Pooled clients, one per protocol. Each worker thread owns one set, so pools are never
/// shared between threads and their locks are never contended.
pub struct Upstreams {
    http1: Arc<h1::Client>,
    h2c: Client<HttpConnector, RequestBody>,
    https: HttpsClient,
    /// Clients for rules that name their backends' TLS server name, made on first use: each
    /// has its own pool, so a connection is only reused for the name it was verified for.
    https_named: std::sync::Mutex<std::collections::HashMap<Box<str>, HttpsClient>>,
    make_https: Box<MakeHttps>,
    /// HTTP/1.1 upgrades (WebSocket) to `http://` backends: hyper hands over the connection
    /// after a 101, which the inline client is not built for; `https://` upgrades use the
    /// HTTPS clients.
    http1_upgrades: Client<HttpConnector, RequestBody>,
}

/// Makes an HTTPS client, for a fixed TLS server name when one is given.
type MakeHttps = dyn Fn(Option<&str>) -> HttpsClient + Send + Sync;

type HttpsClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

impl Upstreams {
    pub fn new(options: &UpstreamOptions, tls: rustls::ClientConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let builder = || {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(options.idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            builder
        };
        let mut tls_transport = connector.clone();
        tls_transport.enforce_http(false);
        let idle_timeout = options.idle_timeout;
        let make_https = move |server_name: Option<&str>| -> HttpsClient {
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_only();
            let builder = match server_name
                .and_then(|n| rustls_pki_types::ServerName::try_from(n.to_owned()).ok())
            {
                Some(name) => builder
                    .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
                None => builder,
            };
            let mut client = Client::builder(TokioExecutor::new());
            client
                .pool_idle_timeout(idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            client.build(builder.enable_http1().wrap_connector(tls_transport.clone()))
        };
        Self {
            http1: h1::Client::new(options.connect_timeout, options.idle_timeout),
            h2c: builder().http2_only(true).build(connector.clone()),
            http1_upgrades: builder().build(connector),
            https: make_https(None),
            https_named: Default::default(),
            make_https: Box::new(make_https),
        }
    }

    /// Closes idle pooled connections past their idle timeout (the hyper-based pools do
    /// this themselves).
    pub fn sweep(&self) {
        self.http1.sweep();
    }

    /// Sends `request` (its URI already names the target) and returns the response head.
    pub async fn send(
        &self,
        target: &Target,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        match target.protocol {
            Protocol::Http1 => match self.http1.send(&target.authority, request).await {
                Ok(response) => Ok(response.map(ResponseBody::H1)),
                Err(h1::Error::BodyTooLarge) => Err(UpstreamError::BodyTooLarge),
                Err(h1::Error::ClientBody(error)) => {
                    Err(UpstreamError::ClientBody(error.to_string()))
                }
                Err(error @ h1::Error::Connect(_)) => {
                    Err(UpstreamError::Unreachable(error.to_string()))
                }
                Err(error) => Err(UpstreamError::Failed(error.to_string())),
            },
            Protocol::H2c => from_hyper(self.h2c.request(request).await),
            Protocol::Https => from_hyper(self.https(target).request(request).await),
        }
    }

    /// Sends an HTTP/1.1 upgrade request; after a 101 the response's extensions hold the
    /// upstream connection (`hyper::upgrade::on`).
    pub async fn upgrade(
        &self,
        target: &Target,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        match target.protocol {
            Protocol::Http1 => from_hyper(self.http1_upgrades.request(request).await),
            Protocol::Https => from_hyper(self.https(target).request(request).await),
            Protocol::H2c => Err(UpstreamError::Failed(format!(
                "backend `{}` speaks HTTP/2 only; WebSocket tunnels need HTTP/1.1",
                target.url
            ))),
        }
    }

    /// The HTTPS client for the target's TLS server name.
    fn https(&self, target: &Target) -> HttpsClient {
        match &target.server_name {
            None => self.https.clone(),
            Some(name) => {
                let mut clients = self.https_named.lock().unwrap_or_else(|p| p.into_inner());
                clients
                    .entry(name.clone())
                    .or_insert_with(|| (self.make_https)(Some(name)))
                    .clone()
            }
        }
    }
}

fn from_hyper(
    result: Result<Response<Incoming>, hyper_util::client::legacy::Error>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let error = match result {
        Ok(response) => return Ok(response.map(ResponseBody::Upstream)),
        Err(error) => error,
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut text = String::new();
    while let Some(e) = source {
        match e.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge) => return Err(UpstreamError::BodyTooLarge),
            Some(BodyError::Client(error)) => {
                return Err(UpstreamError::ClientBody(error.to_string()));
            }
            None => {}
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&e.to_string());
        source = e.source();
    }
    Err(if error.is_connect() {
        UpstreamError::Unreachable(text)
    } else {
        UpstreamError::Failed(text)
    })
}
