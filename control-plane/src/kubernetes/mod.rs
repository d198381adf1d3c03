//! Kubernetes as the control plane's home: the client, status write-back to the status
//! subresource, and leader election on a `coordination.k8s.io/v1` Lease.

pub mod events;
pub mod lease;
pub mod nodes;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// How the control plane meets the cluster.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, or the in-cluster account.
    pub kubeconfig: Option<PathBuf>,
    /// Watch only this namespace; all when `None`.
    pub namespace: Option<String>,
    /// Where the leader Lease lives.
    pub lease_namespace: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// How long a leader's claim lasts without renewal: the failover time.
    pub lease_duration: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            namespace: None,
            lease_namespace: "default".into(),
            identity: format!("pavilion-control-{}", std::process::id()),
            lease_duration: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Kubernetes client: {0}")]
pub struct ClientError(String);

pub async fn client(options: &KubeOptions) -> Result<kube::Client, ClientError> {
    let error = |e: &dyn std::fmt::Display| ClientError(e.to_string());
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| error(&e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| error(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| error(&e))?,
    };
    kube::Client::try_from(config).map_err(|e| error(&e))
}
