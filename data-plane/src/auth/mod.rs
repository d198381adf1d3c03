//! Authentication and access control on a rule: who the client is (a JWT from one of the
//! rule's issuers, or an API key of the route's namespace) and whether that identity may
//! use the rule. IP lists live in [`ip`] and are checked before any of this.
//!
//! Verified tokens are remembered per worker (no lock shared between workers) for at most
//! a minute and never past their `exp`, so a client reusing its token costs one hash-map
//! lookup instead of a signature check. A new snapshot starts a fresh cache, which is how
//! revocations and key changes take effect at once.

pub mod api_key;
pub mod ip;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod membership;
pub mod pattern;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pavilion_proto as proto;
use serde_json::{Map, Value};
use tokio::time::Instant;

use self::api_key::ApiKeys;
use self::jwks::JwksCache;
use self::membership::Membership;
use self::pattern::Patterns;

/// Forwarded upstream: the API key's id (never the key) or the token's subject.
pub static X_AUTH_KEY_ID: HeaderName = HeaderName::from_static("x-auth-key-id");
pub static X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Longest a verified token is remembered.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Tokens remembered per worker; the cache starts over when full.
const CACHE_ENTRIES: usize = 8192;

/// Why authentication or access control refused a request. Each kind answers with its own
/// status and challenge, so no caller needs to look at the code to know which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// 401 for a request without credentials: the rule's plain challenges.
    Missing { message: String },
    /// 401 for credentials that were refused: the challenges say `error="invalid_token"`.
    Refused { code: &'static str, message: String },
    /// 403: the identity is known and has no right here.
    Forbidden { code: &'static str, message: String },
}

impl Reject {
    pub fn unauthorized(code: &'static str, message: String) -> Self {
        Reject::Refused { code, message }
    }

    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self::unauthorized("invalid_token", message.into())
    }

    pub fn forbidden(code: &'static str, message: String) -> Self {
        Reject::Forbidden { code, message }
    }

    /// The error code of the JSON envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::Missing { .. } => "missing_credentials",
            Reject::Refused { code, .. } | Reject::Forbidden { code, .. } => code,
        }
    }

    pub fn into_message(self) -> String {
        match self {
            Reject::Missing { message }
            | Reject::Refused { message, .. }
            | Reject::Forbidden { message, .. } => message,
        }
    }
}

/// Who the client proved to be.
#[derive(Debug)]
pub struct Identity {
    pub principal: Principal,
    /// Added to the upstream request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A JWT's claims (empty for API keys), for rate-limit keys.
    pub claims: Map<String, Value>,
    /// The tenants it acts for and its roles there.
    pub membership: Arc<Membership>,
}

#[derive(Debug)]
pub enum Principal {
    Subject(Box<str>),
    Key(Box<str>),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Subject(subject) => write!(f, "sub:{subject}"),
            Principal::Key(id) => write!(f, "key:{id}"),
        }
    }
}

/// Shared by every snapshot build: the JWKS documents in use.
#[derive(Clone)]
pub struct AuthContext {
    pub jwks: Arc<JwksCache>,
    /// API keys the identity service issued (looked up when the snapshot has none).
    pub issued_keys: Option<Arc<api_key::IssuedKeys>>,
}

/// The snapshot-wide tables rules refer to.
#[derive(Default)]
pub struct Credentials {
    pub api_keys: Arc<ApiKeys>,
    revoked: HashMap<Box<str>, Arc<HashSet<Box<str>>>>,
}

impl Credentials {
    /// From a snapshot's API keys and revoked token ids.
    pub fn from_parts(
        api_keys: &[proto::ApiKey],
        revocations: &[proto::TokenRevocations],
    ) -> Result<Self, String> {
        Ok(Self {
            api_keys: Arc::new(ApiKeys::new(api_keys)?),
            revoked: revocations
                .iter()
                .map(|r| {
                    (
                        r.namespace.as_str().into(),
                        Arc::new(r.jtis.iter().map(|j| j.as_str().into()).collect()),
                    )
                })
                .collect(),
        })
    }

    fn revoked(&self, namespace: &str) -> Arc<HashSet<Box<str>>> {
        self.revoked.get(namespace).cloned().unwrap_or_default()
    }
}

/// The access list of a rule.
struct Allow {
    key_ids: Patterns,
    subjects: Patterns,
    claims: Box<[(Box<str>, Patterns)]>,
}

impl Allow {
    fn new(allow: &proto::Allow) -> Self {
        Self {
            key_ids: Patterns::new(&allow.key_ids),
            subjects: Patterns::new(&allow.subjects),
            claims: allow
                .claims
                .iter()
                .map(|c| (c.name.as_str().into(), Patterns::new(&c.values)))
                .collect(),
        }
    }

