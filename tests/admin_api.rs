//! End-to-end: the admin API and CLI of a real daemon over its Unix socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, clippy::result_large_err)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{json, Value};

const TOKEN_CANARY: &str = "CANARYtwilioTOKEN9f3a1b2c3d4e5f60";
const KEY_CANARY: &str = "CANARYvapiKEYzz81d9e0f1a2b3c4d5e6";
const HMAC_CANARY: &str = "CANARYhmacSECRET00112233445566778";

fn twilio_fields() -> String {
    json!({"account_sid": ACCOUNT_SID, "auth_token": TOKEN_CANARY, "phone_numbers": ["+14155551212"]}).to_string()
}

fn vapi_fields() -> String {
    json!({"api_key": KEY_CANARY, "webhook_hmac_secret": HMAC_CANARY, "region": "eu"}).to_string()
}

#[tokio::test]
async fn a_credential_goes_through_put_get_list_delete_and_restore() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();

    let (s, v) = d.admin("PUT", "/v1/tenants/acme/credentials/twilio", Some(&twilio_fields())).await;
    assert_eq!(s, 200, "{v}");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "created_at",
            "fields",
            "hints",
            "last_error",
            "last_verified_at",
            "provider",
            "status",
            "tenant",
            "updated_at",
            "version"
        ],
        "the status object has exactly the contract's keys"
    );
    assert_eq!(v["status"], "active");
    assert_eq!(v["fields"]["account_sid"], ACCOUNT_SID);
    assert_eq!(v["hints"]["auth_token"], "…5f60");
    assert_eq!(v["version"], 1);

    let (s, got) = d.admin("GET", "/v1/tenants/acme/credentials/twilio", None).await;
    assert_eq!(s, 200);
    assert_eq!(got["version"], 1);

    d.admin("PUT", "/v1/tenants/acme/credentials/vapi", Some(&vapi_fields())).await;
    let (_, list) = d.admin("GET", "/v1/tenants/acme/credentials", None).await;
    let providers: Vec<&str> =
        list["credentials"].as_array().unwrap().iter().map(|c| c["provider"].as_str().unwrap()).collect();
    assert_eq!(providers, ["twilio", "vapi"]);

    let (s, del) = d.admin("DELETE", "/v1/tenants/acme/credentials/twilio", None).await;
    assert_eq!(s, 200);
    assert!(del["deleted_at"].is_string() && del["purge_after"].is_string());
    let (s, gone) = d.admin("GET", "/v1/tenants/acme/credentials/twilio", None).await;
    assert_eq!(s, 404);
    assert_eq!(gone["error"]["code"], "no_credential");
    assert!(gone["error"]["message"].as_str().unwrap().contains("keyward cred restore acme twilio"));
    let (_, list) = d.admin("GET", "/v1/tenants/acme/credentials", None).await;
    assert_eq!(list["credentials"].as_array().unwrap().len(), 1);
    let (_, list) = d.admin("GET", "/v1/tenants/acme/credentials?include_deleted=true", None).await;
    assert_eq!(list["credentials"].as_array().unwrap().len(), 2);

    let (s, restored) = d.admin("POST", "/v1/tenants/acme/credentials/twilio/restore", None).await;
    assert_eq!(s, 200, "{restored}");
    assert!(restored.get("deleted_at").is_none());
    assert_eq!(restored["hints"]["auth_token"], "…5f60");
    let (s, again) = d.admin("POST", "/v1/tenants/acme/credentials/twilio/restore", None).await;
    assert_eq!((s, again["error"]["code"].as_str()), (409, Some("conflict")));

    let (_, tenants) = d.admin("GET", "/v1/tenants", None).await;
    assert_eq!(tenants["tenants"], json!(["acme"]));
}

