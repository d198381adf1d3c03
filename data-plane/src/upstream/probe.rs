//! Active health checks: one task per checked backend asks `GET path` at the check's
//! interval through a pool of its own (the request path's pools stay the request path's),
//! and a 2xx within the timeout is a pass. A task starts when the first snapshot naming the
//! backend's check is installed and ends once no runtime holds that backend any more.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::{Request, Version, header};
use http_body_util::BodyExt;

use super::endpoint::Endpoint;
use super::{Protocol, Target, UpstreamOptions, Upstreams};
use crate::body::RequestBody;
use crate::runtime::{Runtime, Upstream};

static USER_AGENT: http::HeaderValue = http::HeaderValue::from_static("pavilion-health-check");

pub struct Prober {
    upstreams: Upstreams,
}

impl Prober {
    pub fn new(options: &UpstreamOptions, tls: rustls::ClientConfig) -> Arc<Self> {
        Arc::new(Self {
            upstreams: Upstreams::new(options, tls),
        })
    }

    /// Starts the checks of the endpoints of the routes `runtime` built (those it took over
    /// are checked already: their endpoints are the same).
    pub fn watch(self: &Arc<Self>, runtime: &Runtime) {
        for backends in runtime
            .fresh_rules()
            .filter_map(|rule| match &rule.upstream {
                Upstream::Backends(backends) => Some(backends),
                Upstream::Service(_) => None,
            })
        {
            for (target, endpoint) in backends.targets().iter().zip(backends.endpoints()) {
                if endpoint.check.is_some()
                    && !endpoint
                        .probing
                        .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    tokio::spawn(check(
                        self.clone(),
                        Arc::downgrade(endpoint),
                        target.clone(),
                    ));
                }
            }
        }
    }

    /// One check: a 2xx answer within the timeout.
    async fn passes(
        &self,
        target: &Target,
        path: &http::uri::PathAndQuery,
        timeout: std::time::Duration,
    ) -> bool {
        let uri = http::Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(path.clone())
            .build();
        let Ok(uri) = uri else { return false };
        let mut request = Request::new(RequestBody::full(Bytes::new()));
        *request.uri_mut() = uri;
        request
            .headers_mut()
            .insert(header::USER_AGENT, USER_AGENT.clone());
        if target.protocol == Protocol::H2c {
            *request.version_mut() = Version::HTTP_2;
        } else if let Ok(host) = http::HeaderValue::from_str(target.authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
        let exchange = async {
            let response = self.upstreams.send(target, request).await.ok()?;
            let ok = response.status().is_success();
            // Read the (small) body so the connection can be reused.
            response.into_body().collect().await.ok()?;
            Some(ok)
        };
        matches!(
            tokio::time::timeout(timeout, exchange).await,
            Ok(Some(true))
        )
    }
}

async fn check(prober: Arc<Prober>, endpoint: Weak<Endpoint>, target: Target) {
    // Spread the first checks of many backends over the interval.
    let first = match endpoint.upgrade().and_then(|e| e.check.clone()) {
        Some(check) => check.interval.mul_f64(fastrand::f64()),
        None => return,
    };
    tokio::time::sleep(first).await;
    loop {
        let Some(check) = endpoint.upgrade().and_then(|e| e.check.clone()) else {
            return;
        };
        let passed = prober.passes(&target, &check.path, check.timeout).await;
        match endpoint.upgrade() {
            Some(endpoint) => endpoint.probed(passed),
            None => return,
        }
        prober.upstreams.sweep();
        tokio::time::sleep(check.interval).await;
    }
}
