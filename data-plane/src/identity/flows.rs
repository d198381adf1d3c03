//! The password and session flows. Answers never tell whether an account exists: sign-up
//! answers the same for a taken address, and sign-in spends a hash verification for an
//! unknown one. Sessions are refresh-token families: each use replaces the token (a
//! compare-and-set on the family's revision, so the same token raced from two replicas
//! succeeds once), and presenting a replaced token — someone holds a copy — revokes the
//! family.

use jsonwebtoken::{Algorithm, Header, Validation};

use super::abuse::LOCKOUT_AFTER;
use super::audit::Event;
use super::mail::Mail;
use super::mfa::SignIn;
use super::records::{
    self, EmailOwner, Family, RecordError, Reset, User, UserStatus, VERSION, Versioned,
};
use super::store::{Bucket, StoreError};
use super::tokens::{self, AccessClaims, Tokens};
use super::{Identity, IdentityError, password, unix_now, unix_now_ms};
use crate::auth::membership::PLATFORM_ADMIN;

/// Why a flow refused; each is one answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// 400: the request is malformed (the message says how).
    #[error("{0}")]
    InvalidRequest(String),
    /// 401: wrong e-mail or password, or no such account — indistinguishable on purpose.
    #[error("the e-mail address or the password is wrong")]
    InvalidCredentials,
    /// 401: the refresh token is unknown, expired, revoked or already used.
    #[error("the refresh token is not valid (expired, revoked or already used)")]
    InvalidGrant,
    /// 400: the password-reset token is unknown, used or expired.
    #[error("the reset token is not valid (unknown, already used or expired)")]
    InvalidResetToken,
    /// 401: the client id or secret is wrong (the client-credentials grant).
    #[error("the client id or secret is wrong")]
    InvalidClient,
    /// 401: the MFA code is wrong or already used.
    #[error("the code is wrong, expired or already used")]
    InvalidCode,
    /// 403: authenticated, but not allowed (the message says why).
    #[error("{0}")]
    Forbidden(String),
    /// 404: what the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request does not fit the account's state (the message says why).
    #[error("{0}")]
    Conflict(String),
    /// 401: the bearer token is missing or not the gateway's.
    #[error("a valid access token of this gateway is required")]
    InvalidToken,
    /// 503: the store or the keys failed.
    #[error("the identity service is unavailable: {0}")]
    Unavailable(String),
}

impl From<IdentityError> for FlowError {
    fn from(e: IdentityError) -> Self {
        FlowError::Unavailable(e.to_string())
    }
}

impl From<StoreError> for FlowError {
    fn from(e: StoreError) -> Self {
        FlowError::Unavailable(e.to_string())
    }
}

impl From<RecordError> for FlowError {
    fn from(e: RecordError) -> Self {
        FlowError::Unavailable(e.to_string())
    }
}

impl From<super::keys::KeyError> for FlowError {
    fn from(e: super::keys::KeyError) -> Self {
        FlowError::Unavailable(e.to_string())
    }
}

/// The address as compared: trimmed and lower-cased; `None` when it is not one.
pub fn normalise_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let valid = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    valid.then_some(email)
}

/// The key the abuse limits count an address under (also for addresses that are not
/// well formed: those are limited too).
pub fn account_key(email: &str) -> String {
    let normalised = normalise_email(email).unwrap_or_else(|| email.trim().to_lowercase());
    email_key(&normalised)
}

/// The e-mail index's key: no address appears in a key (keys show up in listings, logs
/// and NATS subjects).
fn email_key(normalised: &str) -> String {
    tokens::digest(normalised)
}

