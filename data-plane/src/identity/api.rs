//! The identity API over HTTP: `POST /v1/auth/{signup,signin,refresh,signout,forgot,reset}` (JSON in,
//! JSON out, errors in the gateway's envelope with the request id) and the discovery
//! documents `/.well-known/jwks.json` and `/.well-known/openid-configuration`. Requests
//! must be `application/json`: a cross-site form cannot send that without a CORS
//! preflight, so no flow can be driven from another origin's page (CSRF).

use bytes::Bytes;
use std::net::IpAddr;

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Identity;
use super::flows::FlowError;
use super::mfa::SignIn;
use crate::body::{RequestBody, ResponseBody};
use crate::deny::error_response;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const AUDIT_PATH: &str = "/admin/audit";
const IAM_PREFIX: &str = "/admin/iam/";
pub const OPENAPI_PATH: &str = "/v1/auth/openapi.json";

/// The OpenAPI 3.1 document of every endpoint here (checked against this router by
/// `tests/it/identity.rs`).
const OPENAPI: &str = include_str!("openapi.json");
const PREFIX: &str = "/v1/auth/";

/// Largest request body of the identity API.
const MAX_BODY: u64 = 16 * 1024;

/// Whether the identity service answers `path` (when it is enabled).
pub fn owns(path: &str) -> bool {
    path.starts_with(PREFIX)
        || path.starts_with(IAM_PREFIX)
        || path == JWKS_PATH
        || path == DISCOVERY_PATH
        || path == AUDIT_PATH
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct MfaRequest {
    mfa_token: String,
    code: String,
}

#[derive(Deserialize)]
struct CodeRequest {
    code: String,
}

#[derive(Deserialize)]
struct ForgotRequest {
    email: String,
}

#[derive(Deserialize)]
struct ResetRequest {
    token: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Deserialize)]
struct SignoutRequest {
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    all: bool,
}

/// A refusal of the identity API.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// For 405: the method the endpoint answers.
    allow: Option<&'static str>,
    /// For 429: when to try again, in seconds.
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }
}

impl From<FlowError> for Refusal {
    fn from(error: FlowError) -> Self {
        let (status, code) = match &error {
            FlowError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            FlowError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            FlowError::InvalidGrant => (StatusCode::UNAUTHORIZED, "invalid_grant"),
            FlowError::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            FlowError::InvalidResetToken => (StatusCode::BAD_REQUEST, "invalid_token"),
            FlowError::InvalidCode => (StatusCode::UNAUTHORIZED, "invalid_code"),
            FlowError::InvalidClient => (StatusCode::UNAUTHORIZED, "invalid_client"),
            FlowError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            FlowError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            FlowError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            FlowError::Unavailable(why) => {
                tracing::error!(error = %why, "identity service failure");
                (StatusCode::SERVICE_UNAVAILABLE, "identity_unavailable")
            }
        };
        let message = match error {
            // The cause is logged, not told.
            FlowError::Unavailable(_) => {
                "the identity service is unavailable; retry shortly".into()
            }
            other => other.to_string(),
        };
        Refusal::new(status, code, message)
    }
}

impl From<crate::ratelimit::Refusal> for Refusal {
    fn from(refusal: crate::ratelimit::Refusal) -> Self {
        match refusal {
            crate::ratelimit::Refusal::Limited {
                message,
                retry_after_secs,
                ..
            }
            | crate::ratelimit::Refusal::QuotaExceeded {
                message,
                retry_after_secs,
            } => Refusal {
                retry_after: Some(retry_after_secs.max(1)),
                ..Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_attempts",
                    format!("too many attempts; retry later ({message})"),
                )
            },
            crate::ratelimit::Refusal::Unavailable { message } => Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "identity_unavailable",
                message,
            ),
        }
    }
}

/// Who asks: what the abuse limits count, and the request id.
pub struct Caller<'a> {
    pub limiter: &'a crate::ratelimit::Limiter,
    pub client: IpAddr,
    pub request_id: &'a HeaderValue,
}

