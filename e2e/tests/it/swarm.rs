//! The Swarm stack, for real (seed 004 T9.2, T9.3): images built from the Dockerfiles (base
//! image from debootstrap, binaries from this build — no registry is reachable), the
//! secrets made by swarm/bootstrap, swarm/stacks/platform.yml deployed on a one-node swarm
//! of the machine's dockerd, a Route put into the KV bucket with `pavilion-control kv put`,
//! traffic through the published edge port, data planes without the stack's client
//! certificate refused, and a rolling update of the data planes under continuous load: no
//! request fails and a ready data plane is there throughout. Everything the test makes is
//! removed afterwards (the swarm too, when the test made it), except the cached base image.
//!
//! NATS, Redis and HAProxy come from one Debian image the test builds (the stack's
//! defaults are the public images).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use pavilion_tests::client::HttpClient;
use pavilion_tests::process::{Child, binary};
use pavilion_tests::{eventually, free_port};

const STACK: &str = "pavilion-e2e";
const TAG: &str = "e2e";
const SECRETS: [&str; 6] = [
    "pavilion_ca_crt",
    "pavilion_control_crt",
    "pavilion_control_key",
    "pavilion_data_crt",
    "pavilion_data_key",
    "pavilion_api_tokens",
];
const UPSTREAM: &str = "pavilion-e2e-upstream";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Debian's docker client (the daemon's own version), whatever else is on PATH.
fn docker_binary() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new(docker_binary())
        .args(args)
        .output()
        .expect("docker runs (Debian: docker.io)")
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// What the test made, undone when it ends (passed or not).
#[derive(Default)]
struct Cleanup {
    dockerd: Option<Child>,
    left_swarm: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["stack", "rm", STACK]);
        let _ = docker(&["service", "rm", UPSTREAM]);
        // The stack's network and secrets go once its tasks are gone.
        for _ in 0..30 {
            let stack = docker(&["ps", "-q", "--filter", &format!("name={STACK}_")]);
            let upstream = docker(&["ps", "-q", "--filter", &format!("name={UPSTREAM}")]);
            if stack.stdout.is_empty() && upstream.stdout.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for secret in SECRETS {
            let _ = docker(&["secret", "rm", secret]);
        }
        let _ = docker(&["network", "rm", &format!("{STACK}_platform")]);
        // The images made from this build (the debootstrap base stays: it is the cache).
        let _ = docker(&[
            "rmi",
            &format!("pavilion-control:{TAG}"),
            &format!("pavilion-data:{TAG}"),
            &format!("pavilion-e2e-services:{TAG}"),
        ]);
        if self.left_swarm {
            let _ = docker(&["swarm", "leave", "--force"]);
        }
        if let Some(dockerd) = &mut self.dockerd {
            // SIGTERM first: dockerd stops its containers (a SIGKILL would orphan their
            // processes); bounded, then killed.
            dockerd.signal_terminate();
            for _ in 0..40 {
                if !dockerd.is_running() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            dockerd.kill();
        }
    }
}

