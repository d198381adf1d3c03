//! Rate limits against real upstreams and a real redis-server: 429s with the headers,
//! nesting, overrides, exactness across data planes sharing Redis, and each failure mode
//! while Redis is down.

use std::time::Duration;

use http::Request;
use http_body_util::Full;
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::redis::RedisServer;
use pavilion_tests::snapshot::{prefix_rule, route, snapshot};
use pavilion_tests::{Upstream, eventually};

const HOUR_MS: u64 = 3_600_000;

fn limit(
    policy: &str,
    key: &[&str],
    requests: u64,
    backend: proto::RateLimitBackend,
) -> proto::RateLimit {
    proto::RateLimit {
        policy: policy.into(),
        key: key.iter().map(|k| k.to_string()).collect(),
        requests,
        period_ms: HOUR_MS,
        burst: requests,
        backend: backend as i32,
        headers: true,
        ..Default::default()
    }
}

fn limited_rule(prefix: &str, upstream: &Upstream, limits: Vec<proto::RateLimit>) -> proto::Rule {
    let mut rule = prefix_rule(prefix, &[(&upstream.url(), 1)]);
    rule.rate_limits = limits;
    rule
}

async fn get(dp: &DataPlane, path: &str, headers: &[(&str, &str)]) -> Reply {
    HttpClient::http1()
        .get_with(&format!("http://{}{path}", dp.addr), headers)
        .await
        .unwrap()
}

/// What `/ready` says of Redis: `reachable`, `unreachable` or `unused`.
async fn redis_state(dp: &DataPlane) -> String {
    let ready = HttpClient::http1()
        .get(&format!("http://{}/ready", dp.admin_addr))
        .await
        .unwrap();
    ready.json()["redis"].as_str().unwrap().to_owned()
}

/// Waits until `/ready` says `state` of Redis.
async fn until_redis(dp: &DataPlane, state: &str) {
    eventually(
        &format!("Redis is {state}"),
        Duration::from_secs(15),
        || async { (redis_state(dp).await == state).then_some(()) },
    )
    .await;
}

async fn data_plane(redis: Option<&RedisServer>, replicas: u64) -> DataPlane {
    let mut config = Config::local();
    config.redis = redis.map(RedisServer::url);
    config.rate_limit.replicas = replicas;
    pavilion_data::start(config).await.unwrap()
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_and_ratelimit_headers() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(None, 1).await;
    let by_ip = limit(
        "shop/per-client",
        &["clientIp"],
        3,
        proto::RateLimitBackend::Local,
    );
    let mut quiet = limit(
        "shop/quiet",
        &["header:x-tenant"],
        2,
        proto::RateLimitBackend::Local,
    );
    quiet.headers = false;
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![
                limited_rule("/orders", &upstream, vec![by_ip]),
                limited_rule("/quiet", &upstream, vec![quiet]),
            ],
        )],
    ))
    .await
    .unwrap();

    for remaining in ["2", "1", "0"] {
        let reply = get(&dp, "/orders", &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("ratelimit-remaining"), Some(remaining));
        let reset: u64 = reply.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=3600).contains(&reset), "{reset}");
    }
    let reply = get(&dp, "/orders", &[]).await;
    assert_eq!(reply.status, 429);
    let body = reply.json();
    assert_eq!(body["error"]["code"], "rate_limited");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("shop/per-client") && message.contains("3 per 1h by clientIp"),
        "{message}"
    );
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1199..=1200).contains(&retry_after),
        "one request's interval is 20 minutes: {retry_after}"
    );
    assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
    assert!(reply.header("x-request-id").is_some());

    // Keys by header: each tenant has its own bucket; no headers when the policy says so.
    for tenant in ["a", "b"] {
        for _ in 0..2 {
            let reply = get(&dp, "/quiet", &[("x-tenant", tenant)]).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("ratelimit-limit"), None);
        }
        assert_eq!(
            get(&dp, "/quiet", &[("x-tenant", tenant)]).await.status,
            429,
            "{tenant}"
        );
    }
    let metrics = HttpClient::http1()
        .get(&format!("http://{}/metrics", dp.admin_addr))
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains(
            r#"pavilion_rate_limit_decisions_total{policy="shop/per-client",result="limited"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"pavilion_rate_limit_decisions_total{policy="shop/per-client",result="allowed"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn nested_limits_each_apply_and_a_refusal_charges_none() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(None, 1).await;
    let tenant = limit("shop/tenant", &["route"], 5, proto::RateLimitBackend::Local);
    let mut user = limit(
        "shop/user",
        &["header:x-user"],
        2,
        proto::RateLimitBackend::Local,
    );
    user.overrides = vec![proto::RateLimitOverride {
        value: "premium-*".into(),
        requests: 4,
        burst: 4,
    }];
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![limited_rule("/", &upstream, vec![tenant, user])],
        )],
    ))
    .await
    .unwrap();

    let status = |user: &'static str| {
        let dp = &dp;
        async move { get(dp, "/x", &[("x-user", user)]).await }
    };
    assert_eq!(status("ann").await.status, 200);
    assert_eq!(status("ann").await.status, 200);
    let reply = status("ann").await;
    assert_eq!(reply.status, 429);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shop/user"),
        "{}",
        reply.text()
    );
    // Ann's refusal did not use up the tenant's budget: three more fit (5 in all).
    assert_eq!(status("premium-bob").await.status, 200);
    assert_eq!(status("premium-bob").await.status, 200);
    assert_eq!(
        status("premium-bob").await.status,
        200,
        "a premium key may go past 2"
    );
    let reply = status("premium-bob").await;
    assert_eq!(reply.status, 429, "the tenant's 5 are used up");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shop/tenant"),
        "{}",
        reply.text()
    );
}

