//! The identity phase: requests for the identity API (`/v1/auth/*`, `/.well-known/*`) are
//! answered by the gateway itself, after admission (size limits, path normalisation) and
//! before routing — no route can shadow or proxy them while the service is enabled.

use http::{Request, Response};

use super::Context;
use crate::body::{RequestBody, ResponseBody};
use crate::identity::Identity;

pub(super) async fn serve(
    identity: &Identity,
    request: Request<RequestBody>,
    context: &mut Context<'_>,
) -> Response<ResponseBody> {
    crate::identity::api::serve(identity, request, &context.request_id).await
}
