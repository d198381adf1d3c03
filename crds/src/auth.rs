//! Authentication on a route rule: which credentials it accepts (JWTs from named issuers,
//! API keys of the route's namespace) and whom it then lets in. The data plane enforces
//! it; here are the fields and their validation.

use std::collections::HashSet;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::validate::{Errors, at};

/// Clock skew allowed on `exp`/`nbf`/`iat` when a provider sets no `leeway`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Upper bound of `leeway`: more would keep expired tokens alive for too long.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// The scopes an API key can hold (and a rule can require).
pub const SCOPES: [&str; 3] = ["read", "write", "admin"];
/// HMAC algorithms of static secrets; the first is the default.
pub const HMAC_ALGORITHMS: [&str; 3] = ["HS256", "HS384", "HS512"];

/// Credentials a rule requires. Present: a request without valid credentials gets 401.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    /// Accept a JWT from any of these issuers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtProvider>,
    /// Accept an API key (an `ApiKey` of the route's namespace) holding these scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeyAuth>,
    /// Who may pass once authenticated; absent: everyone authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Allow>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtProvider {
    /// Matched exactly against the token's `iss`.
    pub issuer: String,
    /// Where the issuer publishes its signing keys (http or https). Required unless `keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The token's `aud` must contain one of these; empty: `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Signing keys given here instead of (or besides) the JWKS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<StaticKey>,
    /// Claims every token must carry (any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// Claim values forwarded upstream as request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimHeader>,
    /// Also read the token from this cookie when there is no `Authorization` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`/`iat`, e.g. `30s` (the default); at most `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<String>,
    /// The claim naming the principal's tenants: a list of tenant ids, or a map from
    /// tenant id to the roles held there. Default `tenants`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants_claim: Option<String>,
    /// The claim listing the principal's platform roles (`platform-admin` may act on any
    /// tenant). Default `roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
}

/// One signing key: a public key in PEM, or an HMAC secret the data plane reads from a
/// file or an environment variable (secrets never travel in resources or snapshots).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticKey {
    /// Matched against the token's `kid`; absent: any token of this issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// RSA, EC (P-256, P-384) or Ed25519 public key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// Absolute path of a file holding an HMAC secret (e.g. a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// Environment variable holding an HMAC secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// For secrets only: `HS256` (default), `HS384` or `HS512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimHeader {
    /// A top-level claim of the token.
    pub claim: String,
    /// The request header it is sent in (case-insensitive).
    pub header: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyAuth {
    /// Scopes the key must hold besides the one the request implies: `read`, `write`, `admin`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// Patterns: `*` matches any run of characters; anything else matches exactly.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Allow {
    /// API keys whose id matches one of these; empty: any key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ids: Vec<String>,
    /// JWTs whose `sub` matches one of these; empty: any subject.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// JWTs carrying every one of these claims with a matching value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimAllow>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimAllow {
    pub name: String,
    /// The claim must match one of these patterns.
    pub values: Vec<String>,
}

/// Headers a claim may not be forwarded in: they steer routing, framing or connection
/// handling, or carry the client's own credentials or the gateway's forwarding facts.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-request-id",
    "forwarded",
];

impl Auth {
    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        if self.jwt.is_empty() && self.api_keys.is_none() {
            errors.add(
                field,
                "accept at least one kind of credentials: jwt (one issuer or more) or apiKeys",
            );
        }
        let mut issuers = HashSet::new();
        for (i, provider) in self.jwt.iter().enumerate() {
            let field = at(&format!("{field}.jwt"), i);
            if !provider.issuer.is_empty() && !issuers.insert(provider.issuer.as_str()) {
                errors.add(
                    format!("{field}.issuer"),
                    format!("issuer `{}` is listed twice in this rule", provider.issuer),
                );
            }
            provider.validate(&field, errors);
        }
        if let Some(api_keys) = &self.api_keys {
            for (i, scope) in api_keys.scopes.iter().enumerate() {
                errors.check(
                    at(&format!("{field}.apiKeys.scopes"), i),
                    check_scope(scope),
                );
            }
        }
        if let Some(allow) = &self.allow {
            allow.validate(&format!("{field}.allow"), errors);
        }
    }
}

