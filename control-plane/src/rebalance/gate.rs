//! The readiness gate: before a tenant moves to a shard, every endpoint of that shard is
//! asked whether it is ready for the tenant (`GET {endpoint}{readiness}?tenant=T&service=S`,
//! contract in API.md); the first endpoint that is not — or does not answer — stops the
//! move with its own reason.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pavilion_proto as proto;

/// How long one endpoint may take to answer.
const ASK_FOR: Duration = Duration::from_secs(3);
/// Largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Asks shards' endpoints; one per process, its connections pooled.
pub struct Gate {
    http1: Client<Https, Empty<Bytes>>,
    h2c: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Gate {
    fn default() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(ASK_FOR));
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone());
        Self {
            http1: Client::builder(TokioExecutor::new()).build(https),
            h2c: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(http),
        }
    }
}

impl Gate {
    /// `Err(reason)` naming the first endpoint that is not ready; `Ok` when every one is
    /// (or the shard has no gate).
    pub async fn ready(
        &self,
        shard: &proto::Shard,
        tenant: &str,
        service: &str,
    ) -> Result<(), String> {
        if shard.readiness.is_empty() {
            return Ok(());
        }
        for endpoint in &shard.endpoints {
            self.ask(endpoint, &shard.readiness, tenant, service)
                .await
                .map_err(|reason| format!("shard {} endpoint {endpoint}: {reason}", shard.name))?;
        }
        Ok(())
    }

    async fn ask(
        &self,
        endpoint: &str,
        path: &str,
        tenant: &str,
        service: &str,
    ) -> Result<(), String> {
        let (h2c, base) = match endpoint.strip_prefix("h2c://") {
            Some(rest) => (true, format!("http://{rest}")),
            None => (false, endpoint.to_owned()),
        };
        let uri: http::Uri = format!("{base}{path}?tenant={tenant}&service={service}")
            .parse()
            .map_err(|e| format!("not a URL: {e}"))?;
        let request = http::Request::get(uri)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = if h2c {
                self.h2c.request(request).await
            } else {
                self.http1.request(request).await
            }
            .map_err(|e| format!("no answer: {e}"))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("the answer broke off: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(ASK_FOR, exchange)
            .await
            .map_err(|_| format!("no answer within {ASK_FOR:?}"))??;
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            format!("answered {status} without the JSON {{\"ready\": …}} of the gate contract")
        })?;
        let reason = answer["reason"].as_str().unwrap_or("no reason given");
        match (status.as_u16(), answer["ready"].as_bool()) {
            (200, Some(true)) => Ok(()),
            (_, Some(true)) => Err(format!("answered {status} with ready: true")),
            _ => Err(reason.to_owned()),
        }
    }
}
