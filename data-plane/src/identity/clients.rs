//! Service accounts: machine clients that trade their id and secret for an access token
//! (the OAuth 2.0 client-credentials grant, `POST /v1/auth/token`), with tenant roles like
//! a user's. Secrets are 256 random bits, shown once at creation and rotation, stored as
//! SHA-256 and compared in constant time; a rotation invalidates the old secret at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::audit::Event;
use super::flows::FlowError;
use super::iam::Admin;
use super::records::{self, ServiceAccount, VERSION, Versioned};
use super::store::{Bucket, StoreError};
use super::tokens::{self, AccessClaims};
use super::{Identity, unix_now};

/// What creation and rotation show, once.
#[derive(Debug, Serialize)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
}

/// A service account as the API lists it (never the secret's hash).
#[derive(Debug, Serialize)]
pub struct ServiceAccountView {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub tenants: BTreeMap<String, Vec<String>>,
    pub disabled: bool,
    pub created_at: i64,
}

impl From<ServiceAccount> for ServiceAccountView {
    fn from(account: ServiceAccount) -> Self {
        Self {
            id: account.id,
            name: account.name,
            roles: account.roles,
            tenants: account.tenants,
            disabled: account.disabled,
            created_at: account.created_at,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NewServiceAccount {
    pub name: String,
    #[serde(default)]
    pub tenants: BTreeMap<String, Vec<String>>,
}

/// The access token answer of the client-credentials grant (no refresh token: the client
/// asks again).
#[derive(Debug, Serialize)]
pub struct ClientToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

impl Identity {
    pub async fn create_service_account(
        &self,
        admin: &Admin,
        new: NewServiceAccount,
    ) -> Result<Credentials, FlowError> {
        admin.require_platform()?;
        if new.name.trim().is_empty() || new.name.len() > 200 {
            return Err(FlowError::InvalidRequest(
                "a service account needs a name".into(),
            ));
        }
        for (tenant, roles) in &new.tenants {
            if !super::iam::valid_name(tenant) || !roles.iter().all(|r| super::iam::valid_name(r)) {
                return Err(FlowError::InvalidRequest(format!(
                    "tenant `{tenant}` or its roles: lower-case letters, digits, `.`, `_`, `-`"
                )));
            }
        }
        let id = format!("sa-{}", uuid::Uuid::now_v7().simple());
        let secret = tokens::random(32);
        let account = ServiceAccount {
            v: VERSION,
            id: id.clone(),
            name: new.name,
            secret: tokens::digest(&secret),
            roles: Vec::new(),
            tenants: new.tenants,
            disabled: false,
            created_at: unix_now(),
        };
        records::create(&*self.store, &id, &account).await?;
        self.audit(Event {
            actor: admin.id.clone(),
            action: "service_account.created",
            target: id.clone(),
            ..Event::default()
        })
        .await;
        Ok(Credentials {
            client_id: id,
            client_secret: secret,
        })
    }

    pub async fn list_service_accounts(
        &self,
        admin: &Admin,
    ) -> Result<Vec<ServiceAccountView>, FlowError> {
        admin.require_platform()?;
        let mut accounts = Vec::new();
        for key in self
            .store
            .keys(Bucket::ServiceAccounts, None, 100_000)
            .await?
        {
            if let Some(account) = records::get::<ServiceAccount>(&*self.store, &key).await? {
                accounts.push(account.record.into());
            }
        }
        Ok(accounts)
    }

    async fn service_account(&self, id: &str) -> Result<Versioned<ServiceAccount>, FlowError> {
        let missing = || FlowError::NotFound(format!("no service account {id}"));
        if !super::store::valid_key(id) {
            return Err(missing());
        }
        records::get::<ServiceAccount>(&*self.store, id)
            .await?
            .ok_or_else(missing)
    }

    /// Changes a service account by compare-and-set, retrying on concurrent changes, and
    /// audits `action` by `admin` once it is stored.
    async fn change_service_account(
        &self,
        admin: &Admin,
        id: &str,
        event: Event,
        change: impl Fn(&mut ServiceAccount),
    ) -> Result<(), FlowError> {
        for _ in 0..5 {
            let mut account = self.service_account(id).await?;
            change(&mut account.record);
            match records::update(&*self.store, id, &account.record, account.revision).await {
                Ok(_) => {
                    self.audit(Event {
                        actor: admin.id.clone(),
                        target: id.to_owned(),
                        ..event
                    })
                    .await;
                    return Ok(());
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::Unavailable(
            "the service account kept changing".into(),
        ))
    }

    /// A new secret; the old one stops working at once.
    pub async fn rotate_secret(&self, admin: &Admin, id: &str) -> Result<Credentials, FlowError> {
        admin.require_platform()?;
        let secret = tokens::random(32);
        let digest = tokens::digest(&secret);
        let event = Event {
            action: "service_account.secret_rotated",
            ..Event::default()
        };
        self.change_service_account(admin, id, event, |account| {
            account.secret = digest.clone();
        })
        .await?;
        Ok(Credentials {
            client_id: id.to_owned(),
            client_secret: secret,
        })
    }

    /// Disables (`false`) or enables a service account: a disabled one gets no token (its
    /// tokens already issued run out within their lifetime).
    pub async fn set_service_account_enabled(
        &self,
        admin: &Admin,
        id: &str,
        enabled: bool,
    ) -> Result<(), FlowError> {
        admin.require_platform()?;
        let event = Event {
            action: if enabled {
                "service_account.enabled"
            } else {
                "service_account.disabled"
            },
            ..Event::default()
        };
        self.change_service_account(admin, id, event, |account| {
            account.disabled = !enabled;
        })
        .await
    }

    /// Gives a service account a role in a tenant (`assign`), or takes it away.
    pub async fn service_account_role(
        &self,
        admin: &Admin,
        id: &str,
        tenant: &str,
        role: &str,
        assign: bool,
    ) -> Result<(), FlowError> {
        admin.require_tenant(tenant)?;
        if !super::iam::valid_name(tenant) || !super::iam::valid_name(role) {
            return Err(FlowError::InvalidRequest(
                "tenants and roles are lower-case letters, digits, `.`, `_`, `-`".into(),
            ));
        }
        let event = Event {
            action: if assign {
                "assignment.added"
            } else {
                "assignment.removed"
            },
            tenant: Some(tenant.to_owned()),
            detail: Some(format!("role {role}")),
            ..Event::default()
        };
        self.change_service_account(admin, id, event, |account| {
            let roles = account.tenants.entry(tenant.to_owned()).or_default();
            roles.retain(|r| r != role);
            if assign {
                roles.push(role.to_owned());
                roles.sort();
            }
            if roles.is_empty() {
                account.tenants.remove(tenant);
            }
        })
        .await
    }

    pub async fn delete_service_account(&self, admin: &Admin, id: &str) -> Result<(), FlowError> {
        admin.require_platform()?;
        let account = self.service_account(id).await?;
        self.store
            .delete(Bucket::ServiceAccounts, id, account.revision)
            .await?;
        self.audit(Event {
            actor: admin.id.clone(),
            action: "service_account.deleted",
            target: id.to_owned(),
            ..Event::default()
        })
        .await;
        Ok(())
    }

    /// The client-credentials grant: an access token for the service account, carrying its
    /// tenant roles.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<ClientToken, FlowError> {
        let account = match self.service_account(client_id).await {
            Ok(account) => account.record,
            Err(FlowError::NotFound(_)) => return Err(FlowError::InvalidClient),
            Err(e) => return Err(e),
        };
        // Digests are compared, not secrets: how long a comparison of SHA-256 values takes
        // says nothing usable about the secret.
        if tokens::digest(secret) != account.secret || account.disabled {
            self.audit(Event {
                actor: "anonymous".into(),
                action: "client.auth_failed",
                target: client_id.to_owned(),
                ..Event::default()
            })
            .await;
            return Err(FlowError::InvalidClient);
        }
        let now = unix_now();
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            sub: account.id.clone(),
            aud: self.config.audience.clone(),
            exp: now + self.config.access_ttl.as_secs() as i64,
            iat: now,
            jti: uuid::Uuid::now_v7().simple().to_string(),
            sid: String::new(),
            email: String::new(),
            tenants: account.tenants,
            roles: account.roles,
        };
        Ok(ClientToken {
            access_token: self.sign(&claims).await?,
            token_type: "Bearer",
            expires_in: self.config.access_ttl.as_secs(),
        })
    }
}