impl Identity {
    /// Creates an account unless the address has one; the caller answers the same either
    /// way (and the time is the same: the password is hashed in both cases).
    pub async fn signup(&self, email: &str, password: &str) -> Result<(), FlowError> {
        let email = normalise_email(email)
            .ok_or_else(|| FlowError::InvalidRequest("`email` is not an e-mail address".into()))?;
        password::check_strength(password).map_err(|m| FlowError::InvalidRequest(m.into()))?;
        let hash = hash_off_thread(password.to_owned()).await?;
        let user = User::new(&email, Some(hash), false, unix_now());
        match self.insert_user(&user, "signed up").await {
            // A taken address answers the same as a free one.
            Ok(()) | Err(FlowError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stores a new account and claims its address; `Conflict` (and nothing stored) when
    /// the address is taken, also by a replica racing this one.
    pub(super) async fn insert_user(&self, user: &User, how: &str) -> Result<(), FlowError> {
        let taken = || FlowError::Conflict(format!("an account uses {}", user.email));
        let key = email_key(&user.email);
        if records::get::<EmailOwner>(&*self.store, &key)
            .await?
            .is_some()
        {
            return Err(taken());
        }
        records::create(&*self.store, &user.id, user).await?;
        let owner = EmailOwner {
            v: VERSION,
            user: user.id.clone(),
        };
        match records::create(&*self.store, &key, &owner).await {
            Ok(_) => {
                tracing::info!(user = %user.id, how, "account created");
                self.audit(Event {
                    actor: user.id.clone(),
                    action: "account.created",
                    target: user.id.clone(),
                    detail: Some(how.to_owned()),
                    ..Event::default()
                })
                .await;
                Ok(())
            }
            // The address was claimed meanwhile: ours goes.
            Err(StoreError::Exists) => {
                if let Some(entry) = self.store.get(Bucket::Users, &user.id).await? {
                    let _ = self
                        .store
                        .delete(Bucket::Users, &user.id, entry.revision)
                        .await;
                }
                Err(taken())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Checks the password and starts a session (or asks for the second factor).
    pub async fn signin(&self, email: &str, password: &str) -> Result<SignIn, FlowError> {
        let user = match normalise_email(email) {
            Some(email) => self.user_by_email(&email).await?,
            None => None,
        };
        let Some(mut user) = user else {
            verify_nothing_off_thread(password.to_owned()).await;
            self.audit(signin_failed("-", "no such account")).await;
            return Err(FlowError::InvalidCredentials);
        };
        let Some(stored) = user.record.password.clone() else {
            verify_nothing_off_thread(password.to_owned()).await;
            self.audit(signin_failed(&user.record.id, "no password"))
                .await;
            return Err(FlowError::InvalidCredentials);
        };
        let verdict = verify_off_thread(password.to_owned(), stored).await?;
        let why = if user.record.locked {
            Some("account locked")
        } else if verdict == password::Verdict::Wrong {
            Some("wrong password")
        } else if user.record.status != UserStatus::Active {
            Some("account disabled")
        } else {
            None
        };
        if let Some(why) = why {
            tracing::info!(user = %user.record.id, reason = why, "sign-in refused");
            // The failure is counted alongside the audit record, not after it: an unknown
            // address costs one Argon2id verification and one audit append, and so does a
            // wrong password — the answer's time does not tell them apart.
            let count = verdict == password::Verdict::Wrong && !user.record.locked;
            let audit = signin_failed(&user.record.id, why);
            let ((), counted) = tokio::join!(self.audit(audit), async {
                if count {
                    self.count_failure(user).await
                } else {
                    Ok(())
                }
            });
            counted?;
            return Err(FlowError::InvalidCredentials);
        }
        let stale = verdict == password::Verdict::RightButStale;
        if stale || user.record.failed_signins > 0 {
            // Best effort: a concurrent change of the account wins, and the next sign-in
            // tries again.
            if stale {
                user.record.password = Some(hash_off_thread(password.to_owned()).await?);
            }
            user.record.failed_signins = 0;
            let _ = records::update(
                &*self.store,
                &user.record.id.clone(),
                &user.record,
                user.revision,
            )
            .await;
        }
        self.after_password(&user.record).await
    }

    /// One more wrong password in a row; at [`LOCKOUT_AFTER`] the account locks.
    async fn count_failure(&self, mut user: Versioned<User>) -> Result<(), FlowError> {
        for _ in 0..5 {
            user.record.failed_signins += 1;
            user.record.locked = user.record.failed_signins >= LOCKOUT_AFTER;
            match records::update(
                &*self.store,
                &user.record.id.clone(),
                &user.record,
                user.revision,
            )
            .await
            {
                Ok(_) => {
                    if user.record.locked {
                        tracing::warn!(user = %user.record.id, "account locked after repeated wrong passwords");
                        self.audit(Event {
                            actor: "system".into(),
                            action: "account.locked",
                            target: user.record.id.clone(),
                            detail: Some(format!("{LOCKOUT_AFTER} wrong passwords in a row")),
                            ..Event::default()
                        })
                        .await;
                    }
                    return Ok(());
                }
                Err(StoreError::Conflict) => {
                    match records::get::<User>(&*self.store, &user.record.id).await? {
                        Some(again) if !again.record.locked => user = again,
                        _ => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<Versioned<User>>, FlowError> {
        let Some(owner) = records::get::<EmailOwner>(&*self.store, &email_key(email)).await? else {
            return Ok(None);
        };
        Ok(records::get::<User>(&*self.store, &owner.record.user).await?)
    }

    pub(super) async fn start_session(&self, user: &User) -> Result<Tokens, FlowError> {
        let now = unix_now();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let refresh = tokens::refresh_token(&id);
        let family = Family {
            v: VERSION,
            user: user.id.clone(),
            current: tokens::digest(&refresh),
            replaced: Vec::new(),
            generation: 0,
            started_ms: unix_now_ms(),
            expires_at: now + self.config.refresh_ttl.as_secs() as i64,
            revoked: None,
        };
        records::create(&*self.store, &id, &family).await?;
        tracing::info!(user = %user.id, session = %id, "signed in");
        self.audit(Event {
            actor: user.id.clone(),
            action: "session.started",
            target: id.clone(),
            ..Event::default()
        })
        .await;
        self.tokens(user, &id, refresh).await
    }

    async fn tokens(
        &self,
        user: &User,
        session: &str,
        refresh: String,
    ) -> Result<Tokens, FlowError> {
        let now = unix_now();
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            sub: user.id.clone(),
            aud: self.config.audience.clone(),
            exp: now + self.config.access_ttl.as_secs() as i64,
            iat: now,
            jti: uuid::Uuid::now_v7().simple().to_string(),
            sid: session.to_owned(),
            email: user.email.clone(),
            tenants: user.tenants.clone(),
            roles: self.roles_of(user),
        };
        Ok(Tokens {
            access_token: self.sign(&claims).await?,
            refresh_token: refresh,
            token_type: "Bearer",
            expires_in: self.config.access_ttl.as_secs(),
        })
    }

    /// Replaces a refresh token with a new one (and a new access token). A token that was
    /// already replaced revokes its family: whoever uses the family next — the thief or
    /// the owner — must sign in again.
    pub async fn refresh(&self, token: &str) -> Result<Tokens, FlowError> {
        let id = tokens::family_of(token).ok_or(FlowError::InvalidGrant)?;
        let digest = tokens::digest(token);
        let family: Versioned<Family> = records::get(&*self.store, id)
            .await?
            .ok_or(FlowError::InvalidGrant)?;
        if family.record.current != digest {
            if !family.record.replaced.contains(&digest) {
                return Err(FlowError::InvalidGrant);
            }
            let why = "a replaced refresh token was presented";
            self.revoke(id, family, "session.reuse_detected", why)
                .await?;
            return Err(FlowError::InvalidGrant);
        }
        let user = self.live_session_user(&family.record).await?;
        let refresh = tokens::refresh_token(id);
        let mut next = family.record.clone();
        next.replaced.push(std::mem::replace(
            &mut next.current,
            tokens::digest(&refresh),
        ));
        // Enough to catch a copy used after a few rotations, without growing for ever.
        if next.replaced.len() > REPLACED_KEPT {
            next.replaced.remove(0);
        }
        next.generation += 1;
        match records::update(&*self.store, id, &next, family.revision).await {
            Ok(_) => self.tokens(&user, id, refresh).await,
            // Used at the same moment elsewhere: one of the two is a copy.
            Err(StoreError::Conflict) => {
                if let Some(now) = records::get::<Family>(&*self.store, id).await? {
                    let why = "a refresh token was used twice at once";
                    self.revoke(id, now, "session.reuse_detected", why).await?;
                }
                Err(FlowError::InvalidGrant)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The family's user, when the session may go on.
    async fn live_session_user(&self, family: &Family) -> Result<User, FlowError> {
        if family.revoked.is_some() || family.expires_at <= unix_now() {
            return Err(FlowError::InvalidGrant);
        }
        let user: Versioned<User> = records::get(&*self.store, &family.user)
            .await?
            .ok_or(FlowError::InvalidGrant)?;
        if user.record.status != UserStatus::Active
            || family.started_ms < user.record.sessions_after_ms
        {
            return Err(FlowError::InvalidGrant);
        }
        Ok(user.record)
    }

    /// Marks a family revoked (retrying on concurrent changes; already revoked stays so).
    async fn revoke(
        &self,
        id: &str,
        mut family: Versioned<Family>,
        action: &'static str,
        why: &str,
    ) -> Result<(), FlowError> {
        for _ in 0..5 {
            if family.record.revoked.is_some() {
                return Ok(());
            }
            family.record.revoked = Some(why.to_owned());
            match records::update(&*self.store, id, &family.record, family.revision).await {
                Ok(_) => {
                    tracing::warn!(session = id, user = %family.record.user, reason = why, "session revoked");
                    self.audit(Event {
                        actor: family.record.user.clone(),
                        action,
                        target: id.to_owned(),
                        detail: Some(why.to_owned()),
                        ..Event::default()
                    })
                    .await;
                    return Ok(());
                }
                Err(StoreError::Conflict) => match records::get(&*self.store, id).await? {
                    Some(again) => family = again,
                    None => return Ok(()),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::Unavailable("the session kept changing".into()))
    }

    /// Ends the session of a refresh token (a token that is not current ends nothing).
    pub async fn signout(&self, token: &str) -> Result<(), FlowError> {
        let Some(id) = tokens::family_of(token) else {
            return Ok(());
        };
        if let Some(family) = records::get::<Family>(&*self.store, id).await?
            && family.record.current == tokens::digest(token)
        {
            self.revoke(id, family, "session.revoked", "signed out")
                .await?;
        }
        Ok(())
    }

    /// Ends every session of the bearer's account: refresh fails at once; access tokens
    /// already issued run out within their lifetime.
    pub async fn signout_everywhere(&self, bearer: &str) -> Result<(), FlowError> {
        let claims = self.verify_access(bearer).await?;
        for _ in 0..5 {
            let mut user: Versioned<User> = records::get(&*self.store, &claims.sub)
                .await?
                .ok_or(FlowError::InvalidToken)?;
            user.record.sessions_after_ms = unix_now_ms();
            match records::update(&*self.store, &claims.sub, &user.record, user.revision).await {
                Ok(_) => {
                    tracing::info!(user = %claims.sub, "signed out everywhere");
                    self.audit(Event {
                        actor: claims.sub.clone(),
                        action: "sessions.revoked_all",
                        target: claims.sub.clone(),
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

    /// Mails a one-time reset token when the address has an active account. The answer
    /// is the same either way and does not wait for the mail: its time does not depend on
    /// the account.
    pub async fn forgot(&self, email: &str) -> Result<(), FlowError> {
        let Some(email) = normalise_email(email) else {
            return Ok(());
        };
        let owner = records::get::<EmailOwner>(&*self.store, &email_key(&email)).await?;
        let user = match owner {
            Some(owner) => records::get::<User>(&*self.store, &owner.record.user).await?,
            None => {
                // The read an existing account costs, so both take as long.
                let _ = self.store.get(Bucket::Users, &email_key(&email)).await;
                None
            }
        };
        let Some(user) = user.filter(|u| u.record.status == UserStatus::Active) else {
            return Ok(());
        };
        self.audit(Event {
            actor: "anonymous".into(),
            action: "password.reset_requested",
            target: user.record.id.clone(),
            ..Event::default()
        })
        .await;
        let Some(mailer) = self.mailer.clone() else {
            tracing::warn!(user = %user.record.id, "password reset asked, but no --identity-mail is set");
            return Ok(());
        };
        let token = tokens::random(32);
        let reset = Reset {
            v: VERSION,
            user: user.record.id.clone(),
            expires_at: unix_now() + self.config.reset_ttl.as_secs() as i64,
        };
        let store = self.store.clone();
        let minutes = self.config.reset_ttl.as_secs() / 60;
        let issuer = self.config.issuer.clone();
        let to = user.record.email.clone();
        tokio::spawn(async move {
            if let Err(error) = records::create(&*store, &tokens::digest(&token), &reset).await {
                tracing::error!(user = %reset.user, %error, "the reset token could not be stored");
                return;
            }
            let mail = Mail {
                to,
                subject: "Reset your password".into(),
                body: format!(
                    "Someone (hopefully you) asked to reset the password of this account at {issuer}.\n\n\
                     Your reset token, valid for {minutes} minutes and usable once:\n\n    {token}\n\n\
                     Send it with your new password: POST {issuer}/v1/auth/reset\n\
                     {{\"token\": \"…\", \"password\": \"…\"}}\n\n\
                     If you did not ask for this, ignore this message: your password is unchanged.\n"
                ),
            };
            match mailer.send(mail).await {
                Ok(()) => tracing::info!(user = %reset.user, "password reset mail sent"),
                Err(error) => {
                    tracing::error!(user = %reset.user, %error, "password reset mail failed")
                }
            }
        });
        Ok(())
    }

    /// Sets a new password with a reset token (once: the first to delete the token owns
    /// it), and ends every session of the account.
    pub async fn reset(&self, token: &str, password: &str) -> Result<(), FlowError> {
        password::check_strength(password).map_err(|m| FlowError::InvalidRequest(m.into()))?;
        let key = tokens::digest(token);
        let reset: Versioned<Reset> = records::get(&*self.store, &key)
            .await?
            .ok_or(FlowError::InvalidResetToken)?;
        match self
            .store
            .delete(Bucket::Resets, &key, reset.revision)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Err(FlowError::InvalidResetToken),
            Err(e) => return Err(e.into()),
        }
        if reset.record.expires_at <= unix_now() {
            return Err(FlowError::InvalidResetToken);
        }
        let hash = hash_off_thread(password.to_owned()).await?;
        for _ in 0..5 {
            let mut user: Versioned<User> = records::get(&*self.store, &reset.record.user)
                .await?
                .ok_or(FlowError::InvalidResetToken)?;
            user.record.password = Some(hash.clone());
            user.record.sessions_after_ms = unix_now_ms();
            // The owner proved the mailbox: the address is verified, and a lockout ends.
            user.record.email_verified = true;
            user.record.locked = false;
            user.record.failed_signins = 0;
            match records::update(
                &*self.store,
                &reset.record.user,
                &user.record,
                user.revision,
            )
            .await
            {
                Ok(_) => {
                    tracing::info!(user = %reset.record.user, "password reset; every session ended");
                    self.audit(Event {
                        actor: reset.record.user.clone(),
                        action: "password.reset",
                        target: reset.record.user.clone(),
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

    /// Checks one of the gateway's own access tokens.
    pub async fn verify_access(&self, token: &str) -> Result<AccessClaims, FlowError> {
        let audience = self.config.audience.clone();
        self.verify_own(token, &audience).await
    }

    /// The platform roles a user's tokens carry: its own, and `platform-admin` for the
    /// bootstrap administrators' addresses.
    pub(super) fn roles_of(&self, user: &User) -> Vec<String> {
        let mut roles = user.roles.clone();
        // Only once the owner proved the address (a reset by mail): otherwise whoever signed
        // up first with an administrator's address would be one.
        let bootstrap = user.email_verified
            && self
                .config
                .admins
                .iter()
                .any(|a| normalise_email(a).as_deref() == Some(user.email.as_str()));
        if bootstrap && !roles.iter().any(|r| r == PLATFORM_ADMIN) {
            roles.push(PLATFORM_ADMIN.to_owned());
        }
        roles
    }

    /// Signs `claims` with the current key.
    pub(super) async fn sign(&self, claims: &impl serde::Serialize) -> Result<String, FlowError> {
        let signer = self.keys.signer().await?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &signer.key)
            .map_err(|e| FlowError::Unavailable(format!("signing: {e}")))
    }

    /// Checks a token the gateway signed for `audience`.
    pub(super) async fn verify_own<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, FlowError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| FlowError::InvalidToken)?;
        let kid = header.kid.ok_or(FlowError::InvalidToken)?;
        let key = self
            .keys
            .decoding_key(&kid)
            .await?
            .ok_or(FlowError::InvalidToken)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[audience]);
        jsonwebtoken::decode::<T>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|_| FlowError::InvalidToken)
    }
}

/// Replaced refresh tokens remembered per family for reuse detection.
const REPLACED_KEPT: usize = 16;

fn signin_failed(user: &str, why: &str) -> Event {
    Event {
        actor: "anonymous".into(),
        action: "signin.failed",
        target: user.to_owned(),
        detail: Some(why.to_owned()),
        ..Event::default()
    }
}

/// Argon2id takes tens of milliseconds of CPU: never on a proxy worker's thread.
pub(super) async fn hash_off_thread(password: String) -> Result<String, FlowError> {
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| FlowError::Unavailable(e.to_string()))
}

async fn verify_off_thread(
    password: String,
    stored: String,
) -> Result<password::Verdict, FlowError> {
    tokio::task::spawn_blocking(move || password::verify(&password, &stored))
        .await
        .map_err(|e| FlowError::Unavailable(e.to_string()))
}

async fn verify_nothing_off_thread(password: String) {
    let _ = tokio::task::spawn_blocking(move || password::verify_nothing(&password)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_or_refused() {
        assert_eq!(
            normalise_email(" Ada@Example.ORG ").as_deref(),
            Some("ada@example.org")
        );
        for bad in [
            "",
            "ada",
            "@example.org",
            "ada@",
            "ada@example",
            "ada@.org",
            "a b@x.org",
            "a@b@x.org",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
    }
}
