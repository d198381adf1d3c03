//! TLS termination. Certificates come from PEM files and are chosen by SNI: the exact
//! name, then a wildcard one label up, then the first certificate given. The files are
//! checked every two seconds and reloaded when they change (a Kubernetes Secret mount
//! swaps them atomically), without touching established connections; a bad new file is
//! reported and the certificates in use are kept. TLS 1.3 and 1.2 only, with rustls'
//! AEAD suites; ALPN offers h2 and http/1.1. Optionally, clients must present a
//! certificate from a given CA (mTLS).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// How often the certificate files are checked for changes.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// One certificate chain and its key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// At least one; the first is served to clients that send no (or an unknown) name.
    pub certificates: Vec<CertificateFiles>,
    /// Require client certificates signed by these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("no certificate given")]
    NoCertificate,
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The certificates in use, indexed by the names they cover.
struct Loaded {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    first: Arc<CertifiedKey>,
    stamps: Vec<Option<u64>>,
}

/// Picks the certificate for each handshake; swapped as a whole on reload.
pub struct CertResolver {
    files: Vec<CertificateFiles>,
    loaded: ArcSwap<Loaded>,
    /// The file stamps of the last failed reload: not retried until the files change again.
    failed: std::sync::Mutex<Vec<Option<u64>>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("files", &self.files)
            .finish()
    }
}

/// A digest of a file's content. Content rather than mtime: file times are only as fine as
/// the kernel's clock tick, and two same-sized writes within one tick would look unchanged.
/// The files are a few kilobytes, so reading them every check costs nothing.
fn stamp(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let content = std::fs::read(path).ok()?;
    let mut hasher = std::hash::DefaultHasher::new();
    content.hash(&mut hasher);
    Some(hasher.finish())
}

fn load(files: &[CertificateFiles]) -> Result<Loaded, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut first = None;
    let mut stamps = Vec::new();
    for pair in files {
        stamps.push(stamp(&pair.cert));
        stamps.push(stamp(&pair.key));
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
            .map_err(|e| file_error(&pair.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&pair.cert, e))?;
        let Some(leaf) = chain.first() else {
            return Err(file_error(&pair.cert, "holds no certificate"));
        };
        let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| file_error(&pair.key, e))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| file_error(&pair.key, e))?;
        let names = names(leaf).map_err(|e| file_error(&pair.cert, e))?;
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
        // Refuses a key that does not belong to the certificate.
        certified.keys_match().map_err(|e| {
            file_error(
                &pair.key,
                format!("does not match {}: {e}", pair.cert.display()),
            )
        })?;
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard
                    .entry(parent.to_owned())
                    .or_insert_with(|| certified.clone()),
                None => exact.entry(name).or_insert_with(|| certified.clone()),
            };
        }
        first.get_or_insert(certified);
    }
    let first = first.ok_or(TlsError::NoCertificate)?;
    Ok(Loaded {
        exact,
        wildcard,
        first,
        stamps,
    })
}

/// The DNS names a certificate covers (SANs, else the subject's common name), lower-case.
fn names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names: Vec<String> = match certificate.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(name) => {
                    Some(name.to_ascii_lowercase())
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            certificate
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

impl CertResolver {
    pub fn new(files: Vec<CertificateFiles>) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&files)?;
        Ok(Arc::new(Self {
            files,
            loaded: ArcSwap::from_pointee(loaded),
            failed: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Reloads when a file changed; true when the certificates were replaced.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let current = self.loaded.load();
        let stamps: Vec<_> = self
            .files
            .iter()
            .flat_map(|f| [stamp(&f.cert), stamp(&f.key)])
            .collect();
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if stamps == current.stamps || stamps == *failed {
            return Ok(false);
        }
        match load(&self.files) {
            Ok(fresh) => {
                self.loaded.store(Arc::new(fresh));
                failed.clear();
                Ok(true)
            }
            Err(error) => {
                *failed = stamps;
                Err(error)
            }
        }
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let loaded = self.loaded.load();
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return loaded.first.clone();
        };
        if let Some(certified) = loaded.exact.get(&name) {
            return certified.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| loaded.wildcard.get(parent))
            .cloned()
            .unwrap_or_else(|| loaded.first.clone())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()))
    }
}

/// The server configuration for `resolver`, requiring client certificates when a CA is given.
pub fn server_config(
    resolver: Arc<CertResolver>,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in
                CertificateDer::pem_file_iter(path).map_err(|e| file_error(path, e))?
            {
                roots
                    .add(certificate.map_err(|e| file_error(path, e))?)
                    .map_err(|e| file_error(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reloads changed certificates until `shutdown`.
pub async fn watch_files(resolver: Arc<CertResolver>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = crate::stopped(&mut shutdown) => return,
        }
        match resolver.reload_if_changed() {
            Ok(true) => tracing::info!("reloaded the TLS certificates"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot reload the TLS certificates; keeping those in use")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .self_signed(&key)
                .unwrap();
        (
            certificate.pem(),
            key.serialize_pem(),
            certificate.der().clone(),
        )
    }

    #[test]
    fn a_bad_new_file_keeps_the_certificates_in_use_until_a_good_one_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertificateFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let (cert, key, first) = pair(&["api.example.com"]);
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        let resolver = CertResolver::new(vec![files.clone()]).unwrap();
        let served =
            |resolver: &CertResolver| resolver.pick(Some("api.example.com")).cert[0].clone();
        assert_eq!(served(&resolver), first);
        assert!(!resolver.reload_if_changed().unwrap(), "nothing changed");

        // A key that belongs to another certificate.
        let (_, other_key, _) = pair(&["api.example.com"]);
        std::fs::write(&files.key, &other_key).unwrap();
        let error = resolver.reload_if_changed().unwrap_err().to_string();
        assert!(error.contains("does not match"), "{error}");
        assert_eq!(served(&resolver), first, "the old pair stays in use");
        assert!(
            !resolver.reload_if_changed().unwrap(),
            "a failed state is not retried until the files change"
        );

        std::fs::write(&files.cert, "not a certificate").unwrap();
        assert!(resolver.reload_if_changed().is_err());
        assert_eq!(served(&resolver), first);

        let (cert, key, second) = pair(&["api.example.com"]);
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        assert!(resolver.reload_if_changed().unwrap());
        assert_eq!(served(&resolver), second);
    }

    #[test]
    fn names_come_from_the_sans_and_unknown_names_get_the_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut ders = Vec::new();
        for (stem, names) in [
            ("a", &["a.example.com", "*.a.example.com"][..]),
            ("b", &["B.example.com"][..]),
        ] {
            let (cert, key, der) = pair(names);
            let pair = CertificateFiles {
                cert: dir.path().join(format!("{stem}.crt")),
                key: dir.path().join(format!("{stem}.key")),
            };
            std::fs::write(&pair.cert, cert).unwrap();
            std::fs::write(&pair.key, key).unwrap();
            files.push(pair);
            ders.push(der);
        }
        let resolver = CertResolver::new(files).unwrap();
        let served = |name| resolver.pick(name).cert[0].clone();
        assert_eq!(
            served(Some("b.example.com")),
            ders[1],
            "SAN names are matched case-insensitively"
        );
        assert_eq!(served(Some("x.a.example.com")), ders[0]);
        assert_eq!(served(Some("unknown.test")), ders[0]);
        assert_eq!(served(None), ders[0]);
        assert!(matches!(
            CertResolver::new(Vec::new()),
            Err(TlsError::NoCertificate)
        ));
    }
}