/// Answers one identity request.
pub async fn serve(
    identity: &Identity,
    request: Request<RequestBody>,
    caller: Caller<'_>,
) -> Response<ResponseBody> {
    let request_id = caller.request_id;
    let id = request_id.to_str().unwrap_or_default().to_owned();
    match super::audit::REQUEST_ID
        .scope(id, route(identity, request, &caller))
        .await
    {
        Ok(response) => response,
        Err(refusal) => {
            let mut response =
                error_response(refusal.status, refusal.code, &refusal.message, request_id);
            if refusal.status == StatusCode::UNAUTHORIZED && refusal.code == "invalid_token" {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            if let Some(seconds) = refusal.retry_after {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            if let Some(allow) = refusal.allow {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            response
        }
    }
}

async fn route(
    identity: &Identity,
    request: Request<RequestBody>,
    caller: &Caller<'_>,
) -> Result<Response<ResponseBody>, Refusal> {
    let path = request.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(IAM_PREFIX) {
        return iam(identity, request, rest).await;
    }
    if path == AUDIT_PATH {
        if request.method() != Method::GET {
            return Err(not_allowed("GET"));
        }
        return audit_page(identity, &request).await;
    }
    if path == OPENAPI_PATH {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err(not_allowed("GET"));
        }
        let mut response = Response::new(ResponseBody::local(OPENAPI));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        return Ok(response);
    }
    if path == JWKS_PATH || path == DISCOVERY_PATH {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err(not_allowed("GET"));
        }
        return if path == JWKS_PATH {
            let jwks = identity
                .keys()
                .jwks()
                .await
                .map_err(|e| Refusal::from(FlowError::Unavailable(e.to_string())))?;
            // Short: a verifier meeting a new key id refetches anyway.
            Ok(json(StatusCode::OK, &jwks, "public, max-age=60"))
        } else {
            Ok(json(
                StatusCode::OK,
                &discovery(identity),
                "public, max-age=3600",
            ))
        };
    }
    let operation = &path[PREFIX.len()..];
    if operation == "token" {
        if request.method() != Method::POST {
            return Err(not_allowed("POST"));
        }
        admit(identity, caller, "identity/token", None).await?;
        return client_credentials(identity, request).await;
    }
    if let Some(rest) = operation.strip_prefix("oidc/") {
        return oidc(identity, request, rest, caller).await;
    }
    if let Some(provider) = operation.strip_prefix("identities/") {
        if request.method() != Method::DELETE {
            return Err(not_allowed("DELETE"));
        }
        let bearer = bearer_token(&request).ok_or(FlowError::InvalidToken)?;
        identity.oidc_unlink(&bearer, provider).await?;
        return Ok(no_content());
    }
    if !matches!(
        operation,
        "signup"
            | "signin"
            | "refresh"
            | "signout"
            | "forgot"
            | "reset"
            | "mfa"
            | "mfa/totp/start"
            | "mfa/totp/confirm"
    ) {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no identity endpoint {path}"),
        ));
    }
    if request.method() != Method::POST {
        return Err(not_allowed("POST"));
    }
    let bearer = bearer_token(&request);
    let body = read_json_body(request).await?;
    match operation {
        "signup" => {
            let credentials: Credentials = parse(&body)?;
            admit(identity, caller, "identity/signup", None).await?;
            identity
                .signup(&credentials.email, &credentials.password)
                .await?;
            Ok(json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "status": "created" }),
                "no-store",
            ))
        }
        "signin" => {
            let credentials: Credentials = parse(&body)?;
            let account = super::flows::account_key(&credentials.email);
            admit(identity, caller, "identity/signin", Some(&account)).await?;
            let outcome = identity
                .signin(&credentials.email, &credentials.password)
                .await;
            match &outcome {
                Err(FlowError::InvalidCredentials) => {
                    // The same for unknown and known addresses: the key is the address.
                    tokio::time::sleep(identity.guard().failed(&account).await).await;
                }
                Ok(_) => identity.guard().succeeded(&account).await,
                Err(_) => {}
            }
            match outcome? {
                SignIn::Tokens(tokens) => Ok(json(StatusCode::OK, &tokens, "no-store")),
                SignIn::MfaRequired { mfa_token } => Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "mfa_required": true, "mfa_token": mfa_token }),
                    "no-store",
                )),
            }
        }
        "mfa" => {
            let mfa: MfaRequest = parse(&body)?;
            let account = super::mfa::account_of(&mfa.mfa_token);
            admit(identity, caller, "identity/mfa", account.as_deref()).await?;
            let tokens = identity.mfa_signin(&mfa.mfa_token, &mfa.code).await?;
            Ok(json(StatusCode::OK, &tokens, "no-store"))
        }
        "mfa/totp/start" => {
            let bearer = bearer.ok_or(FlowError::InvalidToken)?;
            let enrolment = identity.totp_start(&bearer).await?;
            Ok(json(StatusCode::OK, &enrolment, "no-store"))
        }
        "mfa/totp/confirm" => {
            let bearer = bearer.ok_or(FlowError::InvalidToken)?;
            let confirm: CodeRequest = parse(&body)?;
            let codes = identity.totp_confirm(&bearer, &confirm.code).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "recovery_codes": codes }),
                "no-store",
            ))
        }
        "forgot" => {
            let forgot: ForgotRequest = parse(&body)?;
            let account = super::flows::account_key(&forgot.email);
            admit(identity, caller, "identity/forgot", Some(&account)).await?;
            identity.forgot(&forgot.email).await?;
            Ok(json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "status": "accepted" }),
                "no-store",
            ))
        }
        "reset" => {
            let reset: ResetRequest = parse(&body)?;
            admit(identity, caller, "identity/reset", None).await?;
            identity.reset(&reset.token, &reset.password).await?;
            Ok(no_content())
        }
        "refresh" => {
            let refresh: RefreshRequest = parse(&body)?;
            let tokens = identity.refresh(&refresh.refresh_token).await?;
            Ok(json(StatusCode::OK, &tokens, "no-store"))
        }
        _ => {
            let signout: SignoutRequest = parse(&body)?;
            match (signout.all, signout.refresh_token) {
                (true, _) => {
                    let bearer = bearer.ok_or(FlowError::InvalidToken)?;
                    identity.signout_everywhere(&bearer).await?;
                }
                (false, Some(token)) => identity.signout(&token).await?,
                (false, None) => {
                    return Err(FlowError::InvalidRequest(
                        "give `refresh_token`, or `all: true` with a bearer token".into(),
                    )
                    .into());
                }
            }
            Ok(no_content())
        }
    }
}