impl JwtProvider {
    fn validate(&self, field: &str, errors: &mut Errors) {
        if self.issuer.is_empty() {
            errors.add(format!("{field}.issuer"), "required");
        }
        match &self.jwks_uri {
            Some(uri) => errors.check(format!("{field}.jwksUri"), jwks_uri(uri)),
            None if self.keys.is_empty() => errors.add(
                format!("{field}.jwksUri"),
                "required unless keys are given: where do the signing keys come from?",
            ),
            None => {}
        }
        for (i, audience) in self.audiences.iter().enumerate() {
            if audience.is_empty() {
                errors.add(at(&format!("{field}.audiences"), i), "must not be empty");
            }
        }
        for (i, key) in self.keys.iter().enumerate() {
            key.validate(&at(&format!("{field}.keys"), i), errors);
        }
        for (i, claim) in self.required_claims.iter().enumerate() {
            if claim.is_empty() {
                errors.add(
                    at(&format!("{field}.requiredClaims"), i),
                    "a claim name must not be empty",
                );
            }
        }
        let mut headers = HashSet::new();
        for (i, mapping) in self.claims_to_headers.iter().enumerate() {
            let field = at(&format!("{field}.claimsToHeaders"), i);
            if mapping.claim.is_empty() {
                errors.add(format!("{field}.claim"), "a claim name must not be empty");
            }
            let header = mapping.header.to_ascii_lowercase();
            match forwardable_header(&header) {
                Err(message) => errors.add(format!("{field}.header"), message),
                Ok(()) if !headers.insert(header) => errors.add(
                    format!("{field}.header"),
                    format!(
                        "`{}` already carries another claim of this issuer",
                        mapping.header
                    ),
                ),
                Ok(()) => {}
            }
        }
        if let Some(cookie) = &self.cookie {
            errors.check(format!("{field}.cookie"), cookie_name(cookie));
        }
        if let Some(leeway) = &self.leeway {
            errors.check(format!("{field}.leeway"), parse_leeway(leeway).map(drop));
        }
    }

    /// The leeway in effect: the field's value, else [`DEFAULT_LEEWAY`].
    pub fn leeway(&self) -> Duration {
        self.leeway
            .as_deref()
            .and_then(|text| parse_leeway(text).ok())
            .unwrap_or(DEFAULT_LEEWAY)
    }
}

impl StaticKey {
    fn validate(&self, field: &str, errors: &mut Errors) {
        if self.kid.as_deref() == Some("") {
            errors.add(
                format!("{field}.kid"),
                "must not be empty; leave kid out to match any token",
            );
        }
        let sources = [
            self.public_key_pem.is_some(),
            self.secret_file.is_some(),
            self.secret_env.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            errors.add(
                field,
                "set exactly one of publicKeyPem, secretFile or secretEnv",
            );
        }
        if let Some(pem) = &self.public_key_pem
            && !pem.trim_start().starts_with("-----BEGIN ")
        {
            errors.add(
                format!("{field}.publicKeyPem"),
                "not a PEM block (`-----BEGIN PUBLIC KEY-----` …)",
            );
        }
        if let Some(path) = &self.secret_file
            && !path.starts_with('/')
        {
            errors.add(
                format!("{field}.secretFile"),
                format!("`{path}` must be an absolute path"),
            );
        }
        if let Some(name) = &self.secret_env {
            errors.check(format!("{field}.secretEnv"), env_name(name));
        }
        if let Some(algorithm) = &self.algorithm {
            let field = format!("{field}.algorithm");
            if self.public_key_pem.is_some() {
                errors.add(
                    field,
                    "only for secretFile or secretEnv: a public key's type decides its algorithm",
                );
            } else if !HMAC_ALGORITHMS.contains(&algorithm.as_str()) {
                errors.add(
                    field,
                    format!("`{algorithm}` is not one of HS256, HS384 or HS512"),
                );
            }
        }
    }
}

