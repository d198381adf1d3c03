//! Quotas: requests and/or response bytes per key per calendar day or month, reckoned in a
//! time zone (a Berlin customer's day starts at Berlin midnight). Counted in process or in
//! Redis like rate limits; a request is refused once a quota is used up, and response
//! bytes are added when the body is done (so the last response may go past a byte quota).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use pavilion_proto as proto;

use super::{Backend, FailureMode, KeyPart, key_part};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

/// One quota of a rule.
#[derive(Debug)]
pub struct Quota {
    pub policy: Box<str>,
    pub index: u32,
    pub(super) parts: Box<[KeyPart]>,
    /// 0: not limited.
    pub requests: u64,
    pub bytes: u64,
    pub period: Period,
    pub tz: Tz,
    pub backend: Backend,
    pub failure: FailureMode,
}

#[derive(Debug, Default)]
pub struct RuleQuotas {
    pub(super) quotas: Box<[Quota]>,
}

impl RuleQuotas {
    pub fn new(quotas: &[proto::Quota]) -> Result<Self, String> {
        quotas
            .iter()
            .map(Quota::new)
            .collect::<Result<_, _>>()
            .map(|quotas| Self { quotas })
    }

    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Quota> {
        self.quotas.iter()
    }
}

impl Quota {
    fn new(quota: &proto::Quota) -> Result<Self, String> {
        let at = |e: String| format!("policy {} quota {}: {e}", quota.policy, quota.index);
        if quota.requests == 0 && quota.bytes == 0 {
            return Err(at("limits neither requests nor bytes".into()));
        }
        let zone = if quota.time_zone.is_empty() {
            "UTC"
        } else {
            &quota.time_zone
        };
        let tz: Tz = zone
            .parse()
            .map_err(|_| at(format!("`{zone}` is not a time zone")))?;
        Ok(Self {
            policy: quota.policy.as_str().into(),
            index: quota.index,
            parts: quota
                .key
                .iter()
                .map(|p| key_part(p))
                .collect::<Result<_, _>>()
                .map_err(at)?,
            requests: quota.requests,
            bytes: quota.bytes,
            period: match quota.period() {
                proto::QuotaPeriod::Day => Period::Day,
                proto::QuotaPeriod::Month => Period::Month,
            },
            tz,
            backend: quota.backend().into(),
            failure: quota.failure_mode().into(),
        })
    }

    /// "100000 requests and 10485760 bytes per day (Europe/Berlin)", for messages.
    pub fn describe(&self) -> String {
        let mut what = Vec::new();
        if self.requests > 0 {
            what.push(format!("{} requests", self.requests));
        }
        if self.bytes > 0 {
            what.push(format!("{} bytes", self.bytes));
        }
        let per = match self.period {
            Period::Day => "day",
            Period::Month => "month",
        };
        format!("{} per {per} ({})", what.join(" and "), self.tz.name())
    }
}

/// The calendar window around `now`: its name (`2026-11-23`, `2026-11`) and its end.
pub fn window(period: Period, tz: Tz, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
    let local = now.with_timezone(&tz).date_naive();
    let (name, next) = match period {
        Period::Day => (
            local.format("%Y-%m-%d").to_string(),
            local.succ_opt().unwrap_or(local),
        ),
        Period::Month => {
            let (year, month) = if local.month() == 12 {
                (local.year() + 1, 1)
            } else {
                (local.year(), local.month() + 1)
            };
            (
                local.format("%Y-%m").to_string(),
                NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(local),
            )
        }
    };
    // Midnight may not exist (a DST jump at 00:00): the earliest instant of that day.
    let midnight = next.and_hms_opt(0, 0, 0).unwrap_or_default();
    let end = tz
        .from_local_datetime(&midnight)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                .earliest()
        })
        .map_or(now + chrono::Duration::days(1), |t| t.with_timezone(&Utc));
    (name, end)
}

/// Use of one quota in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub bytes: u64,
}

/// Why a quota refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    Requests,
    Bytes,
}

/// In-process quota counters, sharded (by a seeded hash, so keys cannot be aimed at one
/// shard) and bounded: a full shard forgets counters whose window has ended, then the less
/// used half of the rest — a flood of new keys evicts itself, not the heavy users whose
/// quotas matter.
pub struct QuotaCounters {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: foldhash::fast::FixedState,
}

const SHARDS: usize = 16;

/// One counter: its window, when the window ends (Unix seconds), the usage in it.
struct Counter {
    window: String,
    ends_at: i64,
    usage: Usage,
}

type Shard = HashMap<String, Counter>;

/// Where a quota counts right now.
pub struct Window<'a> {
    pub name: &'a str,
    pub ends_at: i64,
}

