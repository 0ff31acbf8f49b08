//! The JSON and form id extraction behind webhook routing and the in-body tenant checks, on
//! arbitrary bodies and content types: no panic, bounded output.
#![no_main]

use http::{HeaderMap, HeaderValue};
use keyward_core::providers::inbound::Delivery;
use keyward_core::providers::Providers;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (ct, body) = match data.split_first() {
        Some((b, rest)) => (if b % 2 == 0 { "application/json" } else { "application/x-www-form-urlencoded" }, rest),
        None => return,
    };
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static(ct));
    let d = Delivery { method: "POST", url: "https://hooks.example.com/webhooks/x?AccountSid=AC1", headers: &h, body, now: 1 };
    let providers = Providers::default_builtin();
    for name in ["twilio", "vapi", "google", "resend", "elevenlabs"] {
        let def = providers.get(name).unwrap();
        let found = def.route_candidates(&d);
        assert!(found.len() <= 16, "{name}: {} ids", found.len());
        for (_, id) in found {
            assert!(id.len() <= body.len() + 64);
        }
    }
    let _ = keyward_core::redact::json_field_values(body, &["twilioAuthToken", "twilioApiSecret", "credential"]);
});