#[tokio::test]
async fn routes_are_put_read_and_removed() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    let (s, v) =
        d.admin("PUT", &format!("/v1/routes/twilio-account/{ACCOUNT_SID}"), Some(r#"{"tenant":"acme"}"#)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = d.admin("GET", &format!("/v1/routes/twilio-account/{ACCOUNT_SID}"), None).await;
    assert_eq!((s, v["tenant"].as_str()), (200, Some("acme")));
    let (s, _) = d.admin("DELETE", &format!("/v1/routes/twilio-account/{ACCOUNT_SID}"), None).await;
    assert_eq!(s, 200);
    let (s, v) = d.admin("GET", &format!("/v1/routes/twilio-account/{ACCOUNT_SID}"), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, v) = d.admin("PUT", "/v1/routes/twilio-account/AC1", Some(r#"{"tenant":"../x"}"#)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    d.admin("PUT", "/v1/tenants/acme/credentials/twilio", Some(&twilio_fields())).await;

    let long = "a".repeat(65);
    let cases: Vec<(String, Option<String>, u16, &str, &str)> = vec![
        ("/v1/tenants/acme/credentials/twilio".into(), Some("{not json".into()), 400, "bad_request", "not valid JSON"),
        ("/v1/tenants/acme/credentials/twilio".into(), Some("".into()), 400, "bad_request", "empty"),
        (
            "/v1/tenants/acme/credentials/twilio".into(),
            Some(r#"{"account_sid": 7, "auth_token": "x"}"#.into()),
            400,
            "invalid_credential",
            "twilio.account_sid must be a string",
        ),
        (
            "/v1/tenants/acme/credentials/twilio".into(),
            Some(json!({"account_sid": "AC12", "auth_token": TOKEN_CANARY}).to_string()),
            400,
            "invalid_credential",
            "twilio.account_sid must match ^AC[0-9a-fA-F]{32}$",
        ),
        (
            "/v1/tenants/acme/credentials/twilio".into(),
            Some(json!({"account_sid": ACCOUNT_SID, "auth_token": TOKEN_CANARY, "extra": "x"}).to_string()),
            400,
            "invalid_credential",
            "unknown field \"extra\"",
        ),
        ("/v1/tenants/acme/credentials/nope".into(), Some("{}".into()), 404, "unknown_provider", "unknown provider"),
        ("/v1/tenants/..%2Fx/credentials/twilio".into(), Some("{}".into()), 400, "bad_request", "invalid tenant id"),
        ("/v1/tenants/%2E%2E/credentials/twilio".into(), Some("{}".into()), 400, "bad_request", "invalid tenant id"),
        ("/v1/tenants/ACME/credentials/twilio".into(), Some("{}".into()), 400, "bad_request", "invalid tenant id"),
        (format!("/v1/tenants/{long}/credentials/twilio"), Some("{}".into()), 400, "bad_request", "invalid tenant id"),
        (
            "/v1/tenants/t%C3%A9nant/credentials/twilio".into(),
            Some("{}".into()),
            400,
            "bad_request",
            "invalid tenant id",
        ),
        ("/v1/tenants/a%00b/credentials/twilio".into(), Some("{}".into()), 400, "bad_request", "invalid tenant id"),
        ("/v1/tenants//credentials/twilio".into(), Some("{}".into()), 400, "bad_request", "invalid tenant id"),
    ];
    for (path, body, status, code, needle) in cases {
        let (s, raw) = d.admin_raw("PUT", &path, body.map(String::into_bytes), &[]).await;
        let v: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(s, status, "{path}: {v}");
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{path}: {v}");
        assert_eq!(canary_hits(&raw, &[TOKEN_CANARY]), 0, "{path}: {v}");
    }

    // Over the body limit: 413, and the stored credential is untouched.
    let big = format!("{{\"account_sid\":\"{}\",\"auth_token\":\"{}\"}}", ACCOUNT_SID, "x".repeat(70_000));
    let (s, raw) = d.admin_raw("PUT", "/v1/tenants/acme/credentials/twilio", Some(big.into_bytes()), &[]).await;
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!((s, v["error"]["code"].as_str()), (413, Some("payload_too_large")));

    let (s, v) = d.admin("GET", "/v1/tenants/acme/credentials/twilio", None).await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "nothing was lost or changed");
    assert_eq!(v["hints"]["auth_token"], "…5f60");

    // Wrong methods and paths.
    let (s, v) = d.admin("POST", "/v1/tenants/acme/credentials/twilio", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (405, Some("method_not_allowed")));
    let (s, v) = d.admin("GET", "/v1/nothing", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, v) = d.admin("GET", "/v1/audit?after=minus", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));

    // Refused writes are audited with their code, and the chain still verifies.
    let (_, audit) = d.admin("GET", "/v1/audit?limit=1000", None).await;
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["result"] == "error:invalid_credential"));
    let (s, report) = d.admin("GET", "/v1/audit/verify", None).await;
    assert_eq!((s, report["ok"].as_bool()), (200, Some(true)), "{report}");
}

