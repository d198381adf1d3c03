//! Who may call the control-plane API (`/v1/*`; `/health`, `/ready` and `/metrics` stay
//! open). A request carries `Authorization: Bearer <token>`:
//!
//! * a token listed in `--api-token-file` (one per line, `#` comments; Swarm-secret
//!   friendly) is let in — only the tokens' SHA-256 are kept, compared in constant time;
//! * on Kubernetes, any other token is checked with a `TokenReview`, and the user it names
//!   must be allowed the request's path and verb (`get`, `post`) by a
//!   `SubjectAccessReview` on non-resource URLs — so a rebalancer's ServiceAccount is
//!   granted exactly the API it needs by a ClusterRole (`deploy/kubernetes/rebalancer.yaml`).
//!
//! Positive Kubernetes answers are remembered for a few seconds, so a polling job does not
//! cost the API server two reviews per request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

/// How long a Kubernetes "yes" is trusted without asking again.
const REMEMBER_FOR: Duration = Duration::from_secs(10);
/// Remembered answers; the memory starts over when full.
const REMEMBERED: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read the API token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: an API token must be at least 16 characters")]
    Short { path: String, line: usize },
}

/// The bearer tokens a file lists, as SHA-256 hashes.
#[derive(Default)]
pub struct Tokens(Vec<[u8; 32]>);

impl Tokens {
    pub fn read(path: &Path) -> Result<Self, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut hashes = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if token.len() < 16 {
                return Err(AccessError::Short {
                    path: path.display().to_string(),
                    line: number + 1,
                });
            }
            hashes.push(Sha256::digest(token.as_bytes()).into());
        }
        Ok(Self(hashes))
    }

    /// Tokens given directly (tests, embedding).
    pub fn from_list<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            tokens
                .into_iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        )
    }

    /// Adds tokens given directly.
    pub fn extend<'a>(&mut self, tokens: impl IntoIterator<Item = &'a str>) {
        self.0.extend(
            tokens
                .into_iter()
                .map(|t| <[u8; 32]>::from(Sha256::digest(t.as_bytes()))),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `token` is one of them; every entry is compared, in constant time each.
    fn contains(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0.iter().fold(false, |found, known| {
            let difference = known
                .iter()
                .zip(&presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (difference == 0)
        })
    }
}

/// A Kubernetes "yes": (token hash, path, verb) → when it was given.
type Remembered = HashMap<([u8; 32], String, String), Instant>;

/// The API's gatekeeper.
pub struct Access {
    tokens: Tokens,
    kube: Option<kube::Client>,
    remembered: Mutex<Remembered>,
}

impl Access {
    pub fn new(tokens: Tokens, kube: Option<kube::Client>) -> Self {
        if tokens.is_empty() && kube.is_none() {
            tracing::warn!(
                "the control-plane API accepts no token: every /v1 request is refused; give --api-token-file"
            );
        }
        Self {
            tokens,
            kube,
            remembered: Mutex::default(),
        }
    }

    /// `Ok` to let the request in, else the 401/403 to answer.
    async fn check(&self, token: Option<&str>, path: &str, verb: &str) -> Result<(), Response> {
        let Some(token) = token else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "the control-plane API needs Authorization: Bearer <token>",
            ));
        };
        if self.tokens.contains(token) {
            return Ok(());
        }
        let Some(client) = &self.kube else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is not one of --api-token-file",
            ));
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let key = (hash, path.to_owned(), verb.to_owned());
        if self
            .lock()
            .get(&key)
            .is_some_and(|at| at.elapsed() < REMEMBER_FOR)
        {
            return Ok(());
        }
        let user = review_token(client, token).await?;
        allowed(client, &user, path, verb).await?;
        let mut remembered = self.lock();
        if remembered.len() >= REMEMBERED {
            remembered.clear();
        }
        remembered.insert(key, Instant::now());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The user (name and groups) a Kubernetes token stands for.
struct User {
    name: String,
    groups: Vec<String>,
    uid: Option<String>,
}

async fn review_token(client: &kube::Client, token: &str) -> Result<User, Response> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "TokenReview failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "review_failed",
                "the token could not be reviewed by the Kubernetes API; retry",
            )
        })?;
    let status = answer.status.unwrap_or_default();
    let user = status.user.filter(|_| status.authenticated == Some(true));
    match user {
        Some(user) => Ok(User {
            name: user.username.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            uid: user.uid,
        }),
        None => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the Kubernetes API does not accept this token",
        )),
    }
}

async fn allowed(
    client: &kube::Client,
    user: &User,
    path: &str,
    verb: &str,
) -> Result<(), Response> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            uid: user.uid.clone(),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.to_owned()),
                verb: Some(verb.to_owned()),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "SubjectAccessReview failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "review_failed",
                "the request could not be authorised by the Kubernetes API; retry",
            )
        })?;
    if answer.status.is_some_and(|s| s.allowed) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not {verb} {path} (grant it with a ClusterRole rule on nonResourceURLs)",
                user.name
            ),
        ))
    }
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message.into() } });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Bearer realm="pavilion-control""#),
        );
    }
    response
}

/// Middleware over `/v1/*`.
pub async fn require(
    State(access): State<std::sync::Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let verb = request.method().as_str().to_ascii_lowercase();
    let path = request.uri().path().to_owned();
    match access.check(token, &path, &verb).await {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_hold_one_token_per_line_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# rebalancer\nrebalancer-0123456789abcdef\n\n  ops-0123456789abcdef  \n",
        )
        .unwrap();
        let tokens = Tokens::read(&path).unwrap();
        assert!(tokens.contains("rebalancer-0123456789abcdef"));
        assert!(tokens.contains("ops-0123456789abcdef"));
        assert!(!tokens.contains("ops-0123456789abcdeF"));
        assert!(!tokens.contains(""));
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            Tokens::read(&path),
            Err(AccessError::Short { line: 1, .. })
        ));
    }
}
