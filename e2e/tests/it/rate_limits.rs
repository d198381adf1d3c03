//! Rate limits with the real binaries: a RateLimitPolicy file, two data-plane processes
//! sharing one redis-server — exactly the limit is admitted across both, and a Redis that
//! dies mid-test leaves each process enforcing its share.

use pavilion_e2e::{ControlProcess, STARTUP, UpstreamProcess};
use pavilion_tests::client::HttpClient;
use pavilion_tests::process::{Child, binary};
use pavilion_tests::redis::RedisServer;
use pavilion_tests::{eventually, free_port};

fn data_plane(
    control: &ControlProcess,
    redis: &RedisServer,
    name: &str,
) -> (Child, String, String) {
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let child = Child::spawn(
        name,
        &binary("pavilion-data"),
        &[
            "run",
            "--control-plane",
            &format!("http://{}", control.grpc),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--node-id",
            name,
            "--redis",
            &redis.url(),
            "--replicas",
            "2",
            "--workers",
            "2",
        ],
    );
    (child, listen, admin)
}

async fn statuses(targets: &[&str], path: &str, count: usize) -> (usize, usize) {
    let mut requests = Vec::new();
    for i in 0..count {
        let url = format!("http://{}{path}", targets[i % targets.len()]);
        requests.push(tokio::spawn(async move {
            HttpClient::http1()
                .get(&url)
                .await
                .map(|r| r.status.as_u16())
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for request in requests {
        match request.await.unwrap().expect("an answer") {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn two_processes_sharing_redis_admit_exactly_the_limit() {
    let mut redis = RedisServer::start();
    let upstream = UpstreamProcess::start("orders").await;
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("orders.yaml"),
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: {{ name: orders, namespace: e2e }}
spec:
  rules:
    - backends: [{{ url: '{}' }}]
---
apiVersion: gateway.pavilion.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{ name: orders-limit, namespace: e2e }}
spec:
  targetRef: {{ kind: Route, name: orders }}
  backend: redis
  failureMode: local
  limits:
    - key: [route]
      requests: 30
      per: 1h
",
            upstream.url
        ),
    )
    .unwrap();
    let control = ControlProcess::start(config.path(), free_port()).await;
    let (_one, one, one_admin) = data_plane(&control, &redis, "dp-1");
    let (_two, two, two_admin) = data_plane(&control, &redis, "dp-2");
    for admin in [&one_admin, &two_admin] {
        eventually(
            "the data plane is ready with Redis",
            STARTUP,
            || async move {
                let ready = HttpClient::http1()
                    .get(&format!("http://{admin}/ready"))
                    .await
                    .ok()?;
                (ready.status == 200 && ready.json()["redis"] == "reachable").then_some(())
            },
        )
        .await;
    }

    let (ok, limited) = statuses(&[&one, &two], "/x", 120).await;
    assert_eq!((ok, limited), (30, 90), "exactly 30 across both processes");

    // Redis dies: each process enforces its share of a fresh bucket (30 / 2 replicas).
    redis.stop();
    for admin in [&one_admin, &two_admin] {
        eventually("Redis is seen down", STARTUP, || async move {
            let ready = HttpClient::http1()
                .get(&format!("http://{admin}/ready"))
                .await
                .ok()?;
            (ready.json()["redis"] == "unreachable").then_some(())
        })
        .await;
    }
    let (ok, _) = statuses(&[&one], "/x", 40).await;
    assert_eq!(ok, 15, "one process alone: its share");
}
