//! What a request uses up before it goes upstream: a place under the rule's concurrency
//! limit (taken first, so a request shed here does not spend its quota), then its quotas
//! (requests and bytes per period).

use http::Request;

use crate::deny::Deny;
use crate::ratelimit;
use crate::runtime::Rule;

use super::{Context, Shared};

pub(super) async fn take<'r, B>(
    shared: &Shared,
    rule: &'r Rule,
    request: &Request<B>,
    context: &mut Context<'r>,
) -> Result<(), Deny> {
    if let Some(concurrency) = &rule.concurrency {
        let permit = concurrency.acquire().map_err(|limit| {
            shared
                .metrics
                .concurrency_shed
                .with_label_values(&[&*concurrency.policy])
                .inc();
            Deny::Overloaded {
                message: format!(
                    "route {}: {limit} requests are in flight to the upstream, the concurrency limit of policy {}",
                    rule.route, concurrency.policy
                ),
            }
        })?;
        context.permit = Some(permit);
    }
    if rule.quotas.is_empty() {
        return Ok(());
    }
    let facts = ratelimit::Facts {
        client_ip: context.client_ip,
        identity: context.identity.as_deref(),
        headers: request.headers(),
        route: &rule.route,
    };
    context.byte_targets = shared
        .limiter
        .take_quotas(&rule.quotas, &facts)
        .await
        .map_err(|refusal| Deny::from_refusal(refusal, rule))?;
    Ok(())
}