    /// `Err` says which entry refused.
    fn check_claims(&self, subject: &str, claims: &Map<String, Value>) -> Result<(), String> {
        if !self.subjects.allows(subject) {
            return Err(format!("subject `{subject}` is not allowed"));
        }
        for (name, patterns) in &self.claims {
            let allowed = match claims.get(&**name) {
                Some(Value::String(text)) => patterns.allows(text),
                Some(Value::Array(items)) => items.iter().any(|item| match item {
                    Value::String(text) => patterns.allows(text),
                    other => patterns.allows(&other.to_string()),
                }),
                Some(Value::Null) | None => false,
                Some(other) => patterns.allows(&other.to_string()),
            };
            if !allowed {
                return Err(format!("claim `{name}` does not have an allowed value"));
            }
        }
        Ok(())
    }
}

/// How a rule authenticates and authorises.
pub struct RuleAuth {
    route: Box<str>,
    namespace: Box<str>,
    providers: Box<[jwt::Provider]>,
    /// Scopes every key must hold here; `None`: API keys are not accepted.
    key_scopes: Option<u8>,
    allow: Option<Allow>,
    keys: Arc<ApiKeys>,
    /// Keys the identity service issued, tried when the snapshot does not know the key.
    issued: Option<Arc<api_key::IssuedKeys>>,
    revoked: Arc<HashSet<Box<str>>>,
    /// `WWW-Authenticate` when credentials are missing, and when a token was refused.
    challenge: Box<[HeaderValue]>,
    token_challenge: Box<[HeaderValue]>,
}

