//! End-to-end: start-up refusals, the store on disk, key rotation, purge, crash safety.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const CANARY_A: &str = "CANARYalphaSECRET0a1b2c3d4e5f6071";
const CANARY_B: &str = "CANARYbravoSECRET8899aabbccddeeff";

async fn put_twilio(d: &Daemon, tenant: &str, token: &str) -> (u16, Value) {
    d.admin(
        "PUT",
        &format!("/v1/tenants/{tenant}/credentials/twilio"),
        Some(&json!({"account_sid": ACCOUNT_SID, "auth_token": token}).to_string()),
    )
    .await
}

#[tokio::test]
async fn plaintext_never_reaches_the_store_directory() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    put_twilio(&d, "acme", CANARY_A).await;
    d.admin(
        "PUT",
        "/v1/tenants/globex/credentials/vapi",
        Some(&json!({"api_key": CANARY_B, "webhook_secret": CANARY_A}).to_string()),
    )
    .await;
    d.admin("DELETE", "/v1/tenants/acme/credentials/twilio", None).await;
    d.admin("POST", "/v1/tenants/acme/credentials/twilio/restore", None).await;
    d.admin("POST", "/v1/keys/rotate", None).await;
    // SIGTERM flushes; every write was already flushed before it was acknowledged.
    d.stop();
    let files = files_under(&d.store_path());
    assert!(files.len() >= 3, "the scan found the store files: {files:?}");
    let mut scanned = 0;
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        scanned += bytes.len();
        assert_eq!(canary_hits(&bytes, &[CANARY_A, CANARY_B]), 0, "canary found in {}", f.display());
    }
    assert!(scanned > 1000, "scanned {scanned} bytes");
    // The test can fail: the canary forms are found where they are.
    use base64::Engine;
    let planted = base64::engine::general_purpose::STANDARD.encode(format!("xx{CANARY_A}yy"));
    assert!(canary_hits(planted.as_bytes(), &[CANARY_A]) > 0);
    assert!(canary_hits(hex::encode(CANARY_B).as_bytes(), &[CANARY_B]) > 0);
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_and_changes_nothing() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    put_twilio(&d, "acme", CANARY_A).await;
    d.stop();
    let before = dump_store(&d.store_path());
    assert!(before.len() > 3, "the store had records");

    let other = d.dir.join("other.key");
    write_key(&other);
    let good = d.config.master_key_file.replace(other);
    let err = d.try_start().unwrap_err();
    assert!(err.contains("exited"), "{err}");
    let logs = d.logs();
    assert!(logs.contains("not loaded") || logs.contains("does not open"), "{logs}");
    assert!(logs.contains("nothing was changed"));
    assert!(before == dump_store(&d.store_path()), "a refused start changed the store");
    // The right key still works.
    d.config.master_key_file = good;
    d.start();
    let (s, _) = d.admin("GET", "/v1/tenants/acme/credentials/twilio", None).await;
    assert_eq!(s, 200);
}

#[test]
fn a_key_file_readable_by_others_is_refused_at_start() {
    let mut d = Daemon::new(DaemonConfig::default());
    let key = d.config.master_key_file.clone().unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(d.try_start().is_err());
    assert!(d.logs().contains("chmod 600"), "{}", d.logs());
}

#[test]
fn a_foreign_owned_or_unusable_store_directory_is_refused() {
    let mut d = Daemon::new(DaemonConfig::default());
    let store = d.store_path();
    std::fs::create_dir_all(&store).unwrap();
    // Give the directory to another uid (the tests run as root, or this is skipped).
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&store, Some(4242), Some(4242)).unwrap();
        assert!(d.try_start().is_err());
        assert!(d.logs().contains("owned by uid 4242"), "{}", d.logs());
        std::os::unix::fs::chown(&store, Some(0), Some(0)).unwrap();
    }
    // A path that cannot be created.
    let mut e = Daemon::new(DaemonConfig { store_path: Some("/proc/keyward-store".into()), ..DaemonConfig::default() });
    assert!(e.try_start().is_err());
    assert!(e.logs().contains("/proc/keyward-store"), "{}", e.logs());
}

