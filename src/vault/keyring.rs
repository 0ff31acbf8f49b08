//! The master keyring: the active master key and older ones listed in
//! `master_key.previous`, loaded from files, the environment, or systemd credentials.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::kms::pkcs11::Hsm;
use super::kms::transit::Transit;
use super::kms::Kms;
use super::seal::{blob_key_id, open_raw, seal_raw, DataKey, KeyId};
use super::VaultError;
use keyward_core::env::Env;
use keyward_core::ids::TenantId;
use keyward_core::secret::KeyBytes;
use keyward_store::Integrity;

/// Where the active key was found, for the start-up log line (never the key).
#[derive(Debug, Clone)]
pub struct MasterKeySource {
    /// Human description of the source.
    pub description: String,
    /// Whether the key file was created at this start (development only).
    pub created: bool,
}

struct MasterKey {
    id: KeyId,
    key: KeyBytes,
}

/// The active master key plus previous ones.
pub struct Keyring {
    active: Active,
    previous: Vec<MasterKey>,
    /// KMS keys a rotation moves tenant keys away from (back to a file key).
    previous_kms: Vec<Box<dyn Kms>>,
}

/// Where the active key is: in memory (file, env, credential), or in a KMS that wraps and
/// unwraps for keyward and never hands the key out.
enum Active {
    Local(MasterKey),
    Kms(Box<dyn Kms>),
}

/// The source and key version that wraps a tenant key, as `key status` counts them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct WrapSource {
    /// `file` (a key in memory: file, env or credential), `vault-transit`, `pkcs11`, or
    /// `unknown` (a key this configuration does not have).
    pub source: String,
    /// The key: a local key's id, a transit key's name, a PKCS#11 key's label.
    pub key: String,
    /// The key's version (transit versions; 1 elsewhere).
    pub version: u32,
}

impl fmt::Display for WrapSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} v{}", self.source, self.key, self.version)
    }
}

/// Opens a KMS source from its configuration (one per source kind).
fn open_kms(source: &KeySource) -> Result<Option<Box<dyn Kms>>, VaultError> {
    Ok(match source {
        KeySource::Transit(t) => Some(Box::new(Transit::new(t)?)),
        KeySource::Pkcs11(p) => Some(Box::new(Hsm::open(p)?)),
        _ => None,
    })
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active_id())
            .field("previous", &self.previous.iter().map(|k| k.id).collect::<Vec<_>>())
            .finish()
    }
}

/// Reads a small secret file (a token, a password, a PIN) that only its owner may read
/// (mode 0600 or stricter), one trailing newline removed. The error is the reason alone;
/// callers name the file.
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("mode {:04o} lets other users read it; chmod 600 it", meta.permissions().mode() & 0o777));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| e.to_string())?);
    Ok(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string()))
}

const CHECK_CONTEXT: &[u8] = b"keyward/keycheck/v2";

fn key_id_of(key: &KeyBytes) -> KeyId {
    let mut h = Sha256::new();
    h.update(b"keyward master key id v1\0");
    h.update(key.expose());
    let d = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    KeyId(id)
}

fn decode_key(text: &str, source_name: &str) -> Result<KeyBytes, VaultError> {
    let bad = |reason: &str| VaultError::BadKey { source_name: source_name.to_string(), reason: reason.to_string() };
    let trimmed = text.trim_end_matches(['\n', '\r']);
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD.decode(trimmed.trim()).map_err(|_| bad("not base64"))?,
    );
    if bytes.len() != 32 {
        return Err(bad(&format!("decodes to {} bytes, not 32", bytes.len())));
    }
    let mut arr = Zeroizing::new([0u8; 32]);
    arr.copy_from_slice(&bytes);
    Ok(KeyBytes::new(*arr))
}

