//! The identity service's signing keys: ECDSA P-256 (ES256), made by whichever replica
//! first finds the current key retired, published in the JWKS until the last token signed
//! with them has expired. Private halves are stored sealed with AES-256-GCM under a key
//! read from a file (a Kubernetes or Swarm secret), never in the clear.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

use super::records::{self, CurrentKey, RecordError, SigningKey, VERSION, Versioned};
use super::store::{Bucket, Store, StoreError};
use super::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the identity key file {path}: {why}")]
    KeyFile { path: String, why: String },
    #[error(
        "signing key {kid} cannot be unsealed: wrong --identity-key-file, or the record was changed"
    )]
    Unseal { kid: String },
    #[error("signing key {kid} is unusable: {why}")]
    Unusable { kid: String, why: String },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Seals and opens private keys with the store key.
pub struct Sealer {
    key: LessSafeKey,
    random: SystemRandom,
}

impl Sealer {
    /// The store key from `path`: 32 bytes written as 64 hex digits or as base64 (what
    /// `head -c 32 /dev/urandom | base64` prints).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let error = |why: &str| KeyError::KeyFile {
            path: path.display().to_string(),
            why: why.to_owned(),
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(&e.to_string()))?;
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| error("not hex"))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| error("neither 64 hex digits nor base64"))?
        };
        Self::new(&bytes).ok_or_else(|| error("must hold exactly 32 bytes (256 bits)"))
    }

    pub fn new(key: &[u8]) -> Option<Self> {
        let key = UnboundKey::new(&AES_256_GCM, key).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// `nonce ‖ ciphertext ‖ tag`, base64url; `kid` (what the secret belongs to) is bound
    /// in as associated data so a sealed secret cannot be moved to another record.
    pub fn seal(&self, kid: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM seals any length we use");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    pub fn open(&self, kid: &str, sealed: &str) -> Result<Vec<u8>, KeyError> {
        let unseal = || KeyError::Unseal {
            kid: kid.to_owned(),
        };
        let bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| unseal())?;
        if bytes.len() < NONCE_LEN {
            return Err(unseal());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unseal())?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut sealed)
            .map_err(|_| unseal())?;
        Ok(plain.to_vec())
    }
}

/// The key tokens are signed with now.
pub struct Signer {
    pub kid: String,
    pub key: EncodingKey,
    /// Unix seconds after which another key signs.
    pub retires_at: i64,
}

/// Signing keys, shared by every replica through the store.
pub struct KeyRing {
    store: Arc<dyn Store>,
    sealer: Sealer,
    /// How long one key signs.
    rotation: Duration,
    /// The longest-lived token a key signs (the access token's lifetime): its public half
    /// stays published that much longer.
    token_ttl: Duration,
    current: Mutex<Option<Arc<Signer>>>,
    random: SystemRandom,
}

const CURRENT: &str = "current";

fn key_name(kid: &str) -> String {
    format!("key.{kid}")
}

impl KeyRing {
    pub fn new(
        store: Arc<dyn Store>,
        sealer: Sealer,
        rotation: Duration,
        token_ttl: Duration,
    ) -> Self {
        Self {
            store,
            sealer,
            rotation,
            token_ttl,
            current: Mutex::new(None),
            random: SystemRandom::new(),
        }
    }

