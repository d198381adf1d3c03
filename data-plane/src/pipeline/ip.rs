//! Who the client is at the IP level, decided once (the peer, or what trusted proxies say
//! in `X-Forwarded-For`) when the rule needs it, and the rule's IP allow/deny lists.

use http::Request;

use crate::auth::ip::{self, Cidrs};
use crate::deny::Deny;
use crate::runtime::Rule;

use super::Context;

pub(super) fn check<B>(
    rule: &Rule,
    request: &Request<B>,
    trusted_proxies: &Cidrs,
    context: &mut Context<'_>,
) -> Result<(), Deny> {
    let needed = rule.ip.is_some()
        || !rule.limits_before_auth.is_empty()
        || !rule.limits_after_auth.is_empty()
        || !rule.quotas.is_empty()
        || matches!(&rule.upstream, crate::runtime::Upstream::Backends(b)
            if *b.policy() == crate::upstream::balance::Policy::ConsistentHash(crate::upstream::balance::HashOn::ClientIp));
    if needed {
        context.client_ip =
            ip::client_ip(context.client.addr.ip(), request.headers(), trusted_proxies);
    }
    match &rule.ip {
        None => Ok(()),
        Some(lists) => lists
            .check(context.client_ip)
            .map_err(|why| Deny::Forbidden {
                code: "ip_denied",
                message: format!("route {}: {why}", rule.route),
            }),
    }
}
