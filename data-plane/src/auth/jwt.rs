//! JWT verification for one rule: several issuers, each with JWKS and/or static keys.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{AlgorithmFamily, Header, Validation};
use pavilion_proto as proto;
use serde_json::{Map, Value};

use super::Reject;
use super::jwks::{JwksCache, JwksEntry};
use super::keys::{self, VerifyKey};
use super::membership::Membership;

/// Longest token looked at; anything larger is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Keys tried for a token without `kid`.
const MAX_CANDIDATES: usize = 4;

pub struct Provider {
    issuer: Box<str>,
    /// One per algorithm family (jsonwebtoken wants a validation's algorithms to be of the
    /// key's family), built once: HMAC, RSA, EC, Ed.
    validations: [Validation; 4],
    static_keys: Vec<VerifyKey>,
    jwks: Option<Arc<JwksEntry>>,
    required_claims: Box<[Box<str>]>,
    pub claim_headers: Box<[(Box<str>, HeaderName)]>,
    pub cookie: Option<Box<str>>,
    pub leeway: u64,
    /// Where tokens state their tenants and platform roles.
    tenants_claim: Box<str>,
    roles_claim: Box<str>,
}

/// A verified token's facts.
pub struct Verified {
    pub subject: Box<str>,
    pub claims: Map<String, Value>,
    /// Unix seconds.
    pub expires_at: u64,
    pub leeway: u64,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub membership: Membership,
}