fn no_content() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Local(None));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// `GET /admin/audit?actor=&action=&target=&tenant=&since=&until=&after=&limit=`: platform
/// administrators see every record; a tenant's administrators (`tenant-admin` there) see
/// that tenant's, asking with `tenant=`.
async fn audit_page<B>(
    identity: &Identity,
    request: &Request<B>,
) -> Result<Response<ResponseBody>, Refusal> {
    let bearer = bearer_token(request).ok_or(FlowError::InvalidToken)?;
    let claims = identity.verify_access(&bearer).await?;
    let filter: super::audit::Filter =
        serde_urlencoded::from_str(request.uri().query().unwrap_or_default()).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("the query does not fit: {e}"),
            )
        })?;
    let platform = claims
        .roles
        .iter()
        .any(|r| r == crate::auth::membership::PLATFORM_ADMIN);
    let tenant_admin = filter.tenant.as_ref().is_some_and(|t| {
        claims
            .tenants
            .get(t)
            .is_some_and(|roles| roles.iter().any(|r| r == "tenant-admin"))
    });
    if !platform && !tenant_admin {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the audit trail is for platform administrators, or a tenant's administrators with tenant=",
        ));
    }
    let (records, next) = super::audit::list(identity.store(), &filter)
        .await
        .map_err(|e| Refusal::from(FlowError::from(e)))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "records": records, "next": next }),
        "no-store",
    ))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
    /// Users: only the members of this tenant.
    tenant: Option<String>,
}