fn read_key_file(path: &Path, check_mode: bool) -> Result<KeyBytes, VaultError> {
    let read_err = |e: std::io::Error| VaultError::KeyFileRead { path: path.to_path_buf(), reason: e.to_string() };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if check_mode && mode & 0o077 != 0 {
        return Err(VaultError::KeyFileMode { path: path.to_path_buf(), mode });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
    decode_key(&text, &format!("file {}", path.display()))
}

/// Creates `path` (mode 0600, never overwriting) holding a fresh key, base64 and a newline.
pub fn write_new_key_file(path: &Path) -> Result<(), VaultError> {
    let werr = |e: std::io::Error| VaultError::KeyFileWrite { path: path.to_path_buf(), reason: e.to_string() };
    if path.exists() {
        return Err(VaultError::KeyFileExists(path.to_path_buf()));
    }
    let key = KeyBytes::random().map_err(|_| VaultError::Rng)?;
    let mut text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.expose()));
    text.push('\n');
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            VaultError::KeyFileExists(path.to_path_buf())
        } else {
            werr(e)
        }
    })?;
    f.write_all(text.as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok(())
}

/// The previous key files, without duplicates or the active key.
fn load_previous(cfg: &MasterKeyConfig, active: Option<KeyId>) -> Result<Vec<MasterKey>, VaultError> {
    let mut previous: Vec<MasterKey> = Vec::new();
    for p in &cfg.previous {
        let key = read_key_file(p, true)?;
        let id = key_id_of(&key);
        if Some(id) != active && !previous.iter().any(|k| k.id == id) {
            previous.push(MasterKey { id, key });
        }
    }
    Ok(previous)
}

/// Times a KMS call into `keyward_kms_call_seconds` (the span's trace as the exemplar).
fn kms_timed(kms: &'static str, op: &'static str, started: std::time::Instant, span: &tracing::Span) {
    let h = crate::metrics::KMS_CALLS.get_or_create(&crate::metrics::KmsLabels { kms, op });
    crate::metrics::observe(&h, started.elapsed().as_secs_f64(), crate::otlp::trace_id(span));
}

