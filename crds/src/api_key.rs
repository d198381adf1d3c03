//! `ApiKey`: a key that authenticates requests to the routes of its own namespace. Only
//! the key's SHA-256 is stored: API keys are 256-bit random strings, so a fast hash is
//! enough (a slow password hash such as Argon2id buys nothing against 2^256 guesses).

use chrono::{DateTime, FixedOffset};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::check_scope;
use crate::status::ResourceStatus;
use crate::tenant::{Membership, role_name};
use crate::validate::{Errors, at};

/// Longest key id: ids are logged and forwarded upstream, so they stay short.
pub const MAX_KEY_ID_LEN: usize = 128;

/// An API key, known only by its SHA-256, with the scopes it grants.
// `printcolumn(...)` repeats its keys once per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "ApiKey",
    shortname = "ak",
    namespaced,
    derive = "PartialEq",
    status = "ResourceStatus",
    category = "pavilion",
    doc = "An API key for the routes of its namespace, known only by its SHA-256.",
    printcolumn(name = "Key ID", type_ = "string", json_path = ".status.keyId"),
    printcolumn(name = "Scopes", type_ = "string", json_path = ".spec.scopes"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeySpec {
    /// The key's public id, logged and forwarded upstream in place of the key; default
    /// `metadata.name`. Letters, digits, `.`, `_`, `-`; at most 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// SHA-256 of the key as clients send it, 64 hex digits.
    pub sha256: String,
    /// What the key may do: `read` (GET, HEAD, OPTIONS), `write` (other methods), `admin`.
    pub scopes: Vec<String>,
    /// RFC 3339 time after which the key is refused; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The tenants the key may act for: tenant ids, or a map from tenant id to the roles
    /// it holds there (for rules with `tenancy` and `authorize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Membership>,
    /// Platform roles; `platform-admin` may act on any tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl ApiKeySpec {
    /// `spec.keyId`, else the resource's name.
    pub fn id<'a>(&'a self, name: &'a str) -> &'a str {
        self.key_id.as_deref().unwrap_or(name)
    }

    /// `expiresAt` as a point in time; `None` when absent or unreadable.
    pub fn expiry(&self) -> Option<DateTime<FixedOffset>> {
        self.expires_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    }

    pub(crate) fn validate(&self, name: Option<&str>, errors: &mut Errors) {
        match &self.key_id {
            Some(id) => errors.check("spec.keyId", key_id(id)),
            // Names are DNS subdomains (checked already), which may run longer than an id.
            None => {
                if let Some(name) = name
                    && name.len() > MAX_KEY_ID_LEN
                {
                    errors.add(
                        "metadata.name",
                        format!(
                            "longer than {MAX_KEY_ID_LEN} characters, too long for a key id; set spec.keyId"
                        ),
                    );
                }
            }
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            errors.add(
                "spec.sha256",
                "must be the key's SHA-256 as 64 hex digits (e.g. `printf %s \"$KEY\" | sha256sum`)",
            );
        }
        if self.scopes.is_empty() {
            errors.add("spec.scopes", "at least one of read, write or admin");
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            errors.check(at("spec.scopes", i), check_scope(scope));
        }
        if let Some(tenants) = &self.tenants {
            tenants.validate("spec.tenants", errors);
        }
        for (i, role) in self.roles.iter().enumerate() {
            errors.check(at("spec.roles", i), role_name(role));
        }
        if let Some(text) = &self.expires_at
            && let Err(e) = DateTime::parse_from_rfc3339(text)
        {
            errors.add(
                "spec.expiresAt",
                format!("`{text}` is not an RFC 3339 time like 2027-01-01T00:00:00Z: {e}"),
            );
        }
    }
}

/// `[A-Za-z0-9._-]{1,128}`: safe in logs and in a header value.
pub fn key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}` must be 1-{MAX_KEY_ID_LEN} letters, digits, '.', '_' or '-'"
        ))
    }
}
