//! Named operators with roles (CONTRACT.md §8.2): tokens made by `keyward admin token new`,
//! kept in the config only as SHA-256 digests; viewer, operator and admin see exactly their
//! share of the admin API, a refusal is `403 forbidden_role` and audited, and every audit
//! entry names the user.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

struct User {
    token_file: std::path::PathBuf,
    token: String,
    entry: String,
}

/// `keyward admin token new NAME --role ROLE --out FILE`: the token file and the entry.
fn new_user(dir: &Path, name: &str, role: &str) -> User {
    let token_file = dir.join(format!("{name}.token"));
    let out = Command::new(BIN)
        .args(["admin", "token", "new", name, "--role", role, "--out"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let entry = stdout.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(!stdout.contains(&token), "with --out the token is only in the file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    User { token_file, token, entry }
}

async fn call(addr: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = format!("Bearer {token}");
    let (status, _, b) = http_full(
        hyper_util::rt::TokioIo::new(s),
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
        &[("authorization", auth.as_str())],
    )
    .await;
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_operator_and_admin_get_their_share_and_refusals_are_audited_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (vera, olga, ada) = (
        new_user(tmp.path(), "vera", "viewer"),
        new_user(tmp.path(), "olga", "operator"),
        new_user(tmp.path(), "ada", "admin"),
    );
    let mut d = Daemon::new(DaemonConfig {
        admin_extra: format!("tcp = \"127.0.0.1:0\"\n{}\n{}\n{}", vera.entry, olga.entry, ada.entry),
        ..DaemonConfig::default()
    });
    d.start();
    let addr = d.addr("admin-tcp");
    let vapi = json!({"api_key": "CANARYrolesVapiKey000000000001"});
    let put = "/v1/tenants/acme/credentials/vapi";
    // viewer: reads, never writes.
    assert_eq!(call(&addr, &vera.token, "GET", "/v1/tenants", None).await.0, 200);
    let (s, v) = call(&addr, &vera.token, "PUT", put, Some(vapi.clone())).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden_role")), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("vera has the role viewer; credential.put needs operator"));
    // operator: writes credentials and routes, no key rotation, no log level, no users.
    assert_eq!(call(&addr, &olga.token, "PUT", put, Some(vapi.clone())).await.0, 200);
    assert_eq!(call(&addr, &vera.token, "GET", put, None).await.0, 200, "the viewer sees the status");
    for (method, path, body) in [
        ("POST", "/v1/keys/rotate", None),
        ("PUT", "/v1/log/level", Some(json!({"level": "debug"}))),
        ("GET", "/v1/users", None),
    ] {
        let (s, v) = call(&addr, &olga.token, method, path, body).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden_role")), "{path}: {v}");
    }
    // admin: all of it.
    assert_eq!(call(&addr, &ada.token, "POST", "/v1/keys/rotate", None).await.0, 200);
    let (s, users) = call(&addr, &ada.token, "GET", "/v1/users", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        users["users"],
        json!([{"name": "vera", "role": "viewer"}, {"name": "olga", "role": "operator"}, {"name": "ada", "role": "admin"}])
    );
    // An unknown token is 401, whoever it claims to be.
    assert_eq!(call(&addr, "kwu_not-a-token-0000000000000000000000000", "GET", "/v1/tenants", None).await.0, 401);
    // The audit log names each user, refusals included.
    let (_, audit) = call(&addr, &vera.token, "GET", "/v1/audit?limit=100", None).await;
    let entries: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("vera", "credential.put", "error:forbidden_role"),
        ("olga", "credential.put", "ok"),
        ("olga", "keys.rotate", "error:forbidden_role"),
        ("olga", "log.level", "error:forbidden_role"),
        ("ada", "keys.rotate", "ok"),
    ] {
        assert!(
            entries.iter().any(|(a, c, r)| (a.as_str(), c.as_str(), r.as_str()) == want),
            "{want:?} not in {entries:?}"
        );
    }
    // The CLI uses the same tokens: the viewer's `cred put` is refused, the operator's works.
    let cli = |u: &User, args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new(BIN);
        c.env("KEYWARD_ADMIN_TOKEN_FILE", &u.token_file).arg("--admin").arg(format!("http://{addr}")).args(args);
        c.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    };
    let body = r#"{"api_key":"CANARYrolesVapiKey000000000002"}"#;
    let refused = cli(&vera, &["cred", "put", "globex", "vapi"], Some(body));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("forbidden_role"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(cli(&olga, &["cred", "put", "globex", "vapi"], Some(body)).status.success());
    assert!(cli(&vera, &["cred", "ls", "globex"], None).status.success());
    // The Unix socket keeps its uid rule and is admin.
    let out = d.cli(&["key", "rotate"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // No token reached the log; the config holds digests only.
    d.stop();
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    for u in [&vera, &olga, &ada] {
        assert!(!d.logs().contains(&u.token) && !config.contains(&u.token));
    }
}

#[test]
fn bad_user_entries_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base =
        "[store]\npath = \"/x\"\n[master_key]\nfile = \"/k\"\n[admin]\nunix = \"/a\"\ntcp = \"127.0.0.1:7444\"\n";
    let digest = "a".repeat(64);
    for (users, key, says) in [
        (format!("[[admin.users]]\nname = \"al ice\"\nrole = \"viewer\"\ntoken_sha256 = \"{digest}\"\n"), "admin.users[0].name", "letters"),
        (format!("[[admin.users]]\nname = \"alice\"\nrole = \"root\"\ntoken_sha256 = \"{digest}\"\n"), "admin.users[0].role", "viewer, operator or admin"),
        ("[[admin.users]]\nname = \"alice\"\nrole = \"viewer\"\ntoken_sha256 = \"abc\"\n".to_string(), "admin.users[0].token_sha256", "64 hex digits"),
        (
            format!("[[admin.users]]\nname = \"a\"\nrole = \"viewer\"\ntoken_sha256 = \"{digest}\"\n[[admin.users]]\nname = \"b\"\nrole = \"admin\"\ntoken_sha256 = \"{digest}\"\n"),
            "admin.users[1].token_sha256",
            "another user's token",
        ),
    ] {
        let cfg = dir.path().join("k.toml");
        std::fs::write(&cfg, format!("{base}{users}")).unwrap();
        let out = Command::new(BIN).args(["check-config", "--config"]).arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains(says), "{err}");
    }
}
