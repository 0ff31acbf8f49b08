//! What the store and fleet benchmarks share: the bench tenants and their credentials.

use keyward::ids::TenantId;
use keyward::Credentials;
use serde_json::json;

/// Credential fields for bench tenant `i` (Vapi, else Twilio).
pub(crate) fn fields_for(provider: &str, i: usize) -> serde_json::Value {
    match provider {
        "vapi" => json!({"api_key": format!("bench-key-{i:08}-0123456789abcdef")}),
        _ => {
            json!({"account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": format!("token-{i:08}-0123456789abcdef")})
        }
    }
}

/// Writes `n` credentials of `provider` for tenants `t0000000…` through `creds`, 1,000 per batch.
pub(crate) async fn populate_provider(creds: &Credentials, n: usize, provider: &str) {
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 1000).min(n))
            .map(|j| (TenantId::parse(&format!("t{j:07}")).unwrap(), provider.to_string(), fields_for(provider, j)))
            .collect();
        i += batch.len();
        creds.import_batch("bench", batch).await.unwrap();
    }
}
