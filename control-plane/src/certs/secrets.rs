//! The certificates as Kubernetes Secrets, made by the control plane's init container
//! (`pavilion-control certs --secret-prefix P`) and renewed by the chart's CronJob:
//!
//! * `P-ca` (Opaque: `ca.crt`, `ca.key`) — mounted by nobody;
//! * `P-control-plane-tls` and `P-data-plane-tls` (`kubernetes.io/tls`: `ca.crt`,
//!   `tls.crt`, `tls.key`) — the shape cert-manager writes, so either can replace the other.
//!
//! Convergent and safe to run from several replicas at once: the CA is created once (a
//! losing creator reads the winner's), and a leaf is replaced only when it is missing, not
//! signed by the current CA, made for other names, or within the renewal window; writes
//! carry the resourceVersion read, so a concurrent replacement wins and this run keeps it.
//! Kubelets update mounted Secrets in place, and both binaries reload their files.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use super::{CertsError, CertsRequest, Pem, leaves, new_ca, seconds_left};

/// The annotation recording the names a leaf was made for.
const NAMES: &str = "gateway.pavilion.dev/names";

/// What a run did to each Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Created(String),
    Kept(String),
    Replaced(String),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Created(name) => write!(f, "created secret {name}"),
            Action::Kept(name) => write!(f, "kept secret {name}"),
            Action::Replaced(name) => write!(f, "replaced secret {name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Certs(#[from] CertsError),
    #[error("secret {name}: {source}")]
    Api { name: String, source: kube::Error },
    #[error("secret {0} lacks {1}")]
    Incomplete(String, &'static str),
}

fn api_error(name: &str) -> impl FnOnce(kube::Error) -> SecretsError + '_ {
    move |source| SecretsError::Api {
        name: name.to_owned(),
        source,
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn text(secret: &Secret, key: &'static str, name: &str) -> Result<String, SecretsError> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .and_then(|value| String::from_utf8(value.0.clone()).ok())
        .ok_or_else(|| SecretsError::Incomplete(name.to_owned(), key))
}

fn secret(
    name: &str,
    kind: &str,
    data: [(&str, &str); 3],
    names: Option<&str>,
    resource_version: Option<String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "pavilion".to_owned(),
            )])),
            annotations: names.map(|n| BTreeMap::from([(NAMES.to_owned(), n.to_owned())])),
            ..ObjectMeta::default()
        },
        type_: Some(kind.to_owned()),
        data: Some(
            data.into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The CA Secret's contents, creating it when missing.
async fn ca(
    api: &Api<Secret>,
    name: &str,
    request: &CertsRequest,
    actions: &mut Vec<Action>,
) -> Result<Pem, SecretsError> {
    for _ in 0..3 {
        if let Some(existing) = api.get_opt(name).await.map_err(api_error(name))? {
            actions.push(Action::Kept(name.to_owned()));
            return Ok(Pem {
                cert: text(&existing, super::CA_CERT, name)?,
                key: text(&existing, super::CA_KEY, name)?,
            });
        }
        let ca = new_ca(request.days)?;
        let object = secret(
            name,
            "Opaque",
            [
                (super::CA_CERT, &ca.cert),
                (super::CA_KEY, &ca.key),
                ("", ""),
            ],
            None,
            None,
        );
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                actions.push(Action::Created(name.to_owned()));
                return Ok(ca);
            }
            // Another replica made it first: use theirs.
            Err(error) if is_conflict(&error) => continue,
            Err(error) => return Err(api_error(name)(error)),
        }
    }
    Err(SecretsError::Incomplete(name.to_owned(), super::CA_CERT))
}

/// Makes or renews the three Secrets named after `prefix` in `api`'s namespace.
pub async fn ensure(
    api: &Api<Secret>,
    prefix: &str,
    request: &CertsRequest,
    renew_within_days: u32,
) -> Result<Vec<Action>, SecretsError> {
    let mut actions = Vec::new();
    let ca_name = format!("{prefix}-ca");
    let ca = ca(api, &ca_name, request, &mut actions).await?;
    // A window as long as the validity would renew every hour: at most a third of it.
    let renew_within = i64::from(renew_within_days.min(request.days / 3)) * 86_400;
    let mut fresh: Option<[Pem; 2]> = None;
    for (index, role, names) in [
        (0, "control-plane", &request.control_plane_names),
        (1, "data-plane", &request.data_plane_names),
    ] {
        let name = format!("{prefix}-{role}-tls");
        let wanted_names = names.join(",");
        let existing = api.get_opt(&name).await.map_err(api_error(&name))?;
        let current = existing.as_ref().is_some_and(|existing| {
            let same_ca = text(existing, super::CA_CERT, &name).is_ok_and(|c| c == ca.cert);
            let same_names = existing
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(NAMES))
                .is_some_and(|n| *n == wanted_names);
            let lasting = text(existing, "tls.crt", &name)
                .ok()
                .and_then(|c| seconds_left(&c))
                .is_some_and(|left| left > renew_within);
            same_ca && same_names && lasting
        });
        if current {
            actions.push(Action::Kept(name));
            continue;
        }
        let pems = match &fresh {
            Some(pems) => pems,
            None => fresh.insert(leaves(&ca, request)?),
        };
        let pem = &pems[index];
        let version = existing.and_then(|e| e.metadata.resource_version);
        let replacing = version.is_some();
        let object = secret(
            &name,
            "kubernetes.io/tls",
            [
                (super::CA_CERT, &ca.cert),
                ("tls.crt", &pem.cert),
                ("tls.key", &pem.key),
            ],
            Some(&wanted_names),
            version,
        );
        let written = if replacing {
            api.replace(&name, &PostParams::default(), &object).await
        } else {
            api.create(&PostParams::default(), &object).await
        };
        match written {
            Ok(_) if replacing => actions.push(Action::Replaced(name)),
            Ok(_) => actions.push(Action::Created(name)),
            // Another replica wrote it meanwhile (from the same CA): keep theirs.
            Err(error) if is_conflict(&error) => actions.push(Action::Kept(name)),
            Err(error) => return Err(api_error(&name)(error)),
        }
    }
    Ok(actions)
}