/// Fires `count` concurrent requests, alternating between the data planes; counts 200s.
async fn admitted(planes: &[&DataPlane], path: &str, count: usize) -> usize {
    let mut requests = Vec::new();
    for i in 0..count {
        let url = format!("http://{}{path}", planes[i % planes.len()].addr);
        requests.push(tokio::spawn(async move {
            HttpClient::http1()
                .get(&url)
                .await
                .map(|r| r.status.as_u16())
        }));
    }
    let mut ok = 0;
    for request in requests {
        match request.await.unwrap().expect("an answer") {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    ok
}

#[tokio::test]
async fn redis_limits_are_exact_across_data_planes_and_local_ones_count_per_replica() {
    let redis = RedisServer::start();
    let upstream = Upstream::start("u").await.unwrap();
    let one = data_plane(Some(&redis), 2).await;
    let two = data_plane(Some(&redis), 2).await;
    let shared = limit(
        "shop/shared",
        &["route"],
        20,
        proto::RateLimitBackend::Redis,
    );
    let local = limit("shop/local", &["route"], 20, proto::RateLimitBackend::Local);
    let snap = snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![
                limited_rule("/redis", &upstream, vec![shared]),
                limited_rule("/local", &upstream, vec![local]),
            ],
        )],
    );
    for dp in [&one, &two] {
        dp.apply(snap.clone()).await.unwrap();
        until_redis(dp, "reachable").await;
    }
    assert_eq!(
        admitted(&[&one, &two], "/redis", 100).await,
        20,
        "exactly the limit, across both"
    );
    // In process each data plane counts alone: twice the limit in all (see docs).
    assert_eq!(admitted(&[&one, &two], "/local", 100).await, 40);
}

/// A metric of the data plane's `/metrics` without labels.
async fn metric(dp: &DataPlane, name: &str) -> f64 {
    let metrics = HttpClient::http1()
        .get(&format!("http://{}/metrics", dp.admin_addr))
        .await
        .unwrap()
        .text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
        .parse()
        .unwrap()
}

fn approximate(policy: &str, requests: u64, period_ms: u64) -> proto::RateLimit {
    proto::RateLimit {
        period_ms,
        approximate: true,
        ..limit(policy, &["route"], requests, proto::RateLimitBackend::Redis)
    }
}

