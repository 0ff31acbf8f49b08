//! Host allow-lists and the per-request injection on arbitrary hosts and paths: no panic,
//! a host outside a provider's list is refused, and the Twilio account rewrite never lets
//! a path name another account.
#![no_main]

use keyward_core::providers::outbound::FieldSource;
use keyward_core::providers::Providers;
use keyward_core::secret::Secret;
use libfuzzer_sys::fuzz_target;

struct Cred(Secret, Secret);

impl FieldSource for Cred {
    fn secret_field(&self, name: &str) -> Option<&Secret> {
        match name {
            "auth_token" | "api_key" | "client_secret" | "refresh_token" => Some(&self.0),
            "api_key_secret" => Some(&self.1),
            _ => None,
        }
    }
    fn public_field(&self, name: &str) -> Option<&str> {
        match name {
            "account_sid" => Some("AC0123456789abcdef0123456789abcdef"),
            "region" => Some("us1"),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (host, path) = s.split_once('\n').unwrap_or((s, "/"));
    let providers = Providers::default_builtin();
    let cred = Cred(Secret::new("tok".into()), Secret::new("sec".into()));
    let token = Secret::new("access".into());
    for name in ["vapi", "twilio", "google", "resend", "elevenlabs"] {
        let def = providers.get(name).unwrap();
        let rules = def.rules();
        let allowed = def.allows(&cred, host, 443);
        assert!(!allowed || def.claims_host(host, 443), "{name}: allowed but not claimed");
        if allowed {
            assert!(host.is_ascii() && !host.contains(['/', '@', ' ']), "{name} allowed the host {host:?}");
        }
        if let Ok(inj) = rules.inject(&cred, path, Some(&token)) {
            if let Some(p) = inj.path.as_deref() {
                if name == "twilio" && p.starts_with("/2010-04-01/Accounts/") {
                    let seg = &p["/2010-04-01/Accounts/".len()..];
                    let sid = seg.split(['/', '.']).next().unwrap_or("");
                    assert!(sid.is_empty() || sid == "AC0123456789abcdef0123456789abcdef", "rewritten to {p}");
                }
            }
        }
    }
});