impl QuotaCounters {
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (max_keys / SHARDS).max(16),
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        &self.shards[(self.hasher.hash_one(key) % SHARDS as u64) as usize]
    }

    /// Counts one request unless a limit (`requests`, `bytes`; 0 = none) is used up.
    pub fn take(
        &self,
        key: &str,
        window: &Window<'_>,
        requests: u64,
        bytes: u64,
    ) -> Result<Usage, (Exhausted, Usage)> {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.per_shard && !map.contains_key(key) {
            let now = chrono::Utc::now().timestamp();
            map.retain(|_, counter| counter.ends_at > now);
            if map.len() >= self.per_shard {
                let mut by_use: Vec<(u64, u64, String)> = map
                    .iter()
                    .map(|(k, c)| (c.usage.requests, c.usage.bytes, k.clone()))
                    .collect();
                let half = by_use.len() / 2;
                by_use.select_nth_unstable(half);
                for (_, _, k) in &by_use[..half] {
                    map.remove(k);
                }
            }
        }
        let counter = map.entry(key.to_owned()).or_insert_with(|| Counter {
            window: window.name.to_owned(),
            ends_at: window.ends_at,
            usage: Usage::default(),
        });
        if counter.window != window.name {
            *counter = Counter {
                window: window.name.to_owned(),
                ends_at: window.ends_at,
                usage: Usage::default(),
            };
        }
        let usage = counter.usage;
        if bytes > 0 && usage.bytes >= bytes {
            return Err((Exhausted::Bytes, usage));
        }
        if requests > 0 && usage.requests >= requests {
            return Err((Exhausted::Requests, usage));
        }
        counter.usage.requests += 1;
        Ok(counter.usage)
    }

    /// Gives back a request a later quota refused.
    pub fn untake(&self, key: &str, window: &str) {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = map.get_mut(key)
            && counter.window == window
        {
            counter.usage.requests = counter.usage.requests.saturating_sub(1);
        }
    }

    pub fn add_bytes(&self, key: &str, window: &str, bytes: u64) {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = map.get_mut(key)
            && counter.window == window
        {
            counter.usage.bytes += bytes;
        }
    }

    pub fn usage(&self, key: &str, window: &str) -> Usage {
        let map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|c| c.window == window)
            .map(|c| c.usage)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn windows_follow_the_calendar_of_the_time_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 23:30 UTC on the 23rd is already the 24th in Berlin.
        let (name, end) = window(Period::Day, berlin, at("2026-11-23T23:30:00Z"));
        assert_eq!(name, "2026-11-24");
        assert_eq!(
            end,
            at("2026-11-24T23:00:00Z"),
            "Berlin midnight in winter is 23:00 UTC"
        );
        let (name, end) = window(Period::Month, chrono_tz::UTC, at("2026-12-31T12:00:00Z"));
        assert_eq!(name, "2026-12");
        assert_eq!(end, at("2027-01-01T00:00:00Z"));
        // The day DST starts in Berlin is 23 hours long.
        let (_, end) = window(Period::Day, berlin, at("2026-03-29T00:30:00Z"));
        assert_eq!(end, at("2026-03-29T22:00:00Z"));
    }

    #[test]
    fn counters_refuse_when_used_up_and_start_over_with_the_window() {
        let counters = QuotaCounters::new(1024);
        let later = chrono::Utc::now().timestamp() + 3600;
        let d1 = Window {
            name: "d1",
            ends_at: later,
        };
        let d2 = Window {
            name: "d2",
            ends_at: later,
        };
        assert_eq!(counters.take("k", &d1, 2, 0).unwrap().requests, 1);
        assert_eq!(counters.take("k", &d1, 2, 0).unwrap().requests, 2);
        assert_eq!(
            counters.take("k", &d1, 2, 0).unwrap_err().0,
            Exhausted::Requests
        );
        assert_eq!(
            counters.take("k", &d2, 2, 0).unwrap().requests,
            1,
            "a new window"
        );
        assert!(counters.take("b", &d1, 0, 10).is_ok());
        counters.add_bytes("b", "d1", 10);
        assert_eq!(
            counters.take("b", &d1, 0, 10).unwrap_err().0,
            Exhausted::Bytes
        );
        assert_eq!(
            counters.usage("b", "d1"),
            Usage {
                requests: 1,
                bytes: 10
            }
        );

        // A heavy user's counter survives a flood of new keys in a month window.
        let month = Window {
            name: "2026-11",
            ends_at: later,
        };
        for _ in 0..50 {
            counters.take("heavy", &month, 100, 0).unwrap();
        }
        for i in 0..100_000 {
            let _ = counters.take(&format!("flood-{i}"), &d1, 5, 0);
        }
        let held: usize = counters
            .shards
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert!(held <= 1024 + SHARDS, "{held}");
        assert_eq!(
            counters.usage("heavy", "2026-11").requests,
            50,
            "not forgotten"
        );
    }
}