/// A dockerd (this machine's, or one started here) in swarm mode.
fn swarm(cleanup: &mut Cleanup) {
    if !docker(&["info"]).status.success() {
        cleanup.dockerd = Some(Child::spawn("dockerd", Path::new("dockerd"), &[]));
        for _ in 0..60 {
            if docker(&["info"]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let state = docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    if state != "active" {
        docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        cleanup.left_swarm = true;
    }
}

/// NATS, Redis, HAProxy and the demo upstream on the Debian base image.
fn services_image(base: &str) -> String {
    let context = tempfile::tempdir().unwrap();
    std::fs::copy(
        binary("pavilion-upstream"),
        context.path().join("pavilion-upstream"),
    )
    .unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {base}\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server redis-server redis-tools haproxy && rm -rf /var/lib/apt/lists/*\nCOPY pavilion-upstream /usr/local/bin/\n"
        ),
    )
    .unwrap();
    let image = format!("pavilion-e2e-services:{TAG}");
    run_ok(
        Command::new(docker_binary())
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "-q", "-t", &image])
            .arg(context.path()),
    );
    image
}

fn healthy_data_planes() -> usize {
    let ids = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("name={STACK}_data."),
        "--filter",
        "health=healthy",
    ]);
    ids.lines().filter(|l| !l.is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_serves_and_rolls_its_data_planes_without_losing_a_request() {
    let mut cleanup = Cleanup::default();
    swarm(&mut cleanup);
    // Leftovers of an interrupted run.
    drop(Cleanup::default());

    // The Dockerfiles pass hadolint.
    run_ok(
        Command::new("hadolint")
            .current_dir(workspace())
            .args(["Dockerfile.control", "Dockerfile.data"]),
    );
    // Images from this test run's binaries (no second build beside the running tests).
    let binaries = binary("pavilion-data").parent().unwrap().to_owned();
    let base = run_ok(
        Command::new(workspace().join("scripts/docker-base")).env("DOCKER", docker_binary()),
    );
    run_ok(
        Command::new(workspace().join("scripts/images"))
            .arg(TAG)
            .env("BINARIES_DIR", &binaries)
            .env("DOCKER", docker_binary()),
    );
    let control_image = format!("pavilion-control:{TAG}");
    let data_image = format!("pavilion-data:{TAG}");
    // Build metadata and a non-root user, as the images carry them.
    let version = docker_ok(&["run", "--rm", "--read-only", &data_image, "--version"]);
    let sha = run_ok(Command::new("git").current_dir(workspace()).args([
        "rev-parse",
        "--short=12",
        "HEAD",
    ]));
    assert!(
        version.contains(&sha),
        "{version} does not name commit {sha}"
    );
    assert_eq!(
        docker_ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}",
            &data_image
        ]),
        "65532:65532"
    );
    let services = services_image(&base);

    // Secrets, made once as an operator would.
    let ca_dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(workspace().join("swarm/bootstrap"))
            .arg(binary("pavilion-control"))
            .env("DOCKER", docker_binary())
            .env("PAVILION_CA_DIR", ca_dir.path().join("ca")),
    );

    let port = free_port();
    run_ok(
        Command::new(docker_binary())
            .current_dir(workspace())
            .args(["stack", "deploy", "-c", "swarm/stacks/platform.yml", STACK])
            .env("NATS_IMAGE", &services)
            .env("REDIS_IMAGE", &services)
            .env("HAPROXY_IMAGE", &services)
            .env("PAVILION_CONTROL_IMAGE", &control_image)
            .env("PAVILION_DATA_IMAGE", &data_image)
            .env("PAVILION_HTTP_PORT", port.to_string()),
    );
    docker_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        UPSTREAM,
        "--network",
        &format!("{STACK}_platform"),
        "--endpoint-mode",
        "dnsrr",
        &services,
        "pavilion-upstream",
        "--listen",
        "0.0.0.0:9000",
        "--name",
        "swarm",
    ]);

    let patience = Duration::from_secs(120);
    eventually("two ready data planes", patience, || async {
        (healthy_data_planes() == 2).then_some(())
    })
    .await;

    // A Route into the bucket, from a container on the stack's network.
    let route = format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: hello, namespace: default }}\nspec:\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /hello }} }}]\n      backends: [{{ url: 'http://{UPSTREAM}:9000' }}]\n"
    );
    let mut put = Command::new(docker_binary())
        .args([
            "run",
            "--rm",
            "-i",
            "--network",
            &format!("{STACK}_platform"),
            &control_image,
            "kv",
            "put",
            "--nats",
            "nats://nats:4222",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut put.stdin.take().unwrap(), route.as_bytes()).unwrap();
    let put = put.wait_with_output().unwrap();
    assert!(
        put.status.success(),
        "kv put: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let url = format!("http://127.0.0.1:{port}/hello");
    eventually("the route serves through the edge", patience, || async {
        let reply = HttpClient::http1().get(&url).await.ok()?;
        (reply.status == 200 && reply.header("x-upstream") == Some("swarm")).then_some(())
    })
    .await;
    // The client's address passes the edge: not the edge's own on the overlay.
    let echo = HttpClient::http1().get(&url).await.unwrap().json();
    let real_ip = echo["headers"]["x-real-ip"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !real_ip.is_empty() && !real_ip.starts_with("10.231.0."),
        "the upstream sees the edge ({real_ip}) instead of the client"
    );

    // Beside the stack, data planes without a certificate or with one of another CA (the
    // stack's CA file, a foreign client certificate) get no snapshot.
    let foreign = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(binary("pavilion-control"))
            .args(["certs", "--out-dir"])
            .arg(foreign.path().join("other"))
            .args(["--data-plane-names", "*.data.pavilion"]),
    );
    let mounted = foreign.path().join("mounted");
    std::fs::create_dir_all(&mounted).unwrap();
    std::fs::copy(ca_dir.path().join("ca/ca.crt"), mounted.join("ca.crt")).unwrap();
    std::fs::copy(
        foreign.path().join("other/data-plane.crt"),
        mounted.join("tls.crt"),
    )
    .unwrap();
    std::fs::copy(
        foreign.path().join("other/data-plane.key"),
        mounted.join("tls.key"),
    )
    .unwrap();
    // Readable by the image's user.
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&mounted));
    let network = format!("{STACK}_platform");
    let volume = format!("{}:/tls:ro", mounted.display());
    let common = [
        "run",
        "-d",
        "--network",
        &network,
        "-v",
        &volume,
        "-e",
        "PAVILION_CONTROL_PLANE=https://control:18000",
        "-e",
        "PAVILION_CONTROL_PLANE_SERVER_NAME=control",
        "-e",
        "PAVILION_CONTROL_PLANE_CA=/tls/ca.crt",
    ];
    let mut anonymous: Vec<&str> = common.to_vec();
    anonymous.extend([
        "-e",
        "PAVILION_NODE_ID=anonymous.data.pavilion",
        &data_image,
        "run",
    ]);
    let mut stranger: Vec<&str> = common.to_vec();
    stranger.extend([
        "-e",
        "PAVILION_CONTROL_PLANE_CERT=/tls/tls.crt",
        "-e",
        "PAVILION_CONTROL_PLANE_KEY=/tls/tls.key",
        "-e",
        "PAVILION_NODE_ID=stranger.data.pavilion",
        &data_image,
        "run",
    ]);
    for args in [anonymous, stranger] {
        let id = docker_ok(&args);
        eventually(
            "the refused data plane reports its stream down",
            patience,
            || {
                let id = id.clone();
                async move {
                    let logs = docker(&["logs", &id]);
                    String::from_utf8_lossy(&logs.stdout)
                        .contains("snapshot stream down")
                        .then_some(())
                }
            },
        )
        .await;
        let ready = docker(&[
            "exec",
            &id,
            "/usr/local/bin/pavilion-data",
            "probe",
            "http://127.0.0.1:9901/ready",
        ]);
        let logs = docker(&["logs", &id]);
        let _ = docker(&["rm", "-f", &id]);
        assert!(
            !ready.status.success(),
            "a data plane without the stack's client certificate got a snapshot: {}",
            String::from_utf8_lossy(&logs.stdout)
        );
    }

    // A rolling update of the data planes under continuous load.
    let before = docker_ok(&["ps", "-q", "--filter", &format!("name={STACK}_data.")]);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, failures, url) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            failures.clone(),
            url.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = HttpClient::http1().get(&url).await;
                sent.fetch_add(1, Ordering::Relaxed);
                match reply {
                    Ok(reply) if reply.status == 200 => {}
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut failures = failures.lock().unwrap();
                        if failures.len() < 5 {
                            failures.push(format!("{:?}", other.map(|r| (r.status, r.text()))));
                        }
                    }
                }
            }
        }));
    }
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let watcher = {
        let (stop, fewest) = (stop.clone(), fewest.clone());
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                fewest.fetch_min(healthy_data_planes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let update = tokio::task::spawn_blocking(|| {
        docker_ok(&[
            "service",
            "update",
            "--force",
            "--detach=false",
            "--quiet",
            &format!("{STACK}_data"),
        ])
    });
    update.await.unwrap();
    eventually(
        "two ready data planes after the update",
        patience,
        || async { (healthy_data_planes() == 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    watcher.await.unwrap();
    let after = docker_ok(&["ps", "-q", "--filter", &format!("name={STACK}_data.")]);

    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "rolling update: {sent} requests, {failed} failed, at least {} ready data planes",
        fewest.load(Ordering::Relaxed)
    );
    assert!(
        sent > 100,
        "only {sent} requests were sent during the update"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed during the rolling update: {:?}",
        failures.lock().unwrap()
    );
    assert!(
        fewest.load(Ordering::Relaxed) >= 1,
        "a moment without a ready data plane"
    );
    for id in before.lines() {
        assert!(!after.contains(id), "data plane {id} was not replaced");
    }
}
