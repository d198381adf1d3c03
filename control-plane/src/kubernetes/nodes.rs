//! The node board in the cluster: one Lease per replica (`pavilion-nodes-<replica>`,
//! labelled `gateway.pavilion.dev/node-report`) whose annotation holds its data planes.

use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::fleet::{NodeBoard, NodeReport};

const LABEL: &str = "gateway.pavilion.dev/node-report";
const ANNOTATION: &str = "gateway.pavilion.dev/nodes";

pub struct KubeNodeBoard {
    api: Api<Lease>,
}

impl KubeNodeBoard {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }
}

/// A replica name as an object name (lower-case DNS label characters).
fn name(replica: &str) -> String {
    let mut name: String = replica
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(48);
    format!("pavilion-nodes-{}", name.trim_matches('-'))
}

impl NodeBoard for KubeNodeBoard {
    fn post<'a>(&'a self, report: &'a NodeReport) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let body = serde_json::to_string(report).map_err(|e| e.to_string())?;
            let name = name(&report.replica);
            let renewed = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
            let result = match self.api.get_opt(&name).await.map_err(|e| e.to_string())? {
                Some(mut lease) => {
                    lease
                        .metadata
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(ANNOTATION.into(), body);
                    lease.spec.get_or_insert_with(LeaseSpec::default).renew_time = renewed;
                    self.api
                        .replace(&name, &PostParams::default(), &lease)
                        .await
                }
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(BTreeMap::from([(LABEL.to_owned(), "true".to_owned())])),
                            annotations: Some(BTreeMap::from([(ANNOTATION.to_owned(), body)])),
                            ..Default::default()
                        },
                        spec: Some(LeaseSpec {
                            holder_identity: Some(report.replica.clone()),
                            renew_time: renewed,
                            ..Default::default()
                        }),
                    };
                    self.api.create(&PostParams::default(), &lease).await
                }
            };
            result.map(drop).map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<NodeReport>, String>> {
        async move {
            let leases = self
                .api
                .list(&ListParams::default().labels(LABEL))
                .await
                .map_err(|e| e.to_string())?;
            Ok(leases
                .items
                .iter()
                .filter_map(|l| l.metadata.annotations.as_ref()?.get(ANNOTATION))
                .filter_map(|body| serde_json::from_str(body).ok())
                .collect())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, replica: &'a str) -> BoxFuture<'a, Result<(), String>> {
        async move {
            match self
                .api
                .delete(&name(replica), &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }
}
