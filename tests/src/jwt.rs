//! Signing keys made at test time, tokens signed with them, and a real JWKS server on
//! loopback whose keys can rotate and which can go down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;

/// A private key, its algorithm and kid, and its public half as a JWK and PEM.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Jwk,
    pub public_pem: String,
}

impl SigningKey {
    /// RSA 2048 for RS256 (`with_alg` for the other RSA algorithms).
    pub fn rsa(kid: &str) -> Self {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let pem = private
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .expect("PKCS#1 PEM");
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .expect("SPKI PEM");
        Self::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA encoding key"),
            public_pem,
        )
    }

    /// ECDSA P-256 for ES256.
    pub fn ec(kid: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let encoding =
            EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC encoding key");
        Self::new(kid, Algorithm::ES256, encoding, key.public_key_pem())
    }

    /// Ed25519 for EdDSA.
    pub fn ed(kid: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        let encoding =
            EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).expect("Ed25519 encoding key");
        // jsonwebtoken derives the public JWK only from bare PKCS#8 v1 keys: written out here.
        use base64::Engine;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key_raw());
        let jwk: Jwk = serde_json::from_value(
            serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid }),
        )
        .expect("Ed25519 JWK");
        let mut signing =
            Self::new_with_jwk(kid, Algorithm::EdDSA, encoding, key.public_key_pem(), jwk);
        signing.jwk.common.key_algorithm = None;
        signing
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey, public_pem: String) -> Self {
        let jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK");
        Self::new_with_jwk(kid, alg, encoding, public_pem, jwk)
    }

    fn new_with_jwk(
        kid: &str,
        alg: Algorithm,
        encoding: EncodingKey,
        public_pem: String,
        mut jwk: Jwk,
    ) -> Self {
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
            public_pem,
        }
    }

    /// The same key used with another algorithm of its family (the JWK names none, so the
    /// key type decides what it may verify).
    pub fn with_alg(mut self, alg: Algorithm) -> Self {
        self.alg = alg;
        self.jwk.common.key_algorithm = None;
        self
    }

    /// A token with this key's alg and kid.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(header, claims)
    }

    pub fn sign_with(&self, header: Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signed token")
    }
}

/// A token signed with an HMAC secret.
pub fn sign_hmac(
    alg: Algorithm,
    kid: Option<&str>,
    secret: &[u8],
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("signed token")
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims valid for an hour from `iss` for `aud`, about `sub`.
pub fn claims(iss: &str, aud: &str, sub: &str) -> serde_json::Value {
    serde_json::json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now(), "exp": now() + 3600 })
}

/// A JWKS endpoint (`/jwks.json`) on a free loopback port; stops when dropped.
pub struct JwksServer {
    pub addr: SocketAddr,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub async fn start(keys: Vec<Jwk>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let (k, f, u) = (keys.clone(), fetches.clone(), up.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (keys, fetches, up) = (k.clone(), f.clone(), u.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let response = if up.load(Ordering::SeqCst) {
                            let set = JwkSet {
                                keys: keys.lock().expect("keys").clone(),
                            };
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(
                                    serde_json::to_vec(&set).expect("JSON"),
                                )))
                        } else {
                            http::Response::builder()
                                .status(503)
                                .body(Full::new(Bytes::from_static(b"down")))
                        };
                        async move { Ok::<_, Infallible>(response.expect("response")) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self {
            addr,
            keys,
            fetches,
            up,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Replaces the published keys.
    pub fn publish(&self, keys: Vec<Jwk>) {
        *self.keys.lock().expect("keys") = keys;
    }

    /// Requests served so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// While down, every fetch gets 503.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}
