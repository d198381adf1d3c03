//! `probe URL`: a health check for images without curl or wget (distroless): one HTTP GET,
//! success when the answer is 2xx. Used by Docker `HEALTHCHECK`s and Swarm healthchecks;
//! Kubernetes probes the same endpoints itself. Like the kubelet's HTTPS probes, `https://`
//! does not verify the certificate: the probe asks a process on its own host whether it
//! is alive, it sends nothing secret and believes nothing but a status code.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `probe URL [--timeout SECONDS]`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// e.g. http://127.0.0.1:9901/ready
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

impl ProbeArgs {
    /// Probes, reporting a failure on stderr as `<binary>: …`.
    pub fn run(&self, binary: &str) -> std::process::ExitCode {
        match probe(&self.url, Duration::from_secs(self.timeout.max(1))) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{binary}: {error}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("`{0}` is not http(s)://HOST:PORT/PATH")]
    Url(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: https:// is probed on loopback only (its certificate is not verified)")]
    NotLoopback(String),
    #[error("{0} answered `{1}`")]
    Status(String, String),
}

/// GETs `url` (`http(s)://HOST:PORT/PATH`) within `timeout`; `Ok` on a 2xx answer.
pub fn probe(url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let bad = || ProbeError::Url(url.to_owned());
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(bad()),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    if authority.is_empty() || path.contains(char::is_whitespace) {
        return Err(bad());
    }
    let io = |e| ProbeError::Io(url.to_owned(), e);
    let addr = authority
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(bad)?;
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let line = if tls {
        // An unverified certificate is only fine for asking this very host.
        if !addr.ip().is_loopback() {
            return Err(ProbeError::NotLoopback(url.to_owned()));
        }
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host);
        let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|_| bad())?;
        let connection = rustls::ClientConnection::new(insecure::config(), name)
            .map_err(|e| io(std::io::Error::other(e)))?;
        exchange(rustls::StreamOwned::new(connection, stream), &request).map_err(io)?
    } else {
        exchange(stream, &request).map_err(io)?
    };
    match line.split(' ').nth(1) {
        Some(code) if code.len() == 3 && code.starts_with('2') => Ok(()),
        _ => Err(ProbeError::Status(url.to_owned(), line)),
    }
}

/// Sends `request` and returns the status line of the answer.
fn exchange(mut stream: impl Read + Write, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    let text = String::from_utf8_lossy(&head[..read]);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// A TLS client that accepts any certificate, for probes only (see the module's comment).
mod insecure {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn config() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            stream.write_all(answer.as_bytes()).unwrap();
        });
        format!("http://{addr}/ready")
    }

    #[test]
    fn success_only_on_2xx() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        probe(&ok, Duration::from_secs(2)).unwrap();
        let unavailable = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let error = probe(&unavailable, Duration::from_secs(2)).unwrap_err();
        assert!(error.to_string().contains("503"), "{error}");
    }

    #[test]
    fn refuses_what_is_not_a_plain_http_url() {
        for url in ["ftp://127.0.0.1:1/", "127.0.0.1:1/ready", "http:///ready"] {
            assert!(
                matches!(probe(url, Duration::from_secs(1)), Err(ProbeError::Url(_))),
                "{url}"
            );
        }
        // Nobody listens on a port just released.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/ready");
        assert!(matches!(
            probe(&url, Duration::from_secs(1)),
            Err(ProbeError::Io(..))
        ));
    }
}
