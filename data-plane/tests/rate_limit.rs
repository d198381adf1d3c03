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
    let mut request = Request::get(format!("http://{}{path}", dp.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    HttpClient::http1()
        .send(request.body(Full::default()).unwrap())
        .await
        .unwrap()
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
        (1..=1200).contains(&retry_after),
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
        eventually(
            "Redis is reachable",
            Duration::from_secs(10),
            || async move {
                let ready = HttpClient::http1()
                    .get(&format!("http://{}/ready", dp.admin_addr))
                    .await
                    .ok()?;
                (ready.json()["redis"] == "reachable").then_some(())
            },
        )
        .await;
    }
    assert_eq!(
        admitted(&[&one, &two], "/redis", 100).await,
        20,
        "exactly the limit, across both"
    );
    // In process each data plane counts alone: twice the limit in all (see docs).
    assert_eq!(admitted(&[&one, &two], "/local", 100).await, 40);
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
    let ready = |dp: &DataPlane| {
        let url = format!("http://{}/ready", dp.admin_addr);
        async move {
            HttpClient::http1().get(&url).await.unwrap().json()["redis"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    eventually("Redis is reachable", Duration::from_secs(10), || async {
        (ready(&dp).await == "reachable").then_some(())
    })
    .await;
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
    assert_eq!(ready(&dp).await, "unreachable");
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
    eventually(
        "Redis is reachable again",
        Duration::from_secs(15),
        || async { (ready(&dp).await == "reachable").then_some(()) },
    )
    .await;
    assert_eq!(admitted(&[&dp], "/closed", 10).await, 6);
}
