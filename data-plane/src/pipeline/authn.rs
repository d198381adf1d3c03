//! Authentication and the rule's access list: who the client proved to be (a JWT of one of
//! the rule's issuers, or an API key of the route's namespace), on rules with `auth`.

use http::Request;

use crate::auth::TokenCache;
use crate::deny::Deny;
use crate::runtime::{Rule, Runtime};

use super::Context;
use super::admit::Admitted;

pub(super) async fn authenticate<B>(
    rule: &Rule,
    request: &Request<B>,
    admitted: &Admitted<'_>,
    tokens: &TokenCache,
    runtime: &Runtime,
    context: &mut Context<'_>,
) -> Result<(), Deny> {
    let Some(auth) = &rule.auth else {
        return Ok(());
    };
    let identity = auth
        .authenticate(
            request.headers(),
            request.method(),
            admitted.path.key(),
            tokens,
            runtime.generation,
        )
        .await
        .map_err(|reject| Deny::from_reject(reject, auth))?;
    context.identity = Some(identity);
    Ok(())
}
