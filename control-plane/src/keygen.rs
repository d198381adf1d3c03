//! `pavilion-control api-key new`: a fresh API key and the `ApiKey` resource that admits
//! it. The resource holds only the key's SHA-256; the key itself is handed to the caller
//! once and kept nowhere (not in logs, not in `Debug` output).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pavilion_crds::{ApiKey, ApiKeySpec, FieldError, Resource};
use sha2::{Digest, Sha256};

/// Every generated key starts with this, so leaked keys are easy to spot (secret scanners,
/// logs) and tell apart from other tokens.
pub const KEY_PREFIX: &str = "pvk_";
/// Random bytes in a key: 256 bits, beyond any guessing, which is why a plain SHA-256 (no
/// slow password hash) is the right way to store it.
pub const KEY_BYTES: usize = 32;

/// What the caller asks for; `name` defaults to `id`.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub id: String,
    pub namespace: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub expires_at: Option<String>,
    pub description: Option<String>,
    /// Tenants the key acts for (plain members, no roles).
    pub tenants: Vec<String>,
    /// Platform roles (`platform-admin`).
    pub roles: Vec<String>,
}

/// A generated key and its resource.
pub struct Generated {
    /// `pvk_` + 43 base64url characters. Show it once; it cannot be recovered.
    pub key: String,
    pub resource: ApiKey,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generated")
            .field("key", &"<redacted>")
            .field("resource", &self.resource)
            .finish()
    }
}

impl Generated {
    /// The resource as a YAML document, ready for `kubectl apply`, `kv put` or a file.
    pub fn yaml(&self) -> String {
        let text = Resource::ApiKey(self.resource.clone()).to_yaml();
        // An unquoted RFC 3339 time is a YAML 1.1 timestamp, which some readers (kubectl's
        // among them) turn into something other than the string written. Quoting is safe:
        // the value was validated, so it holds no quotes or escapes.
        text.lines()
            .map(|line| match line.strip_prefix("  expiresAt: ") {
                Some(time) if !time.starts_with(['"', '\'']) => {
                    format!("  expiresAt: \"{time}\"\n")
                }
                _ => format!("{line}\n"),
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("the operating system gave no random bytes: {0}")]
    Random(String),
    #[error("{}", describe(.0))]
    Invalid(Vec<FieldError>),
}

/// Validation errors with the flag that sets each field.
fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| {
            let flag = match e.field.as_str() {
                "metadata.name" => " (--name)",
                "metadata.namespace" => " (--namespace)",
                "spec.keyId" => " (--id)",
                f if f.starts_with("spec.scopes") => " (--scopes)",
                "spec.expiresAt" => " (--expires)",
                _ => "",
            };
            format!("{}{flag}: {}", e.field, e.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A new key from the operating system's CSPRNG.
pub fn generate_key() -> Result<String, KeygenError> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| KeygenError::Random(e.to_string()))?;
    Ok(key_from_bytes(&bytes))
}

/// The key text for these random bytes.
pub fn key_from_bytes(bytes: &[u8; KEY_BYTES]) -> String {
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of the key exactly as clients send it, in lower-case hex (`spec.sha256`).
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Generates a key and its resource, validated as the compiler would.
pub fn new_key(request: &NewKey) -> Result<Generated, KeygenError> {
    let key = generate_key()?;
    let resource = resource_for(request, &key);
    let errors = Resource::ApiKey(resource.clone()).validate();
    if !errors.is_empty() {
        return Err(KeygenError::Invalid(errors));
    }
    Ok(Generated { key, resource })
}

/// The `ApiKey` resource admitting `key`.
pub fn resource_for(request: &NewKey, key: &str) -> ApiKey {
    ApiKey {
        metadata: ObjectMeta {
            name: Some(request.name.clone().unwrap_or_else(|| request.id.clone())),
            namespace: Some(request.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: ApiKeySpec {
            key_id: Some(request.id.clone()),
            description: request.description.clone(),
            sha256: sha256_hex(key),
            scopes: request.scopes.clone(),
            expires_at: request.expires_at.clone(),
            tenants: (!request.tenants.is_empty())
                .then(|| pavilion_crds::Membership::Tenants(request.tenants.clone())),
            roles: request.roles.clone(),
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> NewKey {
        NewKey {
            id: "mobile-app".into(),
            namespace: "shop".into(),
            scopes: vec!["read".into(), "write".into()],
            ..NewKey::default()
        }
    }

    #[test]
    fn keys_are_prefixed_256_bit_base64url() {
        let key = key_from_bytes(&[0xff; KEY_BYTES]);
        assert_eq!(key.len(), KEY_PREFIX.len() + 43);
        assert!(key.starts_with("pvk_____"), "{key}");
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        let body = a.strip_prefix(KEY_PREFIX).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), KEY_BYTES);
    }

    #[test]
    fn the_resource_holds_the_hash_of_the_key() {
        let generated = new_key(&request()).unwrap();
        let spec = &generated.resource.spec;
        assert_eq!(spec.sha256, sha256_hex(&generated.key));
        assert_eq!(spec.key_id.as_deref(), Some("mobile-app"));
        assert_eq!(
            generated.resource.metadata.name.as_deref(),
            Some("mobile-app")
        );
        let yaml = generated.yaml();
        assert!(!yaml.contains(&generated.key));
        let expiring = new_key(&NewKey {
            expires_at: Some("2027-01-01T00:00:00Z".into()),
            ..request()
        })
        .unwrap();
        assert!(
            expiring
                .yaml()
                .contains("\n  expiresAt: \"2027-01-01T00:00:00Z\"\n"),
            "{}",
            expiring.yaml()
        );
        assert!(!format!("{generated:?}").contains(&generated.key));
        let parsed = pavilion_crds::parse_documents(&yaml)
            .remove(0)
            .result
            .unwrap();
        assert_eq!(parsed.validate(), []);
        assert_eq!(parsed, Resource::ApiKey(generated.resource));
    }

    #[test]
    fn known_hash() {
        assert_eq!(
            sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn bad_requests_name_the_flag() {
        let bad = NewKey {
            id: "Mobile App".into(),
            scopes: vec!["delete".into()],
            expires_at: Some("tomorrow".into()),
            ..request()
        };
        let message = new_key(&bad).unwrap_err().to_string();
        for expected in [
            "metadata.name (--name)",
            "spec.keyId (--id)",
            "spec.scopes[0] (--scopes)",
            "spec.expiresAt (--expires)",
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
    }
}