#[derive(Deserialize, Default)]
struct RightSpec {
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct PasswordRequest {
    password: String,
}

#[derive(Deserialize)]
struct DecideRequest {
    user: String,
    tenant: String,
    action: String,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
}

/// The IAM administration API (`/admin/iam/…`); see `identity::iam` for who may do what.
async fn iam(
    identity: &Identity,
    request: Request<RequestBody>,
    rest: &str,
) -> Result<Response<ResponseBody>, Refusal> {
    let bearer = bearer_token(&request).ok_or(FlowError::InvalidToken)?;
    let admin = identity.admin(&bearer).await?;
    let method = request.method().clone();
    let parts: Vec<&str> = rest.split('/').collect();
    let done = Ok(no_content());
    match (&method, parts.as_slice()) {
        (&Method::GET, ["users"]) => {
            let page: Page = serde_urlencoded::from_str(request.uri().query().unwrap_or_default())
                .map_err(|e| FlowError::InvalidRequest(format!("the query does not fit: {e}")))?;
            let (users, next) = identity
                .list_users(
                    &admin,
                    page.tenant.as_deref(),
                    page.after.as_deref(),
                    page.limit.unwrap_or(100),
                )
                .await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "users": users, "next": next }),
                "no-store",
            ))
        }
        (&Method::POST, ["users"]) => {
            let new: super::iam::NewUser = parse(&read_json_body(request).await?)?;
            let user = identity.create_user(&admin, new).await?;
            Ok(json(StatusCode::CREATED, &user, "no-store"))
        }
        (&Method::PATCH, ["users", id]) => {
            let id = (*id).to_owned();
            let change: super::iam::UserChange = parse(&read_json_body(request).await?)?;
            Ok(json(
                StatusCode::OK,
                &identity.update_user(&admin, &id, change).await?,
                "no-store",
            ))
        }
        (&Method::PUT, ["users", id, "password"]) => {
            let id = (*id).to_owned();
            let body: PasswordRequest = parse(&read_json_body(request).await?)?;
            identity.set_password(&admin, &id, body.password).await?;
            done
        }
        (&Method::DELETE, ["users", id, "password"]) => {
            identity.remove_password(&admin, id).await?;
            done
        }
        (&Method::DELETE, ["users", id, "identities", provider]) => {
            identity.admin_unlink(&admin, id, provider).await?;
            done
        }
        (&Method::DELETE, ["users", id, "sessions"]) => {
            identity.revoke_sessions(&admin, id).await?;
            done
        }
        (&Method::DELETE, ["users", id, "recovery-codes"]) => {
            identity.revoke_recovery_codes(&admin, id).await?;
            done
        }
        (&Method::GET, ["users", id]) => Ok(json(
            StatusCode::OK,
            &identity.get_user(&admin, id).await?,
            "no-store",
        )),
        (&Method::DELETE, ["users", id]) => {
            identity.delete_user(&admin, id).await?;
            done
        }
        (&Method::POST, ["users", id, "disable"]) => {
            identity.set_enabled(&admin, id, false).await?;
            done
        }
        (&Method::POST, ["users", id, "enable"]) => {
            identity.set_enabled(&admin, id, true).await?;
            done
        }
        (&Method::POST, ["users", id, "unlock"]) => {
            identity.unlock(&admin, id).await?;
            done
        }
        (&Method::DELETE, ["users", id, "mfa"]) => {
            identity.reset_mfa(&admin, id).await?;
            done
        }
        (&Method::PUT | &Method::DELETE, ["users", id, "tenants", tenant, "roles", role]) => {
            let assign = method == Method::PUT;
            identity
                .assignment(&admin, id, tenant, role, assign)
                .await?;
            done
        }
        (&Method::GET, ["rights" | "roles"]) => {
            let (rights, roles) = identity.list_catalogue(&admin).await?;
            let body = if parts[0] == "rights" {
                serde_json::json!({ "rights": rights })
            } else {
                serde_json::json!({ "roles": roles })
            };
            Ok(json(StatusCode::OK, &body, "no-store"))
        }
        (&Method::PUT, ["rights", name]) => {
            let name = (*name).to_owned();
            let spec: RightSpec = parse(&read_json_body(request).await?)?;
            identity.put_right(&admin, &name, spec.description).await?;
            done
        }
        (&Method::PUT, ["roles", name]) => {
            let name = (*name).to_owned();
            let spec: super::iam::RoleSpec = parse(&read_json_body(request).await?)?;
            identity.put_role(&admin, &name, spec).await?;
            done
        }
        (&Method::DELETE, ["rights", name]) => {
            identity.delete_entry(&admin, "right", name).await?;
            done
        }
        (&Method::DELETE, ["roles", name]) => {
            identity.delete_entry(&admin, "role", name).await?;
            done
        }
        (&Method::POST, ["service-accounts"]) => {
            let new: super::clients::NewServiceAccount = parse(&read_json_body(request).await?)?;
            let credentials = identity.create_service_account(&admin, new).await?;
            Ok(json(StatusCode::CREATED, &credentials, "no-store"))
        }
        (&Method::GET, ["service-accounts"]) => {
            let accounts = identity.list_service_accounts(&admin).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "service_accounts": accounts }),
                "no-store",
            ))
        }
        (&Method::POST, ["service-accounts", id, action @ ("disable" | "enable")]) => {
            let enabled = *action == "enable";
            identity
                .set_service_account_enabled(&admin, id, enabled)
                .await?;
            done
        }
        (&Method::POST, ["service-accounts", id, "secret"]) => {
            let credentials = identity.rotate_secret(&admin, id).await?;
            Ok(json(StatusCode::OK, &credentials, "no-store"))
        }
        (
            &Method::PUT | &Method::DELETE,
            ["service-accounts", id, "tenants", tenant, "roles", role],
        ) => {
            let assign = method == Method::PUT;
            identity
                .service_account_role(&admin, id, tenant, role, assign)
                .await?;
            done
        }
        (&Method::GET, ["users", id, "identities"]) => {
            let linked = identity.identities_of(&admin, id).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "identities": linked }),
                "no-store",
            ))
        }
        (&Method::DELETE, ["service-accounts", id]) => {
            identity.delete_service_account(&admin, id).await?;
            done
        }
        (&Method::POST, ["api-keys"]) => {
            let new: super::api_keys::NewKey = parse(&read_json_body(request).await?)?;
            let created = identity.create_api_key(&admin, new).await?;
            Ok(json(StatusCode::CREATED, &created, "no-store"))
        }
        (&Method::GET, ["api-keys"]) => {
            let keys = identity.list_api_keys(&admin).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "api_keys": keys }),
                "no-store",
            ))
        }
        (&Method::DELETE, ["api-keys", id]) => {
            identity.revoke_api_key(&admin, id).await?;
            done
        }
        (&Method::POST, ["decide"]) => {
            let ask: DecideRequest = parse(&read_json_body(request).await?)?;
            admin.require_tenant(&ask.tenant)?;
            let decision = identity
                .decide(&ask.user, &ask.tenant, &ask.action, &ask.attributes)
                .await?;
            Ok(json(StatusCode::OK, &decision, "no-store"))
        }
        _ => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no IAM endpoint {method} {IAM_PREFIX}{rest}"),
        )),
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// `POST /v1/auth/token`: the client-credentials grant (RFC 6749 §4.4), the client
/// authenticated by HTTP Basic or by `client_id` and `client_secret` in the form.
async fn client_credentials(
    identity: &Identity,
    mut request: Request<RequestBody>,
) -> Result<Response<ResponseBody>, Refusal> {
    let form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the token request as application/x-www-form-urlencoded",
        ));
    }
    let basic = basic_credentials(&request);
    request.body_mut().limit_to(MAX_BODY);
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|_| FlowError::InvalidRequest("the request body is cut off or too large".into()))?
        .to_bytes();
    let ask: TokenRequest = serde_urlencoded::from_bytes(&body)
        .map_err(|e| FlowError::InvalidRequest(format!("the form does not fit: {e}")))?;
    if ask.grant_type != "client_credentials" {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "this endpoint grants client_credentials only (users sign in at /v1/auth/signin)",
        ));
    }
    let (id, secret) = match (basic, ask.client_id, ask.client_secret) {
        (Some(pair), _, _) => pair,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => return Err(FlowError::InvalidClient.into()),
    };
    let token = identity.client_credentials(&id, &secret).await?;
    Ok(json(StatusCode::OK, &token, "no-store"))
}