/// Two data planes (`--replicas 2`) sharing `redis`, serving `/sliced` behind `limit`.
async fn sliced_pair(
    redis: &RedisServer,
    upstream: &Upstream,
    limit: proto::RateLimit,
) -> [DataPlane; 2] {
    let snap = snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![limited_rule("/sliced", upstream, vec![limit])],
        )],
    );
    // A slow round trip (a loaded CI machine) must not count as Redis unreachable: the
    // failure mode would then admit on local counts, which is not what these tests measure.
    let patient = || async {
        let mut config = Config::local();
        config.redis = Some(redis.url());
        config.redis_timeout = Duration::from_secs(5);
        config.rate_limit.replicas = 2;
        pavilion_data::start(config).await.unwrap()
    };
    let planes = [patient().await, patient().await];
    for dp in &planes {
        dp.apply(snap.clone()).await.unwrap();
        until_redis(dp, "reachable").await;
    }
    planes
}

#[tokio::test]
async fn approximate_redis_limits_take_slices_in_few_round_trips_and_spend_all_of_the_limit() {
    let redis = RedisServer::start();
    let upstream = Upstream::start("u").await.unwrap();
    // 410 per day, two replicas: slices of 410 / (8 × 2) = 25; no refill during the test.
    let [one, two] = sliced_pair(
        &redis,
        &upstream,
        approximate("shop/sliced", 410, 24 * HOUR_MS),
    )
    .await;
    let before = [
        metric(&one, "pavilion_rate_limit_redis_seconds_count").await,
        metric(&two, "pavilion_rate_limit_redis_seconds_count").await,
    ];
    let mut admitted = 0;
    for i in 0..600 {
        let dp = if i % 2 == 0 { &one } else { &two };
        let reply = get(dp, "/sliced", &[]).await;
        match reply.status.as_u16() {
            200 => {
                admitted += 1;
                assert!(reply.header("ratelimit-remaining").is_some());
            }
            429 => {
                assert!(reply.header("retry-after").is_some());
                assert!(reply.text().contains("shop/sliced"), "{}", reply.text());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // Every request Redis granted was spent: one after the other, nothing is left in hand.
    assert_eq!(admitted, 410, "exactly the limit, across both");
    for (dp, before) in [&one, &two].into_iter().zip(before) {
        let trips = metric(dp, "pavilion_rate_limit_redis_seconds_count").await - before;
        // 205 admitted in slices of 25 and one refusal, which is then kept: not 300 trips.
        assert!((9.0..=12.0).contains(&trips), "{trips} round trips");
    }
}

#[tokio::test]
async fn approximate_limits_under_concurrency_admit_at_most_one_slice_per_data_plane_more() {
    let redis = RedisServer::start();
    let upstream = Upstream::start("u").await.unwrap();
    // 160 per second, burst 160, two replicas: slices of 10.
    let [one, two] = sliced_pair(&redis, &upstream, approximate("shop/fast", 160, 1000)).await;
    let started = std::time::Instant::now();
    let mut admitted_total = 0;
    for _ in 0..3 {
        admitted_total += admitted(&[&one, &two], "/sliced", 300).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Exact: the bucket plus what refilled while the requests ran; approximate may add one
    // slice per data plane.
    let exact = 160.0 + 160.0 * elapsed;
    assert!(
        (admitted_total as f64) <= exact + 2.0 * 10.0,
        "{admitted_total} admitted in {elapsed:.2} s"
    );
    // Demand always exceeded the limit: Redis handed out the whole bucket, and at most a
    // slice per data plane stayed unspent.
    assert!(
        admitted_total >= 160 - 2 * 10,
        "{admitted_total} admitted in {elapsed:.2} s"
    );
}

#[tokio::test]
async fn with_redis_down_each_failure_mode_does_what_it_says_and_redis_comes_back() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(Some(&redis), 2).await;
    let mode = |name: &str, mode: proto::RateLimitFailureMode| {
        let mut l = limit(
            &format!("shop/{name}"),
            &["route"],
            6,
            proto::RateLimitBackend::Redis,
        );
        l.failure_mode = mode as i32;
        limited_rule(&format!("/{name}"), &upstream, vec![l])
    };
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![
                mode("open", proto::RateLimitFailureMode::Open),
                mode("closed", proto::RateLimitFailureMode::Closed),
                mode("local", proto::RateLimitFailureMode::Local),
            ],
        )],
    ))
    .await
    .unwrap();
    until_redis(&dp, "reachable").await;
    assert_eq!(
        admitted(&[&dp], "/closed", 10).await,
        6,
        "Redis counts while it is up"
    );

    redis.stop();
    let started = std::time::Instant::now();
    assert_eq!(admitted(&[&dp], "/open", 10).await, 10, "open: unlimited");
    let reply = get(&dp, "/closed", &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "rate_limit_unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        admitted(&[&dp], "/local", 10).await,
        3,
        "local: this replica's share, 6 / 2"
    );
    eprintln!("21 requests with Redis down took {:?}", started.elapsed());
    assert_eq!(redis_state(&dp).await, "unreachable");
    let metrics = HttpClient::http1()
        .get(&format!("http://{}/metrics", dp.admin_addr))
        .await
        .unwrap()
        .text();
    for mode in ["open", "closed", "local"] {
        let line =
            format!(r#"pavilion_rate_limit_fallbacks_total{{mode="{mode}",policy="shop/{mode}"}}"#);
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // Redis returns (empty): limits are counted there again, by the full limit.
    redis.resume();
    until_redis(&dp, "reachable").await;
    assert_eq!(admitted(&[&dp], "/closed", 10).await, 6);
}

fn concurrency_rule(
    policy: &str,
    upstream: &Upstream,
    min: u32,
    max: u32,
    initial: u32,
    adaptive: bool,
) -> proto::Rule {
    let mut rule = prefix_rule("/", &[(&upstream.url(), 1)]);
    rule.concurrency = Some(proto::ConcurrencyLimit {
        policy: policy.into(),
        min,
        max,
        initial,
        adaptive,
    });
    rule
}

async fn get_on(dp: &DataPlane, host: &str, path: &str) -> Reply {
    get(dp, path, &[("host", host)]).await
}

/// Statuses of `count` concurrent GETs of `path` on `host`.
async fn concurrently(
    dp: &DataPlane,
    host: &'static str,
    path: &'static str,
    count: usize,
) -> Vec<u16> {
    concurrently_at(dp.addr, host, path, count).await
}

async fn gauge(dp: &DataPlane, policy: &str) -> f64 {
    let metrics = HttpClient::http1()
        .get(&format!("http://{}/metrics", dp.admin_addr))
        .await
        .unwrap()
        .text();
    let prefix = format!("pavilion_concurrency_limit{{policy=\"{policy}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} in\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_concurrency_limit_sheds_with_503_and_an_adaptive_one_follows_latency() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(None, 1).await;
    dp.apply(snapshot(
        "v1",
        vec![
            route(
                "shop/fixed",
                &["fixed.test"],
                vec![concurrency_rule("shop/fixed", &upstream, 1, 2, 2, false)],
            ),
            route(
                "shop/adaptive",
                &["adaptive.test"],
                vec![concurrency_rule(
                    "shop/adaptive",
                    &upstream,
                    1,
                    64,
                    16,
                    true,
                )],
            ),
        ],
    ))
    .await
    .unwrap();

    let mut statuses = concurrently(&dp, "fixed.test", "/delay/400", 6).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
    assert_eq!(
        get_on(&dp, "fixed.test", "/x").await.status,
        200,
        "permits are given back"
    );
    // The refusal explains itself.
    let busy = tokio::spawn({
        let addr = dp.addr;
        async move { concurrently_at(addr, "fixed.test", "/delay/400", 2).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reply = get_on(&dp, "fixed.test", "/x").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["code"], "overloaded");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrency limit of policy shop/fixed"),
        "{}",
        reply.text()
    );
    assert_eq!(busy.await.unwrap(), [200, 200]);

    // Adaptive: a fast upstream under steady load, then the same upstream 30x slower.
    for _ in 0..30 {
        concurrently(&dp, "adaptive.test", "/delay/2", 8).await;
    }
    let healthy = gauge(&dp, "shop/adaptive").await;
    let mut shed = 0;
    for _ in 0..8 {
        shed += concurrently(&dp, "adaptive.test", "/delay/60", 24)
            .await
            .iter()
            .filter(|s| **s == 503)
            .count();
    }
    let loaded = gauge(&dp, "shop/adaptive").await;
    assert!(
        loaded < healthy && loaded < 16.0,
        "the limit follows latency down: {healthy} -> {loaded}"
    );
    assert!(shed > 0, "requests beyond the limit were shed");
}

async fn concurrently_at(
    addr: std::net::SocketAddr,
    host: &'static str,
    path: &'static str,
    count: usize,
) -> Vec<u16> {
    let requests: Vec<_> = (0..count)
        .map(|_| {
            tokio::spawn(async move {
                let request = Request::get(format!("http://{addr}{path}"))
                    .header("host", host)
                    .body(Full::default())
                    .unwrap();
                HttpClient::http1()
                    .send(request)
                    .await
                    .expect("an answer")
                    .status
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn a_request_refused_by_one_backend_is_charged_to_none_of_the_other() {
    let redis = RedisServer::start();
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(Some(&redis), 1).await;
    let per_client = limit(
        "shop/per-client",
        &["clientIp"],
        3,
        proto::RateLimitBackend::Local,
    );
    let route_wide = limit("shop/route", &["route"], 5, proto::RateLimitBackend::Redis);
    let mut per_user = limit(
        "shop/route",
        &["header:x-user"],
        2,
        proto::RateLimitBackend::Redis,
    );
    per_user.index = 1;
    let tiny = limit("shop/tiny", &["route"], 1, proto::RateLimitBackend::Redis);
    let build = |version: &str, with_tiny: bool| {
        let mut limits = vec![per_client.clone()];
        if with_tiny {
            limits.push(tiny.clone());
        }
        snapshot(
            version,
            vec![route(
                "shop/orders",
                &[],
                vec![
                    limited_rule("/mixed", &upstream, limits),
                    limited_rule(
                        "/two",
                        &upstream,
                        vec![route_wide.clone(), per_user.clone()],
                    ),
                ],
            )],
        )
    };
    dp.apply(build("v1", true)).await.unwrap();
    until_redis(&dp, "reachable").await;

    // Local allows, Redis refuses: the local charge is given back.
    assert_eq!(get(&dp, "/mixed", &[]).await.status, 200);
    assert_eq!(
        get(&dp, "/mixed", &[]).await.status,
        429,
        "the tiny Redis limit"
    );
    dp.apply(build("v2", false)).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&dp, "/mixed", &[]).await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "3 per client: one used, the refused one refunded"
    );

    // Two Redis limits in one script: a refusal by one charges neither.
    for _ in 0..2 {
        assert_eq!(get(&dp, "/two", &[("x-user", "ann")]).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&dp, "/two", &[("x-user", "ann")]).await.status, 429);
    }
    for user in ["bob", "bob", "cid"] {
        assert_eq!(
            get(&dp, "/two", &[("x-user", user)]).await.status,
            200,
            "{user}: ann's refusals used none of the route's 5"
        );
    }
    assert_eq!(
        get(&dp, "/two", &[("x-user", "dan")]).await.status,
        429,
        "the route's 5 are used up"
    );
}

#[tokio::test]
async fn a_frozen_redis_costs_at_most_the_timeout_and_recovery_is_automatic() {
    let redis = RedisServer::start();
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(Some(&redis), 1).await;
    let mut open = limit(
        "shop/open",
        &["route"],
        1000,
        proto::RateLimitBackend::Redis,
    );
    open.failure_mode = proto::RateLimitFailureMode::Open as i32;
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![limited_rule("/", &upstream, vec![open])],
        )],
    ))
    .await
    .unwrap();
    until_redis(&dp, "reachable").await;
    assert_eq!(
        get(&dp, "/x", &[]).await.header("ratelimit-remaining"),
        Some("999")
    );

    redis.pause();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&dp, "/x", &[]).await.status, 200, "failureMode open");
    }
    let took = started.elapsed();
    eprintln!("20 requests with Redis frozen took {took:?}");
    assert_eq!(redis_state(&dp).await, "unreachable");

    redis.unpause();
    until_redis(&dp, "reachable").await;
    // The request that timed out while Redis was frozen may still have run there when it
    // thawed (a timeout cannot take back a sent command): 998 or 997 left.
    let left = |reply: &Reply| {
        reply
            .header("ratelimit-remaining")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let first = left(&get(&dp, "/x", &[]).await);
    assert!(
        (997..=998).contains(&first),
        "counted in Redis again: {first}"
    );
    assert_eq!(left(&get(&dp, "/x", &[]).await), first - 1);
}

