//! The IAM administration API's logic: users (list, get, disable, enable, delete, unlock,
//! MFA reset), the authorization catalogue (rights, and roles as sets of rights),
//! assignments (user ↔ tenant ↔ role, which the access tokens' `tenants` claim carries), and
//! the decision `(principal, tenant, action, resource attributes) → allow/deny + reason`.
//! Platform administrators may do everything; a tenant's administrators (`tenant-admin`
//! there) list and read their tenant's members and manage its assignments. Every change is audited with the
//! administrator as the actor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Identity;
use super::audit::Event;
use super::flows::FlowError;
use super::records::{self, EmailOwner, Mfa, Right, Role, User, UserStatus, VERSION, Versioned};
use super::store::{Bucket, StoreError};
use super::tokens::AccessClaims;
use crate::auth::membership::PLATFORM_ADMIN;

/// The role that makes a user an administrator of one tenant.
pub const TENANT_ADMIN: &str = "tenant-admin";

/// Who asks, as their token says.
pub struct Admin {
    pub id: String,
    platform: bool,
    tenants: BTreeMap<String, Vec<String>>,
}

impl Admin {
    pub fn from_claims(claims: AccessClaims) -> Self {
        Self {
            platform: claims.roles.iter().any(|r| r == PLATFORM_ADMIN),
            id: claims.sub,
            tenants: claims.tenants,
        }
    }

    pub fn require_platform(&self) -> Result<(), FlowError> {
        if self.platform {
            Ok(())
        } else {
            Err(FlowError::Forbidden(
                "this needs a platform administrator".into(),
            ))
        }
    }

    /// Whether this is an administrator of `tenant` (by assignment, not as platform admin).
    fn administers(&self, tenant: &str) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|roles| roles.iter().any(|r| r == TENANT_ADMIN))
    }

    /// A user as this administrator may see them: a platform administrator sees everything;
    /// a tenant administrator sees a member of one of their tenants, with only those
    /// tenants' assignments (not the user's other tenants, nor platform roles) — `None` for
    /// anyone else.
    fn view(&self, user: User) -> Option<UserView> {
        let mut view = UserView::from(user);
        if self.platform {
            return Some(view);
        }
        view.tenants.retain(|tenant, _| self.administers(tenant));
        view.roles.clear();
        (!view.tenants.is_empty()).then_some(view)
    }

    /// A platform administrator, or an administrator of `tenant`.
    pub fn require_tenant(&self, tenant: &str) -> Result<(), FlowError> {
        if self.platform || self.administers(tenant) {
            Ok(())
        } else {
            Err(FlowError::Forbidden(format!(
                "this needs a platform administrator or an administrator of tenant {tenant}"
            )))
        }
    }
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub status: UserStatus,
    pub locked: bool,
    pub roles: Vec<String>,
    pub tenants: BTreeMap<String, Vec<String>>,
    pub created_at: i64,
    pub has_password: bool,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            has_password: user.password.is_some(),
            id: user.id,
            email: user.email,
            status: user.status,
            locked: user.locked,
            roles: user.roles,
            tenants: user.tenants,
            created_at: user.created_at,
        }
    }
}

/// An authorization decision.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reason: String,
}

impl Decision {
    fn allow(reason: String) -> Self {
        Self {
            allow: true,
            reason,
        }
    }
    fn deny(reason: String) -> Self {
        Self {
            allow: false,
            reason,
        }
    }
}

/// Names of rights, roles and tenants: lower-case letters, digits, `.`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

fn check_name(kind: &str, name: &str) -> Result<(), FlowError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(FlowError::InvalidRequest(format!(
            "{kind} `{name}`: names are lower-case letters, digits, `.`, `_` and `-`"
        )))
    }
}

#[derive(Debug, Deserialize)]
pub struct NewUser {
    pub email: String,
    /// `None`: the user signs in through an OpenID provider, or after a reset by mail.
    #[serde(default)]
    pub password: Option<String>,
}

/// `PATCH /admin/iam/users/{id}`: the fields to change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    /// A new address (unverified until its owner proves it).
    #[serde(default)]
    pub email: Option<String>,
    /// The platform roles (`platform-admin` makes a platform administrator).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RoleSpec {
    pub rights: Vec<String>,
    #[serde(default)]
    pub description: String,
}

impl Identity {
    /// The caller of an IAM endpoint.
    pub async fn admin(&self, bearer: &str) -> Result<Admin, FlowError> {
        Ok(Admin::from_claims(self.verify_access(bearer).await?))
    }

