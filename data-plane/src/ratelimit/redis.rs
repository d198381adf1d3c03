//! Redis counters: the GCRA of [`super::gcra`] as one Lua script that checks all of a
//! request's Redis limits and charges them only if all allow — one atomic round trip, on
//! Redis's own clock (`TIME`), so every data plane sharing the server counts exactly.
//!
//! The connection is made in the background and kept by redis-rs's connection manager
//! (reconnects on its own); every call has a deadline, after which the limit's failure
//! mode decides. Start-up never waits for Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use super::gcra::{Rate, Verdict};
use super::slices::Grant;

/// KEYS: one counter per limit. ARGV: per limit, the interval (microseconds, with a
/// fraction: 600 000 per second is 1.667 µs, and rounding it would admit more) and the
/// burst. Times count from 2025-01-01 so that doubles keep sub-microsecond precision.
/// Returns per limit {allowed, remaining, reset_us, retry_after_us}.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1735689600) * 1000000 + tonumber(t[2])
local results = {}
local new_tats = {}
local all = 1
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local capacity = interval * burst
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  -- A TAT beyond a full bucket is a stricter limit's from before a change: one request left.
  if tat > now + capacity then tat = now + capacity - interval end
  local new_tat = tat + interval
  local used = new_tat - now
  if used > capacity then
    all = 0
    results[i] = {0, 0, tat - now, used - capacity}
  else
    new_tats[i] = new_tat
    results[i] = {1, math.floor((capacity - used) / interval), used, 0}
  end
