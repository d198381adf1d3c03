//! Sign-in through OpenID Connect providers (`openidconnect`): `start` makes the
//! authorization URL with PKCE (S256), `state` and `nonce`, kept in the store so any
//! replica can finish the login; `callback` exchanges the code, checks the ID token (issuer,
//! audience, signature, nonce) and finds the account: an identity already linked, or —
//! only with a **verified** e-mail — the account owning that address, or a new account;
//! a signed-in user links an identity explicitly by starting with their bearer token.
//! Providers are found by discovery; `google` is a preset for `https://accounts.google.com`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

use super::audit::Event;
use super::flows::{FlowError, normalise_email};
use super::records::{self, EmailOwner, Record, User, UserStatus, VERSION, Versioned};
use super::store::{Bucket, StoreError};
use super::tokens;
use super::{Identity, unix_now};

/// How long a started login may take to come back.
const LOGIN_SECONDS: i64 = 600;

/// A provider as configured (`--identity-oidc name=…,issuer=…,client-id=…,client-secret-file=…`).
#[derive(Clone, Debug)]
pub struct OidcProvider {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
}

impl OidcProvider {
    /// Parses `name=google,client-id=…,client-secret-file=…` (the `google` preset needs no
    /// issuer) or `name=corp,issuer=https://…,client-id=…,client-secret-file=…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mut name, mut issuer, mut client_id, mut secret_file) = (None, None, None, None);
        for pair in text.split(',') {
            match pair.split_once('=') {
                Some(("name", v)) => name = Some(v.to_owned()),
                Some(("issuer", v)) => issuer = Some(v.trim_end_matches('/').to_owned()),
                Some(("client-id", v)) => client_id = Some(v.to_owned()),
                Some(("client-secret-file", v)) => secret_file = Some(v.to_owned()),
                _ => {
                    return Err(format!(
                        "`{pair}`: expected name=, issuer=, client-id= or client-secret-file="
                    ));
                }
            }
        }
        let name = name.ok_or("needs name=")?;
        if !super::iam::valid_name(&name) {
            return Err(format!(
                "name `{name}`: lower-case letters, digits, `.`, `_`, `-`"
            ));
        }
        let issuer = match (issuer, name.as_str()) {
            (Some(issuer), _) => issuer,
            (None, "google") => "https://accounts.google.com".to_owned(),
            (None, _) => {
                return Err(format!(
                    "provider {name} needs issuer= (only google is preset)"
                ));
            }
        };
        check_issuer(&issuer)?;
        let secret_file = secret_file.ok_or("needs client-secret-file=")?;
        let client_secret = std::fs::read_to_string(&secret_file)
            .map_err(|e| format!("{secret_file}: {e}"))?
            .trim()
            .to_owned();
        Ok(Self {
            name,
            issuer,
            client_id: client_id.ok_or("needs client-id=")?,
            client_secret,
        })
    }
}

/// Issuers are `https://`, except on loopback (a provider under test).
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = url_host(issuer);
    let loopback = matches!(url.as_deref(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if issuer.starts_with("https://") || (issuer.starts_with("http://") && loopback) {
        Ok(())
    } else {
        Err(format!(
            "issuer `{issuer}` must be https:// (http:// only on loopback)"
        ))
    }
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    Some(host.to_owned())
}

/// A login between `start` and `callback` (`{digest of state}` in the oidc bucket).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingLogin {
    pub v: u32,
    pub provider: String,
    pub verifier: String,
    pub nonce: String,
    /// Set when a signed-in user links this identity to their account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_user: Option<String>,
    pub expires_at: i64,
}

impl Record for PendingLogin {
    const BUCKET: Bucket = Bucket::Oidc;
    fn version(&self) -> u32 {
        self.v
    }
}

/// An identity at a provider, linked to an account (`{digest of provider|subject}` in
/// the identities bucket).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkedIdentity {
    pub v: u32,
    pub user: String,
    pub provider: String,
    pub subject: String,
}

