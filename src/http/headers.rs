//! Which headers belong to one hop and never cross keyward, in either direction.

use http::header::CONNECTION;
use http::{HeaderMap, HeaderName};

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

/// Whether a `Connection` header lists `token` (lower case), without a copy of any.
pub(crate) fn connection_lists(h: &HeaderMap, token: &str) -> bool {
    listed(h).any(|t| t.eq_ignore_ascii_case(token))
}

/// The tokens of every `Connection` header, trimmed, as sent (compare without case): the
/// header names it lists are hop-by-hop for this message only.
pub(crate) fn listed(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Removes every hop-by-hop header, the ones `Connection` names included.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names finds the hop-by-hop ones present; only those are removed
    // (this runs on every response, and a keep-alive upstream's carry `Connection` alone):
    // nine removals by name would parse and hash each.
    let present: Vec<HeaderName> = h.keys().filter(|n| is_hop_by_hop(n.as_str())).cloned().collect();
    if present.is_empty() {
        return;
    }
    // What `Connection` lists beyond those (`close` and `keep-alive` name nothing more).
    let named = |t: &str| t.eq_ignore_ascii_case("close") || HOP_BY_HOP.iter().any(|n| t.eq_ignore_ascii_case(n));
    let extra: Vec<String> = listed(h).filter(|t| !named(t)).map(str::to_owned).collect();
    for t in extra {
        h.remove(t.as_str());
    }
    for n in present {
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

        // Listed names in any case, several Connection headers, a listed hop-by-hop name.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("keep-alive"));
        h.append("connection", HeaderValue::from_static(" X-One ,Upgrade,"));
        for n in ["x-one", "upgrade", "keep-alive", "te", "trailer", "proxy-connection", "x-kept"] {
            h.insert(n, HeaderValue::from_static("v"));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        // Only `Connection: close`: it goes, nothing else.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("content-length", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["content-length"]);
    }
}