#[test]
fn a_second_daemon_on_the_same_store_refuses_to_start() {
    let mut a = Daemon::new(DaemonConfig::default());
    a.start();
    let mut b = Daemon::new(DaemonConfig {
        store_path: Some(a.store_path()),
        master_key_file: a.config.master_key_file.clone(),
        ..DaemonConfig::default()
    });
    let err = b.try_start().unwrap_err();
    assert!(err.contains("exited"));
    assert!(b.logs().contains("in use by another keyward process"), "{}", b.logs());
}

#[test]
fn check_config_exits_64_naming_the_key_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[store]\npath = \"/x\"\n[master_key]\nfile = \"/k\"\n[admin]\nunix = \"/a\"\n[webhooks]\nlisten = \"0.0.0.0:8443\"\npublic_base_url = \"https://h.example\"\nforward_to = \"http://127.0.0.1:3000\"\nmax_body = \"lots\"\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("webhooks.max_body") && err.contains("bad.toml"), "{err}");
    // `serve` refuses the same file before binding anything.
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(64));

    let out = Command::new(BIN).args(["check-config", "--config", "config/keyward.toml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));

    let out = Command::new(BIN).args(["cred", "frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["--admin", "/nonexistent.sock", "cred", "ls", "acme"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `keyward serve` running"));
}

#[test]
fn keygen_writes_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    let out = Command::new(BIN).args(["keygen", "--out"]).arg(&k).output().unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&k).unwrap();
    let out = Command::new(BIN).args(["keygen", "--out"]).arg(&k).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"));
    assert_eq!(std::fs::read(&k).unwrap(), before);
}

#[tokio::test]
async fn key_rotation_rewraps_every_tenant_key_and_can_be_rerun() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    for i in 0..25 {
        put_twilio(&d, &format!("t{i:02}"), CANARY_A).await;
    }
    d.stop();
    let old = d.config.master_key_file.clone().unwrap();
    let new = d.dir.join("new.key");
    write_key(&new);

    // Without the old key in `previous`, the new key alone is refused.
    d.config.master_key_file = Some(new.clone());
    assert!(d.try_start().is_err());

    d.config.previous = vec![old];
    d.start();
    // A partial rotation (one batch), as if interrupted...
    let (_, first) = d.admin("POST", "/v1/keys/rotate?limit=10", None).await;
    assert_eq!(
        (first["rewrapped"].as_u64(), first["remaining"].as_u64(), first["total"].as_u64()),
        (Some(10), Some(15), Some(25))
    );
    d.kill9();
    d.start();
    // ...is finished by rerunning the CLI, which batches to the end.
    let out = d.cli(&["key", "rotate", "--batch", "7"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, again) = d.admin("POST", "/v1/keys/rotate", None).await;
    assert_eq!((again["rewrapped"].as_u64(), again["remaining"].as_u64()), (Some(0), Some(0)));
    d.stop();

    // The old key can now be retired: records still open (restore re-seals, so it opens).
    d.config.previous = vec![];
    d.start();
    d.admin("DELETE", "/v1/tenants/t07/credentials/twilio", None).await;
    let (s, v) = d.admin("POST", "/v1/tenants/t07/credentials/twilio/restore", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, report) = d.admin("GET", "/v1/audit/verify", None).await;
    assert_eq!((s, report["ok"].as_bool()), (200, Some(true)));
}