fn quota(
    policy: &str,
    key: &[&str],
    requests: u64,
    bytes: u64,
    zone: &str,
    backend: proto::RateLimitBackend,
) -> proto::Quota {
    proto::Quota {
        policy: policy.into(),
        key: key.iter().map(|k| k.to_string()).collect(),
        requests,
        bytes,
        period: proto::QuotaPeriod::Day as i32,
        time_zone: zone.into(),
        backend: backend as i32,
        ..Default::default()
    }
}

fn quota_rule(prefix: &str, upstream: &Upstream, quotas: Vec<proto::Quota>) -> proto::Rule {
    let mut rule = prefix_rule(prefix, &[(&upstream.url(), 1)]);
    rule.quotas = quotas;
    rule
}

async fn usage(dp: &DataPlane, key: &str) -> serde_json::Value {
    HttpClient::http1()
        .get(&format!("http://{}/admin/quota/{key}", dp.admin_addr))
        .await
        .unwrap()
        .json()
}

#[tokio::test]
async fn quotas_count_requests_and_bytes_per_calendar_day_in_a_time_zone() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(None, 1).await;
    let tenants = quota(
        "shop/plan",
        &["header:x-tenant"],
        3,
        0,
        "Europe/Berlin",
        proto::RateLimitBackend::Local,
    );
    let mut bandwidth = quota(
        "shop/bandwidth",
        &["route"],
        0,
        100,
        "UTC",
        proto::RateLimitBackend::Local,
    );
    bandwidth.period = proto::QuotaPeriod::Month as i32;
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![
                quota_rule("/orders", &upstream, vec![tenants]),
                quota_rule("/bytes", &upstream, vec![bandwidth]),
            ],
        )],
    ))
    .await
    .unwrap();

    for _ in 0..3 {
        assert_eq!(
            get(&dp, "/orders", &[("x-tenant", "acme")]).await.status,
            200
        );
    }
    let reply = get(&dp, "/orders", &[("x-tenant", "acme")]).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["error"]["code"], "quota_exceeded");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("shop/plan")
            && message.contains("3 requests per day (Europe/Berlin)")
            && message.contains("resets at"),
        "{message}"
    );
    // Retry-After: until the next midnight in Berlin.
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let now = chrono::Utc::now().with_timezone(&berlin);
    let midnight = now
        .date_naive()
        .succ_opt()
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let expected = (midnight - now.naive_local()).num_seconds();
    let retry_after: i64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (retry_after - expected).abs() <= 3600 + 5,
        "{retry_after} vs about {expected}"
    );
    assert_eq!(
        get(&dp, "/orders", &[("x-tenant", "globex")]).await.status,
        200,
        "another tenant"
    );

    let report = usage(&dp, "acme").await;
    let plan = report["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["policy"] == "shop/plan")
        .unwrap()
        .clone();
    assert_eq!(plan["used"]["requests"], 3);
    assert_eq!(plan["limit"]["requests"], 3);
    assert_eq!(plan["window"], now.format("%Y-%m-%d").to_string());
    assert_eq!(plan["timeZone"], "Europe/Berlin");

    // Bytes: the first response uses the quota up (the last one may go past it).
    let first = get(&dp, "/bytes", &[]).await;
    assert_eq!(first.status, 200);
    assert!(first.body.len() > 100);
    let reply = get(&dp, "/bytes", &[]).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no bytes left"),
        "{}",
        reply.text()
    );
    let report = usage(&dp, "shop%2Forders").await;
    let bytes = report["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["policy"] == "shop/bandwidth")
        .unwrap()
        .clone();
    assert_eq!(bytes["used"]["bytes"], first.body.len() as u64, "{report}");
    assert_eq!(
        bytes["window"],
        chrono::Utc::now().format("%Y-%m").to_string()
    );
}

