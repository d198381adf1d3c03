//! Rule fields about how traffic is carried between the matched rule and the upstream:
//! WebSocket upgrades (more follow: retries, balancing, health, compression, transforms).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::validate::Errors;

/// `websocket:` on a rule: HTTP/1.1 `Upgrade: websocket` requests are tunnelled to the
/// backend (after every check of the rule); without it the upgrade is removed and the
/// request is forwarded as a plain one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSocket {
    /// A tunnel in which neither side sent a byte for this long is closed. Default `5m`,
    /// between `1s` and `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// Default of `websocket.idleTimeout`.
pub const DEFAULT_WEBSOCKET_IDLE: Duration = Duration::from_secs(300);

impl WebSocket {
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(DEFAULT_WEBSOCKET_IDLE)
    }

    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        if let Some(idle) = &self.idle_timeout {
            within(
                &format!("{field}.idleTimeout"),
                idle,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
                errors,
            );
        }
    }
}

/// Checks that `text` is a duration between `min` and `max` (inclusive).
pub(crate) fn within(field: &str, text: &str, min: Duration, max: Duration, errors: &mut Errors) {
    match parse_duration(text) {
        Err(message) => errors.add(field, message),
        Ok(d) if d < min || d > max => errors.add(
            field,
            format!(
                "`{text}` must be between {} and {}",
                crate::duration::format_duration(min),
                crate::duration::format_duration(max)
            ),
        ),
        Ok(_) => {}
    }
}