/// The credential a request carries.
enum Credential<'a> {
    Jwt(&'a str),
    ApiKey(&'a str),
}

impl RuleAuth {
    pub fn new(
        route: &str,
        namespace: &str,
        auth: &proto::Auth,
        credentials: &Credentials,
        context: &AuthContext,
    ) -> Result<Self, String> {
        let providers: Box<[jwt::Provider]> = auth
            .jwt
            .iter()
            .map(|p| jwt::Provider::new(p, &context.jwks))
            .collect::<Result<_, _>>()?;
        let key_scopes = auth
            .api_keys
            .as_ref()
            .map(|k| api_key::scope_bits(&k.scopes))
            .transpose()?;
        if providers.is_empty() && key_scopes.is_none() {
            return Err("auth accepts neither JWTs nor API keys".into());
        }
        let mut challenge = Vec::new();
        let mut token_challenge = Vec::new();
        if !providers.is_empty() {
            challenge.push(HeaderValue::from_static(r#"Bearer realm="pavilion""#));
            token_challenge.push(HeaderValue::from_static(
                r#"Bearer realm="pavilion", error="invalid_token""#,
            ));
        }
        if key_scopes.is_some() {
            let value = HeaderValue::from_static(r#"ApiKey realm="pavilion", header="X-API-Key""#);
            challenge.push(value.clone());
            token_challenge.push(value);
        }
        Ok(Self {
            route: route.into(),
            namespace: namespace.into(),
            providers,
            key_scopes,
            allow: auth.allow.as_ref().map(Allow::new),
            keys: credentials.api_keys.clone(),
            issued: context.issued_keys.clone(),
            revoked: credentials.revoked(namespace),
            challenge: challenge.into(),
            token_challenge: token_challenge.into(),
        })
    }

    /// What goes into `WWW-Authenticate` for a 401 (nothing for a 403).
    pub fn challenges(&self, reject: &Reject) -> &[HeaderValue] {
        match reject {
            Reject::Missing { .. } => &self.challenge,
            Reject::Refused { .. } => &self.token_challenge,
            Reject::Forbidden { .. } => &[],
        }
    }

    /// Decides who the client is and whether it may pass.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        cache: &TokenCache,
        generation: u64,
    ) -> Result<Arc<Identity>, Reject> {
        let credential = self.credential(headers)?.ok_or_else(|| self.missing())?;
        match credential {
            Credential::ApiKey(presented) => self.api_key(presented, method, path).map(Arc::new),
            Credential::Jwt(token) => {
                let slot = (generation, self as *const Self as usize);
                if let Some(identity) = cache.get(slot, token) {
                    return Ok(identity);
                }
                // Boxed: verification (perhaps with a JWKS fetch) is rare next to cache hits,
                // and its future would make every request's larger.
                let verified = Box::pin(jwt::verify(&self.providers, token, &self.revoked)).await?;
                if let Some(allow) = &self.allow {
                    allow
                        .check_claims(&verified.subject, &verified.claims)
                        .map_err(|why| self.forbidden(why))?;
                }
                let mut headers = verified.headers;
                if !verified.subject.is_empty()
                    && let Ok(subject) = HeaderValue::from_str(&verified.subject)
                {
                    headers.push((X_AUTH_SUBJECT.clone(), subject));
                }
                let identity = Arc::new(Identity {
                    principal: Principal::Subject(verified.subject),
                    headers,
                    claims: verified.claims,
                    membership: Arc::new(verified.membership),
                });
                let remaining = verified
                    .expires_at
                    .saturating_add(verified.leeway)
                    .saturating_sub(unix_now());
                cache.put(
                    slot,
                    token,
                    identity.clone(),
                    CACHE_FOR.min(Duration::from_secs(remaining)),
                );
                Ok(identity)
            }
        }
    }

    /// Takes out the credentials and forged identity headers, puts in the identity.
    pub fn decorate(&self, headers: &mut HeaderMap, identity: &Identity) {
        // The upstream gets the key's id, never a key.
        if self.key_scopes.is_some() {
            headers.remove(&X_API_KEY);
        }
        if matches!(identity.principal, Principal::Key(_)) {
            headers.remove(AUTHORIZATION);
        }
        for (name, value) in &identity.headers {
            headers.append(name, value.clone());
        }
    }

    /// The claim headers this rule fills in (every route strips them from clients).
    pub fn claim_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.providers
            .iter()
            .flat_map(|p| p.claim_headers.iter().map(|(_, header)| header))
    }

    fn missing(&self) -> Reject {
        let accepted = match (self.providers.is_empty(), self.key_scopes.is_some()) {
            (false, true) => "a bearer JWT or an API key",
            (false, false) => "a bearer JWT",
            _ => "an API key (X-API-Key or Authorization: Bearer)",
        };
        Reject::Missing {
            message: format!("route {} requires {accepted}", self.route),
        }
    }

    fn forbidden(&self, why: String) -> Reject {
        Reject::forbidden("forbidden", format!("route {}: {why}", self.route))
    }

    fn credential<'h>(&self, headers: &'h HeaderMap) -> Result<Option<Credential<'h>>, Reject> {
        // Two credentials of one kind: the gateway would check one and the upstream might
        // read the other. Refused instead.
        if let Some(value) = only(headers, &AUTHORIZATION)
            .map_err(|()| Reject::invalid_token("more than one Authorization header"))?
        {
            let token = bearer(value).ok_or_else(|| {
                Reject::invalid_token("the Authorization header is not `Bearer <token>`")
            })?;
            return Ok(Some(
                if self.key_scopes.is_some()
                    && (self.providers.is_empty() || !looks_like_jwt(token))
                {
                    Credential::ApiKey(token)
                } else {
                    Credential::Jwt(token)
                },
            ));
        }
        if self.key_scopes.is_some() {
            let invalid = |message: &str| Reject::unauthorized("invalid_api_key", message.into());
            if let Some(value) =
                only(headers, &X_API_KEY).map_err(|()| invalid("more than one X-API-Key header"))?
            {
                let key = value
                    .to_str()
                    .map_err(|_| invalid("the API key is not valid"))?;
                return Ok(Some(Credential::ApiKey(key)));
            }
        }
        for name in self.providers.iter().filter_map(|p| p.cookie.as_deref()) {
            let mut found = cookies(headers, name);
            if let Some(token) = found.next() {
                if found.next().is_some() {
                    return Err(Reject::invalid_token(format!(
                        "the cookie `{name}` appears more than once"
                    )));
                }
                return Ok(Some(Credential::Jwt(token)));
            }
        }
        Ok(None)
    }

    fn api_key(&self, presented: &str, method: &Method, path: &str) -> Result<Identity, Reject> {
        let invalid = || Reject::unauthorized("invalid_api_key", "the API key is not valid".into());
        let required = self.key_scopes.ok_or_else(invalid)? | api_key::implied_scopes(method, path);
        // A key of another namespace is as unknown here as a made-up one.
        let issued;
        let key = match self
            .keys
            .find(presented)
            .filter(|k| *k.namespace == *self.namespace)
        {
            Some(key) => key,
            None => {
                issued = self
                    .issued
                    .as_ref()
                    .and_then(|keys| keys.find(presented))
                    .filter(|k| *k.namespace == *self.namespace)
                    .ok_or_else(invalid)?;
                &issued
            }
        };
        if key.expires_at != 0 && key.expires_at <= unix_now() as i64 {
            return Err(Reject::unauthorized(
                "key_expired",
                format!("API key {} has expired", key.id),
            ));
        }
        if key.scopes & required != required {
            let missing = api_key::scope_names(required & !key.scopes);
            return Err(Reject::forbidden(
                "insufficient_scope",
                format!(
                    "route {}: API key {} lacks the scope {missing} for {method} {}",
                    self.route,
                    key.id,
                    shorten_path(path)
                ),
            ));
        }
        if let Some(allow) = &self.allow
            && !allow.key_ids.allows(&key.id)
        {
            return Err(self.forbidden(format!("API key {} is not allowed", key.id)));
        }
        let mut headers = Vec::with_capacity(1);
        if let Ok(id) = HeaderValue::from_str(&key.id) {
            headers.push((X_AUTH_KEY_ID.clone(), id));
        }
        Ok(Identity {
            principal: Principal::Key(key.id.clone()),
            headers,
            claims: Map::new(),
            membership: key.membership.clone(),
        })
    }
}