#[tokio::test]
async fn no_response_and_no_log_line_contains_a_secret() {
    let mut d =
        Daemon::new(DaemonConfig { retention: "1s".into(), log_level: "trace".into(), ..DaemonConfig::default() });
    d.start();
    let canaries = [TOKEN_CANARY, KEY_CANARY, HMAC_CANARY];
    let mut bodies: Vec<u8> = Vec::new();
    let mut call = |res: (u16, Vec<u8>)| bodies.extend(res.1);
    call(d.admin_raw("PUT", "/v1/tenants/acme/credentials/twilio", Some(twilio_fields().into_bytes()), &[]).await);
    call(d.admin_raw("PUT", "/v1/tenants/acme/credentials/vapi", Some(vapi_fields().into_bytes()), &[]).await);
    // A refused write whose body carries a canary.
    call(
        d.admin_raw(
            "PUT",
            "/v1/tenants/acme/credentials/vapi",
            Some(json!({"api_key": KEY_CANARY, "bogus": HMAC_CANARY}).to_string().into_bytes()),
            &[],
        )
        .await,
    );
    call(
        d.admin_raw(
            "PUT",
            "/v1/tenants/acme/credentials/vapi",
            Some(json!({"api_key": format!(" {KEY_CANARY}")}).to_string().into_bytes()),
            &[],
        )
        .await,
    );
    call(
        d.admin_raw(
            "PUT",
            "/v1/tenants/acme/credentials/vapi",
            Some(format!("{{\"api_key\": \"{KEY_CANARY}").into_bytes()),
            &[],
        )
        .await,
    );
    for path in [
        "/v1/tenants",
        "/v1/tenants/acme/credentials",
        "/v1/tenants/acme/credentials?include_deleted=true",
        "/v1/tenants/acme/credentials/twilio",
        "/v1/tenants/acme/credentials/vapi",
        "/v1/audit?limit=1000",
        "/v1/audit/verify",
    ] {
        call(d.admin_raw("GET", path, None, &[]).await);
    }
    call(d.admin_raw("POST", "/v1/keys/rotate", None, &[]).await);
    call(d.admin_raw("DELETE", "/v1/tenants/acme/credentials/vapi", None, &[]).await);
    call(d.admin_raw("POST", "/v1/tenants/acme/credentials/vapi/restore", None, &[]).await);
    call(d.admin_raw("PUT", "/v1/routes/vapi-assistant/asst-1", Some(br#"{"tenant":"acme"}"#.to_vec()), &[]).await);
    call(d.admin_raw("DELETE", "/v1/tenants/acme", None, &[]).await);
    // The CLI's output too.
    let out = d.cli(&["cred", "ls", "acme", "--deleted"], None);
    bodies.extend(out.stdout);
    bodies.extend(out.stderr);
    let out = d.cli(&["audit", "tail", "--json", "--limit", "100"], None);
    bodies.extend(out.stdout);
    // Let the purge run, which logs too.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    d.stop();
    assert!(bodies.len() > 1000, "the responses were collected");
    assert_eq!(canary_hits(&bodies, &canaries), 0, "a canary reached a response");
    let logs = d.logs();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "the daemon logged at trace level");
    assert_eq!(canary_hits(logs.as_bytes(), &canaries), 0, "a canary reached the log");
}

#[tokio::test]
async fn the_cli_manages_credentials_and_reads_secrets_only_from_stdin_or_a_file() {
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    let out = d.cli(&["cred", "put", "acme", "vapi"], Some(&vapi_fields()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fields = d.dir.join("fields.json");
    std::fs::write(&fields, twilio_fields()).unwrap();
    let out = d.cli(&["cred", "put", "acme", "twilio", "--file", fields.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = d.cli(&["cred", "ls", "acme"], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("twilio") && table.contains("vapi") && table.contains("…5f60"), "{table}");
    let out = d.cli(&["cred", "get", "acme", "twilio"], None);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "active");

    let out = d.cli(&["cred", "rm", "acme", "twilio"], None);
    assert!(out.status.success());
    let out = d.cli(&["cred", "get", "acme", "twilio"], None);
    assert_eq!(out.status.code(), Some(1), "a failed operation exits 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_credential"));
    let out = d.cli(&["cred", "restore", "acme", "twilio"], None);
    assert!(out.status.success());

    let out = d.cli(&["route", "put", "vapi-assistant", "asst-1", "acme"], None);
    assert!(out.status.success());
    let out = d.cli(&["route", "get", "vapi-assistant", "asst-1"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme"));
    let out = d.cli(&["route", "rm", "vapi-assistant", "asst-1"], None);
    assert!(out.status.success());

    let out = d.cli(&["audit", "tail"], None);
    let tail = String::from_utf8_lossy(&out.stdout);
    assert!(tail.contains("credential.put") && tail.contains("route.delete"), "{tail}");
    let out = d.cli(&["audit", "verify"], None);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("audit chain ok"));

    // An empty stdin is a clear error; a secret on argv has no flag to go to (usage: 2).
    let out = d.cli(&["cred", "put", "acme", "vapi"], Some(""));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pipe a JSON object"));
    let out = d.cli(&["cred", "put", "acme", "vapi", KEY_CANARY], None);
    assert_eq!(out.status.code(), Some(2));

    // The admin socket is 0600.
    let mode = std::fs::metadata(&d.admin_sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (s, ready) = d.ops("/readyz").await;
    assert_eq!((s, ready["status"].as_str()), (200, Some("ready")));
    let (s, _) = d.ops("/healthz").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn admin_tcp_needs_the_bearer_token() {
    let dir_token = tempfile::tempdir().unwrap();
    let token_path = dir_token.path().join("token");
    std::fs::write(&token_path, "s3cret-admin-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut d = Daemon::new(DaemonConfig {
        admin_extra: format!("tcp = \"127.0.0.1:0\"\ntoken_file = \"{}\"", token_path.display()),
        ..DaemonConfig::default()
    });
    d.start();
    let addr = d.addr("admin-tcp");
    let get = |headers: Vec<(&'static str, &'static str)>| {
        let addr = addr.clone();
        async move {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            http_request(hyper_util::rt::TokioIo::new(s), "GET", "/v1/tenants", None, &headers).await
        }
    };
    assert_eq!(get(vec![]).await.0, 401);
    assert_eq!(get(vec![("authorization", "Bearer wrong-token-xxxxxxxxxxxxx")]).await.0, 401);
    assert_eq!(get(vec![("authorization", "Bearer s3cret-admin-token-0123456789")]).await.0, 200);
    d.stop();
    assert_eq!(canary_hits(d.logs().as_bytes(), &["s3cret-admin-token-0123456789"]), 0);
}

#[tokio::test]
async fn admin_tcp_off_loopback_needs_tls_and_the_cli_speaks_it() {
    let tmp = tempfile::tempdir().unwrap();
    let token_path = tmp.path().join("token");
    std::fs::write(&token_path, "s3cret-admin-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Any address but loopback, in clear: refused, saying what to do.
    let mut d = Daemon::new(DaemonConfig {
        admin_extra: format!("tcp = \"0.0.0.0:0\"\ntoken_file = \"{}\"", token_path.display()),
        ..DaemonConfig::default()
    });
    assert!(d.try_start().is_err());
    let logs = d.logs();
    assert!(logs.contains("admin.tcp") && logs.contains("[admin.tls]"), "{logs}");
    // With TLS it serves, and the CLI reaches it over https with the CA and the token.
    let pki = common::fake::Pki::new(tmp.path());
    let mut d = Daemon::new(DaemonConfig {
        admin_extra: format!(
            "tcp = \"0.0.0.0:0\"\ntoken_file = \"{}\"\n[admin.tls]\ncert = \"{}\"\nkey = \"{}\"",
            token_path.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        ),
        ..DaemonConfig::default()
    });
    d.start();
    let port = d.addr("admin-tcp").rsplit(':').next().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["--admin", &format!("https://localhost:{port}"), "audit", "verify"])
        .env("KEYWARD_ADMIN_TOKEN_FILE", &token_path)
        .env("KEYWARD_ADMIN_CA", &pki.ca_pem)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Plain HTTP to the TLS port gets no answer from the API.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
    s.write_all(b"GET /v1/tenants HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret-admin-token-0123456789\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
}

#[tokio::test]
async fn another_uid_is_refused_by_the_admin_socket_even_when_it_can_connect() {
    if !rustix::process::geteuid().is_root() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIPPED: needs root and setpriv to act as another uid");
        return;
    }
    let mut d = Daemon::new(DaemonConfig::default());
    d.start();
    // The attacker's best case: the socket's mode was loosened (0600 alone stops a connect).
    std::fs::set_permissions(&d.admin_sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let dir = d.admin_sock.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'GET /v1/tenants HTTP/1.1\\r\\nhost: k\\r\\nconnection: close\\r\\n\\r\\n')\nprint(s.recv(4096).decode(errors='replace'))";
    let out = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script])
        .arg(&d.admin_sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 403") && text.contains("uid 65534 may not use the admin socket"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
