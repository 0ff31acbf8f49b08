//! The OpenAPI 3.1 description of the admin API (docs/openapi.json, served at
//! `GET /v1/openapi.json`). It is written by docs/openapi.py and checked against the
//! router's table both ways, so neither can change without the other.

/// The description, embedded in the binary.
pub(crate) const DOC: &str = include_str!("../../docs/openapi.json");

/// [`DOC`] parsed once (the test below proves it parses).
pub(crate) fn parsed() -> &'static serde_json::Value {
    static PARSED: std::sync::LazyLock<serde_json::Value> =
        std::sync::LazyLock::new(|| serde_json::from_str(DOC).unwrap_or_default());
    &PARSED
}

#[cfg(test)]
mod tests {
    use super::super::router::{route, ROUTES};
    use super::DOC;
    use std::collections::BTreeSet;

    #[test]
    fn every_route_is_described_and_every_description_is_a_route() {
        let doc: serde_json::Value = serde_json::from_str(DOC).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let name = op["operationId"].as_str().unwrap().to_string();
                described.insert((method.to_uppercase(), path.clone(), name));
                let role = op["x-keyward-role"].as_str().unwrap();
                // The role it documents is the one the router enforces.
                let sample = path
                    .replace("{tenant}", "acme")
                    .replace("{provider}", "vapi")
                    .replace("{kind}", "twilio-number")
                    .replace("{id}", "+14155551212");
                let m = http::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let e = route(&m, &sample).unwrap();
                assert_eq!((e.name(), e.role().to_string().as_str()), (op["operationId"].as_str().unwrap(), role));
            }
        }
        let routed: BTreeSet<_> =
            ROUTES.iter().map(|(m, p, n)| (m.to_string(), p.to_string(), n.to_string())).collect();
        let missing: Vec<_> = routed.difference(&described).collect();
        let extra: Vec<_> = described.difference(&routed).collect();
        assert!(missing.is_empty(), "routes without a description in docs/openapi.json: {missing:?}");
        assert!(extra.is_empty(), "described operations the router does not serve: {extra:?}");
    }
}
