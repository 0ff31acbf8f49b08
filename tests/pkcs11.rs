//! The master key on a PKCS#11 token: SoftHSM2 (Debian `softhsm2`, installed by
//! scripts/ci-deps) holds a non-extractable AES-256 key; keyward wraps and unwraps tenant
//! data keys inside the token and never sees the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fake::*;
use common::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "CANARYhsmPin00000000000000000001";

/// A SoftHSM2 configuration with one initialised token labelled `keyward`.
struct Token {
    dir: tempfile::TempDir,
}

impl Token {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    fn pin_file(&self) -> PathBuf {
        self.dir.path().join("hsm-pin")
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".into(), self.conf().display().to_string())]
    }

    /// `pkcs11-tool` against this token (opensc).
    fn tool(&self, args: &[&str]) -> std::process::Output {
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", self.conf())
            .args(["--module", MODULE, "--token-label", "keyward", "--login", "--pin", PIN])
            .args(args)
            .output()
            .unwrap()
    }

    /// The inline `[master_key]` source for this token and key label.
    fn source(&self, key_label: &str) -> String {
        format!(
            "pkcs11 = {{ module = \"{MODULE}\", token_label = \"keyward\", pin_file = \"{}\", key_label = \"{key_label}\" }}",
            self.pin_file().display()
        )
    }
}

fn softhsm() -> Option<Token> {
    if !Path::new(MODULE).exists() || Command::new("softhsm2-util").arg("--version").output().is_err() {
        eprintln!("SKIPPED: the PKCS#11 tests need SoftHSM2 and opensc (run scripts/ci-deps, or apt-get install softhsm2 opensc)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let t = Token { dir };
    std::fs::write(
        t.conf(),
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", t.conf())
        .args(["--init-token", "--free", "--label", "keyward", "--pin", PIN, "--so-pin", "CANARYsoPin000001"])
        .output()
        .unwrap();
    assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(t.pin_file(), format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(t.pin_file(), std::fs::Permissions::from_mode(0o600)).unwrap();
    Some(t)
}

fn hsm_daemon(token: &Token, key_label: &str, extra: String) -> Daemon {
    Daemon::new(DaemonConfig {
        app: Some(String::new()),
        master_key_toml: Some(token.source(key_label)),
        env: token.env(),
        log_level: "trace".into(),
        extra,
        ..DaemonConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_keys_are_wrapped_inside_a_pkcs11_token_by_a_key_that_cannot_leave_it() {
    let Some(token) = softhsm() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let mut d = hsm_daemon(&token, "keyward-master", pki.upstream("vapi", &vapi.url));
    d.start();
    assert!(d.logs().contains("created a non-extractable AES-256 key"), "first start creates the key");
    // The key keyward made is on the token, sensitive and not extractable.
    let listed = token.tool(&["--list-objects", "--type", "secrkey"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("keyward-master"), "{listed}");
    assert!(listed.contains("always sensitive") && listed.contains("never extractable"), "{listed}");
    for (t, k) in [("acme", "CANARYhsmVapiKeyAcme000000000001"), ("globex", "CANARYhsmVapiKeyGlobex0000000002")] {
        put_vapi(&d, t, k).await;
    }
    // Concurrent cold unwraps after a restart: every tenant key comes back through the token.
    d.stop();
    d.start();
    assert_eq!(d.logs().matches("created a non-extractable").count(), 1, "the second start finds the key");
    let sock = d.app_sock();
    let calls = (0..16).map(|i| {
        let sock = sock.clone();
        tokio::spawn(async move {
            let t = if i % 2 == 0 { "acme" } else { "globex" };
            let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
            let (s, _, _) = http_full(
                hyper_util::rt::TokioIo::new(stream),
                "GET",
                "/vapi/assistant",
                None,
                &[("keyward-tenant", t)],
            )
            .await;
            s
        })
    });
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "globex")], None).await;
    assert_eq!(s, 200);
    assert_eq!(vapi.last().header("authorization").unwrap(), "Bearer CANARYhsmVapiKeyGlobex0000000002");
    // `key status` counts both tenant keys under the token's key.
    let out = d.cli(&["key", "status", "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["sources"][0]["source"], "pkcs11", "{status}");
    assert_eq!(status["sources"][0]["key"], "keyward-master", "{status}");
    assert_eq!(status["sources"][0]["tenant_keys"], 2, "{status}");
    assert_eq!(status["mixed"], false, "{status}");
    // A wrapped key moved to another tenant does not open (the tenant is the GCM AAD).
    d.stop();
    let wrapped = copy_wrapped_key(&d.store_path(), "acme", "globex").await;
    assert!(wrapped.starts_with(b"kwp1:"), "{:?}", &wrapped[..8]);
    d.start();
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "globex")], None).await;
    assert_eq!(s, 500, "a moved wrapped key does not decrypt");
    // Neither the PIN nor a credential is in any file keyward wrote or in its trace log.
    let mut hay = d.logs().into_bytes();
    for f in files_under(&d.dir) {
        hay.extend(std::fs::read(&f).unwrap_or_default());
    }
    let canaries = [PIN, "CANARYhsmVapiKeyAcme000000000001", "CANARYhsmVapiKeyGlobex0000000002"];
    assert_eq!(canary_hits(&hay, &canaries), 0, "a canary reached a file or the trace log");
    // A mistyped key label against this store is refused, naming source and key, and no
    // key is created for it (only a new store gets a new key).
    d.stop();
    d.config.master_key_toml = Some(token.source("keyward-typo"));
    let before = d.logs().len();
    assert!(d.try_start().is_err());
    let logs = d.logs()[before..].to_string();
    assert!(
        logs.contains("does not open under PKCS#11 key keyward-typo on token keyward")
            && logs.contains("wrapped by another PKCS#11 key"),
        "{logs}"
    );
    let listed = String::from_utf8_lossy(&token.tool(&["--list-objects", "--type", "secrkey"]).stdout).to_string();
    assert!(!listed.contains("keyward-typo"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extractable_key_a_wrong_pin_and_a_missing_token_are_refused_with_what_to_fix() {
    let Some(token) = softhsm() else { return };
    // A key someone made extractable: its value could leave the token.
    let made = token.tool(&["--keygen", "--key-type", "AES:32", "--label", "exportable", "--extractable"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut d = hsm_daemon(&token, "exportable", String::new());
    let e = d.try_start().unwrap_err();
    let logs = d.logs();
    assert!(logs.contains("is extractable (CKA_EXTRACTABLE = true)"), "{e}\n{logs}");
    // A wrong PIN names the PIN file.
    let mut d = hsm_daemon(&token, "keyward-master", String::new());
    std::fs::write(token.pin_file(), "000000\n").unwrap();
    assert!(d.try_start().is_err());
    assert!(d.logs().contains(&format!("the PIN in {} is wrong", token.pin_file().display())), "{}", d.logs());
    std::fs::write(token.pin_file(), format!("{PIN}\n")).unwrap();
    // A token label that no slot has.
    d.config.master_key_toml =
        Some(token.source("keyward-master").replace("token_label = \"keyward\"", "token_label = \"nope\""));
    d.write_config();
    assert!(d.try_start().is_err());
    assert!(
        d.logs().contains("PKCS#11 token \"nope\"") && d.logs().contains("no initialised token has this label"),
        "{}",
        d.logs()
    );
}
