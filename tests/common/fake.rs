//! Fake providers: local HTTPS servers with certificates made here (rcgen), reached by
//! keyward through `[upstream] extra_ca` and per-provider `base_url` overrides. Each records
//! what arrived (method, path, headers, body) so tests can check the injected credential.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> FakeBody {
    Full::new(b.into()).boxed_unsync()
}

/// A test CA with a server certificate for localhost / 127.0.0.1.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// Config lines that trust this CA and point `provider` at a fake's `url`.
    pub fn upstream(&self, provider: &str, url: &str) -> String {
        format!("[upstream]\nextra_ca = \"{}\"\n[providers.{provider}]\nbase_url = \"{url}\"\n", self.ca_pem.display())
    }

    pub fn new(dir: &Path) -> Pki {
        keyward::install_crypto_provider();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "keyward test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let srv = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server_cert = dir.join("server.pem");
        let server_key = dir.join("server.key");
        std::fs::write(&server_cert, srv.pem()).unwrap();
        std::fs::write(&server_key, key.serialize_pem()).unwrap();
        Pki { dir: dir.to_path_buf(), ca_pem, server_cert, server_key, ca }
    }

    /// A client certificate with one URI SAN; returns (cert, key) paths.
    pub fn client_cert(&self, name: &str, uri_san: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(uri_san.try_into().unwrap())];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&self.server_cert).unwrap().map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let mut cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A client config trusting this CA, optionally presenting a client certificate.
    pub fn client_config(&self, client: Option<(&Path, &Path)>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca_pem).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder().with_root_certificates(roots);
        let mut cfg = match client {
            Some((c, k)) => {
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_file_iter(c).unwrap().map(|c| c.unwrap()).collect();
                b.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(k).unwrap()).unwrap()
            }
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// What a fake provider received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// The first MiB of the body.
    pub body: Vec<u8>,
    /// The whole body's length.
    pub body_len: u64,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
}

pub type Handler = Arc<dyn Fn(Recorded) -> BoxFuture<'static, Response<FakeBody>> + Send + Sync>;

/// A handler answering 200 with a small JSON body.
pub fn ok_json() -> Handler {
    Arc::new(|_| Box::pin(async { json_response(200, r#"{"ok":true}"#) }))
}

pub fn json_response(status: u16, body: &str) -> Response<FakeBody> {
    Response::builder().status(status).header("content-type", "application/json").body(full(body.to_string())).unwrap()
}

/// A fake HTTPS provider.
pub struct FakeProvider {
    pub addr: SocketAddr,
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// TCP connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    pub async fn start(pki: &Pki) -> FakeProvider {
        Self::with_handler(pki, ok_json()).await
    }

    pub async fn with_handler(pki: &Pki, handler: Handler) -> FakeProvider {
        Self::serve(pki.server_config(&[b"h2", b"http/1.1"]), handler).await
    }

    pub async fn serve(tls: Arc<rustls::ServerConfig>, handler: Handler) -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let reqs = requests.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let reqs = reqs.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let reqs = reqs.clone();
                        let handler = handler.clone();
                        async move {
                            let rec = record(req).await;
                            reqs.lock().unwrap().push(rec.clone());
                            Ok::<_, Infallible>(handler(rec).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeProvider { addr, url: format!("https://127.0.0.1:{}", addr.port()), requests, connections, task }
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last(&self) -> Recorded {
        self.requests.lock().unwrap().last().cloned().expect("the fake provider received a request")
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn record(req: Request<Incoming>) -> Recorded {
    let (parts, mut body) = req.into_parts();
    let mut kept = Vec::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            if kept.len() < 1 << 20 {
                kept.extend_from_slice(&data[..data.len().min((1 << 20) - kept.len())]);
            }
        }
    }
    Recorded {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        version: parts.version,
        headers: parts.headers,
        body: kept,
        body_len: len,
    }
}

/// A response with a status only.
pub fn status(code: u16) -> Response<FakeBody> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

/// A fake app behind the webhook listener: plain HTTP, records deliveries, answers with
/// the handler's response.
pub struct FakeApp {
    pub addr: SocketAddr,
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// TCP connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one app connection: records every request, answers with `handler`.
async fn serve_app_conn<IO>(io: TokioIo<IO>, reqs: Arc<Mutex<Vec<Recorded>>>, handler: Handler)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let reqs = reqs.clone();
        let handler = handler.clone();
        async move {
            let rec = record(req).await;
            reqs.lock().unwrap().push(rec.clone());
            Ok::<_, Infallible>(handler(rec).await)
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
}

impl FakeApp {
    pub async fn start(handler: Handler) -> FakeApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let reqs = requests.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve_app_conn(TokioIo::new(tcp), reqs.clone(), handler.clone()));
            }
        });
        FakeApp { addr, url: format!("http://127.0.0.1:{}", addr.port()), requests, connections, task }
    }

    /// The same app on a Unix socket.
    pub async fn start_unix(path: &Path, handler: Handler) -> FakeApp {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let reqs = requests.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve_app_conn(TokioIo::new(s), reqs.clone(), handler.clone()));
            }
        });
        FakeApp {
            addr: "127.0.0.1:0".parse().unwrap(),
            url: format!("unix:{}", path.display()),
            requests,
            connections,
            task,
        }
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last(&self) -> Recorded {
        self.requests.lock().unwrap().last().cloned().expect("the app received a delivery")
    }
}
