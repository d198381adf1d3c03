//! The IAM administration API (`/admin/iam/*`), for platform administrators (a token of
//! this gateway with `platform-admin` in its `roles`). So far: unlocking an account locked
//! by wrong passwords, and resetting a user's MFA (a lost phone). Every change is audited
//! with the administrator as the actor.

use super::Identity;
use super::audit::Event;
use super::flows::FlowError;
use super::records::{self, Mfa, User, Versioned};
use super::store::{Bucket, StoreError};
use crate::auth::membership::PLATFORM_ADMIN;

impl Identity {
    /// The administrator a bearer token names; `Err` unless it is a platform administrator.
    pub async fn platform_admin(&self, bearer: &str) -> Result<String, FlowError> {
        let claims = self.verify_access(bearer).await?;
        if claims.roles.iter().any(|r| r == PLATFORM_ADMIN) {
            Ok(claims.sub)
        } else {
            Err(FlowError::Forbidden(
                "the IAM API is for platform administrators".into(),
            ))
        }
    }

    /// Unlocks an account (and forgets its wrong passwords).
    pub async fn unlock(&self, admin: &str, user_id: &str) -> Result<(), FlowError> {
        for _ in 0..5 {
            let mut user: Versioned<User> = self.user(user_id).await?;
            user.record.locked = false;
            user.record.failed_signins = 0;
            match records::update(&*self.store, user_id, &user.record, user.revision).await {
                Ok(_) => {
                    self.audit(Event {
                        actor: admin.to_owned(),
                        action: "account.unlocked",
                        target: user_id.to_owned(),
                        ..Event::default()
                    })
                    .await;
                    return Ok(());
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::Unavailable("the account kept changing".into()))
    }

    /// Removes a user's TOTP enrolment and recovery codes: the next sign-in asks for the
    /// password only, and the user can enrol again.
    pub async fn reset_mfa(&self, admin: &str, user_id: &str) -> Result<(), FlowError> {
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
        self.audit(Event {
            actor: admin.to_owned(),
            action: "mfa.reset",
            target: user_id.to_owned(),
            ..Event::default()
        })
        .await;
        Ok(())
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
}
