//! rustls configurations: the upstream client (webpki roots plus `upstream.extra_ca`), the
//! app listener's mTLS server, and plain TLS servers. Installs the ring crypto provider
//! once per process.

use std::path::Path;
use std::sync::{Arc, Once};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

use std::path::PathBuf;

/// Certificate and key loading failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

static PROVIDER: Once = Once::new();

/// Installs ring as the process-wide rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File { path: path.display().to_string(), reason };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::File { path: path.display().to_string(), reason: format!("no usable private key: {e}") })
}

fn roots(extra_ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(p) = extra_ca {
        for c in certs(p)? {
            store.add(c).map_err(|e| TlsError::File { path: p.display().to_string(), reason: e.to_string() })?;
        }
    }
    Ok(store)
}

/// The upstream client configuration. `alpn` lists the protocols offered.
pub(crate) fn client_config(extra_ca: Option<&Path>, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    install_crypto_provider();
    let mut cfg = ClientConfig::builder().with_root_certificates(roots(extra_ca)?).with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A control-plane HTTP client (OAuth token endpoints, the KMS, the OTLP collector): rustls
/// with the web roots plus `extra_ca`, HTTP/1.1, no redirects (a redirect could carry a
/// token elsewhere), no proxy from the environment.
pub(crate) fn control_client(
    extra_ca: Option<&Path>,
    connect_timeout: std::time::Duration,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(extra_ca, &[b"http/1.1"])?)
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))
}

/// A TLS server that requires a client certificate chaining to `client_ca` (mTLS).
pub(crate) fn mtls_server_config(files: &MtlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let mut ca = RootCertStore::empty();
    for c in certs(&files.client_ca)? {
        ca.add(c).map_err(|e| TlsError::File { path: files.client_ca.display().to_string(), reason: e.to_string() })?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(ca)).build().map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut cfg = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS server without client authentication.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The verified client certificate's identity: its first URI SAN (SPIFFE style), else its
/// first DNS SAN.
pub(crate) fn peer_identity(conn: &ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut dns = None;
    for name in &san.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::URI(u) => return Some((*u).to_string()),
            x509_parser::extensions::GeneralName::DNSName(d) if dns.is_none() => dns = Some((*d).to_string()),
            _ => {}
        }
    }
    dns
}

/// Server certificate, key and the CA that client certificates must chain to.
#[derive(Debug, Clone)]
pub struct MtlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates.
    pub client_ca: PathBuf,
}

/// Server certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}
