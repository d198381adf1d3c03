//! What operators alert on and look at: both binaries' real `/metrics` pass
//! `promtool check metrics`, the alerting rules pass `promtool check rules` and their unit
//! tests, and every metric a dashboard or an alert names exists.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pavilion_e2e::{ControlProcess, DataProcess, UpstreamProcess};
use pavilion_tests::client::HttpClient;
use pavilion_tests::free_port;
use pavilion_tests::redis::RedisServer;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `promtool ARGS…` with `stdin`; panics with its output unless it succeeds.
fn promtool(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(workspace())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian: prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

/// Metric names of an exposition: each family, histograms with their series' suffixes.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Metric names declared in the binaries' sources (families only seen after rare events:
/// a JWKS fetch, Redis failing, a certificate configured).
fn declared() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let pattern = regex::Regex::new(r#""(pavilion_[a-z_]+)""#).unwrap();
    let mut dirs = vec![
        workspace().join("data-plane/src"),
        workspace().join("control-plane/src"),
        workspace().join("telemetry/src"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for found in pattern.captures_iter(&text) {
                    let name = found[1].to_owned();
                    for suffix in ["", "_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    names
}

/// Every `pavilion_*` name in a PromQL expression.
fn named(expr: &str) -> Vec<String> {
    regex::Regex::new(r"pavilion_[a-z_]+")
        .unwrap()
        .find_iter(expr)
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_rules_and_dashboards_hold_together() {
    let redis = RedisServer::start();
    let upstream = UpstreamProcess::start("demo").await;
    let config = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(workspace().join("examples/config")).unwrap() {
        let path = entry.unwrap().path();
        // What the directory source reads: not the statuses `scripts/demo` leaves in
        // `.pavilion/`, nor other hidden entries.
        if !path.is_file()
            || path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("http://127.0.0.1:9000", &upstream.url);
        std::fs::write(config.path().join(path.file_name().unwrap()), text).unwrap();
    }
    let control = ControlProcess::start(config.path(), free_port()).await;
    let state = tempfile::tempdir().unwrap();
    let redis_url = redis.url();
    let data = DataProcess::start_with(
        &format!("http://{}", control.grpc),
        &state.path().join("cache.pb"),
        free_port(),
        &["--redis", &redis_url],
    )
    .await;

    // Traffic that touches the families: routes, a rate limit, API keys, a tenant.
    let client = HttpClient::http1();
    for _ in 0..25 {
        let request = http::Request::get(data.url("/orders/42"))
            .header("host", "api.example.com")
            .body(http_body_util::Full::default())
            .unwrap();
        client.send(request).await.unwrap();
    }
    for key in ["pvk_demo_acme", "pvk_wrong"] {
        client
            .get_with(
                &data.url("/v1/commands/order/1"),
                &[("x-api-key", key), ("x-tenant-id", "acme")],
            )
            .await
            .unwrap();
    }
    client.get(&data.url("/nowhere")).await.unwrap();

    let scrape = |addr: String| {
        let client = client.clone();
        async move {
            client
                .get(&format!("http://{addr}/metrics"))
                .await
                .unwrap()
                .text()
        }
    };
    let control_metrics = scrape(control.http.clone()).await;
    let data_metrics = scrape(data.admin.clone()).await;
    for text in [&control_metrics, &data_metrics] {
        let lint = promtool(&["check", "metrics"], text);
        assert!(lint.trim().is_empty(), "{lint}");
    }
    assert!(
        data_metrics.contains("pavilion_rate_limit_redis_up 1"),
        "{data_metrics}"
    );
    assert!(control_metrics.contains("pavilion_control_data_planes_behind 0"));
    assert!(control_metrics.contains("pavilion_source_up 1"));

    promtool(&["check", "rules", "deploy/prometheus/alerts.yaml"], "");
    promtool(&["test", "rules", "deploy/prometheus/alerts.test.yaml"], "");

    let mut known = exposed(&control_metrics);
    known.extend(exposed(&data_metrics));
    let seen = known.clone();
    known.extend(declared());
    let mut expressions = Vec::new();
    for entry in std::fs::read_dir(workspace().join("deploy/grafana")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                expressions.push((path.clone(), target["expr"].as_str().unwrap().to_owned()));
            }
        }
    }
    assert!(expressions.len() > 20, "{expressions:?}");
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(workspace().join("deploy/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap().to_owned();
            expressions.push((PathBuf::from("alerts.yaml"), expr));
        }
    }
    for (file, expr) in &expressions {
        for name in named(expr) {
            assert!(
                known.contains(&name),
                "{}: `{name}` is no metric of either binary",
                file.display()
            );
        }
    }
    // Most of what the dashboards show was really scraped, not only declared.
    let scraped = expressions
        .iter()
        .flat_map(|(_, expr)| named(expr))
        .filter(|name| seen.contains(name))
        .count();
    assert!(
        scraped * 4 >= expressions.len() * 3,
        "{scraped} of {}",
        expressions.len()
    );
}
