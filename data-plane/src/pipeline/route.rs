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
    // answers it when a CorsPolicy reaches it; failing that, the first rule of this host
    // and path with a policy (which then refuses the method, by name).
    if let Some(asked) = super::cors::preflight_method(request) {
        let preflight = RequestFacts {
            method: &asked,
            ..facts
        };
        let rule = runtime
            .find(&preflight)
            .filter(|r| r.cors.is_some())
            .or_else(|| {
                runtime
                    .candidates(&preflight)
                    .into_iter()
                    .map(|(rule, _)| rule)
                    .find(|rule| rule.cors.is_some())
            });
        if let Some(rule) = rule {
            context.rule = Some(rule);
            return Ok(rule);
        }
    }
    let rule = runtime.find(&facts).ok_or_else(|| Deny::NotFound {
        method: request.method().clone(),
        path: admitted.path.path.to_string(),
    })?;
    context.rule = Some(rule);
    Ok(rule)
}
