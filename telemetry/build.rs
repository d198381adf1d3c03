//! Build metadata for `--version`, `/health` and `pavilion_build_info`: the git commit and
//! the build time, from `PAVILION_GIT_SHA` / `PAVILION_BUILD_TIME` when set (image builds,
//! where `.git` is not in the context), else from git and the clock.

use std::process::Command;

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PAVILION_GIT_SHA");
    println!("cargo:rerun-if-env-changed=PAVILION_BUILD_TIME");
    let git_dir = output("git", &["rev-parse", "--git-dir"]);
    if let Some(dir) = &git_dir {
        // A new commit or checkout changes one of these. Only existing paths: cargo
        // treats a missing one as changed, which would rebuild everything every time.
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            let path = std::path::Path::new(dir).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let sha = std::env::var("PAVILION_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| output("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let time = std::env::var("PAVILION_BUILD_TIME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PAVILION_GIT_SHA={sha}");
    println!("cargo:rustc-env=PAVILION_BUILD_TIME={time}");
}
