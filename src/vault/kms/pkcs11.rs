//! A PKCS#11 token (an HSM, or SoftHSM2) as the master key (`[master_key.pkcs11]`,
//! CONTRACT.md §8.1): an AES-256 key object on the token wraps tenant data keys with
//! AES-GCM inside the token; its value never leaves it.
//!
//! The key must be non-extractable and sensitive: keyward creates it so when it is absent
//! and refuses one that could be exported. Wrapped values are
//! `kwp1:` ‖ key id (8) ‖ IV (12) ‖ ciphertext ‖ tag (16); the context (the tenant) is the
//! GCM AAD. A PKCS#11 session is single-threaded, so calls take one from a pool (opening
//! more up to `sessions`) and run on the blocking pool; one session stays open for the life
//! of the process, which keeps the token logged in.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::{location_id, Kms, KmsFuture, Reach};
use crate::vault::{KeyId, VaultError};

/// What a PKCS#11-wrapped blob starts with.
pub(crate) const PKCS11_MAGIC: &[u8] = b"kwp1:";
const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

/// `[master_key.pkcs11]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 library.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// A file holding the user PIN.
    pub pin_file: PathBuf,
    /// The AES key object's label.
    pub key_label: String,
    /// How many sessions calls may use at once.
    pub sessions: usize,
}

/// The key object on the token, with its session pool.
pub(crate) struct Hsm {
    cfg: Pkcs11Config,
    slot: Slot,
    /// The key object; `None` until a new store makes keyward create it (a start against
    /// an existing store never creates a key: a mistyped label is refused instead).
    key: std::sync::Mutex<Option<ObjectHandle>>,
    idle: Arc<Mutex<Vec<Session>>>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Sessions opened so far (the first, at start, included).
    opened: Arc<std::sync::atomic::AtomicUsize>,
    // Keeps the library loaded and initialised while sessions exist; opens more of them.
    ctx: Pkcs11,
    reach: Reach,
    id: KeyId,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm").field("token", &self.cfg.token_label).field("key", &self.cfg.key_label).finish()
    }
}

fn p11(what: &str, e: P11Error) -> String {
    match e {
        P11Error::Pkcs11(rv, _) => format!("{what}: {rv:?}"),
        other => format!("{what}: {other}"),
    }
}

/// Whether an error means the token or session went away (retry later), not a refusal.
fn is_outage(e: &P11Error) -> bool {
    matches!(
        e,
        P11Error::Pkcs11(
            RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceMemory,
            _
        )
    )
}

impl Hsm {
    /// Loads the module, finds the token, logs in with the PIN and finds (or creates) the
    /// key; refuses a key whose value could leave the token.
    pub(crate) fn open(cfg: &Pkcs11Config) -> Result<Hsm, VaultError> {
        let here = format!("PKCS#11 token \"{}\" ({})", cfg.token_label, cfg.module.display());
        let fail = |m: String| VaultError::Kms(format!("{here}: {m}"));
        let pin = crate::vault::read_private(&cfg.pin_file)
            .map_err(|reason| VaultError::KeyFileRead { path: cfg.pin_file.clone(), reason })?;
        let ctx = Pkcs11::new(&cfg.module).map_err(|e| fail(p11("cannot load the module", e)))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(fail(p11("C_Initialize", e))),
        }
        let slots = ctx.get_slots_with_initialized_token().map_err(|e| fail(p11("listing slots", e)))?;
        let slot = slots
            .into_iter()
            .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label().trim_end() == cfg.token_label))
            .ok_or_else(|| fail("no initialised token has this label".into()))?;
        let session = ctx.open_rw_session(slot).map_err(|e| fail(p11("opening a session", e)))?;
        match session.login(UserType::User, Some(&AuthPin::new(pin.as_str().into()))) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(fail(format!("the PIN in {} is wrong", cfg.pin_file.display())))
            }
            Err(e) => return Err(fail(p11("login", e))),
        }
        let key = find_key(&session, &cfg.key_label).map_err(fail)?;
        let sessions = cfg.sessions.max(1);
        Ok(Hsm {
            cfg: cfg.clone(),
            slot,
            key: std::sync::Mutex::new(key),
            idle: Arc::new(Mutex::new(vec![session])),
            permits: Arc::new(tokio::sync::Semaphore::new(sessions)),
            opened: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
            ctx,
            reach: Reach::new(),
            id: location_id("pkcs11", &[&cfg.token_label, &cfg.key_label]),
        })
    }

    /// The key object; with `create` (wrapping, which only a new store's first write or a
    /// rotation does) it is made if absent.
    async fn key(&self, create: bool) -> Result<ObjectHandle, VaultError> {
        if let Some(k) = self.key.lock().ok().and_then(|k| *k) {
            return Ok(k);
        }
        if !create {
            return Err(VaultError::Kms(format!(
                "{}: the token has no key with this label (keyward creates one only for a new store); check key_label",
                self.describe()
            )));
        }
        let label = self.cfg.key_label.clone();
        let made = self.run("creating the key", None, move |s, _| Ok(create_key(s, &label))).await?;
        let made = made.map_err(|m| VaultError::Kms(format!("{}: {m}", self.describe())))?;
        if let Ok(mut k) = self.key.lock() {
            *k = Some(made);
        }
        Ok(made)
    }

    /// Runs `f` with the key on a pooled session (see [`Hsm::run`]).
    async fn with_session<T: Send + 'static>(
        &self,
        what: &'static str,
        create: bool,
        f: impl FnOnce(&Session, ObjectHandle) -> Result<T, P11Error> + Send + 'static,
    ) -> Result<T, VaultError> {
        let key = self.key(create).await?;
        self.run(what, Some(key), move |s, k| f(s, k.unwrap_or(key))).await
    }

    /// Runs `f` on a pooled session on the blocking pool. A session that failed as an
    /// outage is dropped, and the error is [`VaultError::KmsUnavailable`].
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        key: Option<ObjectHandle>,
        f: impl FnOnce(&Session, Option<ObjectHandle>) -> Result<T, P11Error> + Send + 'static,
    ) -> Result<T, VaultError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| VaultError::KmsUnavailable(format!("{}: closed", self.describe())))?;
        let idle = self.idle.clone();
        let (ctx, slot, opened) = (self.ctx.clone(), self.slot, self.opened.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let pooled = idle.lock().ok().and_then(|mut v| v.pop());
            // The token stays logged in while any session of this process is open, so a
            // new session is logged in already.
            let session = match pooled {
                Some(s) => s,
                None => {
                    let s = ctx.open_ro_session(slot)?;
                    let n = opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    tracing::debug!(sessions = n, "opened a PKCS#11 session for concurrent calls");
                    s
                }
            };
            let r = f(&session, key);
            if !r.as_ref().err().is_some_and(is_outage) {
                if let Ok(mut v) = idle.lock() {
                    v.push(session);
                }
            }
            r
        })
        .await;
        let r = match joined {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_outage(&e) => {
                Err(VaultError::KmsUnavailable(format!("{}: {}", self.describe(), p11(what, e))))
            }
            // A GCM tag that does not verify: the value was wrapped for another context or
            // key, or altered. SoftHSM2 reports it as a general error.
            Ok(Err(P11Error::Pkcs11(
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::GeneralError,
                cryptoki::context::Function::Decrypt,
            ))) => Err(VaultError::KmsRefused(format!("{}: {what}", self.describe()))),
            Ok(Err(e)) => Err(VaultError::Kms(format!("{}: {}", self.describe(), p11(what, e)))),
            Err(_) => Err(VaultError::Kms(format!("{}: {what} did not finish", self.describe()))),
        };
        self.reach.record(|| self.describe(), &r);
        r
    }
}

