//! The TOTP second factor (RFC 6238: HMAC-SHA-1, six digits, 30-second steps, one step of
//! clock skew either way — what every authenticator app speaks). Enrolment is two steps
//! (start shows the secret as an `otpauth://` URI and a QR code; confirm proves the app
//! has it and returns ten one-time recovery codes); from then on sign-in answers with a
//! short-lived MFA token, exchanged for the session with a code. A code is accepted once:
//! the step it was made for is remembered, by compare-and-set, on every replica.

use serde::{Deserialize, Serialize};
use totp_rs::{Builder, Totp};

use super::flows::FlowError;
use super::records::{self, Mfa, User, VERSION, Versioned};
use super::store::StoreError;
use super::tokens::{self, Tokens};
use super::{Identity, unix_now};

/// Recovery codes made at enrolment.
pub const RECOVERY_CODES: usize = 10;

/// How long the MFA token of a sign-in's first step lasts.
const MFA_TOKEN_SECONDS: i64 = 300;

/// What sign-in answers.
#[derive(Debug)]
pub enum SignIn {
    Tokens(Tokens),
    /// The password was right; a code is needed with this token.
    MfaRequired {
        mfa_token: String,
    },
}

/// What enrolment shows the user once.
#[derive(Debug, Serialize)]
pub struct Enrolment {
    /// Base32, for typing in.
    pub secret: String,
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

/// The MFA token's claims: who passed the password, for a short while.
#[derive(Debug, Serialize, Deserialize)]
pub struct MfaClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    /// When the password was checked, in milliseconds: a revocation in the same second is
    /// told apart.
    pub issued_ms: i64,
    pub jti: String,
}

fn totp(secret: Vec<u8>, account: &str, issuer: &str) -> Result<Totp, FlowError> {
    Builder::new()
        .with_secret(secret)
        .with_account_name(account.replace(':', ""))
        .with_issuer(Some(issuer.replace(':', "")))
        .build()
        .map_err(|e| FlowError::Unavailable(format!("TOTP: {e}")))
}

/// The step `code` is good for at `time`, when it is newer than `last_step`.
pub fn accept(totp: &Totp, code: &str, time: u64, last_step: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    totp.check(code, time).filter(|&step| step > last_step)
}

/// A QR code of `text` as an SVG document (one path of unit squares, a four-module margin).
pub fn qr_svg(text: &str) -> Result<String, FlowError> {
    let qr = qrcodegen::QrCode::encode_text(text, qrcodegen::QrCodeEcc::Medium)
        .map_err(|_| FlowError::Unavailable("the otpauth URI is too long for a QR code".into()))?;
    let size = qr.size();
    let mut path = String::new();
    for y in 0..size {
        for x in 0..size {
            if qr.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + 4, y + 4));
            }
        }
    }
    let side = size + 8;
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" shape-rendering=\"crispEdges\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

/// A recovery code as typed: `xxxxx-xxxxx` from an alphabet without look-alikes.
fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let bytes = ring_random(10);
    let chars: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

fn ring_random(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the system's random source works");
    buf
}

/// A recovery code as compared: lower-case, without spaces or dashes.
fn normalise_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn mfa_event(user: &str, action: &'static str, detail: Option<String>) -> super::audit::Event {
    super::audit::Event {
        actor: user.to_owned(),
        action,
        target: user.to_owned(),
        detail,
        ..Default::default()
    }
}

/// The account an MFA token names, read without checking it: only a key for the abuse
/// limits (a forged token spends its own budget, nothing else).
pub fn account_of(mfa_token: &str) -> Option<String> {
    use base64::Engine;
    let payload = mfa_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub = claims["sub"].as_str()?;
    super::store::valid_key(sub).then(|| format!("mfa.{sub}"))
}

/// What a sealed TOTP secret is bound to.
fn seal_id(user: &str) -> String {
    format!("mfa.{user}")
}

impl Identity {
    fn mfa_audience(&self) -> String {
        format!("{}:mfa", self.config.audience)
    }