end
if all == 1 then
  for i = 1, #KEYS do
    local ttl = math.ceil((new_tats[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.3f', new_tats[i]), 'PX', ttl)
  end
end
return results
"#;

/// Reservations for `consistency: approximate` (see [`super::slices`]): the same buckets and
/// arithmetic as [`SCRIPT`], but each key independently grants as many of `want` requests as
/// its bucket holds. ARGV per key: interval, burst, want. Returns per key {granted,
/// remaining, reset_us, retry_after_us}.
const RESERVE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1735689600) * 1000000 + tonumber(t[2])
local results = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local want = tonumber(ARGV[3 * i])
  local capacity = interval * burst
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  if tat > now + capacity then tat = now + capacity - interval end
  -- As many as fit: the exact script's test `tat + n * interval - now <= capacity`, kept
  -- exact against the rounding of the division.
  local granted = math.floor((capacity - (tat - now)) / interval)
  if granted > want then granted = want end
  if granted < 0 then granted = 0 end
  if granted > 0 and tat + granted * interval - now > capacity then granted = granted - 1 end
  if granted < want and tat + (granted + 1) * interval - now <= capacity then granted = granted + 1 end
  if granted > 0 then
    local new_tat = tat + granted * interval
    local ttl = math.ceil((new_tat - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.3f', new_tat), 'PX', ttl)
    results[i] = {granted, math.floor((capacity - (new_tat - now)) / interval), new_tat - now, 0}
  else
    results[i] = {0, 0, tat - now, tat + interval - now - capacity}
  end
end
return results
"#;

pub struct RedisCounters {
    client: redis::Client,
    manager: ArcSwapOption<ConnectionManager>,
    connected: AtomicBool,
    timeout: Duration,
    script: redis::Script,
    reserve: redis::Script,
}

impl RedisCounters {
    /// Checks the URL; connecting happens in [`RedisCounters::run`].
    pub fn new(url: &str, timeout: Duration) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(Arc::new(Self {
            client,
            manager: ArcSwapOption::empty(),
            connected: AtomicBool::new(false),
            timeout,
            script: redis::Script::new(SCRIPT),
            reserve: redis::Script::new(RESERVE_SCRIPT),
        }))
    }

    /// How long one round trip may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The shared connection while Redis is reachable, for other users of the same server
    /// (command idempotency), with the deadline every call must keep.
    pub fn shared_connection(&self) -> Option<(ConnectionManager, Duration)> {
        if !self.is_connected() {
            return None;
        }
        self.manager
            .load_full()
            .map(|manager| ((*manager).clone(), self.timeout))
    }

    /// Connects (retrying), then checks the connection every second, until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let mut delay = Duration::from_millis(100);
        while self.manager.load().is_none() {
            match ConnectionManager::new_with_config(self.client.clone(), config.clone()).await {
                Ok(manager) => {
                    self.manager.store(Some(Arc::new(manager)));
                    self.connected.store(true, Ordering::Relaxed);
                    tracing::info!("connected to Redis for rate limits");
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to Redis; Redis limits follow their failure mode");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = crate::stopped(&mut shutdown) => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        let mut failures = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = crate::stopped(&mut shutdown) => return,
            }
            let Some(manager) = self.manager.load_full() else {
                continue;
            };
            let mut connection = (*manager).clone();
            let ping = tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut connection),
            )
            .await;
            let up = matches!(ping, Ok(Ok(_)));
            failures = if up { 0 } else { failures + 1 };
            if up != self.connected.swap(up, Ordering::Relaxed) {
                if up {
                    tracing::info!("Redis reachable again");
                } else {
                    tracing::warn!("Redis unreachable; Redis limits follow their failure mode");
                }
            }
            // A server that vanished without closing the connection (a lost node) leaves a
            // socket that only times out; after three silent pings, start afresh.
            if failures >= 3 {
                let fresh = ConnectionManager::new_with_config(self.client.clone(), config.clone());
                if let Ok(Ok(fresh)) =
                    tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), fresh).await
                {
                    self.manager.store(Some(Arc::new(fresh)));
                }
                failures = 0;
            }
        }
    }

    /// One round trip for all `checks`.
    pub async fn check_all(&self, checks: &[(String, Rate)]) -> Result<Vec<Verdict>, String> {
        let mut invocation = self.script.prepare_invoke();
        for (key, rate) in checks {
            bucket(invocation.key(key), *rate);
        }
        let rows = self.rows(&invocation, checks.len(), "rate-limit").await?;
        Ok(rows
            .into_iter()
            .map(|[allowed, remaining, reset, retry]| Verdict {
                allowed: allowed == 1,
                remaining,
                reset_ns: reset.saturating_mul(1000),
                retry_after_ns: retry.saturating_mul(1000),
            })
            .collect())
    }

    /// One round trip reserving `want` requests of each `(key, rate, want)`.
    pub async fn reserve(&self, asks: &[(String, Rate, u64)]) -> Result<Vec<Grant>, String> {
        let mut invocation = self.reserve.prepare_invoke();
        for (key, rate, want) in asks {
            bucket(invocation.key(key), *rate).arg(*want);
        }
        let rows = self.rows(&invocation, asks.len(), "reservation").await?;
        Ok(rows
            .into_iter()
            .map(|[granted, remaining, reset, retry]| Grant {
                granted,
                remaining,
                reset_ns: reset.saturating_mul(1000),
                retry_after_ns: retry.saturating_mul(1000),
            })
            .collect())
    }

    /// Runs a script of one reply row of four numbers per key (negative ones read as 0).
    async fn rows(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        keys: usize,
        script: &str,
    ) -> Result<Vec<[u64; 4]>, String> {
        let mut connection = self.connection().await?;
        let rows: Vec<Vec<i64>> = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        let unexpected = || format!("unexpected reply from the {script} script");
        if rows.len() != keys {
            return Err(unexpected());
        }
        rows.iter()
            .map(|row| match *row.as_slice() {
                [a, b, c, d] => Ok([a, b, c, d].map(|n| u64::try_from(n).unwrap_or(0))),
                _ => Err(unexpected()),
            })
            .collect()
    }
}

/// A bucket's arguments: the interval in microseconds, with a fraction (600 000 per second
/// is 1.667 µs, and rounding it would admit more), and the burst.
fn bucket<'i, 'a>(
    invocation: &'i mut redis::ScriptInvocation<'a>,
    rate: Rate,
) -> &'i mut redis::ScriptInvocation<'a> {
    invocation
        .arg(format!("{:.3}", rate.interval as f64 / 1000.0))
        .arg(rate.burst)
}

