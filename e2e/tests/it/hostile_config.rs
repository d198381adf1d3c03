//! A careless operator's directory against the real control-plane binary: symbolic link
//! loops and dangling links, and a huge file of garbage. The control plane stays ready,
//! reports each surprise, keeps applying edits, and its memory stays bounded.

use std::time::Duration;

use pavilion_e2e::{ControlProcess, route_yaml, write_atomically};
use pavilion_tests::{eventually, free_port};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(15);

/// Every problem the status reports, as `origin: message` lines.
fn problems(status: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for list in ["problems", "resources"] {
        for entry in status[list].as_array().into_iter().flatten() {
            let text = entry.to_string();
            if text.contains("\"False\"") || list == "problems" {
                lines.push(text);
            }
        }
    }
    lines
}

fn names(status: &Value) -> Vec<String> {
    status["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

/// Kibibytes of resident memory of `pid` (`VmRSS`), or its peak (`VmHWM`).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[tokio::test]
async fn symbolic_link_loops_and_dangling_links_are_reported_and_never_stall_the_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        route_yaml("a", "/a", "http://127.0.0.1:9"),
    )
    .unwrap();
    let loops = dir.path().join("loops");
    std::fs::create_dir(&loops).unwrap();
    // Two loops in one directory: a walk that follows them branches at every level.
    std::os::unix::fs::symlink("..", loops.join("up")).unwrap();
    std::os::unix::fs::symlink("..", loops.join("again")).unwrap();
    std::os::unix::fs::symlink(dir.path(), loops.join("root")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("nowhere.yaml"),
        dir.path().join("gone.yaml"),
    )
    .unwrap();

    // Ready at all means the first read finished.
    let cp = ControlProcess::start(dir.path(), free_port()).await;
    let status = cp.status().await;
    let reported = problems(&status).join("\n");
    for expected in ["loops/again", "loops/root", "loops/up", "gone.yaml"] {
        assert!(
            reported.contains(expected),
            "{expected} not reported: {reported}"
        );
    }
    assert!(reported.contains("symbolic link loop"), "{reported}");
    assert!(reported.contains("leads nowhere readable"), "{reported}");
    assert_eq!(
        names(&status).iter().filter(|n| *n == "a").count(),
        1,
        "read once"
    );

    // Edits still arrive.
    write_atomically(
        &dir.path().join("b.yaml"),
        &route_yaml("b", "/b", "http://127.0.0.1:9"),
    );
    eventually("the new route in the status", PATIENCE, || async {
        names(&cp.status().await)
            .contains(&"b".to_owned())
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_huge_file_of_garbage_costs_bounded_memory_and_a_small_status() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        route_yaml("a", "/a", "http://127.0.0.1:9"),
    )
    .unwrap();
    let cp = ControlProcess::start(dir.path(), free_port()).await;
    let pid = cp.child.id();
    let baseline = memory_kib(pid, "VmRSS:");

    // 30 MiB of small invalid documents (below the file limit, far above the document one).
    let garbage = "---\nnot: a resource\n".repeat((30 << 20) / 20);
    write_atomically(&dir.path().join("garbage.yaml"), &garbage);
    let status_text = eventually("the garbage in the status", PATIENCE, || async {
        let text = pavilion_tests::control_api(&cp.http, "/v1/status")
            .await
            .text();
        text.contains("garbage.yaml").then_some(text)
    })
    .await;
    assert!(
        status_text.len() < 256 * 1024,
        "/v1/status is {} bytes",
        status_text.len()
    );
    assert!(status_text.contains("more invalid documents"), "summed up");
    assert!(status_text.contains("more than 20000 documents"), "cut off");
    let peak = memory_kib(pid, "VmHWM:");
    assert!(
        peak < baseline + 400 * 1024,
        "peak {peak} KiB from a baseline of {baseline} KiB"
    );

    // A file past the size limit is not read at all.
    write_atomically(
        &dir.path().join("huge.yaml"),
        &"# filler\n".repeat(40 << 20 >> 3),
    );
    eventually("the huge file refused", PATIENCE, || async {
        let text = cp.status().await.to_string();
        (text.contains("huge.yaml") && text.contains("are not read")).then_some(())
    })
    .await;

    std::fs::remove_file(dir.path().join("garbage.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("huge.yaml")).unwrap();
    eventually("the files gone from the status", PATIENCE, || async {
        let text = cp.status().await.to_string();
        (!text.contains("garbage.yaml") && !text.contains("huge.yaml")).then_some(())
    })
    .await;
    // Most of the memory goes back (give the allocator a moment to return it).
    let settled = eventually(
        &format!("memory back from its peak of {peak} KiB towards {baseline} KiB"),
        PATIENCE,
        || async {
            let now = memory_kib(pid, "VmRSS:");
            (now < baseline + 16 * 1024).then_some(now)
        },
    )
    .await;
    eprintln!("baseline {baseline} KiB, peak {peak} KiB, after {settled} KiB");
}
