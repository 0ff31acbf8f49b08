//! Vault / OpenBao Transit as the master key (`[master_key.vault_transit]`, CONTRACT.md
//! §8.1): tenant data keys are wrapped and unwrapped by the transit engine, so the key that
//! wraps them never enters keyward's memory and every unwrap is in the KMS's audit log.
//!
//! The tenant is the transit `context` (the key must be created with `derived = true`), so a
//! wrapped key moved to another tenant does not decrypt. A wrapped blob is `kwt1:` followed
//! by the transit ciphertext (`vault:vN:…`), which names the transit key version.
//!
//! Auth is a token file, AppRole or a Kubernetes service-account JWT. The token is renewed
//! when two thirds of its lease have passed; one that can no longer be renewed (its max TTL
//! is near) is replaced by logging in again, and a token file is read again, so a token an
//! agent rotates on disk is picked up. A call refused with 403 logs in once more and retries;
//! one answered 5xx is tried once more after a pause.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use zeroize::Zeroizing;

use super::{location_id, Kms, KmsFuture, Reach};
use crate::vault::{KeyId, VaultError};
use keyward_core::secret::Secret;

/// What a transit-wrapped blob starts with.
pub(crate) const TRANSIT_MAGIC: &[u8] = b"kwt1:";

/// `[master_key.vault_transit]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitConfig {
    /// `https://vault.internal:8200` (plain http only on loopback).
    pub address: String,
    /// The transit key's name.
    pub key: String,
    /// The engine's mount path.
    pub mount: String,
    /// How keyward gets its token.
    pub auth: TransitAuth,
    /// One more CA for the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace.
    pub namespace: Option<String>,
}

/// How keyward authenticates to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitAuth {
    /// A file holding a token (written by an operator or a Vault agent).
    TokenFile(PathBuf),
    /// AppRole: role id and secret id from files.
    AppRole {
        /// Holds the role id.
        role_id_file: PathBuf,
        /// Holds the secret id.
        secret_id_file: PathBuf,
        /// Where the AppRole method is mounted (`approle`).
        mount: String,
    },
    /// Kubernetes: the pod's (projected) service-account token.
    Kubernetes {
        /// The Vault role bound to the service account.
        role: String,
        /// The service-account JWT.
        jwt_file: PathBuf,
        /// Where the method is mounted (`kubernetes`).
        mount: String,
    },
}

/// The token in use and when to renew it.
struct Token {
    value: Secret,
    /// `None`: the token does not expire (renewal never needed).
    renew_at: Option<Instant>,
    renewable: bool,
    /// The lease it was granted first; a renewal that gives much less means its max TTL is near.
    granted: Duration,
}

/// A transit key reached over HTTP.
pub(crate) struct Transit {
    cfg: TransitConfig,
    http: reqwest::Client,
    token: RwLock<Option<Arc<Token>>>,
    /// One renewal or login at a time; the others wait for its token.
    refresh: tokio::sync::Mutex<()>,
    reach: Reach,
    id: KeyId,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit").field("address", &self.cfg.address).field("key", &self.cfg.key).finish()
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// An HTTP answer reduced to what callers look at.
struct Answer {
    status: u16,
    body: serde_json::Value,
}

impl Transit {
    /// Builds the client; nothing is read or sent until the first call.
    pub(crate) fn new(cfg: &TransitConfig) -> Result<Transit, VaultError> {
        let http = crate::tls::control_client(cfg.ca_file.as_deref(), Duration::from_secs(3), Duration::from_secs(10))
            .map_err(|e| VaultError::Kms(format!("TLS for {}: {e}", cfg.address)))?;
        let id =
            location_id("vault-transit", &[&cfg.address, cfg.namespace.as_deref().unwrap_or(""), &cfg.mount, &cfg.key]);
        let t = Transit {
            cfg: cfg.clone(),
            http,
            token: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            reach: Reach::new(),
            id,
        };
        // A token file that cannot be read is a configuration error: refuse at start.
        if let TransitAuth::TokenFile(p) = &cfg.auth {
            crate::vault::read_private(p).map_err(|reason| VaultError::KeyFileRead { path: p.clone(), reason })?;
        }
        Ok(t)
    }

