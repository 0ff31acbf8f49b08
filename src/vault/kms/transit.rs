//! Vault / OpenBao Transit as the master key (`[master_key.vault_transit]`, CONTRACT.md
//! §8.1): tenant data keys are wrapped and unwrapped by the transit engine, so the key that
//! wraps them never enters keyward's memory and every unwrap is in the KMS's audit log.
//!
//! The tenant is the transit `context` (the key must be created with `derived = true`), so a
//! wrapped key moved to another tenant does not decrypt. A wrapped blob is `kwt1:` followed
//! by the transit ciphertext (`vault:vN:…`), which names the transit key version.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use zeroize::Zeroizing;

use crate::vault::VaultError;
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
    /// A file holding the token.
    pub token_file: PathBuf,
    /// One more CA for the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace.
    pub namespace: Option<String>,
}

/// A transit key reached over HTTP.
pub(crate) struct Transit {
    cfg: TransitConfig,
    http: reqwest::Client,
    token: Secret,
    /// Whether the last call reached the KMS (`/readyz` says `degraded` otherwise).
    reachable: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit").field("address", &self.cfg.address).field("key", &self.cfg.key).finish()
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl Transit {
    /// Reads the token and builds the client; nothing is sent yet.
    pub(crate) fn new(cfg: &TransitConfig) -> Result<Transit, VaultError> {
        let token = crate::vault::read_private(&cfg.token_file)
            .map_err(|reason| VaultError::KeyFileRead { path: cfg.token_file.clone(), reason })?;
        let tls = crate::tls::client_config(cfg.ca_file.as_deref(), &[b"http/1.1"])
            .map_err(|e| VaultError::Kms(format!("TLS for {}: {e}", cfg.address)))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| VaultError::Kms(e.to_string()))?;
        Ok(Transit {
            cfg: cfg.clone(),
            http,
            token: Secret::new(token.trim().to_string()),
            reachable: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        })
    }

    /// `transit key NAME at ADDRESS`, for logs and errors.
    pub(crate) fn describe(&self) -> String {
        format!("Vault transit key {} at {}", self.cfg.key, self.cfg.address)
    }

    /// The token as a header value marked sensitive (never printed by the HTTP stack).
    fn token_header(&self) -> Result<http::HeaderValue, VaultError> {
        let mut v = http::HeaderValue::from_str(self.token.expose()).map_err(|_| {
            VaultError::Kms(format!("{}: the token file holds characters a header cannot", self.describe()))
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// Whether the last call reached the KMS, shared with readiness.
    pub(crate) fn reachable(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.reachable.clone()
    }

    /// One cheap call that proves the KMS answers with this key (the recovery probe).
    pub(crate) async fn probe(&self) -> Result<(), VaultError> {
        self.wrap(b"keyward/probe", b"probe").await.map(|_| ())
    }

    /// One transit call; the answer's `data` object. Records whether the KMS was reached.
    async fn call(&self, op: &str, body: serde_json::Value) -> Result<serde_json::Value, VaultError> {
        let r = self.call_once(op, body).await;
        let reached = !matches!(r, Err(VaultError::KmsUnavailable(_)));
        if self.reachable.swap(reached, std::sync::atomic::Ordering::SeqCst) != reached {
            if reached {
                tracing::info!(kms = %self.describe(), "KMS reachable again");
            } else {
                tracing::warn!(kms = %self.describe(), "KMS unreachable: warm tenants are served, cold ones answer key_unavailable");
            }
        }
        r
    }

    async fn call_once(&self, op: &str, body: serde_json::Value) -> Result<serde_json::Value, VaultError> {
        let url = format!("{}/v1/{}/{op}/{}", self.cfg.address.trim_end_matches('/'), self.cfg.mount, self.cfg.key);
        let mut req = self
            .http
            .post(&url)
            .header("x-vault-token", self.token_header()?)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(ns) = &self.cfg.namespace {
            req = req.header("x-vault-namespace", ns);
        }
        let resp = req.send().await.map_err(|e| {
            VaultError::KmsUnavailable(format!(
                "{}: {}",
                self.describe(),
                if e.is_timeout() { "timed out" } else { "unreachable" }
            ))
        })?;
        let status = resp.status();
        let bytes = Zeroizing::new(
            resp.bytes()
                .await
                .map_err(|_| VaultError::KmsUnavailable(format!("{}: answer cut off", self.describe())))?
                .to_vec(),
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if status.is_server_error() {
            return Err(VaultError::KmsUnavailable(format!("{}: HTTP {}", self.describe(), status.as_u16())));
        }
        if !status.is_success() {
            // Vault's errors name the problem (permission denied, unknown key), never data.
            let why = v["errors"].as_array().and_then(|e| e.first()).and_then(|e| e.as_str()).unwrap_or("");
            return Err(VaultError::Kms(format!(
                "{} refused {op}: HTTP {} {}",
                self.describe(),
                status.as_u16(),
                why.chars().take(200).collect::<String>()
            )));
        }
        Ok(v["data"].clone())
    }

    /// Wraps `plaintext` for `context`: `kwt1:` + the transit ciphertext.
    pub(crate) async fn wrap(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let pt = Zeroizing::new(b64(plaintext));
        let data = self.call("encrypt", serde_json::json!({"plaintext": *pt, "context": b64(context)})).await?;
        let ct = data["ciphertext"]
            .as_str()
            .filter(|c| c.starts_with("vault:v"))
            .ok_or_else(|| VaultError::Kms(format!("{}: encrypt answered without a ciphertext", self.describe())))?;
        Ok([TRANSIT_MAGIC, ct.as_bytes()].concat())
    }

    /// Unwraps a blob from [`Transit::wrap`] for `context`.
    pub(crate) async fn unwrap(&self, context: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let ct = blob
            .strip_prefix(TRANSIT_MAGIC)
            .and_then(|c| std::str::from_utf8(c).ok())
            .ok_or(VaultError::Malformed("not a transit-wrapped key"))?;
        let data = match self.call("decrypt", serde_json::json!({"ciphertext": ct, "context": b64(context)})).await {
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
}
