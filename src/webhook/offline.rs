//! `keyward webhook verify`: checks one delivery offline, with the key from a file and an
//! optional pinned clock, running the same verifier as the listener (minus tenant, replay
//! and in-body checks), so an operator can see exactly why a delivery fails.

use http::{HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use keyward_core::providers::inbound::Delivery;
use keyward_core::providers::Providers;

/// `Name: value` lines from the command line as a header map.
pub fn header_map(lines: &[String]) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for line in lines {
        let (k, v) =
            line.split_once(':').ok_or_else(|| format!("bad_request: --header {line:?} is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("bad_request: {k:?} is not a header name"))?;
        let value = HeaderValue::from_str(v.trim_start())
            .map_err(|_| format!("bad_request: the value of {k} is not a valid header value"))?;
        h.append(name, value);
    }
    Ok(h)
}

/// `Ok` for a valid delivery to `provider` under a whole credential (its fields as JSON,
/// exactly as for `cred put`, so every key the scheme needs is there: Telnyx's public keys,
/// a previous key during a rotation), else `<code>: <detail>`.
pub fn verify_offline_credential(
    providers: &Providers,
    provider: &str,
    credential_json: &[u8],
    d: &Delivery<'_>,
) -> Result<(), String> {
    let def = providers
        .get(provider)
        .ok_or_else(|| format!("unknown_provider: no provider {provider} (generic providers need --config)"))?;
    let value: serde_json::Value = serde_json::from_slice(credential_json).map_err(|e| {
        format!("bad_request: the credential file is not JSON: {}", e.to_string().chars().take(120).collect::<String>())
    })?;
    let fields = def.schema.parse(value).map_err(|e| format!("invalid_credential: {e}"))?;
    let keys = def
        .webhook_keys(&fields)
        .ok_or_else(|| format!("no_credential: the credential holds no webhook key for {provider}"))?;
    def.verify_delivery(d, &keys).map(|_| ()).map_err(|r| format!("{}: {}", r.code(), r.detail()))
}

/// `Ok` for a valid delivery to `provider`, else `<code>: <detail>`.
pub fn verify_offline(
    providers: &Providers,
    provider: &str,
    secret_file_content: &[u8],
    d: &Delivery<'_>,
) -> Result<(), String> {
    let def = providers
        .get(provider)
        .ok_or_else(|| format!("unknown_provider: no provider {provider} (generic providers need --config)"))?;
    if !def.has_webhooks() {
        return Err(format!("no_credential: provider {provider} has no webhook scheme"));
    }
    // One trailing LF or CRLF is not part of the key.
    let trimmed = secret_file_content
        .strip_suffix(b"\r\n")
        .or_else(|| secret_file_content.strip_suffix(b"\n"))
        .unwrap_or(secret_file_content);
    let key = Zeroizing::new(trimmed.to_vec());
    let keys = def.rules().offline_keys(&key[..], d.headers);
    def.verify_delivery(d, &keys).map(|_| ()).map_err(|r| format!("{}: {}", r.code(), r.detail()))
}
