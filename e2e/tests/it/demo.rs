//! README's first command: `scripts/demo` starts the gateway on the example configuration,
//! on the addresses it is given through the environment (here all free ports, and a demo
//! upstream away from 127.0.0.1:9000, so the rewritten copy of the configuration is used).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use pavilion_tests::client::HttpClient;
use pavilion_tests::process::binary;
use pavilion_tests::{eventually, free_port};

/// The demo's process group, stopped (TERM, then KILL) however the test ends.
struct Demo {
    child: std::process::Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_demo_runs_on_the_addresses_the_environment_gives() {
    let bin = binary("pavilion-data");
    let bin_dir = bin.parent().unwrap();
    let address = || format!("127.0.0.1:{}", free_port());
    let (upstream, listen, admin) = (address(), address(), address());
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let demo = Demo {
        child: Command::new(format!("{workspace}/scripts/demo"))
            .env("PAVILION_DEMO_BIN", bin_dir)
            .env("PAVILION_DEMO_UPSTREAM", &upstream)
            .env("PAVILION_DEMO_GRPC", address())
            .env("PAVILION_DEMO_CONTROL", address())
            .env("PAVILION_DEMO_LISTEN", &listen)
            .env("PAVILION_DEMO_ADMIN", &admin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("scripts/demo starts"),
    };
    let url = format!("http://{listen}/demo/hello");
    let reply = eventually(
        "the demo gateway to answer",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let reply = HttpClient::http1().get(&url).await.ok()?;
                (reply.status == 200).then_some(reply)
            }
        },
    )
    .await;
    assert_eq!(reply.header("x-upstream"), Some("demo"));
    let ready = HttpClient::http1()
        .get(&format!("http://{admin}/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status, 200);
    drop(demo);
    assert!(
        HttpClient::http1().get(&url).await.is_err(),
        "the demo stopped with its process group"
    );
}
