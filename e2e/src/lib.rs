//! The real binaries, started as a user starts them, for the scenarios in `tests/`.

use std::path::Path;
use std::time::Duration;

use pavilion_tests::client::HttpClient;
use pavilion_tests::process::{Child, binary};
use pavilion_tests::{eventually, free_port};

/// How long a process may take to become ready.
pub const STARTUP: Duration = Duration::from_secs(20);

/// A running `pavilion-control run --source dir:…`.
pub struct ControlProcess {
    pub child: Child,
    pub grpc: String,
    pub http: String,
}

impl ControlProcess {
    pub async fn start(config_dir: &Path, grpc_port: u16) -> Self {
        Self::start_with(config_dir, grpc_port, &[]).await
    }

    /// Starts with `extra` arguments after the usual ones.
    pub async fn start_with(config_dir: &Path, grpc_port: u16, extra: &[&str]) -> Self {
        let http_port = free_port();
        // Hidden, so the directory source never reads it as configuration.
        let token_file = config_dir.join(".api-tokens");
        std::fs::write(
            &token_file,
            format!("# e2e\n{}\n", pavilion_tests::API_TOKEN),
        )
        .unwrap();
        let grpc = format!("127.0.0.1:{grpc_port}");
        let http = format!("127.0.0.1:{http_port}");
        let source = format!("dir:{}", config_dir.display());
        let token_file = token_file.to_str().unwrap().to_owned();
        let mut args = vec![
            "run",
            "--api-token-file",
            &token_file,
            "--source",
            &source,
            "--grpc-listen",
            &grpc,
            "--http-listen",
            &http,
        ];
        args.extend_from_slice(extra);
        let child = Child::spawn("pavilion-control", &binary("pavilion-control"), &args);
        let process = Self { child, grpc, http };
        wait_ready(&format!("http://{}/ready", process.http)).await;
        process
    }

    pub async fn status(&self) -> serde_json::Value {
        pavilion_tests::control_api(&self.http, "/v1/status")
            .await
            .json()
    }
}

/// A running `pavilion-data run`.
pub struct DataProcess {
    pub child: Child,
    pub listen: String,
    pub admin: String,
}

impl DataProcess {
    /// Starts and waits until ready (which needs a snapshot from the control plane or the cache).
    pub async fn start(control_plane: &str, cache: &Path, listen_port: u16) -> Self {
        Self::start_with(&format!("http://{control_plane}"), cache, listen_port, &[]).await
    }

    /// Starts against `control_plane` (a URL) with `extra` arguments after the usual ones
    /// (a later `--node-id` wins over the default `e2e-data`).
    pub async fn start_with(
        control_plane: &str,
        cache: &Path,
        listen_port: u16,
        extra: &[&str],
    ) -> Self {
        let listen = format!("127.0.0.1:{listen_port}");
        let admin = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "run",
            "--control-plane",
            control_plane,
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--snapshot-cache",
            cache.to_str().unwrap(),
            "--workers",
            "2",
        ];
        if !extra.contains(&"--node-id") {
            args.extend_from_slice(&["--node-id", "e2e-data"]);
        }
        args.extend_from_slice(extra);
        let child = Child::spawn("pavilion-data", &binary("pavilion-data"), &args);
        let process = Self {
            child,
            listen,
            admin,
        };
        wait_ready(&format!("http://{}/ready", process.admin)).await;
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// GETs `path` through the gateway: the status and the upstream that answered.
    pub async fn served_by(&self, path: &str) -> (u16, Option<String>) {
        let reply = HttpClient::http1()
            .get(&self.url(path))
            .await
            .expect("an answer");
        (
            reply.status.as_u16(),
            reply.header("x-upstream").map(str::to_owned),
        )
    }
}

/// A running `pavilion-upstream` called `name`.
pub struct UpstreamProcess {
    pub child: Child,
    pub url: String,
}

impl UpstreamProcess {
    pub async fn start(name: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Child::spawn(
            name,
            &binary("pavilion-upstream"),
            &["--listen", &addr, "--name", name, "--workers", "1"],
        );
        let url = format!("http://{addr}");
        wait_ready(&format!("{url}/fast")).await;
        Self { child, url }
    }
}

async fn wait_ready(url: &str) {
    eventually(&format!("{url} to answer 200"), STARTUP, || async {
        let reply = HttpClient::http1().get(url).await.ok()?;
        (reply.status == 200).then_some(())
    })
    .await;
}

/// A route document sending `/PATH...` to `backend`.
pub fn route_yaml(name: &str, prefix: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: e2e }}\nspec:\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: {prefix} }} }}]\n      backends: [{{ url: '{backend}' }}]\n      timeout: 5s\n"
    )
}

/// Writes `text` to `path` atomically (temp file + rename), as editors and config
/// management tools do, so no reader sees half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp~");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}
