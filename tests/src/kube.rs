//! A real Kubernetes API server per test: `kube-apiserver` (built from Debian's source
//! package by `scripts/build-kube-apiserver`) on Debian's `etcd`, both on free loopback
//! ports in a temp dir, with the project's CRDs and RBAC applied. Driven with `kubectl`,
//! as an operator would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::free_port;
use crate::process::Child;

/// Token of a cluster admin (`system:masters`).
pub const ADMIN_TOKEN: &str = "pavilion-admin-token";
/// Token of user `pavilion-control`, bound to nothing but the project's ClusterRole.
pub const CONTROL_TOKEN: &str = "pavilion-control-token";

pub struct KubeApiServer {
    pub port: u16,
    etcd: Child,
    apiserver: Option<Child>,
    dir: tempfile::TempDir,
}

/// The kube-apiserver binary: `KUBE_APISERVER`, else the build script's cache.
pub fn apiserver_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBE_APISERVER") {
        return path.into();
    }
    let cache = std::env::var_os("PAVILION_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pavilion")
        });
    cache.join("kube-apiserver")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// A file of the workspace (manifests under `deploy/`, say).
pub fn workspace_file(relative: &str) -> PathBuf {
    workspace().join(relative)
}

impl KubeApiServer {
    /// Starts etcd and the API server, waits until it is ready, applies CRDs and RBAC.
    pub fn start() -> Self {
        let binary = apiserver_binary();
        assert!(
            binary.exists(),
            "{} is missing: run scripts/build-kube-apiserver (scripts/test does)",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let etcd = Child::spawn(
            "etcd",
            Path::new("etcd"),
            &[
                "--data-dir",
                dir.path().join("etcd").to_str().unwrap(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ],
        );
        wait_for_port(client);
        let key = rcgen::KeyPair::generate().expect("service-account key");
        std::fs::write(dir.path().join("sa.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("sa.pub"), key.public_key_pem()).unwrap();
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n{CONTROL_TOKEN},pavilion-control,pavilion-control\n"),
        )
        .unwrap();
        let mut server = Self {
            port: free_port(),
            etcd,
            apiserver: None,
            dir,
        };
        server.apiserver = Some(server.spawn_apiserver(client));
        server.wait_ready();
        let crds = workspace().join("crds/manifests");
        server.kubectl_ok(&["apply", "-f", crds.to_str().unwrap()]);
        for crd in [
            "routes",
            "shards",
            "tenantplacements",
            "ratelimitpolicies",
            "corspolicies",
            "apikeys",
            "tokenrevocations",
            "rebalanceplans",
        ] {
            server.kubectl_ok(&[
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                &format!("crd/{crd}.gateway.pavilion.dev"),
            ]);
        }
        let rbac = workspace().join("deploy/kubernetes/rbac.yaml");
        server.kubectl_ok(&["apply", "-f", rbac.to_str().unwrap()]);
        server.kubectl_ok(&[
            "create",
            "clusterrolebinding",
            "pavilion-control-user",
            "--clusterrole=pavilion-control",
            "--user=pavilion-control",
        ]);
        server
    }

    fn spawn_apiserver(&self, etcd_port: u16) -> Child {
        let dir = self.dir.path();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        Child::spawn(
            "kube-apiserver",
            &apiserver_binary(),
            &[
                &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={}", self.port),
                &format!("--cert-dir={}", path("certs")),
                &format!("--token-auth-file={}", path("tokens.csv")),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", path("sa.pub")),
                &format!("--service-account-signing-key-file={}", path("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16",
            ],
        )
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the API server (etcd keeps the data) and starts it again on the same port:
    /// every watch breaks and must resume.
    pub fn restart(&mut self) {
        self.pause();
        self.resume();
    }

    /// Kills the API server; [`resume`](Self::resume) starts it again on the same port.
    pub fn pause(&mut self) {
        drop(self.apiserver.take());
    }

    pub fn resume(&mut self) {
        let etcd_port = self.etcd_port();
        self.apiserver = Some(self.spawn_apiserver(etcd_port));
        self.wait_ready();
    }

    fn etcd_port(&self) -> u16 {
        let args = std::fs::read_to_string(format!("/proc/{}/cmdline", self.etcd.id()))
            .unwrap_or_default();
        args.split('\0')
            .find_map(|a| {
                a.strip_prefix("http://127.0.0.1:")
                    .and_then(|p| p.parse().ok())
            })
            .expect("etcd's client port")
    }

    /// A kubeconfig for `token`, written once per token.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        // Named by a hash: ServiceAccount tokens are longer than a file name may be.
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(token, &mut hasher);
        let path = self.dir.path().join(format!(
            "kubeconfig-{:016x}",
            std::hash::Hasher::finish(&hasher)
        ));
        if !path.exists() {
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{ cluster: test, user: user }}\ncurrent-context: test\n",
                self.port
            );
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    /// Runs kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig(ADMIN_TOKEN))
            .args(args)
            .output()
            .expect("kubectl runs (Debian: kubernetes-client)")
    }

    /// Runs kubectl as the admin and returns stdout; panics with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Who holds the leader-election Lease (empty when nobody does).
    pub fn lease_holder(&self) -> String {
        self.jsonpath(
            &["lease", "pavilion-control", "-n", "default"],
            "{.spec.holderIdentity}",
        )
    }

    /// `kubectl get OBJECT… -o jsonpath=PATH`, empty when the object is missing.
    pub fn jsonpath(&self, object: &[&str], path: &str) -> String {
        let mut args = vec!["get"];
        args.extend_from_slice(object);
        let output_flag = format!("jsonpath={path}");
        args.extend(["-o", &output_flag]);
        String::from_utf8_lossy(&self.kubectl(&args).stdout).into_owned()
    }

    /// `kubectl apply -f -` with `yaml`; panics with stderr on failure.
    pub fn apply(&self, yaml: &str) -> String {
        let output = self.try_apply(yaml, &[]);
        assert!(
            output.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl apply -f - ARGS…` with `yaml`, whatever its outcome.
    pub fn try_apply(&self, yaml: &str, args: &[&str]) -> std::process::Output {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig(ADMIN_TOKEN))
            .args(["apply", "-f", "-"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
