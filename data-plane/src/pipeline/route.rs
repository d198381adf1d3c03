//! Which rule serves the request: the snapshot's matcher over the normalised host and path
//! (precedence in [`crate::route`]); no rule is a 404 naming method and path.

use http::Request;

use crate::deny::Deny;
use crate::route::RequestFacts;
use crate::runtime::{Rule, Runtime};

use super::Context;
use super::admit::Admitted;

pub(super) fn find<'r, B>(
    runtime: &'r Runtime,
    admitted: &Admitted<'_>,
    request: &Request<B>,
    context: &mut Context<'r>,
) -> Result<&'r Rule, Deny> {
    let facts = RequestFacts {
        host: admitted.host.as_deref(),
        path: admitted.path.key(),
        method: request.method(),
        headers: request.headers(),
    };
    // A CORS preflight asks about another method: the rule that would serve that method
    // answers it when a CorsPolicy reaches it (one without a policy leaves the OPTIONS
    // request to ordinary routing). When no rule serves that method but one of this host
    // and path has a policy, the preflight is refused — a policy never approves a method
    // for a rule it does not reach.
    if let Some(asked) = super::cors::preflight_method(request) {
        let preflight = RequestFacts {
            method: &asked,
            ..facts
        };
        match runtime.find(&preflight) {
            Some(rule) if rule.cors.is_some() => {
                context.rule = Some(rule);
                return Ok(rule);
            }
            Some(_) => {}
            None => {
                let policy = runtime
                    .candidates(&preflight)
                    .into_iter()
                    .find_map(|(rule, _)| rule.cors.as_deref());
                if let Some(policy) = policy {
                    return Err(Deny::Forbidden {
                        code: "cors_forbidden",
                        message: format!(
                            "CorsPolicy {}: no rule serves {asked} {}",
                            policy.policy, admitted.path.path
                        ),
                    });
                }
            }
        }
    }
    let rule = runtime.find(&facts).ok_or_else(|| Deny::NotFound {
        method: request.method().clone(),
        path: admitted.path.path.to_string(),
    })?;
    context.rule = Some(rule);
    Ok(rule)
}