    fn unreachable(&self, e: &reqwest::Error) -> VaultError {
        VaultError::KmsUnavailable(format!(
            "{}: {}",
            self.describe(),
            if e.is_timeout() { "timed out" } else { "unreachable" }
        ))
    }

    /// One HTTP call to Vault; a 5xx or no answer is [`VaultError::KmsUnavailable`].
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<Zeroizing<String>>,
    ) -> Result<Answer, VaultError> {
        let url = format!("{}/v1/{path}", self.cfg.address);
        let mut req = self.http.request(method, &url);
        if let Some(t) = token {
            let mut v = http::HeaderValue::from_str(t.expose()).map_err(|_| {
                VaultError::Kms(format!("{}: the token holds characters a header cannot", self.describe()))
            })?;
            v.set_sensitive(true);
            req = req.header("x-vault-token", v);
        }
        if let Some(ns) = &self.cfg.namespace {
            req = req.header("x-vault-namespace", ns);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        let bytes = Zeroizing::new(resp.bytes().await.map_err(|e| self.unreachable(&e))?.to_vec());
        if status >= 500 {
            return Err(VaultError::KmsUnavailable(format!("{}: HTTP {status}", self.describe())));
        }
        Ok(Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null) })
    }

    /// The refusal as an error naming the call (Vault's messages name the problem, never data).
    fn refused(&self, what: &str, a: &Answer) -> VaultError {
        let why = a.body["errors"].as_array().and_then(|e| e.first()).and_then(|e| e.as_str()).unwrap_or("");
        VaultError::Kms(format!(
            "{} refused {what}: HTTP {} {}",
            self.describe(),
            a.status,
            why.chars().take(200).collect::<String>()
        ))
    }

    fn read_file(path: &std::path::Path) -> Result<Zeroizing<String>, VaultError> {
        crate::vault::read_private(path).map_err(|reason| VaultError::KeyFileRead { path: path.to_path_buf(), reason })
    }

    /// A fresh token: the file read again, or a login.
    async fn login(&self) -> Result<Token, VaultError> {
        let (mount, body) = match &self.cfg.auth {
            TransitAuth::TokenFile(p) => {
                let value = Secret::new(Self::read_file(p)?.trim().to_string());
                let a = self.send(reqwest::Method::GET, "auth/token/lookup-self", Some(&value), None).await?;
                if a.status != 200 {
                    return Err(self.refused(&format!("the token in {}", p.display()), &a));
                }
                let ttl = Duration::from_secs(a.body["data"]["ttl"].as_u64().unwrap_or(0));
                let renewable = a.body["data"]["renewable"].as_bool().unwrap_or(false);
                return Ok(Token::new(value, ttl, renewable));
            }
            TransitAuth::AppRole { role_id_file, secret_id_file, mount } => {
                let body = serde_json::json!({
                    "role_id": *Self::read_file(role_id_file)?,
                    "secret_id": *Self::read_file(secret_id_file)?,
                });
                (mount, Zeroizing::new(body.to_string()))
            }
            TransitAuth::Kubernetes { role, jwt_file, mount } => {
                // The projected token is rotated by the kubelet: read it at every login.
                let jwt = std::fs::read_to_string(jwt_file)
                    .map_err(|e| VaultError::KeyFileRead { path: jwt_file.clone(), reason: e.to_string() })?;
                let jwt = Zeroizing::new(jwt);
                (mount, Zeroizing::new(serde_json::json!({"role": role, "jwt": jwt.trim()}).to_string()))
            }
        };
        let a = self.send(reqwest::Method::POST, &format!("auth/{mount}/login"), None, Some(body)).await?;
        if a.status != 200 {
            return Err(self.refused(&format!("login at auth/{mount}"), &a));
        }
        let auth = &a.body["auth"];
        let value = auth["client_token"]
            .as_str()
            .ok_or_else(|| VaultError::Kms(format!("{}: login answered without a token", self.describe())))?;
        let ttl = Duration::from_secs(auth["lease_duration"].as_u64().unwrap_or(0));
        tracing::info!(kms = %self.describe(), method = %mount, lease_secs = ttl.as_secs(), "logged in to the KMS");
        Ok(Token::new(Secret::new(value.to_string()), ttl, auth["renewable"].as_bool().unwrap_or(false)))
    }

    /// Renews `old`; `None` when it cannot be (then the caller logs in again).
    async fn renew(&self, old: &Token) -> Result<Option<Token>, VaultError> {
        if !old.renewable {
            return Ok(None);
        }
        let body = Zeroizing::new("{}".to_string());
        let a = self.send(reqwest::Method::POST, "auth/token/renew-self", Some(&old.value), Some(body)).await?;
        let lease = Duration::from_secs(a.body["auth"]["lease_duration"].as_u64().unwrap_or(0));
        // Near its max TTL Vault renews for what is left; below half the first grant a new
        // login (where there is one) is the better token.
        let can_login = !matches!(self.cfg.auth, TransitAuth::TokenFile(_));
        if a.status != 200 || (can_login && lease < old.granted / 2) {
            return Ok(None);
        }
        tracing::debug!(kms = %self.describe(), lease_secs = lease.as_secs(), "KMS token renewed");
        let mut t = Token::new(old.value.clone(), lease, true);
        t.granted = old.granted;
        Ok(Some(t))
    }

    /// The token to use: renewed or replaced first when due; `force` replaces it (after a 403).
    async fn token(&self, force: bool) -> Result<Arc<Token>, VaultError> {
        let seen = self.current();
        if let Some(t) = &seen {
            if !force && !t.due() {
                return Ok(t.clone());
            }
        }
        let _one = self.refresh.lock().await;
        let now = self.current();
        if let Some(n) = &now {
            // Another task replaced the token while this one waited: use that one.
            if seen.as_ref().is_none_or(|s| !Arc::ptr_eq(n, s)) && !n.due() {
                return Ok(n.clone());
            }
        }
        let fresh = match now.as_deref() {
            Some(old) if !force => match self.renew(old).await? {
                Some(t) => t,
                None => self.login().await?,
            },
            _ => self.login().await?,
        };
        let fresh = Arc::new(fresh);
        if let Ok(mut slot) = self.token.write() {
            *slot = Some(fresh.clone());
        }
        Ok(fresh)
    }

    fn current(&self) -> Option<Arc<Token>> {
        self.token.read().ok().and_then(|t| t.clone())
    }

    /// A transit call with the token; a 403 (token revoked or rotated) logs in once more.
    async fn transit(&self, op: &str, body: serde_json::Value) -> Result<serde_json::Value, VaultError> {
        let r = self.transit_once(op, body).await;
        self.reach.record(|| self.describe(), &r);
        r
    }

    async fn transit_once(&self, op: &str, body: serde_json::Value) -> Result<serde_json::Value, VaultError> {
        let path = format!("{}/{op}/{}", self.cfg.mount, self.cfg.key);
        let (method, body) = if op == "keys" {
            (reqwest::Method::GET, None)
        } else {
            (reqwest::Method::POST, Some(Zeroizing::new(body.to_string())))
        };
        let mut a = self.send(method.clone(), &path, Some(&self.token(false).await?.value), body.clone()).await?;
        if a.status == 403 {
            a = self.send(method, &path, Some(&self.token(true).await?.value), body).await?;
        } else if a.status >= 500 {
            // One more try after a pause: OpenBao answers 500 for transient faults (a lease
            // expiring mid-request on a loaded host was seen in CI); every transit call here
            // can be repeated safely (decrypt, and encrypt/rewrap whose result is only used
            // once it is answered).
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            a = self.send(method, &path, Some(&self.token(false).await?.value), body).await?;
        }
        if !(200..300).contains(&a.status) {
            return Err(self.refused(op, &a));
        }
        Ok(a.body["data"].clone())
    }

    async fn do_unwrap(&self, context: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let ct = Self::ciphertext(blob)?;
        let data = match self.transit("decrypt", serde_json::json!({"ciphertext": ct, "context": b64(context)})).await {
            // A ciphertext for another context (tenant) or key is refused with a 400.
            Err(VaultError::Kms(m)) if m.contains("HTTP 400") => return Err(VaultError::KmsRefused(m)),
            other => other?,
        };
        let pt = Zeroizing::new(data["plaintext"].as_str().unwrap_or_default().to_string());
        base64::engine::general_purpose::STANDARD
            .decode(pt.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Kms(format!("{}: decrypt answered something that is not base64", self.describe())))
    }

    fn ciphertext(blob: &[u8]) -> Result<&str, VaultError> {
        blob.strip_prefix(TRANSIT_MAGIC)
            .and_then(|c| std::str::from_utf8(c).ok())
            .ok_or(VaultError::Malformed("not a transit-wrapped key"))
    }

    fn wrapped(&self, data: &serde_json::Value, op: &str) -> Result<Vec<u8>, VaultError> {
        let ct = data["ciphertext"]
            .as_str()
            .filter(|c| c.starts_with("vault:v"))
            .ok_or_else(|| VaultError::Kms(format!("{}: {op} answered without a ciphertext", self.describe())))?;
        Ok([TRANSIT_MAGIC, ct.as_bytes()].concat())
    }
}

