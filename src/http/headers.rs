//! Which headers belong to one hop and never cross keyward, in either direction.

use http::header::CONNECTION;
use http::HeaderMap;

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the proxy-authentication pair of RFC 9110
/// §11.7, which authenticates a hop, not the origin). `Host` is not here: it is replaced
/// when a request is rebuilt for its next hop, and a response never carries it.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` (lower case) is hop-by-hop.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// The header names a `Connection` header lists (hop-by-hop for this message only).
pub(crate) fn connection_listed(h: &HeaderMap) -> Vec<String> {
    h.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Removes every hop-by-hop header, the ones `Connection` names included.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most responses carry none: one pass over the names instead of nine removals, each
    // hashing its name (this runs on every response).
    if !h.keys().any(|n| is_hop_by_hop(n.as_str())) {
        return;
    }
    for l in connection_listed(h) {
        h.remove(l.as_str());
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// Removes every `Keyward-*` header: keyward's own namespace, which only keyward may set on
/// what it hands to the app (a provider, or anything on its path, must not speak for it).
pub(crate) fn strip_keyward(h: &mut HeaderMap) {
    let names: Vec<_> = h.keys().filter(|n| n.as_str().starts_with("keyward-")).cloned().collect();
    for n in names {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn connection_listed_headers_go_too() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Trace"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));
    }
}
