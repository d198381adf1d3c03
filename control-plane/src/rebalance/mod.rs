//! Rebalancing: a rebalancer job moves one tenant's service kind to another shard through
//! the control-plane API, without a failed request.
//!
//! ```text
//! POST /v1/rebalance/plans ─▶ Pending ──apply (gate ready)──▶ Applying ─▶ WaitingForDataPlanes ─▶ Completed
//!                               │        apply (not ready): 409 target_not_ready, stays Pending
//!                               └──rollback──▶ RolledBack     rollback ─▶ RollingBack ─▶ RolledBack
//! ```
//!
//! Plans live in a [`PlanStore`] of the source's kind (Kubernetes objects, KV entries, files)
//! and change by compare-and-set, so any replica may take an API call while the leader's
//! reconciler advances them, and a plan survives a failover half-way. The cutover rewrites
//! the tenant's `TenantPlacement` in the source (a [`Cutover`]), and the plan completes only
//! once every connected data plane runs a snapshot with the new placement.

pub mod cutover;
pub mod gate;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use pavilion_crds::{PlanState, PlanStatus, PlanStep, RebalancePlanSpec, Resource, ServiceKind};
use pavilion_proto as proto;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::controller::{Published, PublishedReceiver};
use crate::delivery::nodes::{NodeStatus, Nodes};
use crate::fleet::NodeBoard;
use crate::source::Origin;

pub use cutover::Cutover;
pub use store::{PlanStore, StoreError};

/// How often the reconciler looks at the plans when nothing woke it.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Most steps kept per plan (the oldest go first).
const MAX_STEPS: usize = 50;

/// A plan as stored: its id, what it moves, where it stands, and the store's revision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub id: String,
    pub spec: RebalancePlanSpec,
    pub status: PlanStatus,
    /// The store's revision of this plan, for compare-and-set.
    pub revision: String,
}

impl Plan {
    /// The API's view (API.md): `{"id","tenant","service","fromShard","targetShard","state","steps"}`.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "tenant": self.spec.tenant,
            "service": self.spec.service.as_str(),
            "fromShard": self.spec.from_shard,
            "targetShard": self.spec.target_shard,
            "state": self.status.state.as_str(),
            "steps": self.status.steps.iter().map(|s| json!({
                "time": s.time, "state": s.state.as_str(), "message": s.message
            })).collect::<Vec<_>>(),
        })
    }

    fn step(&mut self, state: PlanState, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(plan = %self.id, tenant = %self.spec.tenant, state = state.as_str(), %message, "rebalancing");
        self.status.state = state;
        self.status.steps.push(PlanStep {
            time: k8s_openapi::jiff::Timestamp::now().to_string(),
            state,
            message,
        });
        if self.status.steps.len() > MAX_STEPS {
            let excess = self.status.steps.len() - MAX_STEPS;
            self.status.steps.drain(..excess);
        }
    }

    /// `namespace` and `name` of the placement it rewrites.
    fn placement(&self) -> (&str, &str) {
        self.spec
            .placement
            .split_once('/')
            .unwrap_or(("default", &self.spec.placement))
    }
}

/// Why an API call about plans was refused: status, code and message.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => Refusal::new(
                409,
                "conflict",
                "the plan changed meanwhile; read it again and retry",
            ),
            StoreError::Exists => Refusal::new(409, "conflict", "a plan with this id exists"),
            StoreError::Other(message) => Refusal::new(503, "store_unavailable", message),
        }
    }
}

/// The data planes a plan waits for: this replica's, and (with a board) every replica's.
pub struct Fleet {
    pub nodes: Arc<Nodes>,
    pub board: Option<(Arc<dyn NodeBoard>, String)>,
}

impl Fleet {
    async fn all(&self) -> Vec<NodeStatus> {
        match &self.board {
            Some((board, replica)) => {
                crate::fleet::all_nodes(board.as_ref(), replica, self.nodes.list()).await
            }
            None => self.nodes.list(),
        }
    }
}

/// The rebalancing service: the API's handlers and the leader's reconciler share it.
pub struct Rebalancer {
    store: Box<dyn PlanStore>,
    cutover: Box<dyn Cutover>,
    gate: gate::Gate,
    published: PublishedReceiver,
    fleet: Fleet,
    /// Wakes the reconciler when this replica changed a plan.
    wake: Notify,
}

/// What a published snapshot says about one tenant's placement.
struct Placed<'a> {
    /// `namespace/name` of the placement resource, and where it came from.
    placement: (String, String, Origin),
    /// The shard of each kind it names now.
    shards: &'a pavilion_crds::PlacementShards,
    /// Its latest edit was refused and the last accepted version serves: a cutover would
    /// rewrite the refused version, and its completion would never show.
    stale: bool,
}

