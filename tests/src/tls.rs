//! Real certificates made at test time: a CA, leaf certificates it signs, and TLS
//! upstreams serving with them.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Pavilion test CA");
        let key = KeyPair::generate().expect("CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn certificate_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn certificate_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses) and its key.
    pub fn leaf(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (certificate.der().clone(), key)
    }

    /// A server configuration presenting a leaf for `names`, with ALPN http/1.1.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        self.server_config_alpn(names, &[b"http/1.1"])
    }

    /// A server configuration presenting a leaf for `names`, choosing among `alpn`.
    pub fn server_config_alpn(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let (certificate, key) = self.leaf(names);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A demo upstream called `name` behind TLS on a free loopback port; stops when dropped.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    pub async fn start(name: &str, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let state = pavilion_upstream::State::new(name);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        pavilion_upstream::serve_connection(tls, state).await;
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl TestCa {
    /// A leaf certificate for `names` as PEM files' contents (certificate, key), and the
    /// certificate's DER to recognise it in a handshake.
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String, CertificateDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (
            certificate.pem(),
            key.serialize_pem(),
            certificate.der().clone(),
        )
    }

    /// A client configuration trusting this CA, offering `alpn`, and presenting `identity`
    /// (a client certificate and key) when given.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.certificate_der())
            .expect("CA is a valid root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
        let mut config = match identity {
            Some((certificate, key)) => builder
                .with_client_auth_cert(vec![certificate], key)
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// One client TLS connection speaking whatever ALPN chose (h2 or HTTP/1.1).
pub struct TlsConnection {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The TLS version the handshake settled on.
    pub version: Option<rustls::ProtocolVersion>,
    /// The server's leaf certificate.
    pub peer: CertificateDer<'static>,
    sender: Sender,
    host: String,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>),
}

impl TlsConnection {
    /// Connects to `addr` asking for `server_name` (SNI and Host).
    pub async fn open(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = stream.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let version = session.protocol_version();
        let peer = session
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no server certificate")?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            Sender::H1(sender)
        };
        Ok(Self {
            alpn,
            version,
            peer,
            sender,
            host: server_name.to_owned(),
        })
    }

    /// GET `path` on this connection.
    pub async fn get(&mut self, path: &str) -> Result<crate::client::Reply, String> {
        self.get_with(path, &[]).await
    }

    /// GET `path` with extra `headers` on this connection.
    pub async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<crate::client::Reply, String> {
        use http_body_util::BodyExt;
        let mut request = match self.sender {
            Sender::H1(_) => http::Request::get(path).header("host", &self.host),
            Sender::H2(_) => http::Request::get(format!("https://{}{path}", self.host)),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(http_body_util::Full::default())
            .expect("valid request");
        let exchange = async {
            let response = match &mut self.sender {
                Sender::H1(sender) => sender.send_request(request).await,
                Sender::H2(sender) => sender.send_request(request).await,
            }
            .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(crate::client::Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no answer within 10s".to_owned())?
    }
}