impl Token {
    fn new(value: Secret, ttl: Duration, renewable: bool) -> Token {
        let renew_at = (!ttl.is_zero()).then(|| Instant::now() + ttl * 2 / 3);
        Token { value, renew_at, renewable, granted: ttl }
    }

    fn due(&self) -> bool {
        self.renew_at.is_some_and(|at| Instant::now() >= at)
    }
}

impl Kms for Transit {
    fn magic(&self) -> &'static [u8] {
        TRANSIT_MAGIC
    }

    fn describe(&self) -> String {
        format!("Vault transit key {} at {}", self.cfg.key, self.cfg.address)
    }

    fn kind(&self) -> &'static str {
        "vault-transit"
    }

    fn key_name(&self) -> &str {
        &self.cfg.key
    }

    fn key_id(&self) -> KeyId {
        self.id
    }

    fn version_of(&self, blob: &[u8]) -> Option<u32> {
        let ct = Self::ciphertext(blob).ok()?;
        ct.strip_prefix("vault:v")?.split(':').next()?.parse().ok()
    }

    fn latest_version(&self) -> KmsFuture<'_, u32> {
        Box::pin(async move {
            let data = self.transit("keys", serde_json::Value::Null).await?;
            data["latest_version"].as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
                VaultError::Kms(format!("{}: the key's description has no latest_version", self.describe()))
            })
        })
    }

    fn wrap<'a>(&'a self, context: &'a [u8], plaintext: &'a [u8]) -> KmsFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let pt = Zeroizing::new(b64(plaintext));
            let data = self.transit("encrypt", serde_json::json!({"plaintext": *pt, "context": b64(context)})).await?;
            self.wrapped(&data, "encrypt")
        })
    }

    fn unwrap<'a>(&'a self, context: &'a [u8], blob: &'a [u8]) -> KmsFuture<'a, Zeroizing<Vec<u8>>> {
        Box::pin(self.do_unwrap(context, blob))
    }

    fn rewrap<'a>(&'a self, context: &'a [u8], blob: &'a [u8]) -> Option<KmsFuture<'a, Vec<u8>>> {
        Some(Box::pin(async move {
            let ct = Self::ciphertext(blob)?;
            let data = self.transit("rewrap", serde_json::json!({"ciphertext": ct, "context": b64(context)})).await?;
            self.wrapped(&data, "rewrap")
        }))
    }

    fn reach(&self) -> &Reach {
        &self.reach
    }
}
