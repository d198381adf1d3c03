//! The identity phase: requests for the identity API (`/v1/auth/*`, `/.well-known/*`) are
//! answered by the gateway itself, after admission (size limits, path normalisation) and
//! before routing — no route can shadow or proxy them while the service is enabled.

use http::{Request, Response};

use super::{Context, Shared};
use crate::body::{RequestBody, ResponseBody};
use crate::identity::Identity;

pub(super) async fn serve(
    identity: &Identity,
    shared: &Shared,
    request: Request<RequestBody>,
    context: &mut Context<'_>,
) -> Response<ResponseBody> {
    // The abuse limits count the client as the IP lists see it (trusted proxies believed).
    let peer = context.client.addr.ip();
    let client = crate::auth::ip::client_ip(peer, request.headers(), &shared.trusted_proxies)
        .unwrap_or(peer);
    let caller = crate::identity::api::Caller {
        limiter: &shared.limiter,
        client,
        request_id: &context.request_id,
    };
    crate::identity::api::serve(identity, request, caller).await
}
