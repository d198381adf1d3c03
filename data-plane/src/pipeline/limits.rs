//! Rate limits: run twice, first with the limits keyed by request facts alone (before
//! authentication, so unauthenticated floods are cheap to refuse), then with those keyed by
//! the identity. The tightest limit's `RateLimit-*` headers go on the response.

use http::Request;

use crate::deny::Deny;
use crate::ratelimit::{self, Limiter, RuleLimits};
use crate::runtime::Rule;

use super::Context;

pub(super) async fn check<B>(
    limiter: &Limiter,
    limits: &RuleLimits,
    rule: &Rule,
    request: &Request<B>,
    context: &mut Context<'_>,
) -> Result<(), Deny> {
    if limits.is_empty() {
        return Ok(());
    }
    let facts = ratelimit::Facts {
        client_ip: context.client_ip,
        identity: context.identity.as_deref(),
        headers: request.headers(),
        route: &rule.route,
    };
    match limiter.check(limits, &facts).await {
        Ok(headers) => {
            if !headers.is_empty() {
                context.rate_headers = headers;
            }
            Ok(())
        }
        Err(refusal) => Err(Deny::from_refusal(refusal, rule)),
    }
}
