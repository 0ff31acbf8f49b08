//! Every signature-header parser (Twilio, Vapi HMAC and static, Google, Standard Webhooks,
//! Resend, ElevenLabs, Stripe-style, Retell, Telnyx Ed25519, Deepgram Basic, Cartesia,
//! OpenAI) on arbitrary header values and bodies: no panic, and nothing verifies without
//! the key.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use keyward_core::providers::inbound::{Delivery, WebhookKeys};
use keyward_core::providers::Providers;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 19] = [
    "x-twilio-signature",
    "x-twilio-webhooks-signature-settings",
    "x-signature",
    "x-timestamp",
    "x-vapi-secret",
    "authorization",
    "x-goog-channel-id",
    "x-goog-channel-token",
    "webhook-id",
    "webhook-signature",
    "webhook-timestamp",
    "svix-signature",
    "elevenlabs-signature",
    "stripe-signature",
    "content-type",
    "x-retell-signature",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
    "x-webhook-secret",
];

fuzz_target!(|data: &[u8]| {
    // Layout: [header index, value length, value bytes…]* then the body.
    let mut h = HeaderMap::new();
    let mut rest = data;
    while rest.len() >= 2 && rest[0] < 200 {
        let name = NAMES[(rest[0] as usize) % NAMES.len()];
        let len = (rest[1] as usize).min(rest.len() - 2);
        if let Ok(v) = HeaderValue::from_bytes(&rest[2..2 + len]) {
            h.append(HeaderName::from_static(name), v);
        }
        rest = &rest[2 + len..];
    }
    // Fixed to values that pass every check before the MAC or token comparison, so the
    // fuzzer's bytes reach it: ids, a timestamp inside the window, a valid Google state.
    for (fixed, value) in [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", "1700000000"),
        ("svix-id", "msg_1"),
        ("svix-timestamp", "1700000000"),
        ("x-goog-message-number", "1"),
        ("x-goog-resource-id", "res-1"),
        ("x-goog-resource-uri", "https://www.googleapis.com/calendar/v3/calendars/primary/events"),
        ("x-goog-resource-state", "exists"),
    ] {
        if !h.contains_key(fixed) {
            h.insert(HeaderName::from_static(fixed), HeaderValue::from_static(value));
        }
    }
    let providers = Providers::default_builtin();
    let d = Delivery { method: "POST", url: "https://hooks.example.com/webhooks/x/acme?a=1", headers: &h, body: rest, now: 1_700_000_000 };
    // Google's channel token and the static Vapi secret are compared whole: 22+ characters.
    for name in ["twilio", "vapi", "google", "resend", "elevenlabs", "retell", "telnyx", "deepgram", "cartesia", "openai"] {
        let def = providers.get(name).unwrap();
        for hmac in [false, true] {
            // Telnyx keys are public keys: RFC 8032's first test key, whose secret half the
            // fuzzer does not hold either.
            let key: &[u8] = if name == "telnyx" {
                b"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
            } else {
                b"the-fuzzer-does-not-know-this-key"
            };
            let keys = WebhookKeys { keys: vec![key], hmac };
            assert!(def.verify_delivery(&d, &keys).is_err(), "{name} accepted a delivery without the key");
        }
        let _ = def.route_candidates(&d);
    }
});
