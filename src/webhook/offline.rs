//! `keyward webhook verify`: checks one delivery offline, with the key from a file and an
//! optional pinned clock, running the same verifier as the listener (minus tenant, replay
//! and in-body checks), so an operator can see exactly why a delivery fails.

use http::{HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use keyward_core::providers::inbound::Delivery;
use keyward_core::providers::Providers;

/// One delivery as the operator describes it on the command line.
#[derive(Debug, Clone, Copy)]
pub struct OfflineDelivery<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// The URL the provider called.
    pub url: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// `Name: value` lines.
    pub headers: &'a [String],
    /// Raw body.
    pub body: &'a [u8],
    /// Unix seconds to verify at.
    pub now: u64,
}

/// `Ok` for a valid delivery, else `<code>: <detail>`.
pub fn verify_offline(providers: &Providers, secret_file_content: &[u8], o: OfflineDelivery<'_>) -> Result<(), String> {
    let OfflineDelivery { provider, url, method, headers, body, now } = o;
    let def = providers
        .get(provider)
        .ok_or_else(|| format!("unknown_provider: no provider {provider} (generic providers need --config)"))?;
    if !def.has_webhooks() {
        return Err(format!("no_credential: provider {provider} has no webhook scheme"));
    }
    let mut h = HeaderMap::new();
    for line in headers {
        let (k, v) =
            line.split_once(':').ok_or_else(|| format!("bad_request: --header {line:?} is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("bad_request: {k:?} is not a header name"))?;
        let value = HeaderValue::from_str(v.trim_start())
            .map_err(|_| format!("bad_request: the value of {k} is not a valid header value"))?;
        h.append(name, value);
    }
    // One trailing LF or CRLF is not part of the key.
    let trimmed = secret_file_content
        .strip_suffix(b"\r\n")
        .or_else(|| secret_file_content.strip_suffix(b"\n"))
        .unwrap_or(secret_file_content);
    let key = Zeroizing::new(trimmed.to_vec());
    let d = Delivery { method, url, headers: &h, body, now };
    let keys = def.rules().offline_keys(&key[..], &h);
    def.verify_delivery(&d, &keys).map(|_| ()).map_err(|r| format!("{}: {}", r.code(), r.detail()))
}
