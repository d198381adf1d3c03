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
    let rule = runtime.find(&facts).ok_or_else(|| Deny::NotFound {
        method: request.method().clone(),
        path: admitted.path.path.to_string(),
    })?;
    context.rule = Some(rule);
    Ok(rule)
}