impl Rebalancer {
    pub fn new(
        store: Box<dyn PlanStore>,
        cutover: Box<dyn Cutover>,
        published: PublishedReceiver,
        fleet: Fleet,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            cutover,
            gate: gate::Gate::default(),
            published,
            fleet,
            wake: Notify::new(),
        })
    }

    fn published(&self) -> Result<Arc<Published>, Refusal> {
        self.published
            .borrow()
            .clone()
            .ok_or_else(|| Refusal::new(503, "not_ready", "the source has not been read yet"))
    }

    /// `POST /v1/rebalance/plans`: a plan to move `tenant`'s `service` to `target`.
    pub async fn create(&self, tenant: &str, service: &str, target: &str) -> Result<Plan, Refusal> {
        let published = self.published()?;
        let service = ServiceKind::from_name(service).ok_or_else(|| {
            Refusal::new(
                400,
                "invalid_service",
                format!("`{service}` is not aggregate, projection or runner"),
            )
        })?;
        let placed = placed(&published, tenant).ok_or_else(|| {
            Refusal::new(
                404,
                "unknown_tenant",
                format!("no placement for tenant {tenant}"),
            )
        })?;
        if placed.stale {
            return Err(Refusal::new(
                409,
                "placement_not_accepted",
                format!(
                    "the latest edit of tenant {tenant}'s placement was refused (its last accepted version serves): fix it before moving the tenant"
                ),
            ));
        }
        let (namespace, name, _) = &placed.placement;
        let shard = shard(&published, namespace, target).ok_or_else(|| {
            Refusal::new(
                404,
                "unknown_shard",
                format!("no accepted Shard `{target}` in namespace `{namespace}`"),
            )
        })?;
        if shard.service != service.as_str() {
            return Err(Refusal::new(
                400,
                "wrong_service",
                format!("Shard `{target}` serves {}, not {service}", shard.service),
            ));
        }
        let from = placed.shards.get(service).ok_or_else(|| {
            Refusal::new(
                409,
                "not_placed",
                format!("tenant {tenant} is not placed for {service}; edit its placement instead"),
            )
        })?;
        if from == target {
            return Err(Refusal::new(
                409,
                "already_placed",
                format!("tenant {tenant} is on {target} already"),
            ));
        }
        let mut plan = Plan {
            id: format!("{tenant}-{service}-{}", suffix()),
            spec: RebalancePlanSpec {
                tenant: tenant.to_owned(),
                service,
                placement: format!("{namespace}/{name}"),
                from_shard: from.to_owned(),
                target_shard: target.to_owned(),
            },
            status: PlanStatus::default(),
            revision: String::new(),
        };
        plan.step(
            PlanState::Pending,
            format!("move {tenant}'s {service} from {from} to {target}"),
        );
        plan.revision = self.store.create(&plan).await?;
        Ok(plan)
    }

    pub async fn get(&self, id: &str) -> Result<Plan, Refusal> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| Refusal::new(404, "unknown_plan", format!("no plan {id}")))
    }

    /// `POST …/apply`: refused with 409 `target_not_ready` (and the shard's own reason)
    /// while the target's gate says not ready; otherwise the plan is `Applying` and the
    /// leader cuts over.
    pub async fn apply(&self, id: &str) -> Result<Plan, Refusal> {
        let mut plan = self.get(id).await?;
        match plan.status.state {
            PlanState::Pending => {}
            PlanState::Applying | PlanState::WaitingForDataPlanes | PlanState::Completed => {
                return Ok(plan);
            }
            other => {
                return Err(Refusal::new(
                    409,
                    "wrong_state",
                    format!(
                        "plan {id} is {}; only a Pending plan is applied",
                        other.as_str()
                    ),
                ));
            }
        }
        if let Err(reason) = self.gate(&plan).await {
            plan.step(PlanState::Pending, format!("apply refused: {reason}"));
            // Recording the refusal is a courtesy; the answer does not depend on it.
            let _ = self.store.update(&plan).await;
            return Err(Refusal::new(409, "target_not_ready", reason));
        }
        plan.step(
            PlanState::Applying,
            format!("shard {} is ready; cutting over", plan.spec.target_shard),
        );
        plan.revision = self.store.update(&plan).await?;
        self.wake.notify_one();
        Ok(plan)
    }

    /// `POST …/rollback`: back to the shard the plan started from.
    pub async fn rollback(&self, id: &str) -> Result<Plan, Refusal> {
        let mut plan = self.get(id).await?;
        match plan.status.state {
            PlanState::Pending => {
                plan.step(PlanState::RolledBack, "rolled back before anything changed")
            }
            PlanState::RollingBack | PlanState::RolledBack => return Ok(plan),
            _ => plan.step(
                PlanState::RollingBack,
                format!("back to {}", plan.spec.from_shard),
            ),
        }
        plan.revision = self.store.update(&plan).await?;
        self.wake.notify_one();
        Ok(plan)
    }

    async fn gate(&self, plan: &Plan) -> Result<(), String> {
        let published = self.published().map_err(|r| r.message)?;
        let (namespace, _) = plan.placement();
        let target = shard(&published, namespace, &plan.spec.target_shard)
            .ok_or_else(|| format!("shard {} no longer exists", plan.spec.target_shard))?;
        self.gate
            .ready(target, &plan.spec.tenant, plan.spec.service.as_str())
            .await
    }

    /// Advances every plan that is the leader's to advance, while `leader` is true.
    pub async fn reconcile(
        self: Arc<Self>,
        mut leader: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut published = self.published.clone();
        // Data planes answering is what a waiting plan waits for.
        let mut nodes = self.fleet.nodes.subscribe();
        // Whether the last listing found a plan under way: only such a plan can move on
        // with a new snapshot or a data plane's answer, so without one they list nothing
        // (a change to 10 000 routes is answered by 10 000 data-plane ACKs on a large fleet).
        let mut under_way = true;
        let mut look = true;
        loop {
            if look && *leader.borrow() {
                match self.store.list().await {
                    Ok(plans) => {
                        under_way = plans.iter().any(|plan| plan.status.state.is_under_way());
                        for plan in plans {
                            if let Err(error) = self.advance(plan).await {
                                tracing::warn!(%error, "a rebalancing step failed; retrying");
                            }
                        }
                    }
                    Err(error) => {
                        under_way = true;
                        tracing::warn!(%error, "cannot list rebalancing plans");
                    }
                }
            }
            look = tokio::select! {
                () = self.wake.notified() => true,
                _ = published.changed() => under_way,
                _ = nodes.changed() => under_way,
                _ = leader.changed() => true,
                () = tokio::time::sleep(RECONCILE_EVERY) => true,
                _ = shutdown.wait_for(|s| *s) => return,
            };
        }
    }

    async fn advance(&self, mut plan: Plan) -> Result<(), String> {
        let (to, waiting, done) = match plan.status.state {
            PlanState::Applying | PlanState::WaitingForDataPlanes => (
                plan.spec.target_shard.clone(),
                PlanState::WaitingForDataPlanes,
                PlanState::Completed,
            ),
            PlanState::RollingBack => (
                plan.spec.from_shard.clone(),
                PlanState::RollingBack,
                PlanState::RolledBack,
            ),
            _ => return Ok(()),
        };
        let published = self.published().map_err(|r| r.message)?;
        let tenant = plan.spec.tenant.clone();
        let service = plan.spec.service;
        let Some(placed) = placed(&published, &tenant) else {
            plan.step(
                PlanState::Failed,
                format!("tenant {tenant} has no placement any more"),
            );
            self.store.update(&plan).await.map_err(|e| e.to_string())?;
            return Ok(());
        };
        if placed.stale {
            plan.step(
                PlanState::Failed,
                format!(
                    "an edit of tenant {tenant}'s placement was refused meanwhile; fix it and plan the move again"
                ),
            );
            self.store.update(&plan).await.map_err(|e| e.to_string())?;
            return Ok(());
        }
        if placed.shards.get(service) != Some(to.as_str()) {
            if plan.status.state == PlanState::Applying {
                // The gate again, right before the cutover: readiness may have changed.
                if let Err(reason) = self.gate(&plan).await {
                    plan.step(
                        PlanState::Pending,
                        format!("the gate closed before the cutover: {reason}"),
                    );
                    self.store.update(&plan).await.map_err(|e| e.to_string())?;
                    return Ok(());
                }
            }
            let from = if to == plan.spec.target_shard {
                &plan.spec.from_shard
            } else {
                &plan.spec.target_shard
            };
            let (namespace, name, origin) = &placed.placement;
            match self
                .cutover
                .set_shard(origin, namespace, name, service, from, &to)
                .await
            {
                Ok(()) => {}
                Err(cutover::CutoverError::Moved(current)) => {
                    plan.step(
                        PlanState::Failed,
                        format!(
                            "the placement names {current} now, not {from}: changed by someone else"
                        ),
                    );
                    self.store.update(&plan).await.map_err(|e| e.to_string())?;
                    return Ok(());
                }
                Err(cutover::CutoverError::Other(error)) => return Err(error),
            }
            if plan.status.state != waiting {
                plan.step(
                    waiting,
                    format!("the placement names {to}; waiting for every data plane"),
                );
                self.store.update(&plan).await.map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        if plan.status.state == PlanState::Applying {
            plan.step(
                waiting,
                format!("the placement names {to}; waiting for every data plane"),
            );
            plan.revision = self.store.update(&plan).await.map_err(|e| e.to_string())?;
        }
        // The snapshot names the new shard: done once every data plane runs it.
        let version = &published.shipment.snapshot.version;
        let nodes = self.fleet.all().await;
        let behind = nodes.iter().filter(|n| n.version != *version).count();
        if behind == 0 {
            let message = if nodes.is_empty() {
                format!("{tenant}'s {service} is on {to}; no data plane is connected")
            } else {
                format!(
                    "every data plane ({}) serves {tenant}'s {service} from {to} (snapshot {version})",
                    nodes.len()
                )
            };
            plan.step(done, message);
            self.store.update(&plan).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The accepted placement of `tenant` in a published snapshot.
fn placed<'a>(published: &'a Published, tenant: &str) -> Option<Placed<'a>> {
    published
        .served()
        .find_map(|(item, resource)| match resource {
            Resource::TenantPlacement(p) if p.spec.tenant == tenant => Some(Placed {
                placement: (
                    resource.namespace().to_owned(),
                    resource.name().to_owned(),
                    item.origin.clone(),
                ),
                shards: &p.spec.shards,
                stale: !matches!(item.parsed.as_deref(), Ok(own) if std::ptr::eq(own, resource)),
            }),
            _ => None,
        })
}

/// An accepted shard of the snapshot.
fn shard<'a>(published: &'a Published, namespace: &str, name: &str) -> Option<&'a proto::Shard> {
    published
        .shipment
        .snapshot
        .placements
        .as_ref()?
        .shards
        .iter()
        .find(|s| s.namespace == namespace && s.name == name)
}