    /// The answer to a right password: tokens, or the MFA step for enrolled accounts.
    pub(super) async fn after_password(&self, user: &User) -> Result<SignIn, FlowError> {
        match records::get::<Mfa>(&*self.store, &user.id).await? {
            Some(mfa) if mfa.record.confirmed => {
                let now = unix_now();
                let claims = MfaClaims {
                    iss: self.config.issuer.clone(),
                    sub: user.id.clone(),
                    aud: self.mfa_audience(),
                    exp: now + MFA_TOKEN_SECONDS,
                    iat: now,
                    issued_ms: super::unix_now_ms(),
                    jti: uuid::Uuid::now_v7().simple().to_string(),
                };
                Ok(SignIn::MfaRequired {
                    mfa_token: self.sign(&claims).await?,
                })
            }
            _ => Ok(SignIn::Tokens(self.start_session(user).await?)),
        }
    }

    /// Starts (or restarts, while unconfirmed) the bearer's enrolment.
    pub async fn totp_start(&self, bearer: &str) -> Result<Enrolment, FlowError> {
        let claims = self.verify_access(bearer).await?;
        let existing = records::get::<Mfa>(&*self.store, &claims.sub).await?;
        if existing.as_ref().is_some_and(|m| m.record.confirmed) {
            return Err(FlowError::Conflict(
                "TOTP is already enabled; an administrator can reset it".into(),
            ));
        }
        let secret = ring_random(20);
        let totp = totp(secret.clone(), &claims.email, &self.config.issuer)?;
        let record = Mfa {
            v: VERSION,
            secret: self.keys.sealer().seal(&seal_id(&claims.sub), &secret),
            confirmed: false,
            last_step: 0,
            recovery: Vec::new(),
        };
        let written = match existing {
            Some(existing) => {
                records::update(&*self.store, &claims.sub, &record, existing.revision).await
            }
            None => records::create(&*self.store, &claims.sub, &record).await,
        };
        match written {
            Ok(_) => {}
            Err(StoreError::Conflict | StoreError::Exists) => {
                return Err(FlowError::Conflict(
                    "the enrolment changed meanwhile; start again".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let otpauth_uri = totp
            .to_url()
            .map_err(|e| FlowError::Unavailable(format!("TOTP: {e}")))?;
        Ok(Enrolment {
            secret: totp.secret().to_base32(),
            qr_svg: qr_svg(&otpauth_uri)?,
            otpauth_uri,
        })
    }

    /// Confirms the enrolment with a first code; the recovery codes, shown once.
    pub async fn totp_confirm(&self, bearer: &str, code: &str) -> Result<Vec<String>, FlowError> {
        let claims = self.verify_access(bearer).await?;
        let mfa: Versioned<Mfa> = records::get::<Mfa>(&*self.store, &claims.sub)
            .await?
            .filter(|m| !m.record.confirmed)
            .ok_or_else(|| FlowError::Conflict("no TOTP enrolment is waiting: start one".into()))?;
        let totp = self.totp_of(&claims.sub, &mfa.record)?;
        let step = accept(&totp, code, unix_now() as u64, mfa.record.last_step)
            .ok_or(FlowError::InvalidCode)?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let mut confirmed = mfa.record.clone();
        confirmed.confirmed = true;
        confirmed.last_step = step;
        confirmed.recovery = codes
            .iter()
            .map(|c| tokens::digest(&normalise_recovery(c)))
            .collect();
        match records::update(&*self.store, &claims.sub, &confirmed, mfa.revision).await {
            Ok(_) => {
                tracing::info!(user = %claims.sub, "TOTP enabled");
                self.audit(mfa_event(&claims.sub, "mfa.enabled", None))
                    .await;
                Ok(codes)
            }
            Err(StoreError::Conflict) => Err(FlowError::InvalidCode),
            Err(e) => Err(e.into()),
        }
    }

    fn totp_of(&self, user: &str, mfa: &Mfa) -> Result<Totp, FlowError> {
        let secret = self.keys.sealer().open(&seal_id(user), &mfa.secret)?;
        totp(secret, user, &self.config.issuer)
    }

    /// The second step of sign-in: the MFA token and a TOTP or recovery code.
    pub async fn mfa_signin(&self, mfa_token: &str, code: &str) -> Result<Tokens, FlowError> {
        let claims: MfaClaims = self
            .verify_own(mfa_token, &self.mfa_audience())
            .await
            .map_err(|_| FlowError::InvalidGrant)?;
        for _ in 0..5 {
            let mfa: Versioned<Mfa> = records::get::<Mfa>(&*self.store, &claims.sub)
                .await?
                .filter(|m| m.record.confirmed)
                .ok_or(FlowError::InvalidGrant)?;
            // The MFA token dies with the sessions (sign-out everywhere, a reset) and the lock.
            let user: Versioned<User> = records::get::<User>(&*self.store, &claims.sub)
                .await?
                .ok_or(FlowError::InvalidGrant)?;
            if user.record.locked
                || user.record.status != super::records::UserStatus::Active
                || claims.issued_ms < user.record.sessions_after_ms
            {
                return Err(FlowError::InvalidGrant);
            }
            let mut next = mfa.record.clone();
            if let Some(step) = accept(
                &self.totp_of(&claims.sub, &mfa.record)?,
                code,
                unix_now() as u64,
                mfa.record.last_step,
            ) {
                next.last_step = step;
            } else {
                let digest = tokens::digest(&normalise_recovery(code));
                let before = next.recovery.len();
                next.recovery.retain(|c| *c != digest);
                if next.recovery.len() == before {
                    tracing::info!(user = %claims.sub, "MFA code refused");
                    self.audit(mfa_event(&claims.sub, "mfa.code_refused", None))
                        .await;
                    return Err(FlowError::InvalidCode);
                }
                tracing::warn!(user = %claims.sub, left = next.recovery.len(), "recovery code used");
                let left = format!("{} recovery codes left", next.recovery.len());
                self.audit(mfa_event(&claims.sub, "mfa.recovery_used", Some(left)))
                    .await;
            }
            match records::update(&*self.store, &claims.sub, &next, mfa.revision).await {
                Ok(_) => {
                    let user: Versioned<User> = records::get::<User>(&*self.store, &claims.sub)
                        .await?
                        .filter(|u| u.record.status == super::records::UserStatus::Active)
                        .ok_or(FlowError::InvalidGrant)?;
                    return self.start_session(&user.record).await;
                }
                // Another sign-in used a code meanwhile: look again (this code may be spent).
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::Unavailable("the enrolment kept changing".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_checked_against_a_controlled_clock_and_accepted_once() {
        let totp = totp(vec![42u8; 20], "ada@example.org", "https://id.test").unwrap();
        let t0 = 1_800_000_000u64;
        let code = totp.generate(t0).to_string();
        let step = accept(&totp, &code, t0, 0).expect("the current code");
        assert_eq!(step, t0 / 30);
        assert_eq!(
            accept(&totp, &code, t0 + 30, 0),
            Some(step),
            "one step late is skew"
        );
        assert_eq!(
            accept(&totp, &code, t0 + 90, 0),
            None,
            "three steps late is not"
        );
        assert_eq!(
            accept(&totp, &code, t0, step),
            None,
            "a code is accepted once"
        );
        let next = totp.generate(t0 + 30).to_string();
        assert_eq!(accept(&totp, &next, t0 + 30, step), Some(step + 1));
        assert_eq!(accept(&totp, "12345", t0, 0), None);
        assert_eq!(accept(&totp, "abcdef", t0, 0), None);
    }

    #[test]
    fn recovery_codes_and_qr_codes() {
        let code = recovery_code();
        assert_eq!(code.len(), 11);
        assert_eq!(&code[5..6], "-");
        assert_ne!(code, recovery_code());
        assert_eq!(normalise_recovery(" ABCDE-fghij "), "abcdefghij");
        let svg = qr_svg("otpauth://totp/Pavilion:ada?secret=ABC").unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<path d=\"M"),
            "{svg}"
        );
    }
}