impl Record for LinkedIdentity {
    const BUCKET: Bucket = Bucket::Identities;
    fn version(&self) -> u32 {
        self.v
    }
}

fn identity_key(provider: &str, subject: &str) -> String {
    tokens::digest(&format!("{provider}|{subject}"))
}

/// A provider's client as discovery makes it: authorization endpoint set, token and
/// UserInfo endpoints as the metadata says.
type ProviderClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The HTTP client of discovery and code exchange (web PKI roots; no redirects followed).
pub fn http_client() -> HttpClient {
    let tls = crate::upstream::tls_config(&Default::default()).expect("the web PKI roots load");
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

async fn call(
    client: HttpClient,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| HttpError("the provider did not answer within 10 s".into()))?
            .map_err(|e| HttpError(e.to_string()))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| HttpError(e.to_string()))?
        .to_bytes()
        .to_vec();
    Ok(http::Response::from_parts(parts, body))
}

fn unavailable(e: impl std::fmt::Display) -> FlowError {
    FlowError::Unavailable(format!("the OpenID provider: {e}"))
}

impl Identity {
    fn provider(&self, name: &str) -> Result<&OidcProvider, FlowError> {
        self.config
            .oidc
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| FlowError::NotFound(format!("no OpenID provider `{name}`")))
    }

    fn redirect_uri(&self, provider: &str) -> String {
        format!("{}/v1/auth/oidc/{provider}/callback", self.config.issuer)
    }

    async fn metadata(&self, provider: &OidcProvider) -> Result<CoreProviderMetadata, FlowError> {
        let issuer = IssuerUrl::new(provider.issuer.clone()).map_err(unavailable)?;
        let client = self.http.clone();
        let http = move |request| call(client.clone(), request);
        CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(unavailable)
    }

    /// The client of provider `name`, from its discovered metadata.
    async fn client(&self, name: &str) -> Result<ProviderClient, FlowError> {
        let provider = self.provider(name)?.clone();
        let metadata = self.metadata(&provider).await?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(provider.client_id),
            Some(ClientSecret::new(provider.client_secret)),
        )
        .set_redirect_uri(RedirectUrl::new(self.redirect_uri(name)).map_err(unavailable)?))
    }

    /// The URL to send the browser to; `link_user`: link to this signed-in account.
    pub async fn oidc_start(
        &self,
        name: &str,
        link_user: Option<String>,
    ) -> Result<String, FlowError> {
        let client = self.client(name).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge)
            .url();
        let pending = PendingLogin {
            v: VERSION,
            provider: name.to_owned(),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            link_user,
            expires_at: unix_now() + LOGIN_SECONDS,
        };
        records::create(&*self.store, &tokens::digest(state.secret()), &pending).await?;
        Ok(url.to_string())
    }

    /// Finishes a login: the session of the account the provider's identity belongs to.
    /// `bearer`: the caller's access token — required, and of the same user, when the login
    /// was started to link an identity (else whoever the link URL was sent to would link
    /// their identity to the starter's account).
    pub async fn oidc_callback(
        &self,
        name: &str,
        code: &str,
        state: &str,
        bearer: Option<&str>,
    ) -> Result<super::mfa::SignIn, FlowError> {
        let key = tokens::digest(state);
        let pending: Versioned<PendingLogin> = records::get::<PendingLogin>(&*self.store, &key)
            .await?
            .filter(|p| p.record.provider == name)
            .ok_or(FlowError::InvalidGrant)?;
        // One use: the first callback to delete it owns it.
        match self
            .store
            .delete(Bucket::Oidc, &key, pending.revision)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Err(FlowError::InvalidGrant),
            Err(e) => return Err(e.into()),
        }
        if pending.record.expires_at <= unix_now() {
            return Err(FlowError::InvalidGrant);
        }
        if let Some(linker) = &pending.record.link_user {
            let caller = match bearer {
                Some(bearer) => Some(self.verify_access(bearer).await?.sub),
                None => None,
            };
            if caller.as_ref() != Some(linker) {
                return Err(FlowError::Forbidden(
                    "a link is finished by the account that started it (send its bearer token)"
                        .into(),
                ));
            }
        }
        let client = self.client(name).await?;
        let http_client = self.http.clone();
        let http = move |request| call(http_client.clone(), request);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(unavailable)?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.record.verifier.clone()))
            .request_async(&http)
            .await
            .map_err(|e| {
                tracing::info!(provider = name, error = %e, "OIDC code exchange refused");
                FlowError::InvalidGrant
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| unavailable("no ID token"))?;
        let claims = id_token
            .claims(
                &client.id_token_verifier(),
                &Nonce::new(pending.record.nonce.clone()),
            )
            .map_err(|e| {
                tracing::warn!(provider = name, error = %e, "OIDC ID token refused");
                FlowError::InvalidGrant
            })?;
        let subject = claims.subject().as_str().to_owned();
        let (email, verified) = match claims.email() {
            Some(email) => (
                Some(email.as_str().to_owned()),
                claims.email_verified().unwrap_or(false),
            ),
            // Providers that keep the ID token small answer at the UserInfo endpoint.
            None => {
                let info: CoreUserInfoClaims = client
                    .user_info(
                        response.access_token().clone(),
                        Some(claims.subject().clone()),
                    )
                    .map_err(unavailable)?
                    .request_async(&http)
                    .await
                    .map_err(unavailable)?;
                (
                    info.email().map(|e| e.as_str().to_owned()),
                    info.email_verified().unwrap_or(false),
                )
            }
        };
        let user = self
            .account_for(name, &subject, email, verified, pending.record.link_user)
            .await?;
        if user.status != UserStatus::Active || user.locked {
            return Err(FlowError::InvalidCredentials);
        }
        // The provider stands for the password, not for the second factor.
        self.after_password(&user).await
    }

    /// The account of a provider identity, linking or creating one as the rules allow.
    async fn account_for(
        &self,
        provider: &str,
        subject: &str,
        email: Option<String>,
        verified: bool,
        link_user: Option<String>,
    ) -> Result<User, FlowError> {
        let key = identity_key(provider, subject);
        if let Some(linked) = records::get::<LinkedIdentity>(&*self.store, &key).await? {
            return self.existing_user(&linked.record.user).await;
        }
        let user = match link_user {
            Some(user) => self.existing_user(&user).await?,
            None => {
                let email = email.as_deref().and_then(normalise_email).ok_or_else(|| {
                    FlowError::InvalidRequest("the provider gave no e-mail address".into())
                })?;
                let owner =
                    records::get::<EmailOwner>(&*self.store, &tokens::digest(&email)).await?;
                let owner = match owner {
                    Some(owner) => Some(self.existing_user(&owner.record.user).await?),
                    None => None,
                };
                match owner {
                    // An address joins an existing account only when both sides proved it:
                    // the provider says verified, and the account's owner proved the mailbox
                    // (a reset by mail, or an earlier verified login) — otherwise whoever
                    // signed up first with someone else's address would get their account.
                    Some(owner) if verified && owner.email_verified => owner,
                    Some(_) => {
                        return Err(FlowError::Conflict(
                            "an account uses this address; sign in to it and link this provider"
                                .into(),
                        ));
                    }
                    None => self.create_linked_user(&email, verified).await?,
                }
            }
        };
        let linked = LinkedIdentity {
            v: VERSION,
            user: user.id.clone(),
            provider: provider.to_owned(),
            subject: subject.to_owned(),
        };
        match records::create(&*self.store, &key, &linked).await {
            Ok(_) | Err(StoreError::Exists) => {}
            Err(e) => return Err(e.into()),
        }
        self.audit(Event {
            actor: user.id.clone(),
            action: "identity.linked",
            target: user.id.clone(),
            detail: Some(format!("provider {provider}")),
            ..Event::default()
        })
        .await;
        Ok(user)
    }

    async fn existing_user(&self, id: &str) -> Result<User, FlowError> {
        records::get::<User>(&*self.store, id)
            .await?
            .map(|u| u.record)
            .ok_or(FlowError::InvalidGrant)
    }

    async fn create_linked_user(&self, email: &str, verified: bool) -> Result<User, FlowError> {
        let user = User::new(email, None, verified, unix_now());
        self.insert_user(&user, "through an OpenID provider")
            .await?;
        Ok(user)
    }

    /// The identities linked to `user_id`, with their keys.
    pub(super) async fn linked_identities(
        &self,
        user_id: &str,
    ) -> Result<Vec<(String, Versioned<LinkedIdentity>)>, FlowError> {
        let mut linked = Vec::new();
        for key in self.store.keys(Bucket::Identities, None, 100_000).await? {
            if let Some(identity) = records::get::<LinkedIdentity>(&*self.store, &key).await?
                && identity.record.user == user_id
            {
                linked.push((key, identity));
            }
        }
        Ok(linked)
    }

    /// The identities linked to a user (platform administrators).
    pub async fn identities_of(
        &self,
        admin: &super::iam::Admin,
        user_id: &str,
    ) -> Result<Vec<LinkedIdentity>, FlowError> {
        admin.require_platform()?;
        self.existing_user(user_id)
            .await
            .map_err(|_| FlowError::NotFound(format!("no user {user_id}")))?;
        let linked = self.linked_identities(user_id).await?;
        Ok(linked.into_iter().map(|(_, l)| l.record).collect())
    }

    /// Unlinks the bearer's identity at `provider`.
    pub async fn oidc_unlink(&self, bearer: &str, provider: &str) -> Result<(), FlowError> {
        let claims = self.verify_access(bearer).await?;
        let user = self.existing_user(&claims.sub).await?;
        self.unlink(&user, provider, &user.id).await
    }

    /// An administrator unlinks a user's identity at `provider` (platform administrators).
    pub async fn admin_unlink(
        &self,
        admin: &super::iam::Admin,
        user_id: &str,
        provider: &str,
    ) -> Result<(), FlowError> {
        admin.require_platform()?;
        let user = self
            .existing_user(user_id)
            .await
            .map_err(|_| FlowError::NotFound(format!("no user {user_id}")))?;
        self.unlink(&user, provider, &admin.id).await
    }

    /// Unlinks `user`'s identity at `provider` on behalf of `actor`; refused when it is the
    /// account's only way in (no password).
    async fn unlink(&self, user: &User, provider: &str, actor: &str) -> Result<(), FlowError> {
        let mine = self.linked_identities(&user.id).await?;
        let Some(position) = mine.iter().position(|(_, l)| l.record.provider == provider) else {
            return Err(FlowError::NotFound(format!(
                "no identity at {provider} is linked"
            )));
        };
        if user.password.is_none() && mine.len() == 1 {
            return Err(FlowError::Conflict(
                "this is the account's only way to sign in; set a password first".into(),
            ));
        }
        let (key, linked) = &mine[position];
        self.store
            .delete(Bucket::Identities, key, linked.revision)
            .await?;
        self.audit(Event {
            actor: actor.to_owned(),
            action: "identity.unlinked",
            target: user.id.clone(),
            detail: Some(format!("provider {provider}")),
            ..Event::default()
        })
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_except_on_loopback() {
        assert!(check_issuer("https://accounts.google.com").is_ok());
        assert!(check_issuer("http://127.0.0.1:4000").is_ok());
        assert!(check_issuer("http://localhost:4000").is_ok());
        assert!(check_issuer("http://idp.example.com").is_err());
        assert!(check_issuer("http://127.0.0.1.evil.com").is_err());
    }
}