    /// The key to sign with: the one the store names current, unless it has retired —
    /// then this replica makes the next one, and the first replica to name its key current
    /// wins (compare-and-set); the others use the winner's.
    pub async fn signer(&self) -> Result<Arc<Signer>, KeyError> {
        let now = unix_now();
        if let Some(signer) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|s| s.retires_at > now)
        {
            return Ok(signer.clone());
        }
        for _ in 0..5 {
            let current: Option<Versioned<CurrentKey>> =
                records::get(&*self.store, CURRENT).await?;
            if let Some(current) = &current
                && let Some(key) =
                    records::get::<SigningKey>(&*self.store, &key_name(&current.record.kid)).await?
                && key.record.retires_at > now
            {
                return Ok(self.remember(self.unseal(&key.record)?));
            }
            let made = self.make(now)?;
            records::create(&*self.store, &key_name(&made.kid), &made).await?;
            let named = CurrentKey {
                v: VERSION,
                kid: made.kid.clone(),
            };
            let outcome = match &current {
                Some(current) => {
                    records::update(&*self.store, CURRENT, &named, current.revision).await
                }
                None => records::create(&*self.store, CURRENT, &named).await,
            };
            match outcome {
                Ok(_) => {
                    tracing::info!(kid = %made.kid, "identity signing key rotated");
                    self.prune(now).await;
                    return Ok(self.remember(self.unseal(&made)?));
                }
                // Another replica named its key first: ours is never used.
                Err(StoreError::Conflict | StoreError::Exists) => {
                    if let Some(entry) = self.store.get(Bucket::Keys, &key_name(&made.kid)).await? {
                        let _ = self
                            .store
                            .delete(Bucket::Keys, &key_name(&made.kid), entry.revision)
                            .await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Unavailable("the signing key kept changing under rotation".into()).into())
    }

    /// The store key's sealer, for other secrets kept at rest (TOTP secrets).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    fn remember(&self, signer: Signer) -> Arc<Signer> {
        let signer = Arc::new(signer);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(signer.clone());
        signer
    }

    fn make(&self, now: i64) -> Result<SigningKey, KeyError> {
        let kid = uuid::Uuid::now_v7().simple().to_string();
        let unusable = |why: String| KeyError::Unusable {
            kid: kid.clone(),
            why,
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.random)
            .map_err(|e| unusable(e.to_string()))?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &self.random,
        )
        .map_err(|e| unusable(e.to_string()))?;
        // Uncompressed point: 0x04 ‖ x ‖ y.
        let point = pair.public_key().as_ref();
        let retires_at = now + self.rotation.as_secs() as i64;
        Ok(SigningKey {
            v: VERSION,
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
            sealed: self.sealer.seal(&kid, pkcs8.as_ref()),
            kid,
            created_at: now,
            retires_at,
            // A minute of grace for clocks that disagree.
            expires_at: retires_at + self.token_ttl.as_secs() as i64 + 60,
        })
    }

    fn unseal(&self, key: &SigningKey) -> Result<Signer, KeyError> {
        let pkcs8 = self.sealer.open(&key.kid, &key.sealed)?;
        Ok(Signer {
            kid: key.kid.clone(),
            key: EncodingKey::from_ec_der(&pkcs8),
            retires_at: key.retires_at,
        })
    }

    /// Every published key (not yet expired), oldest first.
    pub async fn published(&self) -> Result<Vec<SigningKey>, KeyError> {
        let now = unix_now();
        let mut keys = Vec::new();
        for name in self.store.keys(Bucket::Keys, None, 10_000).await? {
            if name.starts_with("key.")
                && let Some(key) = records::get::<SigningKey>(&*self.store, &name).await?
                && key.record.expires_at > now
            {
                keys.push(key.record);
            }
        }
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    /// The JWKS document.
    pub async fn jwks(&self) -> Result<serde_json::Value, KeyError> {
        let keys: Vec<serde_json::Value> = self
            .published()
            .await?
            .into_iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                    "kid": k.kid, "x": k.x, "y": k.y,
                })
            })
            .collect();
        Ok(serde_json::json!({ "keys": keys }))
    }

    /// The public key `kid` names, to verify the gateway's own tokens.
    pub async fn decoding_key(&self, kid: &str) -> Result<Option<DecodingKey>, KeyError> {
        if !super::store::valid_key(kid) {
            return Ok(None);
        }
        let Some(key) = records::get::<SigningKey>(&*self.store, &key_name(kid)).await? else {
            return Ok(None);
        };
        if key.record.expires_at <= unix_now() {
            return Ok(None);
        }
        DecodingKey::from_ec_components(&key.record.x, &key.record.y)
            .map(Some)
            .map_err(|e| KeyError::Unusable {
                kid: kid.to_owned(),
                why: e.to_string(),
            })
    }

    /// Removes keys whose last token has expired.
    async fn prune(&self, now: i64) {
        let Ok(names) = self.store.keys(Bucket::Keys, None, 10_000).await else {
            return;
        };
        for name in names.iter().filter(|n| n.starts_with("key.")) {
            if let Ok(Some(entry)) = self.store.get(Bucket::Keys, name).await
                && serde_json::from_slice::<SigningKey>(&entry.value)
                    .is_ok_and(|k| k.expires_at <= now)
            {
                let _ = self.store.delete(Bucket::Keys, name, entry.revision).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_key_and_id() {
        let sealer = Sealer::new(&[7u8; 32]).unwrap();
        let sealed = sealer.seal("kid-1", b"private");
        assert_eq!(sealer.open("kid-1", &sealed).unwrap(), b"private");
        assert!(
            sealer.open("kid-2", &sealed).is_err(),
            "bound to its key id"
        );
        let other = Sealer::new(&[8u8; 32]).unwrap();
        assert!(other.open("kid-1", &sealed).is_err(), "another store key");
        assert!(Sealer::new(&[1u8; 16]).is_none(), "256-bit keys only");
    }
}
