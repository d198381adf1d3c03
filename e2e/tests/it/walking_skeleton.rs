//! The whole path with the real binaries: a file becomes a route, traffic moves under load
//! without a single failed request, and traffic survives the control plane's death and the
//! data plane's restart from its cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pavilion_e2e::{ControlProcess, DataProcess, UpstreamProcess, route_yaml};
use pavilion_tests::client::HttpClient;
use pavilion_tests::{eventually, free_port};

/// Continuous load: `workers` clients in a loop, counting answers by upstream and failures.
struct Load {
    running: Arc<AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    by_b: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let by_b = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (running, failures, by_b, total, url) = (
                    running.clone(),
                    failures.clone(),
                    by_b.clone(),
                    total.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let client = HttpClient::http1();
                    while running.load(Ordering::Relaxed) {
                        match client.get(&url).await {
                            Ok(reply) if reply.status == 200 => {
                                if reply.header("x-upstream") == Some("b") {
                                    by_b.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(reply) => failures.lock().unwrap().push(format!(
                                "{} {}",
                                reply.status,
                                reply.text()
                            )),
                            Err(error) => failures.lock().unwrap().push(error),
                        }
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            running,
            failures,
            by_b,
            total,
            tasks,
        }
    }

    /// Stops the load and returns (requests, failures).
    async fn stop(self) -> (u64, Vec<String>) {
        self.running.store(false, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.total.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_to_traffic_under_load_through_control_plane_death_and_data_plane_restart() {
    let a = UpstreamProcess::start("a").await;
    let b = UpstreamProcess::start("b").await;
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let cache = state.path().join("snapshot.pb");
    let route_file = config.path().join("orders.yaml");
    std::fs::write(&route_file, route_yaml("orders", "/orders", &a.url)).unwrap();

    let mut control = ControlProcess::start(config.path(), free_port()).await;
    let data_port = free_port();
    let mut data = DataProcess::start(&control.grpc, &cache, data_port).await;
    assert_eq!(
        data.served_by("/orders/1").await,
        (200, Some("a".to_owned()))
    );
    // In cleartext both halves say loudly that the control channel is open.
    for log in [control.child.output(), data.child.output()] {
        assert!(log.contains("NOT encrypted"), "{log}");
    }

    // Edit the route under continuous load: traffic moves, nothing fails.
    let load = Load::start(data.url("/orders/fast"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edited = Instant::now();
    std::fs::write(&route_file, route_yaml("orders", "/orders", &b.url)).unwrap();
    let by_b = load.by_b.clone();
    eventually("traffic to move to b", Duration::from_secs(5), || {
        let by_b = by_b.clone();
        async move { (by_b.load(Ordering::Relaxed) > 0).then_some(()) }
    })
    .await;
    eprintln!("edit → first response from b: {:?}", edited.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The control plane dies; traffic does not notice.
    control.child.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (requests, failures) = load.stop().await;
    assert!(requests > 100, "the load ran ({requests} requests)");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        data.served_by("/orders/1").await,
        (200, Some("b".to_owned()))
    );

    // The data plane restarts while the control plane is still down: it serves from its cache.
    assert!(data.child.terminate().success(), "graceful stop on SIGTERM");
    let data = DataProcess::start(&control.grpc, &cache, data_port).await;
    assert_eq!(
        data.served_by("/orders/1").await,
        (200, Some("b".to_owned()))
    );

    // The control plane returns; the data plane reconnects and follows edits again.
    std::fs::write(&route_file, route_yaml("orders", "/orders", &a.url)).unwrap();
    let grpc_port: u16 = control.grpc.rsplit(':').next().unwrap().parse().unwrap();
    control = ControlProcess::start(config.path(), grpc_port).await;
    let url = data.url("/orders/1");
    eventually(
        "traffic back on a after the control plane returned",
        Duration::from_secs(10),
        || {
            let url = url.clone();
            async move {
                (HttpClient::http1()
                    .get(&url)
                    .await
                    .ok()?
                    .header("x-upstream")
                    == Some("a"))
                .then_some(())
            }
        },
    )
    .await;
    let status = control.status().await;
    assert_eq!(status["nodes"][0]["id"], "e2e-data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let upstream = UpstreamProcess::start("slow").await;
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("r.yaml"),
        route_yaml("slow", "/", &upstream.url),
    )
    .unwrap();
    // Nothing listens on port 1: connecting fails at once.
    std::fs::write(
        config.path().join("dead.yaml"),
        route_yaml("dead", "/dead", "http://127.0.0.1:1"),
    )
    .unwrap();
    let mut control = ControlProcess::start(config.path(), free_port()).await;
    let mut data =
        DataProcess::start(&control.grpc, &state.path().join("cache.pb"), free_port()).await;
    let dead = HttpClient::http1().get(&data.url("/dead")).await.unwrap();
    assert_eq!(dead.status, 502);

    let url = data.url("/delay/700");
    let in_flight = tokio::spawn(async move { HttpClient::http1().get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = data.child.terminate();
    assert!(status.success(), "exit status {status}");
    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(reply.status, 200);
    let output = data.child.output();
    assert!(output.contains("all connections drained"));

    // One JSON access line per request, with what an operator needs to follow it.
    let access: serde_json::Value = output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["target"] == "pavilion::access" && line["path"] == "/delay/700")
        .expect("an access log line");
    assert_eq!(access["path"], "/delay/700");
    assert_eq!(access["status"], 200);
    assert_eq!(access["route"], "e2e/slow");
    assert_eq!(access["upstream"], upstream.url.as_str());
    assert_eq!(access["request_id"], reply.header("x-request-id").unwrap());
    // The trace the response names (traceparent: 00-TRACE-SPAN-FLAGS) is the line's.
    let trace_id = reply
        .header("traceparent")
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap();
    assert_eq!(access["trace_id"], trace_id);
    assert!(access["duration_ms"].as_f64().unwrap() >= 700.0, "{access}");
    assert_eq!(access["flags"], "-");
    // Why an upstream failed, Envoy-style: UF, the connection failed.
    let failed: serde_json::Value = output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["target"] == "pavilion::access" && line["path"] == "/dead")
        .expect("an access log line for the failed request");
    assert_eq!(failed["flags"], "UF", "{failed}");
    assert_eq!(failed["error"], "upstream_unreachable", "{failed}");
    // No JSON line names a key twice, and none shows Rust's debug formatting.
    for line in output.lines().filter(|l| l.starts_with('{')) {
        assert!(line.matches("\"message\":").count() <= 1, "{line}");
        assert!(!line.contains("Some("), "{line}");
    }

    let status = control.child.terminate();
    assert!(
        status.success(),
        "the control plane stops gracefully too: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_ready_fails_while_traffic_is_served_for_the_shutdown_delay() {
    let upstream = UpstreamProcess::start("u").await;
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("r.yaml"),
        route_yaml("r", "/", &upstream.url),
    )
    .unwrap();
    let control = ControlProcess::start(config.path(), free_port()).await;
    let mut data = DataProcess::start_with(
        &format!("http://{}", control.grpc),
        &state.path().join("cache.pb"),
        free_port(),
        &["--shutdown-delay-seconds", "2"],
    )
    .await;
    let ready = format!("http://{}/ready", data.admin);
    assert_eq!(HttpClient::http1().get(&ready).await.unwrap().status, 200);
    data.child.signal_terminate();
    let not_ready = eventually("/ready fails", Duration::from_secs(2), || async {
        let reply = HttpClient::http1().get(&ready).await.ok()?;
        (reply.status == 503).then_some(reply)
    })
    .await;
    assert_eq!(not_ready.json()["reason"], "shutting down");
    // Still inside the delay: new connections are served.
    let reply = HttpClient::http1().get(&data.url("/x")).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(data.child.is_running());
    let status = data.child.wait();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn the_data_plane_raises_its_soft_open_files_limit_to_the_hard_one() {
    let admin = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let binary = pavilion_tests::process::binary("pavilion-data");
    // Started with a soft limit of 256, as many systems start services with 1024.
    let data = pavilion_tests::process::Child::spawn(
        "pavilion-data",
        std::path::Path::new("prlimit"),
        &[
            "--nofile=256:",
            binary.to_str().unwrap(),
            "run",
            "--control-plane",
            "http://127.0.0.1:9",
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
        ],
    );
    let health =
        pavilion_tests::eventually("the admin listener", pavilion_e2e::STARTUP, || async {
            let reply = pavilion_tests::client::HttpClient::http1()
                .get(&format!("http://{admin}/health"))
                .await
                .ok()?;
            (reply.status == 200).then(|| reply.json())
        })
        .await;
    // The build is named: the commit this checkout is at.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(
        health["gitSha"],
        String::from_utf8_lossy(&head.stdout).trim()
    );
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        health["buildTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{health}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", data.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3], open_files[4], "soft = hard: {limits}");
    assert_ne!(open_files[3], "256");
}