/// KEYS: one hash per quota and window. ARGV: per quota, the request and byte limits (0 =
/// none) and when the hash expires. Counts the request in every quota only if none is used
/// up. Returns per quota {why (0 ok, 1 requests, 2 bytes), requests, bytes}.
const QUOTA_SCRIPT: &str = r#"
local results = {}
local ok = 1
for i = 1, #KEYS do
  local requests = tonumber(ARGV[3 * i - 2])
  local bytes = tonumber(ARGV[3 * i - 1])
  local used = redis.call('HMGET', KEYS[i], 'requests', 'bytes')
  local r = tonumber(used[1] or '0') or 0
  local b = tonumber(used[2] or '0') or 0
  local why = 0
  if bytes > 0 and b >= bytes then why = 2 elseif requests > 0 and r >= requests then why = 1 end
  if why > 0 then ok = 0 end
  results[i] = {why, r, b}
end
if ok == 1 then
  for i = 1, #KEYS do
    results[i][2] = redis.call('HINCRBY', KEYS[i], 'requests', 1)
    redis.call('EXPIREAT', KEYS[i], tonumber(ARGV[3 * i]))
  end
end
return results
"#;

/// One quota's check in Redis.
pub struct QuotaCheck<'a> {
    pub key: &'a str,
    pub requests: u64,
    pub bytes: u64,
    /// Unix seconds.
    pub expire_at: i64,
}

impl RedisCounters {
    async fn connection(&self) -> Result<ConnectionManager, String> {
        let manager = self.manager.load_full().ok_or("not connected to Redis")?;
        Ok((*manager).clone())
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.connected.store(true, Ordering::Relaxed);
                Ok(value)
            }
            Ok(Err(error)) => {
                self.connected.store(false, Ordering::Relaxed);
                Err(error.to_string())
            }
            Err(_) => {
                self.connected.store(false, Ordering::Relaxed);
                Err(format!("no answer within {:?}", self.timeout))
            }
        }
    }

    /// Counts a request in every quota unless one is used up: `(why, requests, bytes)` per
    /// quota, `why` 0 when counted.
    pub async fn take_quotas(
        &self,
        checks: &[QuotaCheck<'_>],
    ) -> Result<Vec<(i64, u64, u64)>, String> {
        let mut connection = self.connection().await?;
        let script = redis::Script::new(QUOTA_SCRIPT);
        let mut invocation = script.prepare_invoke();
        for check in checks {
            invocation
                .key(check.key)
                .arg(check.requests)
                .arg(check.bytes)
                .arg(check.expire_at);
        }
        let rows: Vec<Vec<i64>> = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        if rows.len() != checks.len() {
            return Err("unexpected reply from the quota script".into());
        }
        let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
        rows.iter()
            .map(|row| match row.as_slice() {
                [why, requests, bytes] => Ok((*why, unsigned(*requests), unsigned(*bytes))),
                _ => Err("unexpected reply from the quota script".to_string()),
            })
            .collect()
    }

    /// Adds response bytes to a quota's hash.
    pub async fn add_quota_bytes(
        &self,
        key: &str,
        bytes: u64,
        expire_at: i64,
    ) -> Result<(), String> {
        let mut connection = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hincr(key, "bytes", bytes)
            .ignore()
            .expire_at(key, expire_at)
            .ignore();
        self.bounded(pipe.query_async::<()>(&mut connection)).await
    }

    /// `(requests, bytes)` used in a quota's hash.
    pub async fn quota_usage(&self, key: &str) -> Result<(u64, u64), String> {
        let mut connection = self.connection().await?;
        let (requests, bytes): (Option<u64>, Option<u64>) = self
            .bounded(
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("requests")
                    .arg("bytes")
                    .query_async(&mut connection),
            )
            .await?;
        Ok((requests.unwrap_or(0), bytes.unwrap_or(0)))
    }
}
