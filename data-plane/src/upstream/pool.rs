//! The one pool abstraction for every upstream protocol: a request goes to the client of
//! its target's protocol — the inline HTTP/1.1 client (measured faster than hyper-util's in
//! `bench/`; `--upstream-http1 hyper` switches to hyper-util's for comparison), hyper-util's
//! HTTP/2 client for `h2c://`, hyper-util over rustls for `https://` (HTTP/1.1, or h2 by
//! ALPN) — each pooling its connections per worker, closing them after the idle timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{Http1Client, Protocol, Target, UpstreamError, UpstreamOptions, h1};
use crate::body::{BodyError, RequestBody, ResponseBody};

/// Pooled clients, one per protocol. Each worker thread owns one set, so pools are never
/// shared between threads and their locks are never contended.
pub struct Upstreams {
    http1: Arc<h1::Client>,
    h2c: PlainClient,
    https: HttpsClient,
    /// Clients for rules that name their backends' TLS server name or their own idle
    /// timeout, made on first use: each has its own pool, so a connection is only reused
    /// for the name it was verified for.
    https_custom: Mutex<HashMap<HttpsKey, HttpsClient>>,
    /// `https://` with h2 offered by ALPN.
    https_alpn: HttpsClient,
    make_https: Box<MakeHttps>,
    /// hyper-util clients for `h2c://` (true) or `http://` (false) backends of rules with
    /// their own idle timeout.
    plain_custom: Mutex<HashMap<(bool, Duration), PlainClient>>,
    make_plain: Box<MakePlain>,
    /// The idle timeout of rules that set none.
    idle_timeout: Duration,
    /// hyper-util's HTTP/1.1 client for `http://` backends: upgrades (WebSocket: hyper hands
    /// over the connection after a 101, which the inline client is not built for), and all
    /// requests with `--upstream-http1 hyper`.
    http1_hyper: PlainClient,
    http1_client: Http1Client,
}

/// Makes an HTTPS client, for a fixed TLS server name when one is given, offering h2 by
/// ALPN or HTTP/1.1 only, closing connections idle for the given time.
type MakeHttps = dyn Fn(Option<&str>, bool, Duration) -> HttpsClient + Send + Sync;

/// Makes a cleartext client, HTTP/2 only or HTTP/1.1, with the given idle timeout.
type MakePlain = dyn Fn(bool, Duration) -> PlainClient + Send + Sync;

type PlainClient = Client<HttpConnector, RequestBody>;

type HttpsClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// What a custom HTTPS client is made for: TLS server name, h2 offered, idle timeout.
type HttpsKey = (Option<Box<str>>, bool, Option<Duration>);

impl Upstreams {
    pub fn new(options: &UpstreamOptions, tls: rustls::ClientConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client_builder = |idle: Duration| {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(idle)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            builder
        };
        let mut tls_transport = connector.clone();
        tls_transport.enforce_http(false);
        let idle_timeout = options.idle_timeout;
        let make_plain = {
            let connector = connector.clone();
            move |h2: bool, idle: Duration| -> PlainClient {
                client_builder(idle).http2_only(h2).build(connector.clone())
            }
        };
        let make_https =
            move |server_name: Option<&str>, h2: bool, idle: Duration| -> HttpsClient {
                let builder = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_only();
                let builder = match server_name
                    .and_then(|n| rustls_pki_types::ServerName::try_from(n.to_owned()).ok())
                {
                    Some(name) => builder.with_server_name_resolver(
                        hyper_rustls::FixedServerNameResolver::new(name),
                    ),
                    None => builder,
                };
                let client = client_builder(idle);
                if h2 {
                    client.build(
                        builder
                            .enable_all_versions()
                            .wrap_connector(tls_transport.clone()),
                    )
                } else {
                    client.build(builder.enable_http1().wrap_connector(tls_transport.clone()))
                }
            };
        Self {
            http1: h1::Client::new(options.connect_timeout, options.idle_timeout),
            h2c: make_plain(true, idle_timeout),
            http1_hyper: make_plain(false, idle_timeout),
            http1_client: options.http1_client,
            https: make_https(None, false, idle_timeout),
            https_alpn: make_https(None, true, idle_timeout),
            https_custom: Default::default(),
            make_https: Box::new(make_https),
            plain_custom: Default::default(),
            make_plain: Box::new(make_plain),
            idle_timeout,
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
        let idle = target.pooling.as_ref().and_then(|p| p.idle_timeout);
        match target.protocol {
            Protocol::Http1 if self.http1_client == Http1Client::Hyper => {
                from_hyper(self.plain(false, idle, request).await)
            }
            Protocol::Http1 => match self.http1.send(&target.authority, idle, request).await {
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
            Protocol::H2c => from_hyper(self.plain(true, idle, request).await),
            Protocol::Https => from_hyper(self.https(target, false, request).await),
            Protocol::HttpsAlpn => from_hyper(self.https(target, true, request).await),
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
            Protocol::Http1 => from_hyper(self.plain(false, None, request).await),
            // Upgrades are HTTP/1.1's: never offer h2 for them.
            Protocol::Https | Protocol::HttpsAlpn => {
                from_hyper(self.https(target, false, request).await)
            }
            Protocol::H2c => Err(UpstreamError::Failed(format!(
                "backend `{}` speaks HTTP/2 only; WebSocket tunnels need HTTP/1.1",
                target.url
            ))),
        }
    }

    /// Sends through the HTTPS client for the target's TLS server name, offering h2 by ALPN
    /// or not (the returned future owns what it needs: no client is cloned, no lock held).
    fn https(
        &self,
        target: &Target,
        h2: bool,
        request: Request<RequestBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        let idle = target.pooling.as_ref().and_then(|p| p.idle_timeout);
        match (&target.server_name, h2, idle) {
            (None, false, None) => self.https.request(request),
            (None, true, None) => self.https_alpn.request(request),
            (name, h2, idle) => {
                let mut clients = self.https_custom.lock().unwrap_or_else(|p| p.into_inner());
                clients
                    .entry((name.clone(), h2, idle))
                    .or_insert_with(|| {
                        (self.make_https)(name.as_deref(), h2, idle.unwrap_or(self.idle_timeout))
                    })
                    .request(request)
            }
        }
    }

    /// Sends through hyper-util's cleartext client, HTTP/2 only (`h2c://`) or HTTP/1.1,
    /// with the rule's idle timeout when it has one.
    fn plain(
        &self,
        h2: bool,
        idle: Option<Duration>,
        request: Request<RequestBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        match (h2, idle) {
            (true, None) => self.h2c.request(request),
            (false, None) => self.http1_hyper.request(request),
            (h2, Some(idle)) => {
                let mut clients = self.plain_custom.lock().unwrap_or_else(|p| p.into_inner());
                clients
                    .entry((h2, idle))
                    .or_insert_with(|| (self.make_plain)(h2, idle))
                    .request(request)
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