/// The ValidatingWebhookConfiguration whose `caBundle` must be the CA the control plane
/// made, so the API server trusts the webhook's certificate.
pub struct WebhookCa {
    pub api: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>,
    pub name: String,
}

impl WebhookCa {
    /// Sets every webhook's `caBundle` to `ca` (PEM) when it differs.
    pub async fn publish(&self, ca: &str) -> Result<(), SecretsError> {
        let name = &self.name;
        let mut configuration = self.api.get(name).await.map_err(api_error(name))?;
        let bundle = ByteString(ca.as_bytes().to_vec());
        let mut changed = false;
        for webhook in configuration.webhooks.iter_mut().flatten() {
            if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                webhook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if changed {
            self.api
                .replace(name, &PostParams::default(), &configuration)
                .await
                .map_err(api_error(name))?;
            tracing::info!(webhook = %name, "published the control-channel CA as the webhook's caBundle");
        }
        Ok(())
    }
}

/// Writes the control plane's certificate files (`ca.crt`, `control-plane.crt`,
/// `control-plane.key`) into `dir` from the `PREFIX-control-plane-tls` Secret, when they
/// differ from what is there; returns whether anything changed.
pub async fn write_control_plane_files(
    api: &Api<Secret>,
    prefix: &str,
    dir: &std::path::Path,
) -> Result<bool, SecretsError> {
    let name = format!("{prefix}-control-plane-tls");
    let secret = api.get(&name).await.map_err(api_error(&name))?;
    let mut changed = false;
    // The key before the certificate: a reload that sees the new certificate finds its key.
    for (key, file, private) in [
        (super::CA_CERT, super::CA_CERT, false),
        ("tls.key", super::CONTROL_KEY, true),
        ("tls.crt", super::CONTROL_CERT, false),
    ] {
        let wanted = text(&secret, key, &name)?;
        let path = dir.join(file);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(wanted.as_str()) {
            super::write(&path, &wanted, private)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// How often the Secrets are checked for renewal and for changes made elsewhere.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Makes the Secrets if needed and writes the control plane's files into `dir`: what
/// `pavilion-control run --tls-secret-prefix` does before it starts listening.
pub async fn prepare(
    api: &Api<Secret>,
    prefix: &str,
    request: &CertsRequest,
    renew_within_days: u32,
    dir: &std::path::Path,
) -> Result<Vec<Action>, SecretsError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        SecretsError::Certs(CertsError::Io {
            path: dir.to_owned(),
            source,
        })
    })?;
    let actions = ensure(api, prefix, request, renew_within_days).await?;
    write_control_plane_files(api, prefix, dir).await?;
    Ok(actions)
}

/// Renews the Secrets when due and rewrites the files when the Secret changed (renewed
/// here, by another replica, or by hand), every `every`, for as long as its task lives; the
/// control plane's certificate watcher then loads them.
pub async fn keep_renewed(
    api: Api<Secret>,
    prefix: String,
    request: CertsRequest,
    renew_within_days: u32,
    dir: std::path::PathBuf,
    every: std::time::Duration,
    webhook: Option<WebhookCa>,
) {
    loop {
        tokio::time::sleep(every).await;
        let outcome = async {
            let actions = ensure(&api, &prefix, &request, renew_within_days).await?;
            let changed = write_control_plane_files(&api, &prefix, &dir).await?;
            if let Some(webhook) = &webhook {
                let ca = std::fs::read_to_string(dir.join(super::CA_CERT)).map_err(|source| {
                    SecretsError::Certs(CertsError::Io {
                        path: dir.join(super::CA_CERT),
                        source,
                    })
                })?;
                webhook.publish(&ca).await?;
            }
            Ok::<_, SecretsError>((actions, changed))
        }
        .await;
        match outcome {
            Ok((actions, changed)) => {
                for action in actions.iter().filter(|a| !matches!(a, Action::Kept(_))) {
                    tracing::info!(%action, "control-channel certificates");
                }
                if changed {
                    tracing::info!(dir = %dir.display(), "control-channel certificate files updated");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew the control-channel certificates; keeping those in use")
            }
        }
    }
}