/// `Authorization: Basic base64(id:secret)`.
fn basic_credentials<B>(request: &Request<B>) -> Option<(String, String)> {
    use base64::Engine;
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `POST /v1/auth/oidc/{provider}/start` (with a bearer token: link to that account) and
/// `GET /v1/auth/oidc/{provider}/callback?code=&state=`.
async fn oidc(
    identity: &Identity,
    request: Request<RequestBody>,
    rest: &str,
    caller: &Caller<'_>,
) -> Result<Response<ResponseBody>, Refusal> {
    let no_endpoint = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no identity endpoint {PREFIX}oidc/{rest}"),
        )
    };
    let (provider, step) = rest.split_once('/').ok_or_else(no_endpoint)?;
    match step {
        "start" => {
            if request.method() != Method::POST {
                return Err(not_allowed("POST"));
            }
            admit(identity, caller, "identity/oidc", None).await?;
            let link_user = match bearer_token(&request) {
                Some(bearer) => Some(identity.verify_access(&bearer).await?.sub),
                None => None,
            };
            let url = identity.oidc_start(provider, link_user).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "authorization_url": url }),
                "no-store",
            ))
        }
        "callback" => {
            if request.method() != Method::GET {
                return Err(not_allowed("GET"));
            }
            admit(identity, caller, "identity/oidc", None).await?;
            let callback: Callback = serde_urlencoded::from_str(
                request.uri().query().unwrap_or_default(),
            )
            .map_err(|e| FlowError::InvalidRequest(format!("the query does not fit: {e}")))?;
            if let Some(error) = callback.error {
                return Err(
                    FlowError::InvalidRequest(format!("the provider refused: {error}")).into(),
                );
            }
            let (Some(code), Some(state)) = (callback.code, callback.state) else {
                return Err(
                    FlowError::InvalidRequest("the callback needs code and state".into()).into(),
                );
            };
            let bearer = bearer_token(&request);
            match identity
                .oidc_callback(provider, &code, &state, bearer.as_deref())
                .await?
            {
                SignIn::Tokens(tokens) => Ok(json(StatusCode::OK, &tokens, "no-store")),
                SignIn::MfaRequired { mfa_token } => Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "mfa_required": true, "mfa_token": mfa_token }),
                    "no-store",
                )),
            }
        }
        _ => Err(no_endpoint()),
    }
}

