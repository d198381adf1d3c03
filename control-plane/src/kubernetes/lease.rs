//! Leader election on a `coordination.k8s.io/v1` Lease. Every replica compiles and serves
//! snapshots; only the leader writes statuses and the KV mirror. The leader renews every
//! third of the lease duration and stops acting when it could not renew for two thirds of
//! it; a follower takes over once a claim has stayed unrenewed for the whole duration, as
//! measured on its own clock from when it first saw that claim. So two replicas never act
//! at once, whatever their clocks say. On a graceful stop the leader releases the Lease and
//! a follower takes over at its next check.

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
    // A leader that has not renewed for this long stops acting, well before a follower
    // may take over (after the whole duration), so two never act at once.
    let renew_deadline = options.lease_duration * 2 / 3;
    let mut renewed: Option<Instant> = None;
    let mut observed: Option<Observed> = None;
    loop {
        let attempt = Instant::now();
        match tokio::time::timeout(every, claim(&api, &options, &mut observed)).await {
            Ok(Ok(true)) => {
                renewed = Some(attempt);
                if leader.send_if_modified(|l| !std::mem::replace(l, true)) {
                    tracing::info!(identity = %options.identity, "became the leader");
                }
            }
            Ok(Ok(false)) => {
                renewed = None;
                if leader.send_if_modified(|l| std::mem::replace(l, false)) {
                    tracing::warn!(identity = %options.identity, "another replica holds the lease; stepping down");
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot reach the lease"),
            Err(_) => tracing::warn!("the lease did not answer in time"),
        }
        if renewed.is_some_and(|at| at.elapsed() >= renew_deadline)
            && leader.send_if_modified(|l| std::mem::replace(l, false))
        {
            renewed = None;
            tracing::warn!("lease not renewed in time; stepping down");
        }
        tokio::select! {
            () = tokio::time::sleep(every.saturating_sub(attempt.elapsed())) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    if leader.send_if_modified(|l| std::mem::replace(l, false)) {
        match tokio::time::timeout(every, release(&api, &options.identity)).await {
            Ok(Ok(())) => tracing::info!("released the lease"),
            _ => tracing::warn!("cannot release the lease; a follower takes over when it expires"),
        }
    }
}

/// Another holder's claim as last seen, and when this replica first saw it. Expiry is
/// judged on this replica's own monotonic clock (as client-go does), so clock differences
/// between replicas cannot make a live claim look expired.
struct Observed {
    record: (String, Option<String>, Option<String>),
    since: Instant,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Takes, keeps or leaves the Lease; true when this replica holds it afterwards.
async fn claim(
    api: &Api<Lease>,
    options: &KubeOptions,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
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
    let resource_version = lease.metadata.resource_version.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != options.identity {
        if !holder.is_empty() {
            let record = (
                holder,
                spec.renew_time.as_ref().map(|t| t.0.to_string()),
                resource_version,
            );
            let duration =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(1) as u64);
            match observed {
                Some(seen) if seen.record == record => {
                    if seen.since.elapsed() < duration {
                        return Ok(false);
                    }
                }
                _ => {
                    *observed = Some(Observed {
                        record,
                        since: Instant::now(),
                    });
                    return Ok(false);
                }
            }
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