#[tokio::test]
async fn redis_quotas_are_shared_by_data_planes_and_fail_as_configured() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start("u").await.unwrap();
    let one = data_plane(Some(&redis), 2).await;
    let two = data_plane(Some(&redis), 2).await;
    let shared = quota(
        "shop/shared",
        &["route"],
        5,
        0,
        "UTC",
        proto::RateLimitBackend::Redis,
    );
    let mut strict = quota(
        "shop/strict",
        &["route"],
        100,
        0,
        "UTC",
        proto::RateLimitBackend::Redis,
    );
    strict.failure_mode = proto::RateLimitFailureMode::Closed as i32;
    let snap = snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![
                quota_rule("/shared", &upstream, vec![shared]),
                quota_rule("/strict", &upstream, vec![strict]),
            ],
        )],
    );
    for dp in [&one, &two] {
        dp.apply(snap.clone()).await.unwrap();
        until_redis(dp, "reachable").await;
    }
    assert_eq!(
        admitted(&[&one, &two], "/shared", 20).await,
        5,
        "exactly the quota across both"
    );
    let report = usage(&two, "shop%2Forders").await;
    let used = report["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["policy"] == "shop/shared")
        .unwrap()["used"]["requests"]
        .clone();
    assert_eq!(used, 5);

    redis.stop();
    until_redis(&one, "unreachable").await;
    let reply = get(&one, "/strict", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["code"], "rate_limit_unavailable");
}

