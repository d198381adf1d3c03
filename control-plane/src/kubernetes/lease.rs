//! Leader election on a `coordination.k8s.io/v1` Lease. Every replica compiles and serves
//! snapshots; only the leader writes statuses and the KV mirror. The leader renews every
//! third of the lease duration; a follower takes over once a claim has gone unrenewed for
//! the whole duration; a leader that cannot renew within the duration steps down. On a
//! graceful stop the leader releases the Lease so a follower takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use super::KubeOptions;

/// Name of the Lease.
pub const LEASE_NAME: &str = "pavilion-control";

/// Keeps `leader` up to date until `shutdown` turns true, then releases a held Lease.
pub async fn run(
    client: kube::Client,
    options: KubeOptions,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &options.lease_namespace);
    let every = (options.lease_duration / 3).max(Duration::from_millis(200));
    let mut renewed = Instant::now() - options.lease_duration;
    loop {
        match claim(&api, &options).await {
            Ok(true) => {
                renewed = Instant::now();
                if !*leader.borrow() {
                    tracing::info!(identity = %options.identity, "became the leader");
                }
                leader.send_if_modified(|l| !std::mem::replace(l, true));
            }
            Ok(false) => {
                if *leader.borrow() {
                    tracing::warn!(identity = %options.identity, "another replica holds the lease; stepping down");
                }
                leader.send_if_modified(|l| std::mem::replace(l, false));
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reach the lease");
                if renewed.elapsed() >= options.lease_duration
                    && leader.send_if_modified(|l| std::mem::replace(l, false))
                {
                    tracing::warn!("lease not renewed in time; stepping down");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        if let Err(error) = release(&api, &options.identity).await {
            tracing::warn!(%error, "cannot release the lease; a follower takes over when it expires");
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Takes, keeps or leaves the Lease; true when this replica holds it afterwards.
async fn claim(api: &Api<Lease>, options: &KubeOptions) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(options.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(options.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return settle(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != options.identity {
        let duration =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(0) as u64);
        let expired = holder.is_empty()
            || spec.renew_time.as_ref().is_none_or(|renewed| {
                let age = Timestamp::now().duration_since(renewed.0);
                age.is_negative() || age.unsigned_abs() >= duration
            });
        if !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(options.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now());
    // The resourceVersion in the object makes this a compare-and-swap.
    settle(
        api.replace(LEASE_NAME, &PostParams::default(), &lease)
            .await,
    )
}

/// A conflict means another replica won the race: not an error, just not ours.
fn settle(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, identity: &str) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    api.replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
        .map(drop)
}