impl Keyring {
    /// Loads the active key from its configured source and every previous key file.
    /// With `create_missing` (development), a missing key file is created first.
    pub fn load(
        cfg: &MasterKeyConfig,
        env: &dyn Env,
        create_missing: bool,
    ) -> Result<(Keyring, MasterKeySource), VaultError> {
        let mut created = false;
        let (key, description) = match &cfg.source {
            KeySource::File(p) => {
                if create_missing && !p.exists() {
                    if let Some(dir) = p.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| VaultError::KeyFileWrite { path: p.clone(), reason: e.to_string() })?;
                    }
                    write_new_key_file(p)?;
                    created = true;
                }
                (read_key_file(p, true)?, format!("file {}", p.display()))
            }
            KeySource::Env(var) => {
                let text = Zeroizing::new(env.var(var).ok_or_else(|| VaultError::EnvMissing(var.clone()))?);
                (decode_key(&text, &format!("environment variable {var}"))?, format!("environment variable {var}"))
            }
            KeySource::Credential(name) => {
                let dir =
                    env.var("CREDENTIALS_DIRECTORY").ok_or_else(|| VaultError::NoCredentialsDirectory(name.clone()))?;
                let p = PathBuf::from(dir).join(name);
                // systemd creates credential files itself (0400, owned by the service user).
                (read_key_file(&p, true)?, format!("systemd credential {name}"))
            }
            KeySource::Transit(_) | KeySource::Pkcs11(_) => {
                let kms = open_kms(&cfg.source)?.ok_or(VaultError::Malformed("not a KMS source"))?;
                let description = kms.describe();
                let previous = load_previous(cfg, None)?;
                let previous_kms = Self::load_previous_kms(cfg)?;
                return Ok((
                    Keyring { active: Active::Kms(kms), previous, previous_kms },
                    MasterKeySource { description, created },
                ));
            }
        };
        let active = MasterKey { id: key_id_of(&key), key };
        let previous = load_previous(cfg, Some(active.id))?;
        let previous_kms = Self::load_previous_kms(cfg)?;
        Ok((
            Keyring { active: Active::Local(active), previous, previous_kms },
            MasterKeySource { description, created },
        ))
    }

    fn load_previous_kms(cfg: &MasterKeyConfig) -> Result<Vec<Box<dyn Kms>>, VaultError> {
        cfg.previous_kms.iter().filter_map(|s| open_kms(s).transpose()).collect()
    }

    /// A keyring from raw keys (tests and benchmarks).
    pub fn from_keys(active: KeyBytes, previous: Vec<KeyBytes>) -> Keyring {
        Keyring {
            active: Active::Local(MasterKey { id: key_id_of(&active), key: active }),
            previous: previous.into_iter().map(|k| MasterKey { id: key_id_of(&k), key: k }).collect(),
            previous_kms: Vec::new(),
        }
    }

    /// The active key's id (for a KMS: derived from its address, mount and key name).
    pub fn active_id(&self) -> KeyId {
        match &self.active {
            Active::Local(k) => k.id,
            Active::Kms(k) => k.key_id(),
        }
    }

    /// Whether the KMS answered last time, for readiness (`None`: the key is local).
    pub(crate) fn kms_health(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        match &self.active {
            Active::Kms(k) => Some(k.reach().flag()),
            Active::Local(_) => None,
        }
    }

    /// Asks the KMS for one cheap operation (recovery probe); always fine for a local key.
    pub(crate) async fn probe(&self) -> Result<(), VaultError> {
        match &self.active {
            Active::Kms(k) => k.probe().await,
            Active::Local(_) => Ok(()),
        }
    }

    /// Ids of the previous keys.
    pub fn previous_ids(&self) -> Vec<KeyId> {
        self.previous.iter().map(|k| k.id).collect()
    }

    /// The in-memory key with this id, active or previous.
    fn find(&self, id: KeyId) -> Option<&MasterKey> {
        let active = match &self.active {
            Active::Local(k) => Some(k),
            Active::Kms(_) => None,
        };
        active.into_iter().chain(self.previous.iter()).find(|k| k.id == id)
    }

    /// The KMS whose values start like `blob`, active or previous; `None`: a local key's blob.
    fn kms_for(&self, blob: &[u8]) -> Option<&dyn Kms> {
        let active = match &self.active {
            Active::Kms(k) => Some(k.as_ref()),
            Active::Local(_) => None,
        };
        active.into_iter().chain(self.previous_kms.iter().map(|k| k.as_ref())).find(|k| blob.starts_with(k.magic()))
    }

    /// Opens `blob` for `context` with whichever key wrapped it.
    async fn open_any(&self, context: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if let Some(k) = self.kms_for(blob) {
            use tracing::Instrument;
            let span =
                crate::telemetry::trace_span!("keyward.kms.unwrap", otel.kind = "client", keyward.kms = k.kind());
            let started = std::time::Instant::now();
            let out = k.unwrap(context, blob).instrument(span.clone()).await;
            kms_timed(k.kind(), "unwrap", started, &span);
            return out;
        }
        if is_kms_blob(blob) {
            return Err(VaultError::Kms(format!(
                "a value is wrapped by a KMS ({}) that is neither [master_key]'s source nor listed as previous",
                String::from_utf8_lossy(&blob[..5])
            )));
        }
        let id = blob_key_id(blob)?;
        let mk = self.find(id).ok_or(VaultError::UnknownKey(id))?;
        open_raw(&mk.key, context, blob)
    }

    fn dek_aad(tenant: &TenantId) -> Vec<u8> {
        let mut aad = b"keyward/dek/v1\0".to_vec();
        aad.extend_from_slice(tenant.as_str().as_bytes());
        aad
    }

    /// Wraps a tenant's data key under the active master key (the tenant is the AAD, or
    /// the transit context).
    pub async fn wrap(&self, tenant: &TenantId, dek: &DataKey) -> Result<Vec<u8>, VaultError> {
        let mut pt = Zeroizing::new([0u8; 40]);
        pt[..8].copy_from_slice(&dek.id().0);
        pt[8..].copy_from_slice(dek.key().expose());
        match &self.active {
            Active::Local(k) => seal_raw(&k.key, k.id, &Self::dek_aad(tenant), &pt[..]),
            Active::Kms(k) => {
                let started = std::time::Instant::now();
                let out = k.wrap(&Self::dek_aad(tenant), &pt[..]).await;
                kms_timed(k.kind(), "wrap", started, &tracing::Span::none());
                out
            }
        }
    }

    /// Unwraps a tenant's data key with whichever key wrapped it.
    pub async fn unwrap(&self, tenant: &TenantId, blob: &[u8]) -> Result<DataKey, VaultError> {
        let pt = self.open_any(&Self::dek_aad(tenant), blob).await?;
        if pt.len() != 40 {
            return Err(VaultError::Malformed("data key of the wrong length"));
        }
        let mut dek_id = [0u8; 8];
        dek_id.copy_from_slice(&pt[..8]);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&pt[8..]);
        Ok(DataKey::from_parts(KeyId(dek_id), KeyBytes::new(*key)))
    }

    /// The active source as logs and errors name it.
    pub fn describe_active(&self) -> String {
        match &self.active {
            Active::Local(k) => format!("master key {}", k.id),
            Active::Kms(k) => k.describe(),
        }
    }

    /// Which source and key version wrapped `blob`.
    pub fn source_of(&self, blob: &[u8]) -> WrapSource {
        if let Some(k) = self.kms_for(blob) {
            return WrapSource {
                source: k.kind().into(),
                key: k.key_name().into(),
                version: k.version_of(blob).unwrap_or(0),
            };
        }
        if is_kms_blob(blob) {
            return WrapSource {
                source: "unknown".into(),
                key: String::from_utf8_lossy(&blob[..5]).into(),
                version: 0,
            };
        }
        match blob_key_id(blob) {
            Ok(id) if self.find(id).is_some() => WrapSource { source: "file".into(), key: id.to_string(), version: 1 },
            Ok(id) => WrapSource { source: "unknown".into(), key: id.to_string(), version: 1 },
            Err(_) => WrapSource { source: "unknown".into(), key: "malformed".into(), version: 0 },
        }
    }

    /// Where new tenant keys are wrapped: the active source at its latest version (a KMS
    /// call for a versioned KMS key).
    pub async fn target(&self) -> Result<WrapSource, VaultError> {
        Ok(match &self.active {
            Active::Local(k) => WrapSource { source: "file".into(), key: k.id.to_string(), version: 1 },
            Active::Kms(k) => {
                WrapSource { source: k.kind().into(), key: k.key_name().into(), version: k.latest_version().await? }
            }
        })
    }

    /// Re-wraps a tenant key under the active source's latest version: inside the KMS when
    /// it stays in the same KMS and the KMS can, else unwrapped here and wrapped again.
    pub async fn rewrap(&self, tenant: &TenantId, blob: &[u8]) -> Result<Vec<u8>, VaultError> {
        if let Active::Kms(k) = &self.active {
            if blob.starts_with(k.magic()) {
                if let Some(f) = k.rewrap(&Self::dek_aad(tenant), blob) {
                    return f.await;
                }
            }
        }
        let dek = self.unwrap(tenant, blob).await?;
        self.wrap(tenant, &dek).await
    }

    /// The store's check value: proves at the next start that the right key is loaded, and
    /// carries the store's integrity key (sealed, so only a master-key holder reads or
    /// replaces it). With a KMS, checking it is a KMS call: a wrong key or KMS is refused
    /// at start.
    pub async fn seal_check(&self, integrity: &Integrity) -> Result<Vec<u8>, VaultError> {
        let mut pt = Zeroizing::new([0u8; 40]);
        pt[..32].copy_from_slice(integrity.key_bytes());
        pt[32..].copy_from_slice(&integrity.keyed_from().to_be_bytes());
        match &self.active {
            Active::Local(k) => seal_raw(&k.key, k.id, CHECK_V2, &pt[..]),
            Active::Kms(k) => k.wrap(CHECK_CONTEXT, &pt[..]).await,
        }
    }

    /// The check value of a store from before integrity keys (upgrade tests).
    #[cfg(test)]
    pub(crate) fn seal_legacy_check(&self) -> Result<Vec<u8>, VaultError> {
        let Active::Local(k) = &self.active else { return Err(VaultError::Malformed("not a local key")) };
        seal_raw(&k.key, k.id, b"keyward/keycheck/v1", b"keyward")
    }

    /// Opens a check value from [`Keyring::seal_check`] (or the integrity-less one of
    /// stores written before it: [`KeyCheck::Legacy`]).
    pub async fn open_check(&self, blob: &[u8]) -> Result<KeyCheck, VaultError> {
        let pt = if let Some(k) = self.kms_for(blob) {
            k.unwrap(CHECK_CONTEXT, blob).await?
        } else {
            let id = blob_key_id(blob)?;
            let mk = self.find(id).ok_or(VaultError::UnknownKey(id))?;
            match open_raw(&mk.key, CHECK_V2, blob) {
                Ok(pt) => pt,
                Err(_) => return open_raw(&mk.key, b"keyward/keycheck/v1", blob).map(|_| KeyCheck::Legacy),
            }
        };
        if pt.len() != 40 {
            return Err(VaultError::Malformed("key check value of the wrong length"));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&pt[..32]);
        let mut from = [0u8; 8];
        from.copy_from_slice(&pt[32..]);
        let i = Integrity::new(key, u64::from_be_bytes(from));
        key.zeroize();
        Ok(KeyCheck::Keyed(i))
    }
}