#[tokio::test]
async fn a_request_shed_by_the_concurrency_limit_uses_no_quota() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(None, 1).await;
    let mut rule = concurrency_rule("shop/busy", &upstream, 1, 1, 1, false);
    rule.quotas = vec![quota(
        "shop/busy",
        &["route"],
        100,
        0,
        "UTC",
        proto::RateLimitBackend::Local,
    )];
    dp.apply(snapshot(
        "v1",
        vec![route("shop/busy", &["busy.test"], vec![rule])],
    ))
    .await
    .unwrap();
    let mut statuses = concurrently(&dp, "busy.test", "/delay/300", 5).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503, 503, 503, 503]);
    let report = usage(&dp, "shop%2Fbusy").await;
    assert_eq!(
        report["quotas"][0]["used"]["requests"], 1,
        "only the request that was served: {report}"
    );
}

#[tokio::test]
async fn a_quota_keyed_by_client_address_alone_counts_per_address() {
    // A rule whose only counting is a quota still decides the client's address (it used
    // to be left undecided, and every client shared the key `-`).
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane(None, 1).await;
    let per_client = quota(
        "shop/per-client",
        &["clientIp"],
        5,
        0,
        "UTC",
        proto::RateLimitBackend::Local,
    );
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![quota_rule("/orders", &upstream, vec![per_client])],
        )],
    ))
    .await
    .unwrap();
    assert_eq!(get(&dp, "/orders", &[]).await.status, 200);
    let report = usage(&dp, "127.0.0.1").await;
    let used = report["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["policy"] == "shop/per-client")
        .map(|q| q["used"]["requests"].clone());
    assert_eq!(used, Some(serde_json::json!(1)), "{report}");
}
