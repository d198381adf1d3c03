//! Upstreams that fail, on purpose: balancing policies, active and passive health checks,
//! the circuit breaker and retries with their budget — each state change asserted through
//! what clients get, the metrics and `/admin/upstreams`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::snapshot::{prefix_rule, route, snapshot};
use pavilion_tests::{Upstream, eventually};

/// A loopback address nothing listens on: connecting is refused.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// An upstream answering request number `n` (from 0) as `script(n)` says: a status after a
/// delay. Counts the requests it saw.
struct Scripted {
    url: String,
    seen: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: impl Fn(usize) -> (u16, u64) + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let (script, counter) = (Arc::new(script), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, counter) = (script.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let (status, delay) = script(n);
                        async move {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            let mut response =
                                Response::new(Full::new(Bytes::from(format!("answer {n}"))));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

async fn data_plane(rule: proto::Rule) -> DataPlane {
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot("v1", vec![route("shop/orders", &[], vec![rule])]))
        .await
        .unwrap();
    dp
}

async fn send(dp: &DataPlane, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("http://{}{path}", dp.addr);
    HttpClient::http1()
        .call(method, &url, headers, Bytes::new())
        .await
        .unwrap()
}

async fn get(dp: &DataPlane, path: &str) -> Reply {
    send(dp, "GET", path, &[]).await
}

fn backends(urls: &[&str]) -> Vec<(String, u32)> {
    urls.iter().map(|u| (u.to_string(), 1)).collect()
}

fn rule_to(urls: &[(String, u32)]) -> proto::Rule {
    let refs: Vec<(&str, u32)> = urls.iter().map(|(u, w)| (u.as_str(), *w)).collect();
    prefix_rule("/", &refs)
}

async fn admin_upstreams(dp: &DataPlane) -> serde_json::Value {
    HttpClient::http1()
        .get(&format!("http://{}/admin/upstreams", dp.admin_addr))
        .await
        .unwrap()
        .json()
}

#[tokio::test]
async fn round_robin_and_consistent_hash() {
    let ups = [
        Upstream::start("a").await.unwrap(),
        Upstream::start("b").await.unwrap(),
        Upstream::start("c").await.unwrap(),
    ];
    let urls: Vec<String> = ups.iter().map(|u| u.url()).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();

    // Round robin (the default): exactly in turn, in proportion to the weights.
    let mut weighted = backends(&refs);
    weighted[0].1 = 2;
    let dp = data_plane(rule_to(&weighted)).await;
    let mut counts = std::collections::HashMap::new();
    for _ in 0..40 {
        let reply = get(&dp, "/fast").await;
        *counts
            .entry(reply.header("x-upstream").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(counts["a"], 20, "{counts:?}");
    assert_eq!(counts["b"], 10, "{counts:?}");
    assert_eq!(counts["c"], 10, "{counts:?}");

    // Consistent hash on a header: one key, one backend; keys spread over all three.
    let mut hashed = rule_to(&backends(&refs));
    hashed.load_balancer = Some(proto::LoadBalancer {
        policy: proto::BalancePolicy::ConsistentHash as i32,
        hash_on: "header:x-user".into(),
    });
    dp.apply(snapshot(
        "v2",
        vec![route("shop/orders", &[], vec![hashed])],
    ))
    .await
    .unwrap();
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let first = send(&dp, "GET", "/fast", &[("x-user", &user)]).await;
        let owner = first.header("x-upstream").unwrap().to_owned();
        for _ in 0..3 {
            let again = send(&dp, "GET", "/fast", &[("x-user", &user)]).await;
            assert_eq!(again.header("x-upstream").unwrap(), owner, "{user} moved");
        }
        owners.insert(owner);
    }
    assert_eq!(owners.len(), 3, "thirty keys use every backend");
}

#[tokio::test]
async fn least_request_sends_less_to_the_slow_backend() {
    let slow = Scripted::start(|_| (200, 300)).await;
    let fast = Scripted::start(|_| (200, 0)).await;
    let mut rule = rule_to(&backends(&[&slow.url, &fast.url]));
    rule.load_balancer = Some(proto::LoadBalancer {
        policy: proto::BalancePolicy::LeastRequest as i32,
        hash_on: String::new(),
    });
    let dp = data_plane(rule).await;
    // Eight clients in parallel for a while: the slow backend's requests pile up in
    // flight, so the two-choice draw keeps preferring the fast one.
    let dp = Arc::new(dp);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let dp = dp.clone();
        clients.push(tokio::spawn(async move {
            for _ in 0..10 {
                assert_eq!(get(&dp, "/").await.status, 200);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    assert!(
        fast.seen() > 3 * slow.seen(),
        "fast {} vs slow {}",
        fast.seen(),
        slow.seen()
    );
}

/// Active checks of `/readiness` every 50 ms, two results in a row to turn.
fn readiness_checks() -> Option<proto::HealthCheck> {
    Some(proto::HealthCheck {
        active: Some(proto::ActiveCheck {
            path: "/readiness".into(),
            interval_ms: 50,
            timeout_ms: 50,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }),
        passive: None,
    })
}

async fn first_backend_unhealthy(dp: &DataPlane) {
    eventually(
        "the first backend fails its checks",
        Duration::from_secs(5),
        || async {
            let state = admin_upstreams(dp).await;
            (state["rules"][0]["backends"][0]["healthy"] == false).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn active_checks_take_backends_out_and_back() {
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let mut rule = rule_to(&backends(&[&a.url(), &b.url()]));
    rule.health_check = readiness_checks();
    let dp = data_plane(rule).await;

    a.set_not_ready("draining");
    first_backend_unhealthy(&dp).await;
    for _ in 0..20 {
        assert_eq!(get(&dp, "/fast").await.header("x-upstream"), Some("b"));
    }
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    assert!(
        metrics.contains(&format!(
            "pavilion_upstream_healthy{{backend=\"{}\",route=\"shop/orders\"}} 0",
            a.url()
        )),
        "{metrics}"
    );

    // Both failing: 503 no_healthy_upstream, named.
    b.set_not_ready("draining");
    let refused = eventually("no backend is healthy", Duration::from_secs(5), || async {
        let reply = get(&dp, "/fast").await;
        (reply.status == 503).then_some(reply)
    })
    .await;
    assert_eq!(refused.json()["error"]["code"], "no_healthy_upstream");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shop/orders")
    );

    // Back: traffic returns to both.
    a.set_ready();
    b.set_ready();
    eventually("both pass again", Duration::from_secs(5), || async {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            if let Some(name) = get(&dp, "/fast").await.header("x-upstream") {
                seen.insert(name.to_owned());
            }
        }
        (seen.len() == 2).then_some(())
    })
    .await;
    let state = admin_upstreams(&dp).await;
    for backend in 0..2 {
        let backend = &state["rules"][0]["backends"][backend];
        assert_eq!(
            (&backend["healthy"], &backend["checksPass"]),
            (&true.into(), &true.into()),
            "{state}"
        );
    }
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    for url in [a.url(), b.url()] {
        let series =
            format!("pavilion_upstream_healthy{{backend=\"{url}\",route=\"shop/orders\"}}");
        assert_eq!(
            pavilion_tests::sample(&metrics, &series),
            Some(1.0),
            "{metrics}"
        );
    }

    // A new snapshot keeps the checks' verdicts (and does not start a second checker).
    a.set_not_ready("again");
    first_backend_unhealthy(&dp).await;
    let mut same = rule_to(&backends(&[&a.url(), &b.url()]));
    same.health_check = readiness_checks();
    dp.apply(snapshot("v2", vec![route("shop/orders", &[], vec![same])]))
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(get(&dp, "/fast").await.header("x-upstream"), Some("b"));
    }
}

#[tokio::test]
async fn passive_checks_eject_a_failing_backend() {
    let good = [
        Upstream::start("good-1").await.unwrap(),
        Upstream::start("good-2").await.unwrap(),
    ];
    let dead = dead_address();
    let mut rule = rule_to(&backends(&[&good[0].url(), &good[1].url(), &dead]));
    rule.health_check = Some(proto::HealthCheck {
        active: None,
        passive: Some(proto::PassiveCheck {
            consecutive_failures: 2,
            ejection_ms: 60_000,
            max_ejected_percent: 50,
        }),
    });
    let dp = data_plane(rule).await;
    let mut failures = 0;
    for _ in 0..30 {
        if get(&dp, "/fast").await.status == 502 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "two failures in a row eject the dead backend");
    let state = admin_upstreams(&dp).await;
    let dead_state = &state["rules"][0]["backends"][2];
    assert_eq!(dead_state["healthy"], false, "{state}");
    assert!(
        dead_state["ejectedForMs"].as_u64().unwrap() > 50_000,
        "{state}"
    );
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    assert!(
        metrics.contains(&format!(
            "pavilion_upstream_ejections_total{{backend=\"{dead}\",route=\"shop/orders\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_ejected_backend_returns_and_its_next_ejection_lasts_longer() {
    let good = Upstream::start("good").await.unwrap();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = failing.clone();
    let flaky = Scripted::start(move |_| {
        let status = if flag.load(Ordering::SeqCst) {
            503
        } else {
            200
        };
        (status, 0)
    })
    .await;
    let mut rule = rule_to(&backends(&[&good.url(), &flaky.url]));
    rule.health_check = Some(proto::HealthCheck {
        active: None,
        passive: Some(proto::PassiveCheck {
            consecutive_failures: 2,
            ejection_ms: 500,
            max_ejected_percent: 50,
        }),
    });
    let dp = data_plane(rule).await;
    let flaky_state = |state: &serde_json::Value| state["rules"][0]["backends"][1].clone();

    // Out after two failures in a row, for the first ejection's length.
    for _ in 0..6 {
        get(&dp, "/").await;
    }
    let state = flaky_state(&admin_upstreams(&dp).await);
    assert_eq!(state["healthy"], false, "{state}");
    assert_eq!(state["ejections"], 1, "{state}");
    let first = state["ejectedForMs"].as_u64().unwrap();
    assert!(first > 0 && first <= 500, "{state}");
    let seen = flaky.seen();
    for _ in 0..6 {
        assert_eq!(
            get(&dp, "/").await.status,
            200,
            "only the good backend answers"
        );
    }
    assert_eq!(flaky.seen(), seen, "an ejected backend gets no requests");

    // Recovered: once the ejection ends it takes traffic again.
    failing.store(false, Ordering::SeqCst);
    eventually("the ejection to end", Duration::from_secs(3), || async {
        (flaky_state(&admin_upstreams(&dp).await)["healthy"] == true).then_some(())
    })
    .await;
    for _ in 0..6 {
        assert_eq!(get(&dp, "/").await.status, 200);
    }
    assert!(flaky.seen() > seen, "the backend is back in the rotation");

    // Failing again soon after: out for twice as long.
    failing.store(true, Ordering::SeqCst);
    for _ in 0..6 {
        get(&dp, "/").await;
    }
    let state = flaky_state(&admin_upstreams(&dp).await);
    assert_eq!(state["ejections"], 2, "{state}");
    assert!(
        state["ejectedForMs"].as_u64().unwrap() > 500,
        "the second ejection lasts longer: {state}"
    );
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    let series = format!(
        "pavilion_upstream_ejections_total{{backend=\"{}\",route=\"shop/orders\"}}",
        flaky.url
    );
    assert_eq!(
        pavilion_tests::sample(&metrics, &series),
        Some(2.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_circuit_opens_refuses_half_opens_and_closes() {
    let dead = dead_address();
    let addr: SocketAddr = dead.trim_start_matches("http://").parse().unwrap();
    let mut rule = rule_to(&backends(&[&dead]));
    rule.circuit_breaker = Some(proto::CircuitBreaker {
        consecutive_failures: 3,
        failure_percent: 0,
        min_requests: 20,
        window_ms: 10_000,
        open_for_ms: 300,
        half_open_probes: 1,
    });
    let dp = data_plane(rule).await;
    for _ in 0..3 {
        assert_eq!(get(&dp, "/fast").await.status, 502);
    }
    let refused = get(&dp, "/fast").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "circuit_open");
    assert!(refused.header("retry-after").is_some());
    let state = admin_upstreams(&dp).await;
    assert_eq!(state["rules"][0]["circuit"]["state"], "open", "{state}");
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    assert!(
        metrics.contains("pavilion_circuit_state{route=\"shop/orders\",rule=\"0\"} 1"),
        "{metrics}"
    );

    // Still failing when half-open: the probe reopens it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        get(&dp, "/fast").await.status,
        502,
        "the probe goes through"
    );
    assert_eq!(get(&dp, "/fast").await.status, 503, "and fails: open again");

    // The backend comes up: the next probe closes the circuit.
    let _up = Upstream::start_on("back", addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get(&dp, "/fast").await.status, 200, "the probe succeeds");
    for _ in 0..5 {
        assert_eq!(get(&dp, "/fast").await.status, 200);
    }
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    for (state, times) in [("open", 2), ("half_open", 2), ("closed", 1)] {
        let line = format!(
            "pavilion_circuit_transitions_total{{route=\"shop/orders\",rule=\"0\",state=\"{state}\"}} {times}"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // A new snapshot with the same breaker keeps its state; it is the same circuit.
    let state = admin_upstreams(&dp).await;
    assert_eq!(state["rules"][0]["circuit"]["state"], "closed", "{state}");
}

fn retrying(urls: &[&str], retry: proto::Retry) -> proto::Rule {
    let mut rule = rule_to(&backends(urls));
    rule.retry = Some(retry);
    rule
}

fn retry_503(attempts: u32) -> proto::Retry {
    proto::Retry {
        attempts,
        on_connect_failure: true,
        on_reset: true,
        on_statuses: vec![502, 503, 504],
        per_try_timeout_ms: 0,
        backoff_ms: 5,
        max_backoff_ms: 20,
        budget_percent: 100,
        min_retries_per_second: 100,
    }
}

#[tokio::test]
async fn retries_repeat_safe_requests_only() {
    // Two 503s, then success.
    let flaky = Scripted::start(|n| (if n < 2 { 503 } else { 200 }, 0)).await;
    let dp = data_plane(retrying(&[&flaky.url], retry_503(2))).await;
    let reply = get(&dp, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "answer 2");
    assert_eq!(flaky.seen(), 3);

    // A POST is not idempotent: its 503 is the answer.
    let flaky = Scripted::start(|n| (if n < 1 { 503 } else { 200 }, 0)).await;
    dp.apply(snapshot(
        "v2",
        vec![route(
            "shop/orders",
            &[],
            vec![retrying(&[&flaky.url], retry_503(2))],
        )],
    ))
    .await
    .unwrap();
    assert_eq!(send(&dp, "POST", "/", &[]).await.status, 503);
    assert_eq!(flaky.seen(), 1, "a POST's 503 is never repeated");

    // A refused connection sent nothing: even a POST goes to the next backend.
    let good = Scripted::start(|_| (200, 0)).await;
    dp.apply(snapshot(
        "v3",
        vec![route(
            "shop/orders",
            &[],
            vec![retrying(&[&dead_address(), &good.url], retry_503(1))],
        )],
    ))
    .await
    .unwrap();
    for _ in 0..6 {
        assert_eq!(send(&dp, "POST", "/", &[]).await.status, 200);
    }
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    assert!(
        metrics.contains("pavilion_retries_total{route=\"shop/orders\"}"),
        "{metrics}"
    );
}

/// An upstream that reads a request's head and resets the connection (RST, not FIN):
/// the request was sent, no answer comes. Counts the requests it swallowed.
async fn resetting() -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_zero_linger();
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_reset_is_retried_for_safe_requests_only() {
    let (reset_url, resets) = resetting().await;
    let good = Scripted::start(|_| (200, 0)).await;
    let dp = data_plane(retrying(&[&reset_url, &good.url], retry_503(1))).await;
    for _ in 0..4 {
        let reply = get(&dp, "/").await;
        assert_eq!(reply.status, 200, "a reset GET goes to the other backend");
    }
    assert!(
        resets.load(Ordering::SeqCst) >= 1,
        "the resetting backend was tried"
    );
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    assert_eq!(
        pavilion_tests::sample(&metrics, "pavilion_retries_total{route=\"shop/orders\"}"),
        Some(resets.load(Ordering::SeqCst) as f64),
        "one retry per reset"
    );

    // A POST reached the backend before the reset: repeating it could do it twice.
    let (before, answered) = (resets.load(Ordering::SeqCst), good.seen());
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(send(&dp, "POST", "/", &[]).await.status.as_u16());
    }
    assert_eq!(resets.load(Ordering::SeqCst), before + 1, "{statuses:?}");
    assert_eq!(good.seen(), answered + 1, "the reset POST was not repeated");
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );

    // Without `onReset` a reset GET is the client's 502.
    let mut retry = retry_503(1);
    retry.on_reset = false;
    dp.apply(snapshot(
        "v2",
        vec![route(
            "shop/orders",
            &[],
            vec![retrying(&[&reset_url], retry)],
        )],
    ))
    .await
    .unwrap();
    assert_eq!(get(&dp, "/").await.status, 502);
}

#[tokio::test]
async fn a_per_try_timeout_moves_on_and_the_rule_timeout_still_bounds_all() {
    // The first attempt hangs; the second answers at once.
    let slow_first = Scripted::start(|n| (200, if n == 0 { 5_000 } else { 0 })).await;
    let mut retry = retry_503(2);
    retry.per_try_timeout_ms = 200;
    let dp = data_plane(retrying(&[&slow_first.url], retry)).await;
    let started = std::time::Instant::now();
    let reply = get(&dp, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "answer 1");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the hung attempt was abandoned"
    );

    // Never past the rule's timeout: every attempt hangs.
    let hanging = Scripted::start(|_| (200, 10_000)).await;
    let mut rule = retrying(&[&hanging.url], {
        let mut r = retry_503(5);
        r.per_try_timeout_ms = 300;
        r
    });
    rule.timeout_ms = 500;
    dp.apply(snapshot("v2", vec![route("shop/orders", &[], vec![rule])]))
        .await
        .unwrap();
    let reply = get(&dp, "/").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    assert!(
        hanging.seen() <= 2,
        "attempts stopped at the rule's timeout"
    );
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_an_outage() {
    let down = Scripted::start(|_| (503, 0)).await;
    let mut retry = retry_503(3);
    retry.budget_percent = 20;
    retry.min_retries_per_second = 0;
    let dp = data_plane(retrying(&[&down.url], retry)).await;
    for _ in 0..50 {
        assert_eq!(get(&dp, "/").await.status, 503);
    }
    // 50 requests may add at most 20 % retries (10), not 3 each (150).
    assert!(
        down.seen() <= 60,
        "the upstream saw {} requests",
        down.seen()
    );
    assert!(down.seen() > 50, "some retries were allowed");
    // Each retry taken is counted, and so is each request whose retry the budget refused:
    // every request but those that had all three (at most a third of the retries taken).
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    let taken = (down.seen() - 50) as f64;
    let series = |name: &str| {
        pavilion_tests::sample(&metrics, &format!("{name}{{route=\"shop/orders\"}}"))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(series("pavilion_retries_total"), taken);
    let refused = series("pavilion_retries_refused_total");
    assert!(
        refused <= 50.0 && refused >= 50.0 - (taken / 3.0).floor(),
        "{refused} refused after {taken} retries"
    );
}

#[tokio::test]
async fn a_clients_own_deadline_never_opens_the_circuit() {
    let slow = Scripted::start(|_| (200, 400)).await;
    let mut rule = rule_to(&backends(&[&slow.url]));
    rule.circuit_breaker = Some(proto::CircuitBreaker {
        consecutive_failures: 2,
        failure_percent: 0,
        min_requests: 20,
        window_ms: 10_000,
        open_for_ms: 60_000,
        half_open_probes: 1,
    });
    let dp = data_plane(rule).await;
    // Clients asking for the impossible: their deadline passes, the backend is blameless.
    for _ in 0..4 {
        let reply = send(
            &dp,
            "POST",
            "/",
            &[("content-type", "application/grpc"), ("grpc-timeout", "1m")],
        )
        .await;
        assert_eq!(reply.header("grpc-status"), Some("4"), "DEADLINE_EXCEEDED");
    }
    assert_eq!(get(&dp, "/").await.status, 200, "the circuit stayed closed");
    let state = admin_upstreams(&dp).await;
    assert_eq!(state["rules"][0]["circuit"]["state"], "closed", "{state}");
}

#[tokio::test]
async fn when_a_retry_finds_no_backend_left_the_last_answer_is_the_clients() {
    let down = Scripted::start(|_| (503, 0)).await;
    let mut rule = retrying(&[&down.url], retry_503(2));
    rule.health_check = Some(proto::HealthCheck {
        active: None,
        passive: Some(proto::PassiveCheck {
            consecutive_failures: 1,
            ejection_ms: 60_000,
            max_ejected_percent: 100,
        }),
    });
    let dp = data_plane(rule).await;
    let reply = get(&dp, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.text(),
        "answer 0",
        "the backend's own 503, not the gateway's"
    );
    assert_eq!(down.seen(), 1);
    // Now ejected: the rule has no healthy backend.
    let refused = get(&dp, "/").await;
    assert_eq!(refused.json()["error"]["code"], "no_healthy_upstream");
}

const SECONDS: Duration = Duration::from_secs(5);

/// An upstream that answers after `delay` and counts what is open at once: connections and
/// requests, now and at the most. Speaks HTTP/1.1 (`url`) and h2c (`h2c_url`).
struct Gauged {
    url: String,
    connections: Arc<Gauge>,
    requests: Arc<Gauge>,
}

#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(self: &Arc<Self>) -> GaugeGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }
    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gauged {
    async fn start(delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (connections, requests) = (Arc::new(Gauge::default()), Arc::new(Gauge::default()));
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let open = conns.enter();
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                        let busy = reqs.enter();
                        async move {
                            tokio::time::sleep(delay).await;
                            drop(busy);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
                        }
                    });
                    // HTTP/1.1 and h2c (prior knowledge) on one port.
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    drop(open);
                });
            }
        });
        Self {
            url,
            connections,
            requests,
        }
    }
}

fn with_connections(url: &str, max: u32, queue_ms: u64, idle_ms: u64) -> proto::Rule {
    let mut rule = prefix_rule("/", &[(url, 1)]);
    rule.connections = Some(proto::Connections {
        max,
        queue_timeout_ms: queue_ms,
        idle_timeout_ms: idle_ms,
    });
    rule
}

/// Six requests at once, every one answered 200.
async fn six_at_once_all_served(dp: &Arc<DataPlane>) {
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let dp = dp.clone();
            tokio::spawn(async move { get(&dp, "/x").await })
        })
        .collect();
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

#[tokio::test]
async fn a_connection_cap_queues_requests_and_never_exceeds_it() {
    let up = Gauged::start(Duration::from_millis(200)).await;
    let dp = Arc::new(data_plane(with_connections(&up.url, 2, 10_000, 0)).await);
    six_at_once_all_served(&dp).await;
    assert_eq!(up.requests.peak(), 2, "two at a time, and only two");
    // Each worker (two here) opens a connection only when none of its own is idle, so it
    // never holds more than the cap: busy ones are capped, idle ones were busy once.
    assert!(
        (2..=4).contains(&up.connections.peak()),
        "{} connections were open at once",
        up.connections.peak()
    );
}

#[tokio::test]
async fn the_cap_and_the_idle_timeout_hold_for_h2c_backends() {
    let up = Gauged::start(Duration::from_millis(200)).await;
    let h2c = up.url.replace("http://", "h2c://");
    let dp = Arc::new(data_plane(with_connections(&h2c, 2, 10_000, 1000)).await);
    six_at_once_all_served(&dp).await;
    assert_eq!(up.requests.peak(), 2, "two streams at a time, and only two");
    // Streams share a worker's connection: at most one per worker.
    assert!(
        (1..=2).contains(&up.connections.peak()),
        "{} connections",
        up.connections.peak()
    );
    eventually("the idle h2c connections are closed", SECONDS, || async {
        (up.connections.now() == 0).then_some(())
    })
    .await;
    assert_eq!(
        get(&dp, "/x").await.status,
        200,
        "and opened again when needed"
    );
}

#[tokio::test]
async fn a_request_waiting_past_the_queue_timeout_is_refused_and_says_why() {
    let up = Gauged::start(Duration::from_millis(1500)).await;
    let dp = Arc::new(data_plane(with_connections(&up.url, 1, 100, 0)).await);
    let first = {
        let dp = dp.clone();
        tokio::spawn(async move { get(&dp, "/slow").await })
    };
    eventually("the first request reaches the backend", SECONDS, || async {
        (up.requests.now() == 1).then_some(())
    })
    .await;
    let refused = get(&dp, "/x").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    let body = refused.json();
    assert_eq!(body["error"]["code"], "upstream_busy", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("shop/orders") && message.contains("all 1 connections"),
        "{message}"
    );
    assert_eq!(first.await.unwrap().status, 200);
    // The place is given back with the response: the next request goes through at once.
    assert_eq!(get(&dp, "/x").await.status, 200);
    assert_eq!(up.requests.peak(), 1);
}

#[tokio::test]
async fn a_rule_closes_its_idle_connections_after_its_own_idle_timeout() {
    let short = Gauged::start(Duration::ZERO).await;
    let long = Gauged::start(Duration::ZERO).await;
    let mut short_rule = with_connections(&short.url, 0, 0, 1000);
    short_rule.matches[0].path.as_mut().unwrap().value = "/short".into();
    let long_rule = prefix_rule("/", &[(long.url.as_str(), 1)]);
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot(
        "v1",
        vec![route("shop/orders", &[], vec![short_rule, long_rule])],
    ))
    .await
    .unwrap();
    assert_eq!(get(&dp, "/short").await.status, 200);
    assert_eq!(get(&dp, "/long").await.status, 200);
    assert_eq!((short.connections.now(), long.connections.now()), (1, 1));
    eventually("the short rule's connection is closed", SECONDS, || async {
        (short.connections.now() == 0).then_some(())
    })
    .await;
    assert_eq!(
        long.connections.now(),
        1,
        "the default idle timeout (60 s) keeps the other one"
    );
    // A request after the close opens a new connection.
    assert_eq!(get(&dp, "/short").await.status, 200);
    assert_eq!(short.connections.peak(), 1);
}