/// The key labelled `label`, checked; `None` if the token has none.
fn find_key(session: &Session, label: &str) -> Result<Option<ObjectHandle>, String> {
    let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())];
    let found = session.find_objects(&template).map_err(|e| p11("finding the key", e))?;
    let key = match found.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        _ => return Err(format!("{} secret keys are labelled \"{label}\"; keep one", found.len())),
    };
    check_key(session, key, label).map(Some)
}

/// Creates a sensitive, non-extractable AES-256 key on the token.
fn create_key(session: &Session, label: &str) -> Result<ObjectHandle, String> {
    if let Some(k) = find_key(session, label)? {
        return Ok(k); // another process of a fleet made it meanwhile
    }
    let key = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::ValueLen(32.into()),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .map_err(|e| p11("creating the key", e))?;
    tracing::warn!(key_label = label, "created a non-extractable AES-256 key on the PKCS#11 token");
    check_key(session, key, label)
}

/// Refuses a key keyward cannot use, or one whose value could leave the token.
fn check_key(session: &Session, key: ObjectHandle, label: &str) -> Result<ObjectHandle, String> {
    let attrs = session
        .get_attributes(
            key,
            &[AttributeType::KeyType, AttributeType::ValueLen, AttributeType::Extractable, AttributeType::Sensitive],
        )
        .map_err(|e| p11("reading the key's attributes", e))?;
    for a in attrs {
        match a {
            Attribute::KeyType(t) if t != KeyType::AES => {
                return Err(format!("key \"{label}\" is not an AES key; keyward needs AES-256"))
            }
            Attribute::ValueLen(n) if u64::from(n) != 32 => {
                return Err(format!("key \"{label}\" is {} bytes long; keyward needs AES-256 (32)", u64::from(n)))
            }
            Attribute::Extractable(true) => {
                return Err(format!(
                    "key \"{label}\" is extractable (CKA_EXTRACTABLE = true): its value can be exported from the \
                     token, which defeats keeping it there; create a key with CKA_EXTRACTABLE = false (or delete \
                     this one and let keyward create it)"
                ))
            }
            Attribute::Sensitive(false) => {
                return Err(format!(
                    "key \"{label}\" is not sensitive (CKA_SENSITIVE = false): its value can be read from the \
                     token; create a key with CKA_SENSITIVE = true"
                ))
            }
            _ => {}
        }
    }
    Ok(key)
}

