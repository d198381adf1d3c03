//! A rule's `auth`, `ipAllow` and `ipDeny` in their snapshot form: defaults filled in,
//! names and lists normalised, so the data plane only builds lookup tables.

use pavilion_crds::auth::{self, HMAC_ALGORITHMS};
use pavilion_crds::cidr;
use pavilion_proto as proto;
use pavilion_proto::v1::static_key::Source;

/// The claim naming a token's tenants unless an issuer says otherwise (API.md).
pub const DEFAULT_TENANTS_CLAIM: &str = "tenants";
/// The claim listing a token's platform roles unless an issuer says otherwise.
pub const DEFAULT_ROLES_CLAIM: &str = "roles";

pub(super) fn to_proto(auth: &auth::Auth) -> proto::Auth {
    proto::Auth {
        jwt: auth.jwt.iter().map(provider).collect(),
        api_keys: auth.api_keys.as_ref().map(|a| proto::ApiKeyAuth {
            scopes: scopes(&a.scopes),
        }),
        allow: auth.allow.as_ref().map(|a| proto::Allow {
            key_ids: sorted(a.key_ids.iter().cloned()),
            subjects: sorted(a.subjects.iter().cloned()),
            // Order kept: the same claim listed twice means both entries must hold.
            claims: a
                .claims
                .iter()
                .map(|c| proto::ClaimAllow {
                    name: c.name.clone(),
                    values: sorted(c.values.iter().cloned()),
                })
                .collect(),
        }),
    }
}

/// `read`, `write`, `admin` in lower case, sorted, unique.
pub(super) fn scopes(scopes: &[String]) -> Vec<String> {
    sorted(scopes.iter().map(|s| s.to_ascii_lowercase()))
}

/// Valid ranges as `addr/len` with host bits zeroed, sorted, unique.
pub(super) fn cidrs(ranges: &[String]) -> Vec<String> {
    sorted(ranges.iter().filter_map(|r| cidr::normalize(r)))
}

fn provider(p: &auth::JwtProvider) -> proto::JwtProvider {
    let mut claims_to_headers: Vec<proto::ClaimHeader> = p
        .claims_to_headers
        .iter()
        .map(|c| proto::ClaimHeader {
            claim: c.claim.clone(),
            header: c.header.to_ascii_lowercase(),
        })
        .collect();
    claims_to_headers.sort_by(|a, b| (&a.header, &a.claim).cmp(&(&b.header, &b.claim)));
    proto::JwtProvider {
        issuer: p.issuer.clone(),
        jwks_uri: p.jwks_uri.clone().unwrap_or_default(),
        audiences: sorted(p.audiences.iter().cloned()),
        // Order kept: keys without a kid are tried in the order given.
        keys: p.keys.iter().filter_map(static_key).collect(),
        required_claims: sorted(p.required_claims.iter().cloned()),
        claims_to_headers,
        cookie: p.cookie.clone().unwrap_or_default(),
        leeway_seconds: u32::try_from(p.leeway().as_secs()).unwrap_or(u32::MAX),
        tenants_claim: p
            .tenants_claim
            .clone()
            .unwrap_or_else(|| DEFAULT_TENANTS_CLAIM.to_owned()),
        roles_claim: p
            .roles_claim
            .clone()
            .unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_owned()),
    }
}

fn static_key(k: &auth::StaticKey) -> Option<proto::StaticKey> {
    let (source, is_secret) = match (&k.public_key_pem, &k.secret_file, &k.secret_env) {
        (Some(pem), None, None) => (Source::PublicKeyPem(pem.clone()), false),
        (None, Some(path), None) => (Source::SecretFile(path.clone()), true),
        (None, None, Some(name)) => (Source::SecretEnv(name.clone()), true),
        // Validation refuses anything else; nothing to compile.
        _ => return None,
    };
    let algorithm = if is_secret {
        k.algorithm
            .clone()
            .unwrap_or_else(|| HMAC_ALGORITHMS[0].to_owned())
    } else {
        String::new()
    };
    Some(proto::StaticKey {
        kid: k.kid.clone().unwrap_or_default(),
        source: Some(source),
        algorithm,
    })
}

fn sorted(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut values: Vec<String> = values.collect();
    values.sort();
    values.dedup();
    values
}