#[tokio::test]
async fn a_deleted_credential_is_purged_after_retention_and_its_tenant_key_shredded() {
    let mut d = Daemon::new(DaemonConfig { retention: "1s".into(), ..DaemonConfig::default() });
    d.start();
    put_twilio(&d, "acme", CANARY_A).await;
    put_twilio(&d, "globex", CANARY_B).await;
    d.admin("DELETE", "/v1/tenants/acme", None).await;
    let (_, tenants) = d.admin("GET", "/v1/tenants", None).await;
    assert_eq!(tenants["tenants"], json!(["acme", "globex"]), "still restorable, key kept");
    let mut purged = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, tenants) = d.admin("GET", "/v1/tenants", None).await;
        if tenants["tenants"] == json!(["globex"]) {
            purged = true;
            break;
        }
    }
    assert!(purged, "acme's data key was destroyed");
    let (s, v) = d.admin("POST", "/v1/tenants/acme/credentials/twilio/restore", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("no_credential")));
    let (_, list) = d.admin("GET", "/v1/tenants/acme/credentials?include_deleted=true", None).await;
    assert_eq!(list["credentials"], json!([]));
    let (_, audit) = d.admin("GET", "/v1/audit?limit=1000", None).await;
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "credential.purge+tenant.shred" && e["actor"] == "keyward"));
    // globex is untouched.
    let (s, _) = d.admin("GET", "/v1/tenants/globex/credentials/twilio", None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn an_edited_audit_entry_is_detected_by_audit_verify() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    for t in ["a", "b", "c"] {
        put_twilio(&d, t, CANARY_A).await;
    }
    d.stop();
    {
        let store = keyward::store::SledStore::open(&d.store_path()).unwrap();
        let audit = store.raw_tree("audit").unwrap();
        let key = 3u64.to_be_bytes();
        let mut entry: Value = serde_json::from_slice(&audit.get(key).unwrap().unwrap()).unwrap();
        entry["actor"] = json!("uid:666");
        audit.insert(key, serde_json::to_vec(&entry).unwrap()).unwrap();
        store.flush().await.unwrap();
    }
    d.start();
    let out = d.cli(&["audit", "verify"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BROKEN at entry 3"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    d.stop();
    // A removed entry is detected too.
    {
        let store = keyward::store::SledStore::open(&d.store_path()).unwrap();
        let audit = store.raw_tree("audit").unwrap();
        audit.remove(2u64.to_be_bytes()).unwrap();
        store.flush().await.unwrap();
    }
    d.start();
    let (s, report) = d.admin("GET", "/v1/audit/verify", None).await;
    assert_eq!((s, report["first_bad_seq"].as_u64()), (409, Some(2)), "{report}");
}

#[tokio::test]
async fn core_dumps_are_off_in_the_running_daemon() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    let cols: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(cols[4], "0", "{core}");
    let lines = d.log_lines();
    let hygiene = lines.iter().find(|l| l["message"] == "memory hygiene").unwrap();
    assert_eq!(hygiene["not_dumpable"], true);
    if hygiene["memory_locked"] == false {
        assert!(d.logs().contains("RLIMIT_MEMLOCK"), "one warning names the limit");
    }
}

/// `keyward serve` runs with glibc's per-thread cache enlarged (src/malloc.rs): it sets
/// the tunable and executes itself again as the same process, keeping the operator's own
/// tunables and never overriding their cache size.
#[tokio::test]
async fn serve_runs_with_the_larger_allocation_cache_and_keeps_the_operators_tunables() {
    // What follows `GLIBC_TUNABLES=` in the process's initial environment. glibc's loader
    // parses the value in place there, writing a NUL over each `:`, so the tunables are the
    // NUL-separated pieces up to the next `NAME=` entry.
    let tunables = |d: &Daemon| -> Vec<String> {
        let raw = std::fs::read(format!("/proc/{}/environ", d.pid())).unwrap();
        let entries: Vec<String> = raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        let Some(at) = entries.iter().position(|e| e.starts_with("GLIBC_TUNABLES=")) else { return vec![] };
        let mut out = vec![entries[at]["GLIBC_TUNABLES=".len()..].to_string()];
        out.extend(entries[at + 1..].iter().take_while(|e| e.starts_with("glibc.")).cloned());
        out
    };
    let with = |v: &str| DaemonConfig { env: vec![("GLIBC_TUNABLES".into(), v.into())], ..DaemonConfig::default() };

    // The spawned pid serves (the same process after the re-execution) and works.
    let mut d = Daemon::new(with("glibc.malloc.mmap_threshold=131072"));
    d.start();
    assert_eq!(
        tunables(&d),
        ["glibc.malloc.mmap_threshold=131072", "glibc.malloc.tcache_count=256", "glibc.malloc.tcache_max=512"],
        "the operator's tunable is kept and the cache's size added"
    );
    let (s, _) =
        d.admin("PUT", "/v1/tenants/acme/credentials/vapi", Some(r#"{"api_key":"k-000000000000000000"}"#)).await;
    assert_eq!(s, 200);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.pid())).unwrap();
    assert!(cmdline.starts_with(BIN.as_bytes()), "argv[0] is kept: {}", String::from_utf8_lossy(&cmdline));
    assert!(!d.logs().contains("re-executing"), "no warning when it worked");
    drop(d);

    // An operator's own cache size wins.
    let mut d = Daemon::new(with("glibc.malloc.tcache_count=7"));
    d.start();
    assert_eq!(tunables(&d), ["glibc.malloc.tcache_count=7"]);
}

/// The short version of bench/kill9-stress: acknowledged writes survive SIGKILL.
#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut d = Daemon::new(DaemonConfig { log_level: "info".into(), ..DaemonConfig::default() });
    let mut acked: Vec<(String, String)> = Vec::new();
    for cycle in 0..5u64 {
        d.start();
        let sock = d.admin_sock.clone();
        let writer = tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..10_000u64 {
                let tenant = format!("c{cycle}-{i}");
                let token = format!("tok-{cycle}-{i}-0123456789abcdef");
                let body = json!({"account_sid": ACCOUNT_SID, "auth_token": token}).to_string();
                let Ok(stream) = tokio::net::UnixStream::connect(&sock).await else {
                    break;
                };
                let (s, _) = http_request_soft(
                    hyper_util::rt::TokioIo::new(stream),
                    &format!("/v1/tenants/{tenant}/credentials/twilio"),
                    body,
                )
                .await;
                if s == Some(200) {
                    done.push((tenant, token[token.len() - 4..].to_string()));
                } else {
                    break;
                }
            }
            done
        });
        // Kill at a pseudo-random moment.
        tokio::time::sleep(Duration::from_millis(80 + (cycle * 37) % 120)).await;
        d.kill9();
        acked.extend(writer.await.unwrap());
    }
    assert!(acked.len() > 10, "some writes were acknowledged: {}", acked.len());
    d.start();
    for (tenant, tail) in &acked {
        let (s, v) = d.admin("GET", &format!("/v1/tenants/{tenant}/credentials/twilio"), None).await;
        assert_eq!(s, 200, "acknowledged write for {tenant} lost");
        assert!(v["hints"]["auth_token"].as_str().unwrap().ends_with(tail.as_str()));
    }
    let (s, report) = d.admin("GET", "/v1/audit/verify", None).await;
    assert_eq!((s, report["ok"].as_bool()), (200, Some(true)), "{report}");
}

async fn http_request_soft<I>(io: I, path: &str, body: String) -> (Option<u16>, ())
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
        return (None, ());
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method("PUT")
        .uri(path)
        .header("host", "k")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let Ok(resp) = sender.send_request(req).await else {
        return (None, ());
    };
    let status = resp.status().as_u16();
    // The acknowledgement is the complete response.
    match resp.into_body().collect().await {
        Ok(_) => (Some(status), ()),
        Err(_) => (None, ()),
    }
}

/// Every record of every tree, for before/after comparisons.
fn dump_store(path: &std::path::Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let store = keyward::store::SledStore::open(path).unwrap();
    let mut out = vec![];
    for t in ["tenants", "creds", "routes", "audit", "purge", "meta"] {
        for kv in store.raw_tree(t).unwrap().iter() {
            let (k, v) = kv.unwrap();
            out.push((t.to_string(), k.to_vec(), v.to_vec()));
        }
    }
    out
}
