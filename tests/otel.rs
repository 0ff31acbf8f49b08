//! OpenTelemetry traces over OTLP/HTTP, received by a decoder built on the official protobuf
//! definitions (tests/otlp_receiver.py, PyPI opentelemetry-proto): keyward continues the
//! app's W3C trace, its spans nest as documented, webhook deliveries start their own trace
//! and the app continues it, sampling follows the ratio and the parent, and no span holds a
//! secret, a query value or a header value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::fake::*;
use common::otlp::*;
use common::vapi_hooks;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "CANARYotelVapiKey00000000000001";
const HMAC: &str = "CANARYotelVapiHmac0000000000002";
const QUERY_CANARY: &str = "CANARYotelQueryValue00000000003";
const HEADER_CANARY: &str = "CANARYotelHeaderValue0000000004";
const BODY_CANARY: &str = "CANARYotelBodyValue000000000005";
const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

/// Every attribute key a keyward span may carry (docs/observability.md lists them).
const ALLOWED: &[&str] = &[
    "keyward.request_id",
    "keyward.tenant",
    "keyward.provider",
    "keyward.error_code",
    "keyward.cache",
    "keyward.kms",
    "keyward.result",
    "keyward.reason",
    "http.request.method",
    "http.response.status_code",
    "http.request.body.size",
    "http.response.body.size",
    "server.address",
];

/// What a trace test runs against: the receiver, a fake Vapi and app, and the daemon.
struct Setup {
    _tmp: tempfile::TempDir,
    receiver: Receiver,
    vapi: FakeProvider,
    app: FakeApp,
    d: Daemon,
}