const CHECK_V2: &[u8] = b"keyward/keycheck/v2";

/// What a store's check value holds.
#[derive(Debug)]
pub enum KeyCheck {
    /// The store's integrity key.
    Keyed(Integrity),
    /// A check value from before integrity keys: the store is upgraded on open.
    Legacy,
}

/// Where the active master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding base64 of 32 bytes (mode 0600 or stricter).
    File(PathBuf),
    /// An environment variable holding base64 of 32 bytes.
    Env(String),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (LoadCredential=).
    Credential(String),
    /// A Vault / OpenBao transit key.
    Transit(super::TransitConfig),
    /// An AES key object on a PKCS#11 token.
    Pkcs11(super::Pkcs11Config),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "file {}", p.display()),
            KeySource::Env(v) => write!(f, "environment variable {v}"),
            KeySource::Credential(n) => write!(f, "systemd credential {n}"),
            KeySource::Transit(t) => write!(f, "Vault transit key {} at {}", t.key, t.address),
            KeySource::Pkcs11(p) => write!(f, "PKCS#11 key {} on token {}", p.key_label, p.token_label),
        }
    }
}

/// `[master_key]`
#[derive(Debug, Clone)]
pub struct MasterKeyConfig {
    /// The active key.
    pub source: KeySource,
    /// Older key files, still able to open records during a rotation.
    pub previous: Vec<PathBuf>,
    /// KMS keys a rotation moves tenant keys away from.
    pub previous_kms: Vec<KeySource>,
    /// How long an unwrapped tenant key stays in memory (`None`: while the cache keeps it).
    pub cache_ttl: Option<std::time::Duration>,
}

