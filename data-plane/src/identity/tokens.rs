//! What the identity service hands out: short-lived access JWTs (ES256) whose claims are
//! what routes' `auth.jwt` and the tenancy contract read, and opaque refresh tokens
//! `{family}.{secret}` stored only as their SHA-256.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The access token's claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    /// The session (refresh-token family) the token was issued in.
    pub sid: String,
    pub email: String,
    /// Tenant → roles, as the tenancy contract reads them.
    pub tenants: BTreeMap<String, Vec<String>>,
    /// Platform roles.
    pub roles: Vec<String>,
}

/// The answer of sign-in and refresh.
#[derive(Debug, Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// `bytes` random bytes, base64url.
pub fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system's random source works");
    URL_SAFE_NO_PAD.encode(buf)
}

/// SHA-256 of a secret, hex: what the store keeps instead of it.
pub fn digest(secret: &str) -> String {
    let hash = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A new refresh token of `family`: 256 random bits after the family id.
pub fn refresh_token(family: &str) -> String {
    format!("{family}.{}", random(32))
}

/// The family a refresh token names, when it has the shape of one.
pub fn family_of(token: &str) -> Option<&str> {
    let (family, secret) = token.split_once('.')?;
    let plausible = family.len() == 32
        && family.bytes().all(|b| b.is_ascii_hexdigit())
        && secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plausible.then_some(family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_family_and_nothing_else_parses() {
        let family = uuid::Uuid::now_v7().simple().to_string();
        let token = refresh_token(&family);
        assert_eq!(family_of(&token), Some(family.as_str()));
        assert_ne!(token, refresh_token(&family));
        assert_eq!(family_of("x.y"), None);
        assert_eq!(family_of(&format!("{family}.short")), None);
        assert_eq!(family_of(&format!("../etc.{}", random(32))), None);
        assert_eq!(digest("abc").len(), 64);
    }
}