impl Allow {
    fn validate(&self, field: &str, errors: &mut Errors) {
        for (name, patterns) in [("keyIds", &self.key_ids), ("subjects", &self.subjects)] {
            for (i, pattern) in patterns.iter().enumerate() {
                if pattern.is_empty() {
                    errors.add(
                        at(&format!("{field}.{name}"), i),
                        "a pattern must not be empty (`*` matches anything)",
                    );
                }
            }
        }
        for (i, claim) in self.claims.iter().enumerate() {
            let field = at(&format!("{field}.claims"), i);
            if claim.name.is_empty() {
                errors.add(format!("{field}.name"), "a claim name must not be empty");
            }
            if claim.values.is_empty() {
                errors.add(
                    format!("{field}.values"),
                    "at least one pattern is required (`*` matches any value)",
                );
            }
            for (j, value) in claim.values.iter().enumerate() {
                if value.is_empty() {
                    errors.add(
                        at(&format!("{field}.values"), j),
                        "a pattern must not be empty (`*` matches anything)",
                    );
                }
            }
        }
    }
}

/// `read`, `write` or `admin`, in any case (the compiler lower-cases).
pub(crate) fn check_scope(scope: &str) -> Result<(), String> {
    if SCOPES.contains(&scope.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(format!(
            "`{scope}` is not a scope; use read, write or admin"
        ))
    }
}

/// Parses a leeway: a duration of whole seconds up to [`MAX_LEEWAY`]; `0s` turns it off.
pub fn parse_leeway(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s") {
        return Ok(Duration::ZERO);
    }
    let leeway = parse_duration(text)?;
    if leeway.subsec_nanos() != 0 {
        return Err(format!("`{text}`: a leeway is whole seconds"));
    }
    if leeway > MAX_LEEWAY {
        return Err(format!("`{text}` is longer than the maximum of 5m"));
    }
    Ok(leeway)
}

fn jwks_uri(value: &str) -> Result<(), String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| format!("`{value}` is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("`{value}` must be an http:// or https:// URL"));
    }
    match uri.authority() {
        Some(authority) if !authority.host().is_empty() => {}
        _ => return Err(format!("`{value}` has no host")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "`{value}`: credentials do not belong in a JWKS URL"
        ));
    }
    Ok(())
}

/// A header a claim may travel in: a valid name, not one the gateway or HTTP itself owns.
fn forwardable_header(lower: &str) -> Result<(), String> {
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        return Err(format!("`{lower}` is not a header name"));
    }
    if RESERVED_HEADERS.contains(&lower) || lower.starts_with("x-forwarded-") {
        return Err(format!(
            "`{lower}` is managed by the gateway or HTTP and cannot carry a claim"
        ));
    }
    Ok(())
}

/// RFC 6265 cookie name: an RFC 2616 token (visible ASCII without separators).
fn cookie_name(name: &str) -> Result<(), String> {
    let is_token_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
    if !name.is_empty() && name.chars().all(is_token_char) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a cookie name (visible ASCII without separators such as `=`, `;` or spaces)"
        ))
    }
}

/// An environment variable name as shells write it: `[A-Za-z_][A-Za-z0-9_]*`.
fn env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leeways() {
        assert_eq!(parse_leeway("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_leeway("5m"), Ok(MAX_LEEWAY));
        assert_eq!(parse_leeway("0s"), Ok(Duration::ZERO));
        for bad in ["5m1s", "1500ms", "soon", "1h"] {
            assert!(parse_leeway(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_cookie_and_env_names() {
        assert!(forwardable_header("x-tenant").is_ok());
        for reserved in ["host", "x-forwarded-for", "x-request-id", "te", "forwarded"] {
            assert!(forwardable_header(reserved).is_err(), "{reserved}");
        }
        assert!(forwardable_header("x tenant").is_err());
        assert!(cookie_name("__Host-session").is_ok());
        for bad in ["", "a=b", "a b", "a;b", "sé"] {
            assert!(cookie_name(bad).is_err(), "{bad:?}");
        }
        assert!(env_name("PAVILION_HMAC_MAIN").is_ok());
        assert!(env_name("_x1").is_ok());
        for bad in ["", "1X", "A-B", "A B"] {
            assert!(env_name(bad).is_err(), "{bad:?}");
        }
    }
}
