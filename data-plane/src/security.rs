//! Security headers on every response the client gets: the gateway's defaults, adjusted per
//! route. A header the upstream sets itself is never replaced; HSTS only goes out on TLS.

use http::{HeaderMap, HeaderName, HeaderValue, header};
use pavilion_proto as proto;

pub const DEFAULT_CONTENT_TYPE_OPTIONS: &str = "nosniff";
pub const DEFAULT_FRAME_OPTIONS: &str = "DENY";
pub const DEFAULT_REFERRER_POLICY: &str = "no-referrer";
pub const DEFAULT_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";
pub const DEFAULT_STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000; includeSubDomains";

/// The headers to add, decided once per route.
#[derive(Clone, Debug)]
pub struct SecurityHeaders {
    always: Vec<(HeaderName, HeaderValue)>,
    strict_transport_security: Option<HeaderValue>,
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        Self::new(None).expect("the defaults are valid header values")
    }
}

impl SecurityHeaders {
    /// The defaults with `overrides` applied; an invalid value is an error (a NACK).
    pub fn new(overrides: Option<&proto::SecurityHeaders>) -> Result<Self, String> {
        let overrides = overrides.cloned().unwrap_or_default();
        let pick = |name: &str,
                    value: Option<String>,
                    default: &str|
         -> Result<Option<HeaderValue>, String> {
            match value.as_deref().unwrap_or(default) {
                "" => Ok(None),
                value => HeaderValue::from_str(value)
                    .map(Some)
                    .map_err(|_| format!("invalid {name} value")),
            }
        };
        let mut always = Vec::new();
        for (name, value, default) in [
            (
                header::X_CONTENT_TYPE_OPTIONS,
                overrides.content_type_options,
                DEFAULT_CONTENT_TYPE_OPTIONS,
            ),
            (
                header::X_FRAME_OPTIONS,
                overrides.frame_options,
                DEFAULT_FRAME_OPTIONS,
            ),
            (
                header::REFERRER_POLICY,
                overrides.referrer_policy,
                DEFAULT_REFERRER_POLICY,
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                overrides.content_security_policy,
                DEFAULT_CONTENT_SECURITY_POLICY,
            ),
        ] {
            if let Some(value) = pick(name.as_str(), value, default)? {
                always.push((name, value));
            }
        }
        let strict_transport_security = pick(
            header::STRICT_TRANSPORT_SECURITY.as_str(),
            overrides.strict_transport_security,
            DEFAULT_STRICT_TRANSPORT_SECURITY,
        )?;
        Ok(Self {
            always,
            strict_transport_security,
        })
    }

    /// Adds what the response does not carry yet.
    pub fn apply(&self, headers: &mut HeaderMap, tls: bool) {
        for (name, value) in &self.always {
            headers.entry(name).or_insert_with(|| value.clone());
        }
        if tls && let Some(value) = &self.strict_transport_security {
            headers
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_removals() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        );
        SecurityHeaders::default().apply(&mut headers, false);
        assert_eq!(
            headers[header::X_FRAME_OPTIONS],
            "SAMEORIGIN",
            "the upstream's own value stays"
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            !headers.contains_key(header::STRICT_TRANSPORT_SECURITY),
            "no HSTS in cleartext"
        );

        let overrides = proto::SecurityHeaders {
            content_security_policy: Some("default-src 'self'".into()),
            frame_options: Some(String::new()),
            ..Default::default()
        };
        let mut headers = HeaderMap::new();
        SecurityHeaders::new(Some(&overrides))
            .unwrap()
            .apply(&mut headers, true);
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'"
        );
        assert!(
            !headers.contains_key(header::X_FRAME_OPTIONS),
            "removed by the route"
        );
        assert_eq!(
            headers[header::STRICT_TRANSPORT_SECURITY],
            DEFAULT_STRICT_TRANSPORT_SECURITY
        );

        let bad = proto::SecurityHeaders {
            referrer_policy: Some("a\nb".into()),
            ..Default::default()
        };
        assert!(SecurityHeaders::new(Some(&bad)).is_err());
    }
}
