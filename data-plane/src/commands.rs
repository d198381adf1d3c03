//! Command idempotency: a command's `command_id` (per tenant) is remembered for the rule's
//! window with the first result, so a client that retries — after a timeout, a lost
//! connection — gets that result and the command runs once.
//!
//! With `--redis`, ids are remembered in Redis (`SET … NX PX`), so every data plane sharing
//! the server agrees; without it, or while Redis is unreachable, each data plane remembers
//! its own (a retry that lands on another data plane may then run the command again).
//! A command whose exchange with the shard failed before an answer (no connection, a
//! timeout) is forgotten, so a retry runs it: the gateway cannot know whether it ran.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use crate::ratelimit::redis::RedisCounters;

/// Ids remembered per data plane (without Redis); past it the oldest go first.
const MAX_LOCAL: usize = 100_000;

/// What the aggregate shard answered: a gRPC status, its message, and (on success) the
/// encoded `SubmitCommandResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: u32,
    pub message: String,
    pub body: Bytes,
}

impl Outcome {
    fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(12 + self.message.len() + self.body.len());
        out.put_u32(self.status);
        out.put_u32(self.message.len() as u32);
        out.put_slice(self.message.as_bytes());
        out.put_slice(&self.body);
        out.to_vec()
    }

    fn decode(mut bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 8 {
            return None;
        }
        let status = bytes.get_u32();
        let length = bytes.get_u32() as usize;
        let message = std::str::from_utf8(bytes.get(..length)?).ok()?.to_owned();
        Some(Self {
            status,
            message,
            body: Bytes::copy_from_slice(&bytes[length..]),
        })
    }
}

/// What remembering found.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First time: run it, then [`Commands::finish`] (or [`Commands::forget`]).
    New,
    /// Ran before within the window: its result.
    Done(Outcome),
    /// Running right now (a concurrent retry).
    InProgress,
}

enum Slot {
    Running,
    Done(Outcome),
}

pub struct Commands {
    local: Mutex<HashMap<String, (Slot, Instant)>>,
    redis: Option<Arc<RedisCounters>>,
}

const RUNNING: &[u8] = b"running";

impl Commands {
    pub fn new(redis: Option<Arc<RedisCounters>>) -> Self {
        Self {
            local: Mutex::default(),
            redis,
        }
    }

    /// The key of a tenant's command id (a tenant id holds no `:`).
    pub fn key(tenant: &str, command_id: &str) -> String {
        format!("pavilion:cmd:{tenant}:{command_id}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Slot, Instant)>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn begin(&self, key: &str, window: Duration) -> Begin {
        if let Some((mut redis, deadline)) = self.redis.as_ref().and_then(|r| r.shared_connection())
        {
            let mut claim = redis::cmd("SET");
            claim
                .arg(key)
                .arg(RUNNING)
                .arg("NX")
                .arg("PX")
                .arg(window.as_millis() as u64);
            let claimed = claim.query_async::<Option<String>>(&mut redis);
            match tokio::time::timeout(deadline, claimed).await {
                Ok(Ok(Some(_))) => return Begin::New,
                Ok(Ok(None)) => {
                    let mut get = redis::cmd("GET");
                    get.arg(key);
                    let stored = get.query_async::<Option<Vec<u8>>>(&mut redis);
                    if let Ok(Ok(value)) = tokio::time::timeout(deadline, stored).await {
                        return match value {
                            Some(bytes) if bytes == RUNNING => Begin::InProgress,
                            Some(bytes) => {
                                Outcome::decode(&bytes).map_or(Begin::InProgress, Begin::Done)
                            }
                            // Expired just now.
                            None => Begin::New,
                        };
                    }
                }
                _ => {}
            }
            tracing::warn!("Redis did not answer for command idempotency; remembering locally");
        }
        let now = Instant::now();
        let mut local = self.lock();
        match local.get(key) {
            Some((_, until)) if *until <= now => {}
            Some((Slot::Running, _)) => return Begin::InProgress,
            Some((Slot::Done(outcome), _)) => return Begin::Done(outcome.clone()),
            None => {}
        }
        if local.len() >= MAX_LOCAL {
            local.retain(|_, (_, until)| *until > now);
            while local.len() >= MAX_LOCAL {
                let Some(oldest) = local
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                local.remove(&oldest);
            }
        }
        local.insert(key.to_owned(), (Slot::Running, now + window));
        Begin::New
    }

    /// Remembers `outcome` for the rest of the window.
    pub async fn finish(&self, key: &str, outcome: &Outcome, window: Duration) {
        if let Some((mut redis, deadline)) = self.redis.as_ref().and_then(|r| r.shared_connection())
        {
            let mut set = redis::cmd("SET");
            set.arg(key)
                .arg(outcome.encode())
                .arg("PX")
                .arg(window.as_millis() as u64);
            let stored = set.query_async::<()>(&mut redis);
            if matches!(tokio::time::timeout(deadline, stored).await, Ok(Ok(()))) {
                self.lock().remove(key);
                return;
            }
        }
        let mut local = self.lock();
        local.insert(
            key.to_owned(),
            (Slot::Done(outcome.clone()), Instant::now() + window),
        );
    }

    /// Forgets a command whose exchange failed before any answer: a retry runs it.
    pub async fn forget(&self, key: &str) {
        self.lock().remove(key);
        if let Some((mut redis, deadline)) = self.redis.as_ref().and_then(|r| r.shared_connection())
        {
            // Only the claim, never a result someone stored meanwhile.
            let script = redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            );
            let mut call = script.key(key);
            call.arg(RUNNING);
            let _ = tokio::time::timeout(deadline, call.invoke_async::<i64>(&mut redis)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_id_is_run_once_and_replayed_within_the_window() {
        let commands = Commands::new(None);
        let key = Commands::key("acme", "c-1");
        let window = Duration::from_millis(200);
        assert_eq!(commands.begin(&key, window).await, Begin::New);
        assert_eq!(commands.begin(&key, window).await, Begin::InProgress);
        let outcome = Outcome {
            status: 0,
            message: String::new(),
            body: Bytes::from_static(b"\x0a\x03o-1"),
        };
        commands.finish(&key, &outcome, window).await;
        assert_eq!(
            commands.begin(&key, window).await,
            Begin::Done(outcome.clone())
        );
        assert_eq!(
            commands
                .begin(&Commands::key("globex", "c-1"), window)
                .await,
            Begin::New,
            "ids are per tenant"
        );
        tokio::time::sleep(window + Duration::from_millis(20)).await;
        assert_eq!(
            commands.begin(&key, window).await,
            Begin::New,
            "the window ended"
        );
        commands.forget(&key).await;
        assert_eq!(commands.begin(&key, window).await, Begin::New, "forgotten");
    }

    #[test]
    fn outcomes_round_trip() {
        let outcome = Outcome {
            status: 9,
            message: "version conflict: expected 3, at 4".into(),
            body: Bytes::new(),
        };
        assert_eq!(Outcome::decode(&outcome.encode()), Some(outcome));
        assert_eq!(Outcome::decode(b"\0\0"), None);
    }
}