/// Counts an attempt against the abuse limits.
async fn admit(
    identity: &Identity,
    caller: &Caller<'_>,
    operation: &str,
    account: Option<&str>,
) -> Result<(), Refusal> {
    identity
        .guard()
        .admit(caller.limiter, caller.client, operation, account)
        .await
        .map_err(Refusal::from)
}

fn not_allowed(allow: &'static str) -> Refusal {
    Refusal {
        allow: Some(allow),
        ..Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this endpoint answers {allow} only"),
        )
    }
}

fn bearer_token<B>(request: &Request<B>) -> Option<String> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

async fn read_json_body(mut request: Request<RequestBody>) -> Result<Bytes, Refusal> {
    let json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the request as Content-Type: application/json",
        ));
    }
    request.body_mut().limit_to(MAX_BODY);
    let body = request.into_body().collect().await.map_err(|_| {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is cut off or larger than {MAX_BODY} bytes"),
        )
    })?;
    Ok(body.to_bytes())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the JSON body does not fit this endpoint: {e}"),
        )
    })
}

fn json(
    status: StatusCode,
    value: &impl serde::Serialize,
    cache: &'static str,
) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).expect("JSON values always serialize");
    let mut response = Response::new(ResponseBody::local(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// The OpenID Provider metadata a verifier needs: who issues, where the keys are.
fn discovery(identity: &Identity) -> serde_json::Value {
    let issuer = &identity.config().issuer;
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "token_endpoint": format!("{issuer}{PREFIX}signin"),
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "jti", "sid", "email", "tenants", "roles"],
    })
}