/// Five random lower-case letters and digits: plan ids are DNS names.
fn suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebalance::store::{FilePlans, PlanStore, StoreError};
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Plans in files, counting how often they are listed.
    struct Counted {
        plans: FilePlans,
        lists: Arc<AtomicUsize>,
    }

    impl PlanStore for Counted {
        fn create<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>> {
            self.plans.create(plan)
        }
        fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Plan>, StoreError>> {
            self.plans.get(id)
        }
        fn update<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>> {
            self.plans.update(plan)
        }
        fn list(&self) -> BoxFuture<'_, Result<Vec<Plan>, StoreError>> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            self.plans.list()
        }
    }

    #[tokio::test]
    async fn plans_are_listed_on_every_change_only_while_one_is_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let lists = Arc::new(AtomicUsize::new(0));
        let (published, published_rx) = watch::channel(None);
        let nodes = Arc::new(Nodes::new(prometheus::IntGauge::new("n", "n").unwrap()));
        let rebalancer = Rebalancer::new(
            Box::new(Counted {
                plans: FilePlans::new(dir.path().to_owned()),
                lists: lists.clone(),
            }),
            Box::new(super::cutover::FileCutover),
            published_rx,
            Fleet { nodes, board: None },
        );
        let (_leader, leader_rx) = watch::channel(true);
        let (_shutdown, shutdown_rx) = watch::channel(false);
        let reconciling = tokio::spawn(rebalancer.clone().reconcile(leader_rx, shutdown_rx));
        let listed = || lists.load(Ordering::SeqCst);
        let changes = || async {
            for _ in 0..20 {
                published.send_replace(None);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(listed(), 1, "listed once at the start");
        changes().await;
        assert_eq!(listed(), 1, "no plan under way: new snapshots list nothing");

        let plan = Plan {
            id: "acme-aggregate-x1".into(),
            spec: RebalancePlanSpec {
                tenant: "acme".into(),
                service: ServiceKind::Aggregate,
                placement: "acme".into(),
                from_shard: "a".into(),
                target_shard: "b".into(),
            },
            status: PlanStatus {
                state: PlanState::WaitingForDataPlanes,
                steps: Vec::new(),
            },
            revision: String::new(),
        };
        rebalancer.store.create(&plan).await.unwrap();
        // Found by the next periodic look (as a plan another replica made would be).
        tokio::time::sleep(RECONCILE_EVERY + Duration::from_millis(300)).await;
        let found = listed();
        assert_eq!(found, 2, "the periodic look");
        changes().await;
        assert!(
            listed() >= found + 10,
            "a plan under way is looked at on every change: {} lists",
            listed() - found
        );
        reconciling.abort();
    }
}