fn shorten_path(path: &str) -> &str {
    let end = path.char_indices().nth(100).map_or(path.len(), |(i, _)| i);
    &path[..end]
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The one value of `name`; `Err` when there are several.
fn only<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        _ => Err(()),
    }
}

/// The non-empty values of cookie `name`, across every `Cookie` header.
fn cookies<'h, 'n>(
    headers: &'h HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'h str> + use<'h, 'n> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            pair.trim()
                .split_once('=')
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.trim_matches('"'))
        })
        .filter(|v| !v.is_empty())
}

/// Verified tokens of one worker.
pub struct TokenCache {
    inner: Mutex<Entries>,
    hasher: foldhash::fast::FixedState,
}

#[derive(Default)]
struct Entries {
    tokens: HashMap<u64, Cached, foldhash::fast::FixedState>,
    /// The newest runtime generation cached for: entries of older ones are never looked up
    /// again (the key names the generation), so they go when a newer one arrives — kept
    /// until the cache filled, they made memory creep with every snapshot (the soak).
    generation: u64,
}

struct Cached {
    slot: (u64, usize),
    token: Box<str>,
    identity: Arc<Identity>,
    until: Instant,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
        }
    }
}

impl TokenCache {
    fn get(&self, slot: (u64, usize), token: &str) -> Option<Arc<Identity>> {
        let hash = self.hasher.hash_one((slot, token));
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .tokens
            .get(&hash)
            .filter(|c| c.slot == slot && *c.token == *token && c.until > Instant::now())
            .map(|c| c.identity.clone())
    }

    fn put(&self, slot: (u64, usize), token: &str, identity: Arc<Identity>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let hash = self.hasher.hash_one((slot, token));
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let generation = slot.0;
        if generation < inner.generation {
            // A request still finishing on a replaced runtime: nobody asks for this again.
            return;
        }
        if generation > inner.generation {
            inner.generation = generation;
            inner
                .tokens
                .retain(|_, c| c.slot.0 == generation && c.until > now);
        }
        if inner.tokens.len() >= CACHE_ENTRIES {
            // Bounded whatever clients send: expired entries first, else everything.
            inner.tokens.retain(|_, c| c.until > now);
            if inner.tokens.len() >= CACHE_ENTRIES {
                inner.tokens.clear();
            }
        }
        inner.tokens.insert(
            hash,
            Cached {
                slot,
                token: token.into(),
                identity,
                until: now + ttl,
            },
        );
    }

    /// Tokens held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tokens
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(subject: &str) -> Arc<Identity> {
        Arc::new(Identity {
            principal: Principal::Subject(subject.into()),
            headers: Vec::new(),
            claims: Map::new(),
            membership: Arc::default(),
        })
    }

    #[test]
    fn tokens_of_a_replaced_runtime_leave_the_cache() {
        let cache = TokenCache::default();
        let ttl = Duration::from_secs(60);
        let (rule, other_rule) = (1, 2);
        cache.put((1, rule), "a", identity("a"), ttl);
        cache.put((1, other_rule), "b", identity("b"), ttl);
        assert_eq!(cache.len(), 2);
        assert!(cache.get((1, rule), "a").is_some());

        // The next snapshot's runtime: what the old one verified goes.
        cache.put((2, rule), "a", identity("a"), ttl);
        assert_eq!(cache.len(), 1);
        assert!(cache.get((1, other_rule), "b").is_none());
        assert!(cache.get((2, rule), "a").is_some());

        // A request finishing on the old runtime caches nothing.
        cache.put((1, rule), "c", identity("c"), ttl);
        assert_eq!(cache.len(), 1);
        // Expired entries go first when the cache is full.
        cache.put((2, rule), "gone", identity("gone"), Duration::from_nanos(1));
        for n in 0..CACHE_ENTRIES - 2 {
            cache.put((2, rule), &format!("t{n}"), identity("t"), ttl);
        }
        assert_eq!(cache.len(), CACHE_ENTRIES);
        cache.put((2, rule), "last", identity("last"), ttl);
        assert_eq!(cache.len(), CACHE_ENTRIES, "the expired entry made room");
        assert!(cache.get((2, rule), "a").is_some());
    }
}
