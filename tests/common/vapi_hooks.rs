//! A daemon that both proxies to a fake Vapi and verifies Vapi webhooks for tenant `acme`
//! (HMAC credential, org `org-acme`, assistant `asst-acme` routed), forwarding to a fake
//! app: the setup of the telemetry tests (access log, traces).

use serde_json::json;

use super::fake::{FakeApp, FakeProvider, Pki};
use super::{http_full, Daemon, DaemonConfig};

/// Started, with `[telemetry]` holding `telemetry`, and acme's credential (`key`, `hmac`).
pub async fn daemon(
    telemetry: &str,
    env: Vec<(String, String)>,
    pki: &Pki,
    vapi: &FakeProvider,
    app: &FakeApp,
    (key, hmac): (&str, &str),
) -> Daemon {
    let mut d = Daemon::new(DaemonConfig {
        app: Some(String::new()),
        env,
        extra: format!(
            "[upstream]\nextra_ca = \"{}\"\n[providers.vapi]\nbase_url = \"{}\"\n\
             [webhooks]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://hooks.test\"\nforward_to = \"{}\"\n\
             [telemetry]\n{telemetry}\n",
            pki.ca_pem.display(),
            vapi.url,
            app.url
        ),
        ..DaemonConfig::default()
    });
    d.start();
    let cred = json!({"api_key": key, "webhook_hmac_secret": hmac, "org_id": "org-acme"}).to_string();
    let (s, v) = d.admin("PUT", "/v1/tenants/acme/credentials/vapi", Some(&cred)).await;
    assert_eq!(s, 200, "{v}");
    d.admin("PUT", "/v1/routes/vapi-assistant/asst-acme", Some(r#"{"tenant":"acme"}"#)).await;
    d
}

/// Vapi's signature: hex HMAC-SHA256 of `{timestamp}.{body}`.
pub fn sign(secret: &str, ts: &str, body: &str) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("{ts}.{body}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// Delivers a status update for asst-acme carrying `note`, signed with `secret` (or a
/// forged signature when `None`); the status keyward answered.
pub async fn deliver(d: &Daemon, secret: Option<&str>, note: &str) -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let body = json!({"message": {"type": "status-update", "call": {"assistantId": "asst-acme", "orgId": "org-acme"}, "note": note}}).to_string();
    let sig = secret.map_or_else(|| "00".repeat(32), |s| sign(s, &now, &body));
    let stream = tokio::net::TcpStream::connect(d.addr("webhooks")).await.unwrap();
    let h = [("x-signature", sig.as_str()), ("x-timestamp", now.as_str()), ("content-type", "application/json")];
    http_full(hyper_util::rt::TokioIo::new(stream), "POST", "/webhooks/vapi", Some(body.into_bytes()), &h).await.0
}