impl Provider {
    /// Reads static secrets (files, environment) now: a missing one refuses the snapshot.
    pub fn new(config: &proto::JwtProvider, jwks: &JwksCache) -> Result<Self, String> {
        let issuer = &config.issuer;
        let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        // A token without `exp` would be valid forever: refused. jsonwebtoken only checks
        // `aud` when the token has one, so with audiences it must be required too.
        if config.audiences.is_empty() {
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp", "iss"]);
        } else {
            validation.set_audience(&config.audiences);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        }
        validation.validate_nbf = true;
        validation.leeway = u64::from(config.leeway_seconds);

        let mut static_keys = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let kid = Some(key.kid.as_str()).filter(|k| !k.is_empty());
            let at = |e: String| format!("issuer {issuer}: keys[{i}]: {e}");
            let verify = match &key.source {
                Some(proto::v1::static_key::Source::PublicKeyPem(pem)) => {
                    keys::from_public_pem(kid, pem)
                }
                Some(proto::v1::static_key::Source::SecretFile(path)) => std::fs::read(path)
                    .map_err(|e| format!("cannot read the secret file {path}: {e}"))
                    .and_then(|secret| {
                        keys::from_secret(kid, trim_newline(&secret), &key.algorithm)
                    }),
                Some(proto::v1::static_key::Source::SecretEnv(name)) => std::env::var(name)
                    .map_err(|_| format!("the environment variable {name} is not set"))
                    .and_then(|secret| keys::from_secret(kid, secret.as_bytes(), &key.algorithm)),
                None => Err("no key source".into()),
            }
            .map_err(at)?;
            static_keys.push(verify);
        }
        let claim_headers = config
            .claims_to_headers
            .iter()
            .map(|m| {
                HeaderName::try_from(m.header.as_str())
                    .map(|h| (m.claim.as_str().into(), h))
                    .map_err(|_| format!("issuer {issuer}: `{}` is not a header name", m.header))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            issuer: issuer.as_str().into(),
            validations: [
                AlgorithmFamily::Hmac,
                AlgorithmFamily::Rsa,
                AlgorithmFamily::Ec,
                AlgorithmFamily::Ed,
            ]
            .map(|family| {
                let mut validation = validation.clone();
                validation.algorithms = keys::ALL
                    .iter()
                    .copied()
                    .filter(|a| a.family() == family)
                    .collect();
                validation
            }),
            static_keys,
            jwks: (!config.jwks_uri.is_empty()).then(|| jwks.entry(&config.jwks_uri)),
            required_claims: config
                .required_claims
                .iter()
                .map(|c| c.as_str().into())
                .collect(),
            claim_headers,
            cookie: Some(config.cookie.as_str())
                .filter(|c| !c.is_empty())
                .map(Into::into),
            leeway: u64::from(config.leeway_seconds),
            tenants_claim: or_default(&config.tenants_claim, "tenants"),
            roles_claim: or_default(&config.roles_claim, "roles"),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

fn or_default(name: &str, default: &str) -> Box<str> {
    if name.is_empty() { default } else { name }.into()
}

/// A file written by an editor usually ends in a newline that is not part of the secret.
fn trim_newline(secret: &[u8]) -> &[u8] {
    let secret = secret.strip_suffix(b"\n").unwrap_or(secret);
    secret.strip_suffix(b"\r").unwrap_or(secret)
}

#[derive(serde::Deserialize)]
struct Unverified {
    iss: Option<String>,
}

/// Verifies `token` against the provider named by its `iss`.
pub async fn verify(
    providers: &[Provider],
    token: &str,
    revoked: &HashSet<Box<str>>,
) -> Result<Verified, Reject> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Reject::invalid_token(format!(
            "the token is larger than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        Reject::invalid_token("the token is not a well-formed JWT with a supported alg")
    })?;
    // RFC 7515 §4.1.11: a recipient that does not understand every extension `crit`
    // names must refuse the token. The gateway implements none (and an empty list is
    // itself invalid).
    if let Some(critical) = &header.crit {
        return Err(Reject::invalid_token(format!(
            "the token requires header extensions the gateway does not implement (crit: [{}])",
            shorten(&critical.join(", "))
        )));
    }
    // Only to choose the issuer's keys; everything is checked again after the signature.
    let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| Reject::invalid_token("the token's claims are not readable"))?;
    let issuer = unverified.iss.unwrap_or_default();
    let provider = providers
        .iter()
        .find(|p| *p.issuer == *issuer)
        .ok_or_else(|| {
            Reject::invalid_token(format!(
                "the issuer `{}` is not accepted here",
                shorten(&issuer)
            ))
        })?;

    let mut result = try_keys(provider, &provider.static_keys, &header, token);
    if let Some(jwks) = &provider.jwks
        && result.is_err()
    {
        let mut from_jwks = try_keys(provider, &jwks.keys(), &header, token);
        if matches!(from_jwks, Err(KeyOutcome::NoKey)) && jwks.refetch_for_unknown_kid().await {
            from_jwks = try_keys(provider, &jwks.keys(), &header, token);
        }
        // The JWKS's answer counts unless it has no key at all and a static key had one.
        if !matches!(
            (&result, &from_jwks),
            (Err(KeyOutcome::Failed(_)), Err(KeyOutcome::NoKey))
        ) {
            result = from_jwks;
        }
    }
    let claims = match result {
        Ok(claims) => claims,
        Err(KeyOutcome::NoKey) => {
            return Err(Reject::invalid_token(match &header.kid {
                Some(kid) => format!("no key `{}` for issuer {issuer}", shorten(kid)),
                None => format!("no key of issuer {issuer} verifies the token"),
            }));
        }
        Err(KeyOutcome::Failed(reject)) => return Err(reject),
    };
    // jsonwebtoken does not look at `iat`; a token issued in the future (beyond the leeway)
    // comes from a clock or an issuer that cannot be trusted.
    match claims.get("iat") {
        None => {}
        Some(Value::Number(iat)) => {
            let now = super::unix_now() as f64;
            if iat
                .as_f64()
                .is_some_and(|iat| iat > now + provider.leeway as f64)
            {
                return Err(Reject::unauthorized(
                    "token_not_yet_valid",
                    "the token was issued in the future (iat)".into(),
                ));
            }
        }
        Some(_) => return Err(Reject::invalid_token("the token's iat is not a number")),
    }
    for claim in &provider.required_claims {
        if !claims.contains_key(&**claim) {
            return Err(Reject::invalid_token(format!(
                "the token lacks the required claim `{claim}`"
            )));
        }
    }
    if let Some(Value::String(jti)) = claims.get("jti")
        && revoked.contains(jti.as_str())
    {
        return Err(Reject::unauthorized(
            "token_revoked",
            "the token has been revoked".into(),
        ));
    }
    let mut headers = Vec::with_capacity(provider.claim_headers.len());
    for (claim, header) in &provider.claim_headers {
        if let Some(value) = claims.get(&**claim).and_then(claim_header_value) {
            headers.push((header.clone(), value));
        }
    }
    let membership =
        Membership::from_claims(&claims, &provider.tenants_claim, &provider.roles_claim);
    Ok(Verified {
        membership,
        subject: claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        leeway: provider.leeway,
        claims,
        headers,
    })
}

enum KeyOutcome {
    NoKey,
    Failed(Reject),
}

/// Tries the keys that could have signed the token: the one with its kid, or (no kid) a few
/// whose algorithms fit.
fn try_keys(
    provider: &Provider,
    keys: &[VerifyKey],
    header: &Header,
    token: &str,
) -> Result<Map<String, Value>, KeyOutcome> {
    // The key with the token's kid; else (no kid, or kid-less keys) a few keys whose
    // algorithms fit.
    let named = |key: &&VerifyKey| matches!((&key.kid, &header.kid), (Some(ours), Some(theirs)) if **ours == **theirs);
    let mut candidates: Vec<&VerifyKey> = keys.iter().filter(named).collect();
    if candidates.is_empty() {
        candidates = keys
            .iter()
            .filter(|key| key.kid.is_none() || header.kid.is_none())
            .filter(|key| key.algorithms.contains(&header.alg))
            .take(MAX_CANDIDATES)
            .collect();
    }
    if candidates.is_empty() {
        return Err(KeyOutcome::NoKey);
    }
    let mut last = None;
    for key in candidates {
        if !key.algorithms.contains(&header.alg) {
            last = Some(Reject::invalid_token(format!(
                "alg {:?} is not allowed for this key",
                header.alg
            )));
            continue;
        }
        let validation = &provider.validations[match key.key.family() {
            AlgorithmFamily::Hmac => 0,
            AlgorithmFamily::Rsa => 1,
            AlgorithmFamily::Ec => 2,
            AlgorithmFamily::Ed => 3,
        }];
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(error) => {
                let reject = classify(error.kind());
                // A bad signature may just be the wrong key of several; a claim problem is final.
                if !matches!(error.kind(), ErrorKind::InvalidSignature) {
                    return Err(KeyOutcome::Failed(reject));
                }
                last = Some(reject);
            }
        }
    }
    Err(KeyOutcome::Failed(last.unwrap_or_else(|| {
        Reject::invalid_token("the signature does not verify")
    })))
}

