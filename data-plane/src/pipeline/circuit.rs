//! The circuit breaker's say, before anything is spent on the request: an open circuit
//! answers 503 `circuit_open` at once; otherwise the admission travels in the context and
//! is settled with the upstream's verdict.

use crate::deny::Deny;
use crate::runtime::Rule;

use super::Context;

pub(super) fn admit<'r>(rule: &'r Rule, context: &mut Context<'r>) -> Result<(), Deny> {
    let Some(breaker) = &rule.breaker else {
        return Ok(());
    };
    match breaker.admit() {
        Ok(ticket) => {
            context.circuit = Some(ticket);
            Ok(())
        }
        Err(retry_after) => Err(Deny::CircuitOpen {
            route: rule.route.to_string(),
            retry_after,
        }),
    }
}
