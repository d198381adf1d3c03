//! CORS, right after routing (so every later refusal carries the CORS headers a browser
//! needs to show it, and preflights — which carry no credentials — never meet
//! authentication): a preflight to a rule with a CorsPolicy is answered here, 204 with the
//! policy's answer or 403 `cors_forbidden` naming the policy; an actual request notes its
//! `Origin` for the response.

use http::header::{ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN};
use http::{Method, Request, Response, StatusCode};

use crate::body::ResponseBody;
use crate::deny::Deny;
use crate::runtime::Rule;

use super::Context;

/// The method a CORS preflight asks about: `OPTIONS` with `Origin` and a valid
/// `Access-Control-Request-Method`.
pub(super) fn preflight_method<B>(request: &Request<B>) -> Option<Method> {
    if request.method() != Method::OPTIONS || !request.headers().contains_key(ORIGIN) {
        return None;
    }
    let method = request.headers().get(ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(method.as_bytes()).ok()
}

/// Answers a preflight (`Ok(Some(response))`), refuses it, or lets the request go on.
pub(super) fn check<'r, B>(
    rule: &'r Rule,
    request: &Request<B>,
    context: &mut Context<'r>,
) -> Result<Option<Response<ResponseBody>>, Deny> {
    let Some(cors) = &rule.cors else {
        return Ok(None);
    };
    let headers = request.headers();
    let Some(method) = preflight_method(request) else {
        context.cors = Some(headers.get(ORIGIN).cloned());
        return Ok(None);
    };
    let origin = headers.get(ORIGIN).expect("a preflight has an Origin");
    match cors.preflight(origin, &method, headers.get(ACCESS_CONTROL_REQUEST_HEADERS)) {
        Ok(answer) => {
            let mut response = Response::new(ResponseBody::local(bytes::Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.headers_mut() = answer;
            Ok(Some(response))
        }
        Err(refusal) => Err(Deny::Forbidden {
            code: "cors_forbidden",
            message: format!("CorsPolicy {}: {refusal}", cors.policy),
        }),
    }
}
