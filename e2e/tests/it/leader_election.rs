//! Two control-plane processes against a real kube-apiserver: one leads (writes statuses),
//! and when it is killed the other takes over within the lease.

use std::time::{Duration, Instant};

use pavilion_tests::eventually;
use pavilion_tests::free_port;
use pavilion_tests::kube::{CONTROL_TOKEN, KubeApiServer};
use pavilion_tests::process::{Child, binary};

const LEASE_SECONDS: u64 = 3;

fn control(api: &KubeApiServer, identity: &str) -> Child {
    let kubeconfig = api.kubeconfig(CONTROL_TOKEN);
    Child::spawn(
        identity,
        &binary("pavilion-control"),
        &[
            "run",
            "--source",
            "kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--identity",
            identity,
            "--lease-seconds",
            &LEASE_SECONDS.to_string(),
            "--grpc-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    )
}

async fn until_holder(api: &KubeApiServer, identity: &str, within: Duration) {
    eventually(&format!("{identity} to hold the lease"), within, || {
        std::future::ready((api.lease_holder() == identity).then_some(()))
    })
    .await;
}

async fn until_rejected(api: &KubeApiServer, name: &str) {
    api.apply(&format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  rules:\n    - backends: [{{ url: not-a-url }}]\n"
    ));
    eventually(
        &format!("the status of {name}"),
        Duration::from_secs(20),
        || {
            let accepted = api.jsonpath(
                &["route", name, "-n", "shop"],
                "{.status.conditions[?(@.type==\"Accepted\")].status}",
            );
            std::future::ready((accepted == "False").then_some(()))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_takes_over_when_the_leader_is_killed() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let mut first = control(&api, "first");
    until_holder(&api, "first", Duration::from_secs(20)).await;
    let _second = control(&api, "second");
    until_rejected(&api, "written-by-first").await;
    assert_eq!(
        api.lease_holder(),
        "first",
        "the follower does not take a held lease"
    );

    first.kill();
    let killed = Instant::now();
    until_holder(&api, "second", Duration::from_secs(3 * LEASE_SECONDS)).await;
    eprintln!(
        "failover after {:?} (lease {LEASE_SECONDS} s)",
        killed.elapsed()
    );
    until_rejected(&api, "written-by-second").await;
}