fn classify(kind: &ErrorKind) -> Reject {
    match kind {
        ErrorKind::ExpiredSignature => {
            Reject::unauthorized("token_expired", "the token has expired".into())
        }
        ErrorKind::ImmatureSignature => Reject::unauthorized(
            "token_not_yet_valid",
            "the token is not valid yet (nbf)".into(),
        ),
        ErrorKind::InvalidAudience => {
            Reject::invalid_token("the token's audience is not accepted here")
        }
        ErrorKind::InvalidIssuer => {
            Reject::invalid_token("the token's issuer is not accepted here")
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            Reject::invalid_token(format!("the token lacks the `{claim}` claim"))
        }
        ErrorKind::InvalidSignature => Reject::invalid_token("the signature does not verify"),
        ErrorKind::InvalidAlgorithm => {
            Reject::invalid_token("the token's alg does not fit its key")
        }
        _ => Reject::invalid_token("the token is invalid"),
    }
}

/// Strings as they are, other values as JSON; nothing that cannot be a header value.
fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    match value {
        Value::String(text) => HeaderValue::from_str(text).ok(),
        Value::Null => None,
        other => HeaderValue::from_str(&other.to_string()).ok(),
    }
}

/// Echoes client-chosen text into messages only in part.
fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    let mut shown: String = text.chars().filter(|c| !c.is_control()).take(MAX).collect();
    if text.chars().count() > MAX {
        shown.push('…');
    }
    shown
}
