//! Traffic fields of a rule into their snapshot form, every default resolved here so that
//! data planes never guess one.

use pavilion_crds::traffic::{self, BalancePolicy};
use pavilion_proto as proto;

fn millis(duration: std::time::Duration) -> u64 {
    duration.as_millis() as u64
}

pub(super) fn retry(retry: &traffic::Retry) -> proto::Retry {
    let on: Vec<&str> = if retry.on.is_empty() {
        traffic::DEFAULT_RETRY_ON.to_vec()
    } else {
        retry.on.iter().map(String::as_str).collect()
    };
    let mut on_statuses: Vec<u32> = on.iter().filter_map(|o| o.parse().ok()).collect();
    on_statuses.sort_unstable();
    on_statuses.dedup();
    proto::Retry {
        attempts: retry.attempts.unwrap_or(2),
        on_connect_failure: on.contains(&"connect-failure"),
        on_reset: on.contains(&"reset"),
        on_statuses,
        per_try_timeout_ms: retry.per_try_timeout().map_or(0, millis),
        backoff_ms: millis(retry.backoff()),
        max_backoff_ms: millis(retry.max_backoff().max(retry.backoff())),
        budget_percent: retry.budget_percent.unwrap_or(20),
        min_retries_per_second: retry.min_retries_per_second.unwrap_or(3),
    }
}

pub(super) fn load_balancer(balancer: &traffic::LoadBalancer) -> proto::LoadBalancer {
    let policy = match balancer.policy {
        BalancePolicy::RoundRobin => proto::BalancePolicy::RoundRobin,
        BalancePolicy::Random => proto::BalancePolicy::Random,
        BalancePolicy::LeastRequest => proto::BalancePolicy::LeastRequest,
        BalancePolicy::ConsistentHash => proto::BalancePolicy::ConsistentHash,
    };
    let hash_on = match balancer.hash_on.as_deref() {
        Some(key) => match key.split_once(':') {
            Some(("header", name)) => format!("header:{}", name.to_ascii_lowercase()),
            _ => key.to_owned(),
        },
        None => String::new(),
    };
    proto::LoadBalancer {
        policy: policy as i32,
        hash_on,
    }
}

pub(super) fn health_check(health: &traffic::HealthCheck) -> proto::HealthCheck {
    proto::HealthCheck {
        active: health.active.as_ref().map(|a| proto::ActiveCheck {
            path: a.path.clone(),
            interval_ms: millis(a.interval()),
            timeout_ms: millis(a.timeout()),
            healthy_threshold: a.healthy_threshold.unwrap_or(2),
            unhealthy_threshold: a.unhealthy_threshold.unwrap_or(3),
        }),
        passive: health.passive.as_ref().map(|p| proto::PassiveCheck {
            consecutive_failures: p.consecutive_failures.unwrap_or(5),
            ejection_ms: millis(p.ejection_time()),
            max_ejected_percent: p.max_ejected_percent.unwrap_or(50),
        }),
    }
}

pub(super) fn circuit_breaker(breaker: &traffic::CircuitBreaker) -> proto::CircuitBreaker {
    proto::CircuitBreaker {
        consecutive_failures: breaker.consecutive_failures.unwrap_or(5),
        failure_percent: breaker.failure_percent.unwrap_or(0),
        min_requests: breaker.min_requests.unwrap_or(20),
        window_ms: millis(breaker.window()),
        open_for_ms: millis(breaker.open_for()),
        half_open_probes: breaker.half_open_probes.unwrap_or(3),
    }
}

pub(super) fn rewrite(rewrite: &traffic::Rewrite) -> proto::Rewrite {
    let (path_regex, path_substitution) = rewrite
        .path_regex
        .as_ref()
        .map(|r| (r.pattern.clone(), r.substitution.clone()))
        .unwrap_or_default();
    proto::Rewrite {
        path_prefix: rewrite.path_prefix.clone().unwrap_or_default(),
        path_regex,
        path_substitution,
        host: rewrite
            .host
            .as_deref()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default(),
    }
}

pub(super) fn header_edits(edits: &traffic::HeaderEdits) -> proto::HeaderEdits {
    let pairs = |list: &[traffic::Header]| {
        list.iter()
            .map(|h| proto::HeaderPair {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
            .collect()
    };
    proto::HeaderEdits {
        remove: edits
            .remove
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        set: pairs(&edits.set),
        add: pairs(&edits.add),
    }
}

pub(super) fn compression(compression: &traffic::Compression) -> proto::Compression {
    let types = if compression.types.is_empty() {
        traffic::DEFAULT_COMPRESSED_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect()
    } else {
        compression
            .types
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .collect()
    };
    let offered = |name: &str| {
        compression.algorithms.is_empty() || compression.algorithms.iter().any(|a| a == name)
    };
    proto::Compression {
        min_size: compression.min_size.unwrap_or(1024),
        types,
        gzip: offered("gzip"),
        brotli: offered("br"),
        zstd: offered("zstd"),
    }
}

pub(super) fn connections(connections: &traffic::Connections) -> proto::Connections {
    proto::Connections {
        max: connections.max.unwrap_or(0),
        queue_timeout_ms: millis(connections.queue_timeout()),
        idle_timeout_ms: connections.idle_timeout().map_or(0, millis),
    }
}

pub(super) fn cache(cache: &traffic::Cache) -> proto::Cache {
    proto::Cache {
        default_ttl_ms: cache.default_ttl().map_or(0, millis),
        max_ttl_ms: millis(cache.max_ttl()),
        max_entry_bytes: cache.max_entry_bytes.unwrap_or(1 << 20),
        key_headers: cache
            .key_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    }
}