/// `telemetry` holds `{endpoint}` where the receiver's URL goes; `None` when the receiver
/// cannot run here (the test is skipped). The batch exporter's delay is cut so that spans
/// arrive within the test's patience.
async fn setup(telemetry: &str) -> Option<Setup> {
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(tmp.path())?;
    let pki = Pki::new(tmp.path());
    let vapi = FakeProvider::start(&pki).await;
    let app = FakeApp::start(Arc::new(|_r: Recorded| Box::pin(async { json_response(200, r#"{"ok":1}"#) }))).await;
    let telemetry = telemetry.replace("{endpoint}", &format!("http://127.0.0.1:{}", receiver.port));
    let env = vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into())];
    let d = vapi_hooks::daemon(&telemetry, env, &pki, &vapi, &app, (KEY, HMAC)).await;
    Some(Setup { _tmp: tmp, receiver, vapi, app, d })
}

#[tokio::test]
async fn traces_continue_the_apps_nest_by_phase_reach_the_app_and_hold_no_secret() {
    let telemetry = "otlp_endpoint = \"{endpoint}\"\nservice_name = \"keyward-test\"\nresource_attributes = { \"deployment.environment\" = \"ci\" }";
    let Some(Setup { _tmp: _dir, receiver, vapi, app, mut d }) = setup(telemetry).await else { return };

    let traceparent = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let body = format!("{{\"note\":\"{BODY_CANARY}\"}}");
    let (s, _, _) = d
        .app(
            "POST",
            &format!("/vapi/call?token={QUERY_CANARY}"),
            &[("keyward-tenant", "acme"), ("traceparent", &traceparent), ("x-note", HEADER_CANARY)],
            Some(body.clone().into_bytes()),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(vapi.last().header("traceparent"), Some(traceparent.clone()), "the provider gets the app's, unchanged");
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    assert_eq!(s, 200);
    let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "nobody")], None).await;
    assert_eq!(s, 404);
    assert_eq!(vapi_hooks::deliver(&d, Some(HMAC), BODY_CANARY).await, 200);
    let to_app = app.last().header("traceparent").expect("the forward to the app carries a traceparent");
    let (kind, openmetrics) = d.metrics_text(true).await;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let (kind, plain) = d.metrics_text(false).await;
    assert!(kind.starts_with("text/plain") && !plain.contains(" # {"), "no exemplars in the Prometheus format");
    d.stop();

    let spans = wait_for(&receiver, 10).await;
    let continued: Vec<&Value> =
        named(&spans, "keyward.proxy").into_iter().filter(|s| s["trace_id"] == APP_TRACE).collect();
    assert_eq!(continued.len(), 1, "{spans:#?}");
    let proxy = continued[0];
    assert_eq!(
        (proxy["parent_span_id"].as_str(), proxy["kind"].as_i64()),
        (Some(APP_SPAN), Some(2)),
        "server, under the app's span"
    );
    assert_eq!((attr(proxy, "keyward.tenant"), attr(proxy, "keyward.provider")), (&json!("acme"), &json!("vapi")));
    assert_eq!(
        (attr(proxy, "http.request.method"), attr(proxy, "http.response.status_code")),
        (&json!("POST"), &json!(200))
    );
    assert_eq!(attr(proxy, "http.request.body.size"), &json!(body.len()));
    assert_eq!(attr(proxy, "http.response.body.size"), &json!(r#"{"ok":true}"#.len()));
    let resolve = child_of(&spans, proxy, "keyward.credential.resolve");
    assert_eq!(attr(resolve, "keyward.cache"), "miss", "the first call opens the store");
    let upstream = child_of(&spans, proxy, "keyward.upstream");
    assert_eq!((upstream["kind"].as_i64(), attr(upstream, "server.address")), (Some(3), &json!("127.0.0.1")));
    assert_eq!(attr(upstream, "http.response.status_code"), 200);
    assert!(upstream["end"].as_u64() <= proxy["end"].as_u64(), "the server span ends last");

    let own: Vec<&Value> = named(&spans, "keyward.proxy").into_iter().filter(|s| s["trace_id"] != APP_TRACE).collect();
    assert_eq!(own.len(), 2, "calls without a traceparent start their own traces");
    assert!(own.iter().all(|s| s["parent_span_id"] == ""));
    let hit = own.iter().find(|s| attr(s, "http.response.status_code") == 200).unwrap();
    assert_eq!(attr(child_of(&spans, hit, "keyward.credential.resolve"), "keyward.cache"), "hit");
    let refused = own.iter().find(|s| attr(s, "http.response.status_code") == 404).unwrap();
    assert_eq!(attr(refused, "keyward.error_code"), "unknown_tenant");

    // Exemplars: each latency bucket names the trace of its latest observation.
    let traces: BTreeSet<&str> =
        named(&spans, "keyward.proxy").iter().map(|s| s["trace_id"].as_str().unwrap()).collect();
    for histogram in ["keyward_upstream_response_seconds_bucket", "keyward_credential_resolve_seconds_bucket"] {
        let exemplars: Vec<&str> = openmetrics
            .lines()
            .filter(|l| l.starts_with(histogram))
            .filter_map(|l| l.split_once(" # {trace_id=\"").map(|(_, rest)| &rest[..32]))
            .collect();
        assert!(!exemplars.is_empty(), "{histogram} has no exemplar:\n{openmetrics}");
        assert!(exemplars.iter().all(|t| traces.contains(t)), "{histogram}: {exemplars:?} not among {traces:?}");
    }

    let hook = named(&spans, "keyward.webhook");
    assert_eq!(hook.len(), 1);
    let hook = hook[0];
    assert_eq!((hook["parent_span_id"].as_str(), attr(hook, "keyward.tenant")), (Some(""), &json!("acme")));
    let verify = child_of(&spans, hook, "keyward.webhook.verify");
    assert_eq!(
        (attr(verify, "keyward.result"), attr(verify, "keyward.provider")),
        (&json!("verified"), &json!("vapi"))
    );
    let forward = child_of(&spans, hook, "keyward.webhook.forward");
    assert_eq!(attr(forward, "http.response.status_code"), 200);
    assert_eq!(
        to_app,
        format!("00-{}-{}-01", hook["trace_id"].as_str().unwrap(), forward["span_id"].as_str().unwrap()),
        "the app continues keyward's trace under the forward span"
    );

    assert!(spans.iter().all(|s| s["resource"]["service.name"] == "keyward-test"
        && s["resource"]["deployment.environment"] == "ci"
        && s["events"] == 0));
    let keys: BTreeSet<&str> =
        spans.iter().flat_map(|s| s["attributes"].as_object().unwrap().keys().map(String::as_str)).collect();
    let unexpected: Vec<&&str> = keys.iter().filter(|k| !ALLOWED.contains(k)).collect();
    assert!(unexpected.is_empty(), "attributes outside the allow-list: {unexpected:?}");
    let canaries = [KEY, HMAC, QUERY_CANARY, HEADER_CANARY, BODY_CANARY];
    assert_eq!(
        canary_hits(&receiver.raw(), &canaries),
        0,
        "no secret, query value, header value or body in what keyward exported"
    );
}

#[tokio::test]
async fn sampling_follows_the_ratio_and_the_apps_decision_and_never_sends_providers_no_trace_context() {
    let telemetry = "otlp_endpoint = \"{endpoint}/\"\nsample_ratio = 0.0\npropagate_to_providers = \"never\"";
    let Some(Setup { _tmp: _dir, receiver, vapi, app: _app, mut d }) = setup(telemetry).await else { return };
    for _ in 0..5 {
        d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme")], None).await;
    }
    let sampled = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let unsampled = format!("00-{}-{APP_SPAN}-00", "a".repeat(32));
    for tp in [&sampled, &unsampled] {
        let (s, _, _) = d.app("GET", "/vapi/assistant", &[("keyward-tenant", "acme"), ("traceparent", tp)], None).await;
        assert_eq!(s, 200);
        let seen = vapi.last();
        assert_eq!(
            (seen.header("traceparent"), seen.header("tracestate")),
            (None, None),
            "\"never\": not even the app's"
        );
    }
    d.stop();
    let spans = wait_for(&receiver, 3).await;
    let roots: BTreeSet<&str> =
        named(&spans, "keyward.proxy").iter().map(|s| s["trace_id"].as_str().unwrap()).collect();
    assert_eq!(
        roots,
        BTreeSet::from([APP_TRACE]),
        "ratio 0 drops keyward's own traces; the app's sampled one is kept, its unsampled one not"
    );
}