impl Kms for Hsm {
    fn magic(&self) -> &'static [u8] {
        PKCS11_MAGIC
    }

    fn describe(&self) -> String {
        format!("PKCS#11 key {} on token {}", self.cfg.key_label, self.cfg.token_label)
    }

    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn key_name(&self) -> &str {
        &self.cfg.key_label
    }

    fn key_id(&self) -> KeyId {
        self.id
    }

    fn version_of(&self, blob: &[u8]) -> Option<u32> {
        blob.starts_with(PKCS11_MAGIC).then_some(1)
    }

    fn latest_version(&self) -> KmsFuture<'_, u32> {
        Box::pin(async { Ok(1) })
    }

    fn wrap<'a>(&'a self, context: &'a [u8], plaintext: &'a [u8]) -> KmsFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let mut iv = [0u8; IV_LEN];
            getrandom::fill(&mut iv).map_err(|_| VaultError::Rng)?;
            let aad = context.to_vec();
            let pt = Zeroizing::new(plaintext.to_vec());
            let ct = self
                .with_session("encrypt", true, move |s, key| {
                    let mut iv = iv;
                    let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())?;
                    s.encrypt(&Mechanism::AesGcm(params), key, &pt)
                })
                .await?;
            Ok([PKCS11_MAGIC, &self.id.0, &iv, &ct].concat())
        })
    }

    fn unwrap<'a>(&'a self, context: &'a [u8], blob: &'a [u8]) -> KmsFuture<'a, Zeroizing<Vec<u8>>> {
        Box::pin(async move {
            let body = blob.strip_prefix(PKCS11_MAGIC).ok_or(VaultError::Malformed("not a PKCS#11-wrapped key"))?;
            if body.len() < 8 + IV_LEN + 16 {
                return Err(VaultError::Malformed("PKCS#11-wrapped key too short"));
            }
            if body[..8] != self.id.0 {
                return Err(VaultError::Kms(format!(
                    "wrapped by another PKCS#11 key (id {}), not {}",
                    hex::encode(&body[..8]),
                    self.describe()
                )));
            }
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(&body[8..8 + IV_LEN]);
            let ct = body[8 + IV_LEN..].to_vec();
            let aad = context.to_vec();
            let pt = self
                .with_session("decrypt", false, move |s, key| {
                    let mut iv = iv;
                    let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())?;
                    s.decrypt(&Mechanism::AesGcm(params), key, &ct)
                })
                .await?;
            Ok(Zeroizing::new(pt))
        })
    }

    fn reach(&self) -> &Reach {
        &self.reach
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

    /// An initialised SoftHSM2 token in `dir` (SOFTHSM2_CONF points there for this process).
    fn token(dir: &std::path::Path, sessions: usize) -> Option<Pkcs11Config> {
        if !std::path::Path::new(MODULE).exists() {
            eprintln!("SKIPPED: needs SoftHSM2 (run scripts/ci-deps, or apt-get install softhsm2)");
            return None;
        }
        let conf = dir.join("softhsm2.conf");
        std::fs::create_dir(dir.join("tokens")).unwrap();
        std::fs::write(&conf, format!("directories.tokendir = {}/tokens\nlog.level = ERROR\n", dir.display())).unwrap();
        let ok = std::process::Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", "unit", "--pin", "1234", "--so-pin", "5678"])
            .output()
            .unwrap();
        assert!(ok.status.success());
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let pin = dir.join("pin");
        std::fs::write(&pin, "1234\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
        Some(Pkcs11Config {
            module: MODULE.into(),
            token_label: "unit".into(),
            pin_file: pin,
            key_label: "k".into(),
            sessions,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_take_sessions_from_the_pool_instead_of_queueing_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let Some(cfg) = token(dir.path(), 4) else { return };
        let hsm = Hsm::open(&cfg).unwrap();
        // Wrap creates the key (a new store); the context binds the value.
        let blob = hsm.wrap(b"ctx-a", b"forty bytes of a data key and its id....").await.unwrap();
        assert_eq!(&hsm.unwrap(b"ctx-a", &blob).await.unwrap()[..], b"forty bytes of a data key and its id....");
        let wrong = hsm.unwrap(b"ctx-b", &blob).await;
        assert!(matches!(wrong, Err(VaultError::KmsRefused(_))), "{wrong:?}");
        // Three calls that each hold their session for 300 ms: together, not one after another.
        let slow = |_: &Session, _: Option<ObjectHandle>| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        };
        let t0 = Instant::now();
        let (a, b, c) = tokio::join!(hsm.run("a", None, slow), hsm.run("b", None, slow), hsm.run("c", None, slow));
        let took = t0.elapsed();
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert!(took < Duration::from_millis(850), "{took:?}: the calls queued");
        assert!(hsm.opened.load(std::sync::atomic::Ordering::Relaxed) >= 3);
        // With sessions = 1 the same calls wait for each other.
        let one = Hsm::open(&Pkcs11Config { sessions: 1, ..cfg }).unwrap();
        let t0 = Instant::now();
        let _ = tokio::join!(one.run("a", None, slow), one.run("b", None, slow), one.run("c", None, slow));
        assert!(t0.elapsed() >= Duration::from_millis(850), "sessions = 1 serialises");
    }
}