    async fn audit_admin(
        &self,
        admin: &Admin,
        action: &'static str,
        target: &str,
        tenant: Option<&str>,
    ) {
        self.audit(Event {
            actor: admin.id.clone(),
            action,
            target: target.to_owned(),
            tenant: tenant.map(str::to_owned),
            ..Event::default()
        })
        .await;
    }

    async fn user(&self, user_id: &str) -> Result<Versioned<User>, FlowError> {
        let missing = || FlowError::NotFound(format!("no user {user_id}"));
        if !super::store::valid_key(user_id) {
            return Err(missing());
        }
        records::get::<User>(&*self.store, user_id)
            .await?
            .ok_or_else(missing)
    }

    /// Changes a user by compare-and-set, retrying on concurrent changes.
    async fn change_user(
        &self,
        user_id: &str,
        change: impl Fn(&mut User) -> Result<(), FlowError>,
    ) -> Result<User, FlowError> {
        for _ in 0..5 {
            let mut user = self.user(user_id).await?;
            change(&mut user.record)?;
            match records::update(&*self.store, user_id, &user.record, user.revision).await {
                Ok(_) => return Ok(user.record),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::Unavailable("the account kept changing".into()))
    }

    /// A page of users in key order after `after`. Platform administrators list everyone,
    /// or with `tenant` the members of that tenant; a tenant's administrators list its
    /// members only. A tenant's page is filtered from the whole list: it costs a read per
    /// user, members or not.
    pub async fn list_users(
        &self,
        admin: &Admin,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<UserView>, Option<String>), FlowError> {
        match tenant {
            Some(tenant) => admin.require_tenant(tenant)?,
            None => admin.require_platform()?,
        }
        let limit = limit.clamp(1, 500);
        let mut users = Vec::new();
        let mut after = after.map(str::to_owned);
        loop {
            let keys = self
                .store
                .keys(Bucket::Users, after.as_deref(), limit)
                .await?;
            for key in &keys {
                let Some(user) = records::get::<User>(&*self.store, key).await? else {
                    continue;
                };
                if tenant.is_some_and(|t| !user.record.tenants.contains_key(t)) {
                    continue;
                }
                if let Some(view) = admin.view(user.record) {
                    users.push(view);
                }
                if users.len() == limit {
                    return Ok((users, Some(key.clone())));
                }
            }
            if keys.len() < limit {
                return Ok((users, None));
            }
            after = keys.last().cloned();
        }
    }

    /// A user: for platform administrators, and for the administrators of a tenant the
    /// user belongs to (who see that tenant's assignments only).
    pub async fn get_user(&self, admin: &Admin, user_id: &str) -> Result<UserView, FlowError> {
        let user = self.user(user_id).await?;
        admin.view(user.record).ok_or_else(|| {
            FlowError::Forbidden(
                "this needs a platform administrator or an administrator of one of the user's tenants"
                    .into(),
            )
        })
    }

    /// Disables (`false`) or enables an account; a disabled one cannot sign in or refresh.
    pub async fn set_enabled(
        &self,
        admin: &Admin,
        user_id: &str,
        enabled: bool,
    ) -> Result<(), FlowError> {
        admin.require_platform()?;
        self.change_user(user_id, |user| {
            user.status = if enabled {
                UserStatus::Active
            } else {
                UserStatus::Disabled
            };
            Ok(())
        })
        .await?;
        let action = if enabled {
            "user.enabled"
        } else {
            "user.disabled"
        };
        self.audit_admin(admin, action, user_id, None).await;
        Ok(())
    }

    /// Deletes an account, its address and its MFA enrolment; its sessions fail at the
    /// next refresh (their user is gone).
    pub async fn delete_user(&self, admin: &Admin, user_id: &str) -> Result<(), FlowError> {
        admin.require_platform()?;
        let user = self.user(user_id).await?;
        // The account goes first (compare-and-set): a conflict leaves everything as it was.
        match self
            .store
            .delete(Bucket::Users, user_id, user.revision)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(FlowError::Conflict(
                    "the account changed meanwhile; try again".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let email_key = super::tokens::digest(&user.record.email);
        if let Some(owner) = records::get::<EmailOwner>(&*self.store, &email_key).await?
            && owner.record.user == user_id
        {
            let _ = self
                .store
                .delete(Bucket::Emails, &email_key, owner.revision)
                .await;
        }
        if let Some(mfa) = records::get::<Mfa>(&*self.store, user_id).await? {
            let _ = self.store.delete(Bucket::Mfa, user_id, mfa.revision).await;
        }
        self.audit_admin(admin, "user.deleted", user_id, None).await;
        Ok(())
    }

    /// Creates an account for someone (its address counts as unverified until its owner
    /// proves it).
    pub async fn create_user(&self, admin: &Admin, new: NewUser) -> Result<UserView, FlowError> {
        admin.require_platform()?;
        let email = super::flows::normalise_email(&new.email)
            .ok_or_else(|| FlowError::InvalidRequest("`email` is not an e-mail address".into()))?;
        let hash = match new.password {
            Some(password) => {
                super::password::check_strength(&password)
                    .map_err(|m| FlowError::InvalidRequest(m.into()))?;
                Some(super::flows::hash_off_thread(password).await?)
            }
            None => None,
        };
        let user = User::new(&email, hash, false, super::unix_now());
        self.insert_user(&user, &format!("by administrator {}", admin.id))
            .await?;
        Ok(user.into())
    }

    /// Changes a user's address or platform roles.
    pub async fn update_user(
        &self,
        admin: &Admin,
        user_id: &str,
        change: UserChange,
    ) -> Result<UserView, FlowError> {
        admin.require_platform()?;
        if let Some(roles) = &change.roles
            && let Some(bad) = roles.iter().find(|r| !valid_name(r))
        {
            return Err(FlowError::InvalidRequest(format!(
                "role `{bad}` is no name"
            )));
        }
        let email = match &change.email {
            Some(email) => Some(super::flows::normalise_email(email).ok_or_else(|| {
                FlowError::InvalidRequest("`email` is not an e-mail address".into())
            })?),
            None => None,
        };
        let current = self.user(user_id).await?.record;
        // A new address is claimed before the account points at it, and the old one freed
        // after: the index never names an account that does not hold the address.
        let moved = email.filter(|e| *e != current.email);
        if let Some(email) = &moved {
            let owner = records::EmailOwner {
                v: VERSION,
                user: user_id.to_owned(),
            };
            match records::create(&*self.store, &super::tokens::digest(email), &owner).await {
                Ok(_) => {}
                Err(StoreError::Exists) => {
                    return Err(FlowError::Conflict(format!("an account uses {email}")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let updated = self
            .change_user(user_id, |user| {
                if let Some(email) = &moved {
                    user.email = email.clone();
                    user.email_verified = false;
                }
                if let Some(roles) = &change.roles {
                    user.roles = roles.clone();
                }
                Ok(())
            })
            .await?;
        if moved.is_some() {
            let old = super::tokens::digest(&current.email);
            if let Some(owner) = records::get::<EmailOwner>(&*self.store, &old).await?
                && owner.record.user == user_id
            {
                let _ = self
                    .store
                    .delete(Bucket::Emails, &old, owner.revision)
                    .await;
            }
        }
        self.audit_admin(admin, "user.updated", user_id, None).await;
        Ok(updated.into())
    }

    /// Sets a user's password; every session of the account ends.
    pub async fn set_password(
        &self,
        admin: &Admin,
        user_id: &str,
        password: String,
    ) -> Result<(), FlowError> {
        admin.require_platform()?;
        super::password::check_strength(&password)
            .map_err(|m| FlowError::InvalidRequest(m.into()))?;
        let hash = super::flows::hash_off_thread(password).await?;
        self.change_user(user_id, |user| {
            user.password = Some(hash.clone());
            user.sessions_after_ms = super::unix_now_ms();
            user.failed_signins = 0;
            user.locked = false;
            Ok(())
        })
        .await?;
        self.audit_admin(admin, "user.password_set", user_id, None)
            .await;
        Ok(())
    }

    /// Removes a user's password: they sign in through their linked identities only, and
    /// every session ends. Refused when no identity is linked (the account would have no
    /// way in; disable it instead).
    pub async fn remove_password(&self, admin: &Admin, user_id: &str) -> Result<(), FlowError> {
        admin.require_platform()?;
        self.user(user_id).await?;
        if self.linked_identities(user_id).await?.is_empty() {
            return Err(FlowError::Conflict(
                "no identity is linked: without its password the account has no way in (disable it instead)"
                    .into(),
            ));
        }
        self.change_user(user_id, |user| {
            if user.password.is_none() {
                return Err(FlowError::NotFound("the account has no password".into()));
            }
            user.password = None;
            user.sessions_after_ms = super::unix_now_ms();
            Ok(())
        })
        .await?;
        self.audit_admin(admin, "user.password_removed", user_id, None)
            .await;
        Ok(())
    }

    /// Ends every session of a user at once (refreshes fail; access tokens run out).
    pub async fn revoke_sessions(&self, admin: &Admin, user_id: &str) -> Result<(), FlowError> {
        admin.require_platform()?;
        self.change_user(user_id, |user| {
            user.sessions_after_ms = super::unix_now_ms();
            Ok(())
        })
        .await?;
        self.audit_admin(admin, "sessions.revoked_all", user_id, None)
            .await;
        Ok(())
    }

    /// Revokes a user's unused recovery codes (TOTP stays).
    pub async fn revoke_recovery_codes(
        &self,
        admin: &Admin,
        user_id: &str,
    ) -> Result<(), FlowError> {
        admin.require_platform()?;
        loop {
            let Some(mut mfa) = records::get::<Mfa>(&*self.store, user_id).await? else {
                return Err(FlowError::NotFound(format!(
                    "user {user_id} has no MFA enrolment"
                )));
            };
            mfa.record.recovery.clear();
            match records::update(&*self.store, user_id, &mfa.record, mfa.revision).await {
                Ok(_) => break,
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.audit_admin(admin, "mfa.recovery_revoked", user_id, None)
            .await;
        Ok(())
    }

    /// Unlocks an account (and forgets its wrong passwords).
    pub async fn unlock(&self, admin: &Admin, user_id: &str) -> Result<(), FlowError> {
        admin.require_platform()?;
        self.change_user(user_id, |user| {
            user.locked = false;
            user.failed_signins = 0;
            Ok(())
        })
        .await?;
        self.audit_admin(admin, "account.unlocked", user_id, None)
            .await;
        Ok(())
    }

    /// Removes a user's TOTP enrolment and recovery codes: the next sign-in asks for the
    /// password only, and the user can enrol again.
    pub async fn reset_mfa(&self, admin: &Admin, user_id: &str) -> Result<(), FlowError> {
        admin.require_platform()?;
        self.user(user_id).await?;
        loop {
            let Some(mfa) = records::get::<Mfa>(&*self.store, user_id).await? else {
                return Err(FlowError::NotFound(format!(
                    "user {user_id} has no MFA enrolment"
                )));
            };
            match self.store.delete(Bucket::Mfa, user_id, mfa.revision).await {
                Ok(()) => break,
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.audit_admin(admin, "mfa.reset", user_id, None).await;
        Ok(())
    }

    /// Creates or replaces a right.
    pub async fn put_right(
        &self,
        admin: &Admin,
        name: &str,
        description: String,
    ) -> Result<(), FlowError> {
        admin.require_platform()?;
        check_name("right", name)?;
        let right = Right {
            v: VERSION,
            name: name.to_owned(),
            description,
        };
        self.put_record(&format!("right.{name}"), &right).await?;
        self.audit_admin(admin, "right.put", name, None).await;
        Ok(())
    }

    /// Creates or replaces a role; every right it names must exist.
    pub async fn put_role(
        &self,
        admin: &Admin,
        name: &str,
        spec: RoleSpec,
    ) -> Result<(), FlowError> {
        admin.require_platform()?;
        check_name("role", name)?;
        for right in &spec.rights {
            if records::get::<Right>(&*self.store, &format!("right.{right}"))
                .await?
                .is_none()
            {
                return Err(FlowError::InvalidRequest(format!(
                    "no right `{right}`: create it first"
                )));
            }
        }
        let role = Role {
            v: VERSION,
            name: name.to_owned(),
            rights: spec.rights,
            description: spec.description,
        };
        self.put_record(&format!("role.{name}"), &role).await?;
        let _ = self.catalogue.reload(&*self.store).await;
        self.audit_admin(admin, "role.put", name, None).await;
        Ok(())
    }

    async fn put_record<T: records::Record>(&self, key: &str, record: &T) -> Result<(), FlowError> {
        for _ in 0..5 {
            let written = match self.store.get(T::BUCKET, key).await? {
                Some(entry) => records::update(&*self.store, key, record, entry.revision).await,
                None => records::create(&*self.store, key, record).await,
            };
            match written {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict | StoreError::Exists) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::Unavailable("the catalogue kept changing".into()))
    }

    /// Deletes a right or a role (`kind` is `right` or `role`). A right still in a role
    /// stays until the role is changed.
    pub async fn delete_entry(
        &self,
        admin: &Admin,
        kind: &'static str,
        name: &str,
    ) -> Result<(), FlowError> {
        admin.require_platform()?;
        let key = format!("{kind}.{name}");
        let entry = self
            .store
            .get(Bucket::Rbac, &key)
            .await?
            .ok_or_else(|| FlowError::NotFound(format!("no {kind} `{name}`")))?;
        self.store
            .delete(Bucket::Rbac, &key, entry.revision)
            .await?;
        let _ = self.catalogue.reload(&*self.store).await;
        let action = if kind == "right" {
            "right.deleted"
        } else {
            "role.deleted"
        };
        self.audit_admin(admin, action, name, None).await;
        Ok(())
    }

    /// The catalogue: every right and every role.
    pub async fn list_catalogue(
        &self,
        admin: &Admin,
    ) -> Result<(Vec<Right>, Vec<Role>), FlowError> {
        admin.require_platform()?;
        let (mut rights, mut roles) = (Vec::new(), Vec::new());
        for key in self.store.keys(Bucket::Rbac, None, 100_000).await? {
            if key.starts_with("right.") {
                if let Some(right) = records::get::<Right>(&*self.store, &key).await? {
                    rights.push(right.record);
                }
            } else if let Some(role) = records::get::<Role>(&*self.store, &key).await? {
                roles.push(role.record);
            }
        }
        Ok((rights, roles))
    }

    /// Assigns (`assign`) or removes a role of a user in a tenant. New tokens carry it at
    /// once; tokens already issued at their next refresh (at most one access-token lifetime).
    pub async fn assignment(
        &self,
        admin: &Admin,
        user_id: &str,
        tenant: &str,
        role: &str,
        assign: bool,
    ) -> Result<(), FlowError> {
        check_name("tenant", tenant)?;
        check_name("role", role)?;
        admin.require_tenant(tenant)?;
        if assign
            && role != TENANT_ADMIN
            && records::get::<Role>(&*self.store, &format!("role.{role}"))
                .await?
                .is_none()
        {
            return Err(FlowError::InvalidRequest(format!(
                "no role `{role}`: create it first"
            )));
        }
        self.change_user(user_id, |user| {
            let roles = user.tenants.entry(tenant.to_owned()).or_default();
            roles.retain(|r| r != role);
            if assign {
                roles.push(role.to_owned());
                roles.sort();
            }
            if roles.is_empty() {
                user.tenants.remove(tenant);
            }
            Ok(())
        })
        .await?;
        let action = if assign {
            "assignment.added"
        } else {
            "assignment.removed"
        };
        self.audit(Event {
            actor: admin.id.clone(),
            action,
            target: user_id.to_owned(),
            tenant: Some(tenant.to_owned()),
            detail: Some(format!("role {role}")),
        })
        .await;
        Ok(())
    }

    /// May `user_id` do `action` in `tenant` on a resource with these attributes?
    pub async fn decide(
        &self,
        user_id: &str,
        tenant: &str,
        action: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<Decision, FlowError> {
        let user = match self.user(user_id).await {
            Ok(user) => user.record,
            Err(FlowError::NotFound(_)) => return Ok(Decision::deny(format!("no user {user_id}"))),
            Err(e) => return Err(e),
        };
        if user.status != UserStatus::Active {
            return Ok(Decision::deny(format!("user {user_id} is disabled")));
        }
        if let Some(owner) = attributes.get("tenant")
            && owner != tenant
        {
            return Ok(Decision::deny(format!(
                "the resource belongs to tenant {owner}, not {tenant}"
            )));
        }
        if self.roles_of(&user).iter().any(|r| r == PLATFORM_ADMIN) {
            return Ok(Decision::allow(
                "a platform administrator may do anything".into(),
            ));
        }
        let Some(roles) = user.tenants.get(tenant).filter(|r| !r.is_empty()) else {
            return Ok(Decision::deny(format!(
                "user {user_id} is not a member of tenant {tenant}"
            )));
        };
        for name in roles {
            if let Some(role) = records::get::<Role>(&*self.store, &format!("role.{name}")).await?
                && role.record.rights.iter().any(|r| r == action)
            {
                return Ok(Decision::allow(format!(
                    "role {name} grants {action} in tenant {tenant}"
                )));
            }
        }
        Ok(Decision::deny(format!(
            "no role of user {user_id} in tenant {tenant} ({}) grants {action}",
            roles.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["orders.read", "tenant-admin", "a_1"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Orders", "orders:read", "a b", "../x"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