/// Whether a blob is some KMS's (`kw?1:`), as opposed to a local key's (binary, version 1).
fn is_kms_blob(blob: &[u8]) -> bool {
    blob.len() >= 5 && blob.starts_with(b"kw") && blob[3..5] == *b"1:"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg(source: KeySource, previous: Vec<PathBuf>) -> MasterKeyConfig {
        MasterKeyConfig { source, previous, previous_kms: Vec::new(), cache_ttl: None }
    }

    #[test]
    fn keygen_writes_a_0600_file_that_loads_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_new_key_file(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (ring, _) = Keyring::load(&cfg(KeySource::File(p.clone()), vec![]), &BTreeMap::new(), false).unwrap();
        assert!(matches!(write_new_key_file(&p), Err(VaultError::KeyFileExists(_))));
        let (again, _) = Keyring::load(&cfg(KeySource::File(p), vec![]), &BTreeMap::new(), false).unwrap();
        assert_eq!(ring.active_id(), again.active_id(), "key ids are stable across loads");
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused_with_the_chmod_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_new_key_file(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load(&cfg(KeySource::File(p.clone()), vec![]), &BTreeMap::new(), false).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn keys_of_the_wrong_length_or_encoding_are_refused() {
        let mut env = BTreeMap::new();
        env.insert("K".to_string(), base64::engine::general_purpose::STANDARD.encode([1u8; 31]));
        let e = Keyring::load(&cfg(KeySource::Env("K".into()), vec![]), &env, false).unwrap_err();
        assert!(e.to_string().contains("31 bytes"), "{e}");
        env.insert("K".to_string(), "not base64!".into());
        assert!(Keyring::load(&cfg(KeySource::Env("K".into()), vec![]), &env, false).is_err());
        env.remove("K");
        assert!(matches!(
            Keyring::load(&cfg(KeySource::Env("K".into()), vec![]), &env, false),
            Err(VaultError::EnvMissing(_))
        ));
    }

    #[test]
    fn a_systemd_credential_is_read_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        write_new_key_file(&dir.path().join("master-key")).unwrap();
        let mut env = BTreeMap::new();
        env.insert("CREDENTIALS_DIRECTORY".to_string(), dir.path().display().to_string());
        let (_, src) = Keyring::load(&cfg(KeySource::Credential("master-key".into()), vec![]), &env, false).unwrap();
        assert!(src.description.contains("systemd credential"));
        assert!(
            Keyring::load(&cfg(KeySource::Credential("master-key".into()), vec![]), &BTreeMap::new(), false).is_err()
        );
    }

    #[tokio::test]
    async fn a_previous_key_still_unwraps_what_it_wrapped() {
        let old = KeyBytes::random().unwrap();
        let new = KeyBytes::random().unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let dek = DataKey::generate().unwrap();
        let blob = Keyring::from_keys(old.clone(), vec![]).wrap(&acme, &dek).await.unwrap();
        let rotated = Keyring::from_keys(new.clone(), vec![old]);
        assert_ne!(rotated.source_of(&blob), rotated.target().await.unwrap(), "not yet under the new key");
        assert_eq!(rotated.unwrap(&acme, &blob).await.unwrap().id(), dek.id());
        let without_old = Keyring::from_keys(new, vec![]);
        assert!(matches!(without_old.unwrap(&acme, &blob).await, Err(VaultError::UnknownKey(_))));
    }

    #[tokio::test]
    async fn a_wrapped_data_key_is_bound_to_its_tenant() {
        let ring = Keyring::from_keys(KeyBytes::random().unwrap(), vec![]);
        let dek = DataKey::generate().unwrap();
        let blob = ring.wrap(&TenantId::parse("acme").unwrap(), &dek).await.unwrap();
        assert!(ring.unwrap(&TenantId::parse("globex").unwrap(), &blob).await.is_err());
    }

    #[tokio::test]
    async fn the_check_value_detects_a_wrong_key() {
        let a = Keyring::from_keys(KeyBytes::random().unwrap(), vec![]);
        let check = a.seal_check(&Integrity::new([3; 32], 5)).await.unwrap();
        match a.open_check(&check).await.unwrap() {
            KeyCheck::Keyed(i) => assert_eq!((i.key_bytes(), i.keyed_from()), (&[3; 32], 5)),
            KeyCheck::Legacy => panic!("a v2 check value opens as v2"),
        }
        let legacy = a.seal_legacy_check().unwrap();
        assert!(matches!(a.open_check(&legacy).await, Ok(KeyCheck::Legacy)));
        let b = Keyring::from_keys(KeyBytes::random().unwrap(), vec![]);
        assert!(matches!(b.open_check(&check).await, Err(VaultError::UnknownKey(_))));
    }
}
