//! Verification keys and the algorithms each one allows. The key decides the algorithm:
//! a token's `alg` is only accepted when it is one its key was made for, so an RSA public
//! key can never be used as an HMAC secret (algorithm confusion) and `none` never verifies.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

pub struct VerifyKey {
    /// `None` matches tokens with any (or no) `kid`.
    pub kid: Option<Box<str>>,
    pub key: DecodingKey,
    pub algorithms: &'static [Algorithm],
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material: HMAC secrets are secrets.
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const ES256: &[Algorithm] = &[Algorithm::ES256];
const ES384: &[Algorithm] = &[Algorithm::ES384];
const EDDSA: &[Algorithm] = &[Algorithm::EdDSA];

/// Every asymmetric algorithm and HMAC, for `Validation`: the per-key check is done first.
pub const ALL: &[Algorithm] = &[
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn single(algorithm: Algorithm) -> &'static [Algorithm] {
    ALL.iter()
        .position(|a| *a == algorithm)
        .map_or(&[], |i| &ALL[i..=i])
}

/// A key from a JWKS document; `Err` says why it is skipped.
pub fn from_jwk(jwk: &Jwk) -> Result<VerifyKey, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key".into());
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => ES256,
            EllipticCurve::P384 => ES384,
            _ => return Err("an unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => EDDSA,
        // Symmetric keys have no place in a public document.
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key".into()),
        _ => return Err("an unsupported key type".into()),
    };
    // A stated `alg` narrows the choice; it must fit the key type.
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(stated) => {
            let stated = match stated {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::RS384 => Algorithm::RS384,
                KeyAlgorithm::RS512 => Algorithm::RS512,
                KeyAlgorithm::PS256 => Algorithm::PS256,
                KeyAlgorithm::PS384 => Algorithm::PS384,
                KeyAlgorithm::PS512 => Algorithm::PS512,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::ES384 => Algorithm::ES384,
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                _ => return Err("an unsupported alg".into()),
            };
            if !by_type.contains(&stated) {
                return Err(format!("alg {stated:?} does not fit the key type"));
            }
            single(stated)
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable: {e}"))?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.as_deref().map(Into::into),
        key,
        algorithms,
    })
}

/// A public key in PEM (RSA, EC P-256/P-384, Ed25519).
pub fn from_public_pem(kid: Option<&str>, pem: &str) -> Result<VerifyKey, String> {
    let pem = pem.as_bytes();
    let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        (key, RSA)
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        (key, EDDSA)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The PEM does not tell jsonwebtoken the curve; a token signed for the other
        // curve simply fails to verify, and both are ECDSA, so nothing can be confused.
        (key, &ALL[9..11])
    } else {
        return Err("not an RSA, EC or Ed25519 public key in PEM".into());
    };
    Ok(VerifyKey {
        kid: kid.map(Into::into),
        key,
        algorithms,
    })
}

/// An HMAC secret.
pub fn from_secret(kid: Option<&str>, secret: &[u8], algorithm: &str) -> Result<VerifyKey, String> {
    let algorithm = match algorithm {
        "" | "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => return Err(format!("`{other}` is not an HMAC algorithm")),
    };
    // Short secrets make HMAC guessable: RFC 7518 §3.2 asks for at least the hash size.
    let minimum = match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    };
    if secret.len() < minimum {
        return Err(format!(
            "the {algorithm:?} secret is shorter than {minimum} bytes"
        ));
    }
    Ok(VerifyKey {
        kid: kid.map(Into::into),
        key: DecodingKey::from_secret(secret),
        algorithms: single(algorithm),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_lists_line_up() {
        assert_eq!(&ALL[9..11], &[Algorithm::ES256, Algorithm::ES384]);
        assert_eq!(single(Algorithm::HS384), &[Algorithm::HS384]);
        assert!(from_secret(None, b"short", "HS256").is_err());
        assert!(from_secret(None, &[7; 32], "RS256").is_err());
        assert_eq!(
            from_secret(None, &[7; 32], "").unwrap().algorithms,
            &[Algorithm::HS256]
        );
        assert!(
            from_public_pem(
                None,
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
            )
            .is_err()
        );
    }
}
