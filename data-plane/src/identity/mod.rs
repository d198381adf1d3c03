//! The identity service the data plane hosts (`/v1/auth/*`, `/.well-known/*`): accounts
//! with Argon2id passwords, sessions as refresh-token families rotated at every use with
//! reuse detection, and ES256 access tokens any route's `auth.jwt` can trust through the
//! published JWKS. All state is in a [`store::Store`] shared by every replica (NATS KV), so
//! any replica answers any request; races between replicas are settled by the store's
//! compare-and-set.

pub mod abuse;
pub mod api;
pub mod api_keys;
pub mod audit;
pub mod catalogue;
pub mod clients;
pub mod flows;
pub mod iam;
pub mod keys;
pub mod mail;
pub mod mfa;
pub mod oidc;
pub mod password;
pub mod records;
pub mod store;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keys::{KeyError, KeyRing, Sealer};
use store::{Store, StoreError};

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where the records live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// `nats://host:port[,…][?bucket=PREFIX]`: buckets `{prefix}-users`, … (prefix default
    /// `pavilion-identity`).
    Nats { servers: String, prefix: String },
    /// `file:PATH`: one redb file.
    File(PathBuf),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path (file:/var/lib/pavilion/identity.redb)".into());
            }
            return Ok(StoreSpec::File(path.into()));
        }
        if text.starts_with("nats://") || text.starts_with("tls://") {
            let (servers, query) = text.split_once('?').unwrap_or((text, ""));
            let mut prefix = "pavilion-identity".to_owned();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("bucket", value))
                        if !value.is_empty()
                            && value
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                    {
                        prefix = value.to_owned();
                    }
                    _ => {
                        return Err(format!(
                            "`{pair}`: the only option is bucket=PREFIX ([A-Za-z0-9_-])"
                        ));
                    }
                }
            }
            return Ok(StoreSpec::Nats {
                servers: servers.to_owned(),
                prefix,
            });
        }
        Err(format!(
            "`{text}`: an identity store is nats://HOST:PORT[?bucket=PREFIX] or file:PATH"
        ))
    }
}

/// How the identity service runs.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    pub store: StoreSpec,
    /// The tokens' `iss`, and where clients find `/.well-known/*` (the gateway's public URL).
    pub issuer: String,
    /// The tokens' `aud`.
    pub audience: String,
    /// The store key that seals signing keys (32 bytes, hex or base64).
    pub key_file: PathBuf,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long one signing key signs before the next takes over.
    pub key_rotation: Duration,
    /// Where password-reset mail goes (`smtp://…`, `smtps://…`, `file:DIR`); `None`: no
    /// mail is sent (forgot still answers 202, and logs that it cannot help).
    pub mail: Option<String>,
    /// The sender of that mail.
    pub mail_from: String,
    /// How long a password-reset token works.
    pub reset_ttl: Duration,
    /// Addresses whose accounts are platform administrators (`platform-admin` in their
    /// tokens' `roles`): how the first administrator comes to be.
    pub admins: Vec<String>,
    /// The abuse limits of the API.
    pub abuse: abuse::AbuseLimits,
    /// OpenID providers accounts may sign in with.
    pub oidc: Vec<oidc::OidcProvider>,
}

impl IdentityConfig {
    pub fn new(store: StoreSpec, issuer: &str, key_file: PathBuf) -> Self {
        Self {
            store,
            issuer: issuer.trim_end_matches('/').to_owned(),
            audience: "pavilion".into(),
            key_file,
            access_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            key_rotation: Duration::from_secs(24 * 3600),
            mail: None,
            mail_from: "Pavilion Gateway <no-reply@localhost>".into(),
            reset_ttl: Duration::from_secs(30 * 60),
            admins: Vec::new(),
            abuse: abuse::AbuseLimits::default(),
            oidc: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Mail(#[from] mail::MailError),
}

/// Opens the store `spec` names (creating buckets or the file when missing).
pub async fn open_store(spec: &StoreSpec) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match spec {
        StoreSpec::Nats { servers, prefix } => {
            Arc::new(store::kv::KvStore::connect(servers, prefix).await?)
        }
        StoreSpec::File(path) => {
            let path = path.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || store::file::FileStore::open(&path))
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))??,
            )
        }
    })
}

/// The identity service: its store, signing keys and settings; shared by every worker.
pub struct Identity {
    store: Arc<dyn Store>,
    keys: KeyRing,
    guard: abuse::Guard,
    /// Talks to OpenID providers.
    http: oidc::HttpClient,
    /// Role → rights, for rules that require rights.
    catalogue: Arc<catalogue::Catalogue>,
    /// API keys issued by the IAM API, for the edge's API-key authentication.
    issued_keys: Arc<crate::auth::api_key::IssuedKeys>,
    mailer: Option<Arc<dyn mail::Sender>>,
    config: IdentityConfig,
}

impl Identity {
    /// Opens the store (creating buckets or the file when missing) and the store key;
    /// `redis`: the API's abuse limits are counted in the data plane's Redis.
    pub async fn open(config: IdentityConfig, redis: bool) -> Result<Self, IdentityError> {
        let sealer = Sealer::from_file(&config.key_file)?;
        let mailer = config
            .mail
            .as_deref()
            .map(|spec| mail::sender(spec, &config.mail_from).map(Arc::from))
            .transpose()?;
        let store = open_store(&config.store).await?;
        let keys = KeyRing::new(
            store.clone(),
            sealer,
            config.key_rotation,
            config.access_ttl,
        );
        let identity = Self {
            store,
            keys,
            guard: abuse::Guard::new(redis, &config.abuse),
            http: oidc::http_client(),
            catalogue: Arc::default(),
            issued_keys: Arc::default(),
            mailer,
            config,
        };
        // A key now, so the first sign-in does not wait for one and a broken store key is
        // found at start rather than at the first request.
        identity.keys.signer().await?;
        identity.catalogue.reload(&*identity.store).await?;
        catalogue::watch(&identity.catalogue, identity.store.clone());
        api_keys::reload(&*identity.store, &identity.issued_keys).await?;
        api_keys::watch(&identity.issued_keys, identity.store.clone());
        Ok(identity)
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The role catalogue rules with `authorize.rights` read.
    pub fn catalogue(&self) -> &catalogue::Catalogue {
        &self.catalogue
    }

    pub fn guard(&self) -> &abuse::Guard {
        &self.guard
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Appends an audit record (logged, not failed, when the store refuses).
    async fn audit(&self, event: audit::Event) {
        audit::record(&*self.store, event).await;
    }
}
