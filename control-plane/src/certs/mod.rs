//! `pavilion-control certs`: the control channel's certificates — a CA, the control plane's
//! server certificate and the data planes' client certificate — for deployments that do not
//! bring their own (cert-manager, a company CA). Keys are ECDSA P-256, written 0600.
//!
//! Run again with the same directory to rotate: the CA there is kept (so data planes and
//! control planes trust the new leaves at once) and new leaves replace the old; both
//! binaries reload their certificate files without a restart. `--new-ca` replaces the CA
//! too (then every party needs the new CA file before the leaves change).

pub mod secrets;

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What to make.
#[derive(Clone, Debug)]
pub struct CertsRequest {
    pub out_dir: PathBuf,
    /// Names (DNS or IP) the control plane is reached by.
    pub control_plane_names: Vec<String>,
    /// Names data planes may announce as their node id; `*.LABEL…` covers one label
    /// (`*.data.pavilion` covers `pod-1.data.pavilion`).
    pub data_plane_names: Vec<String>,
    /// Validity of the leaves, in days (the CA gets ten times that).
    pub days: u32,
    /// Replace an existing CA instead of signing with it.
    pub new_ca: bool,
}

/// File names inside the output directory (also the keys of the Kubernetes Secret and the
/// Swarm secrets the chart and the stack make).
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const CONTROL_CERT: &str = "control-plane.crt";
pub const CONTROL_KEY: &str = "control-plane.key";
pub const DATA_CERT: &str = "data-plane.crt";
pub const DATA_KEY: &str = "data-plane.key";

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("{0} names are needed")]
    NoNames(&'static str),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertsError {
    move |source| CertsError::Rcgen { what, source }
}

/// Writes `text` to `path` through a temporary file and a rename, so a process reloading
/// the file never reads half of it; keys are readable by the owner only.
pub(crate) fn write(path: &Path, text: &str, secret: bool) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A fresh name, created here with its mode: a leftover file (with another mode) is
    // never reused.
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{:016x}.tmp", fastrand::u64(..)));
    let aside = PathBuf::from(aside);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&aside)
        .map_err(io(&aside))?;
    file.write_all(text.as_bytes()).map_err(io(&aside))?;
    file.sync_all().map_err(io(&aside))?;
    std::fs::rename(&aside, path).map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    // An hour back: clocks of the parties differ.
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

/// A certificate and its key, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A new CA.
fn new_ca(days: u32) -> Result<Pem, CertsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(DnType::CommonName, "Pavilion control channel CA");
    validity(&mut params, days.saturating_mul(10));
    let key = KeyPair::generate().map_err(rc("CA key"))?;
    let cert = params.self_signed(&key).map_err(rc("CA certificate"))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn issuer(ca: &Pem) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let key = KeyPair::from_pem(&ca.key).map_err(rc("reading the CA key"))?;
    Issuer::from_ca_cert_pem(&ca.cert, key).map_err(rc("reading the CA certificate"))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[String],
    usage: ExtendedKeyUsagePurpose,
    days: u32,
) -> Result<Pem, CertsError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(rc("certificate names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(rc("key"))?;
    let cert = params.signed_by(&key, issuer).map_err(rc("certificate"))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The two leaves, in the order (control plane, data plane).
fn leaves(ca: &Pem, request: &CertsRequest) -> Result<[Pem; 2], CertsError> {
    if request.control_plane_names.is_empty() {
        return Err(CertsError::NoNames("control-plane"));
    }
    if request.data_plane_names.is_empty() {
        return Err(CertsError::NoNames("data-plane"));
    }
    let issuer = issuer(ca)?;
    Ok([
        leaf(
            &issuer,
            &request.control_plane_names,
            ExtendedKeyUsagePurpose::ServerAuth,
            request.days,
        )?,
        leaf(
            &issuer,
            &request.data_plane_names,
            ExtendedKeyUsagePurpose::ClientAuth,
            request.days,
        )?,
    ])
}

/// Makes (or rotates) the certificates as files in `request.out_dir`; returns the files
/// written.
pub fn generate(request: &CertsRequest) -> Result<Vec<PathBuf>, CertsError> {
    let dir = &request.out_dir;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let mut written = Vec::new();
    let ca = if !request.new_ca && cert_path.exists() && key_path.exists() {
        Pem {
            cert: std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
            key: std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
        }
    } else {
        let ca = new_ca(request.days)?;
        write(&cert_path, &ca.cert, false)?;
        write(&key_path, &ca.key, true)?;
        written.extend([cert_path, key_path]);
        ca
    };
    let [control, data] = leaves(&ca, request)?;
    for (pem, cert_name, key_name) in [
        (control, CONTROL_CERT, CONTROL_KEY),
        (data, DATA_CERT, DATA_KEY),
    ] {
        // The key first: a reader that sees the new certificate must find its key.
        let key_path = dir.join(key_name);
        let cert_path = dir.join(cert_name);
        write(&key_path, &pem.key, true)?;
        write(&cert_path, &pem.cert, false)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

/// Seconds until the first certificate of `pem` expires (negative once expired); `None`
/// when it cannot be read.
fn seconds_left(pem: &str) -> Option<i64> {
    let not_after = pavilion_telemetry::scraped::not_after(pem.as_bytes())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(not_after - i64::try_from(now).ok()?)
}
