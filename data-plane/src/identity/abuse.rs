//! Abuse protection of the identity API: per-IP and per-account limits counted by the
//! gateway's own rate limiter (in Redis — exact across replicas — when the data plane has
//! `--redis`, in process otherwise), and a progressive delay on repeated sign-in failures.
//! The account limits are keyed by the e-mail's digest, so an unknown address is limited
//! exactly like a known one: the answers never tell them apart. The lockout after too many
//! failures in a row lives on the account (see `flows`).

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use pavilion_proto as proto;

use crate::ratelimit::{Facts, Limiter, Refusal, RuleLimits};

/// How hard the limits are (`IdentityConfig::abuse`).
#[derive(Clone, Debug)]
pub struct AbuseLimits {
    /// Attempts per client address per minute, per operation.
    pub per_ip_per_minute: u64,
    /// Attempts per account per 15 minutes, per operation (sign-in, MFA, forgot).
    pub per_account_per_15_minutes: u64,
    /// The first delay after failures in a row (doubling, at most 16 times it).
    pub delay: Duration,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        Self {
            per_ip_per_minute: 30,
            per_account_per_15_minutes: 10,
            delay: Duration::from_millis(250),
        }
    }
}

/// Failures in a row before an account is locked (until an administrator unlocks it, or
/// its owner resets the password by mail).
pub const LOCKOUT_AFTER: u32 = 10;

/// The key part naming the account: a header only this module sets, never the client's.
const ACCOUNT: HeaderName = HeaderName::from_static("x-pavilion-identity-account");

pub struct Guard {
    per_ip: RuleLimits,
    per_account: RuleLimits,
    /// Sign-in failures in a row per account key, forgotten after 15 minutes of quiet (per
    /// replica: the delay slows a guesser down; the limits above bound it).
    failures: moka::future::Cache<String, u32>,
    delay: Duration,
}

fn limit(
    policy: &str,
    key: &[&str],
    requests: u64,
    period: Duration,
    redis: bool,
) -> proto::RateLimit {
    proto::RateLimit {
        policy: policy.into(),
        index: 0,
        key: key.iter().map(|k| (*k).to_owned()).collect(),
        requests,
        period_ms: period.as_millis() as u64,
        burst: requests,
        backend: if redis {
            proto::RateLimitBackend::Redis
        } else {
            proto::RateLimitBackend::Local
        } as i32,
        failure_mode: proto::RateLimitFailureMode::Local as i32,
        headers: false,
        overrides: Vec::new(),
        approximate: false,
    }
}

impl Guard {
    /// `redis`: count in Redis (the data plane has `--redis`).
    pub fn new(redis: bool, settings: &AbuseLimits) -> Self {
        let account_key = format!("header:{}", ACCOUNT.as_str());
        let per_ip = limit(
            "identity/per-ip",
            &["clientIp", "route"],
            settings.per_ip_per_minute.max(1),
            Duration::from_secs(60),
            redis,
        );
        let per_account = limit(
            "identity/per-account",
            &[account_key.as_str(), "route"],
            settings.per_account_per_15_minutes.max(1),
            Duration::from_secs(15 * 60),
            redis,
        );
        Self {
            per_ip: RuleLimits::new(&[per_ip]).expect("a valid built-in limit"),
            per_account: RuleLimits::new(&[per_account]).expect("a valid built-in limit"),
            failures: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(15 * 60))
                .build(),
            delay: settings.delay,
        }
    }

    /// Counts one attempt at `operation` from `client` (and for `account`, when the
    /// operation names one); `Err` when over a limit.
    pub async fn admit(
        &self,
        limiter: &Limiter,
        client: IpAddr,
        operation: &str,
        account: Option<&str>,
    ) -> Result<(), Refusal> {
        let none = HeaderMap::new();
        let by_ip = Facts {
            client_ip: Some(client),
            identity: None,
            headers: &none,
            route: operation,
        };
        limiter.check(&self.per_ip, &by_ip).await?;
        if let Some(value) = account.and_then(|a| HeaderValue::from_str(a).ok()) {
            let mut headers = HeaderMap::new();
            headers.insert(ACCOUNT, value);
            let by_account = Facts {
                headers: &headers,
                ..by_ip
            };
            limiter.check(&self.per_account, &by_account).await?;
        }
        Ok(())
    }

    /// Records a failed sign-in; how long to wait before answering: nothing for the first
    /// two in a row, then the first delay (250 ms) doubling up to 16 times it (4 s).
    pub async fn failed(&self, account: &str) -> Duration {
        let count = self.failures.get(account).await.unwrap_or(0) + 1;
        self.failures.insert(account.to_owned(), count).await;
        delay(count, self.delay)
    }

    pub async fn succeeded(&self, account: &str) {
        self.failures.invalidate(account).await;
    }
}

fn delay(failures: u32, first: Duration) -> Duration {
    match failures {
        0..=2 => Duration::ZERO,
        n => first * (1u32 << (n - 3).min(4)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_and_stops_growing() {
        let first = Duration::from_millis(250);
        let delays: Vec<u64> = (1..=9)
            .map(|n| delay(n, first).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 0, 250, 500, 1000, 2000, 4000, 4000, 4000]);
    }
}
