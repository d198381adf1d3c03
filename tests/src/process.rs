//! Child processes for e2e tests: the real binaries, with output captured to a file, killed
//! when the handle drops so a failing test never leaves a server behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Path of a workspace binary, built once per test process with the same profile as the
/// tests, so an e2e run never starts a stale binary.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let profile_dir = target_profile_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        // The same target set as `cargo test --workspace` (and nextest) builds, so features
        // unify identically and this is a no-op after a workspace test build. Only what
        // cargo needs from the environment: the variables a test runner sets for the test
        // process (package metadata, runner state) would make cargo rebuild.
        command.env_clear();
        for name in [
            "PATH",
            "HOME",
            "CARGO_HOME",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
            "CARGO_TARGET_DIR",
        ] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .current_dir(workspace_root())
            .args(["build", "--workspace", "--all-targets"]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            command.arg("--release");
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
    });
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// `target/<profile>`, from the test executable's own path (`target/<profile>/deps/x`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps")
        .to_owned()
}

/// A running child process.
pub struct Child {
    name: String,
    inner: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Child {
    /// Starts `binary` with `args`; stdout and stderr go to a log file.
    pub fn spawn(name: &str, binary: &Path, args: &[&str]) -> Child {
        Self::spawn_with_env(name, binary, args, &[])
    }

    /// Like [`Child::spawn`], with environment variables besides the inherited ones.
    pub fn spawn_with_env(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Child {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let inner = Command::new(binary)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Child {
            name: name.to_owned(),
            inner,
            log,
            _dir: dir,
        }
    }

    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.inner.kill();
        let _ = self.inner.wait();
    }

    /// SIGTERM (graceful stop) and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.inner.id().to_string()])
            .status();
        self.inner.wait().expect("wait for child")
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn signal_terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.inner.id().to_string()])
            .status();
    }

    /// Waits for the exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.inner.wait().expect("wait for child")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.inner.try_wait(), Ok(None))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let output = self.output();
            let tail: Vec<&str> = output.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
