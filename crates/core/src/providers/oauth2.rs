//! OAuth 2.0 providers declared in config (CONTRACT.md §8.3, PROVIDERS-2.md §9): the
//! presets (Microsoft identity platform, HubSpot, Salesforce, Calendly, Zoom and Google),
//! the credential schema each grant needs, and the provider whose calls carry the access
//! token keyward's token manager obtains. The token calls themselves are the daemon's.

use serde_json::Value;
use url::Url;

use super::config::{ClientAuth, Grant, OAuth2Spec, Revoke};
use super::fields::{CrossCheck, FieldDef, ParsedFields, Rule, Schema};
use super::inbound::{Accepted, Delivery, Reject};
use super::outbound::{
    bearer_value, exact, literal_url, url_host_rule, FieldSource, HostRule, Injection, OutboundError,
};
use super::{Provider, WebhookKeys};
use crate::secret::Secret;
use crate::status::CredStatus;

/// The preset names, in documentation order.
pub const PRESETS: [&str; 6] = ["microsoft", "hubspot", "salesforce", "calendly", "zoom", "google"];

/// A preset's endpoints and behaviour (PROVIDERS-2.md §9's table; the uncertain cells
/// are where the docs/… say so).
pub fn preset(name: &str) -> Option<OAuth2Spec> {
    let s = |v: &str| Some(v.to_string());
    let base = OAuth2Spec {
        preset: None,
        auth_url: None,
        token_url: String::new(),
        revoke_url: None,
        revoke: Revoke::None,
        base_url: literal_url("https://localhost"),
        hosts: Vec::new(),
        pkce: true,
        client_auth: ClientAuth::Post,
        grant: Grant::AuthorizationCode,
        scope_on_refresh: false,
        required_scopes: Vec::new(),
        auth_params: Vec::new(),
        instance_url: false,
        account_credentials: false,
        verify_path: None,
    };
    Some(match name {
        // A new refresh token on every refresh, the old one not revoked; scopes sent again
        // on refresh; no refresh token without offline_access; no revocation endpoint.
        "microsoft" => OAuth2Spec {
            preset: Some("microsoft"),
            auth_url: s("https://login.microsoftonline.com/{directory}/oauth2/v2.0/authorize"),
            token_url: "https://login.microsoftonline.com/{directory}/oauth2/v2.0/token".into(),
            base_url: literal_url("https://graph.microsoft.com"),
            hosts: vec![
                exact("graph.microsoft.us"),
                exact("dod-graph.microsoft.us"),
                exact("microsoftgraph.chinacloudapi.cn"),
            ],
            scope_on_refresh: true,
            required_scopes: vec!["offline_access".into()],
            verify_path: s("/v1.0/me"),
            ..base
        },
        // v1's token endpoint is sunset on 2027-02-16: v3 (every parameter in the body).
        // Refresh tokens are long-lived and reused; revocation is v1's DELETE.
        "hubspot" => OAuth2Spec {
            preset: Some("hubspot"),
            auth_url: s("https://app.hubspot.com/oauth/authorize"),
            token_url: "https://api.hubapi.com/oauth/v3/token".into(),
            revoke_url: s("https://api.hubapi.com/oauth/v1/refresh-tokens"),
            revoke: Revoke::DeletePath,
            base_url: literal_url("https://api.hubapi.com"),
            verify_path: s("/account-info/v3/details"),
            ..base
        },
        // Calls go to the token answer's instance_url (the org's My Domain), stored per
        // tenant; rotation is optional per connected app and handled either way.
        "salesforce" => OAuth2Spec {
            preset: Some("salesforce"),
            auth_url: s("https://login.salesforce.com/services/oauth2/authorize"),
            token_url: "https://login.salesforce.com/services/oauth2/token".into(),
            revoke_url: s("https://login.salesforce.com/services/oauth2/revoke"),
            revoke: Revoke::Form,
            base_url: literal_url("https://login.salesforce.com"),
            hosts: vec![HostRule::Suffix(".my.salesforce.com")],
            instance_url: true,
            verify_path: s("/services/oauth2/userinfo"),
            ..base
        },
        // Single-use refresh tokens: each refresh returns a new one and revokes the used
        // one at once (the token manager persists it before anything else). Web clients
        // authenticate with Basic; PKCE is for native clients, so it is off by default.
        "calendly" => OAuth2Spec {
            preset: Some("calendly"),
            auth_url: s("https://auth.calendly.com/oauth/authorize"),
            token_url: "https://auth.calendly.com/oauth/token".into(),
            revoke_url: s("https://auth.calendly.com/oauth/revoke"),
            revoke: Revoke::FormWithClient,
            base_url: literal_url("https://api.calendly.com"),
            pkce: false,
            client_auth: ClientAuth::Basic,
            verify_path: s("/users/me"),
            ..base
        },
        // Rotating refresh tokens, Basic client auth; server-to-server apps use the
        // account_credentials grant (`grant = "client_credentials"`).
        "zoom" => OAuth2Spec {
            preset: Some("zoom"),
            auth_url: s("https://zoom.us/oauth/authorize"),
            token_url: "https://zoom.us/oauth/token".into(),
            revoke_url: s("https://zoom.us/oauth/revoke"),
            revoke: Revoke::FormWithClient,
            base_url: literal_url("https://api.zoom.us"),
            client_auth: ClientAuth::Basic,
            account_credentials: true,
            verify_path: s("/v2/users/me"),
            ..base
        },
        // PROVIDERS.md §4.1; the built-in `google` provider uses this preset.
        "google" => OAuth2Spec {
            preset: Some("google"),
            auth_url: s("https://accounts.google.com/o/oauth2/v2/auth"),
            token_url: "https://oauth2.googleapis.com/token".into(),
            revoke_url: s("https://oauth2.googleapis.com/revoke"),
            revoke: Revoke::Form,
            base_url: literal_url("https://www.googleapis.com"),
            auth_params: [("access_type", "offline"), ("prompt", "consent"), ("include_granted_scopes", "true")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .to_vec(),
            ..base
        },
        _ => return None,
    })
}

/// An OAuth 2.0 provider declared in config.
#[derive(Debug)]
pub(crate) struct OAuth2 {
    name: String,
    spec: OAuth2Spec,
}

impl OAuth2 {
    pub(crate) fn new(name: &str, spec: OAuth2Spec) -> Self {
        OAuth2 { name: name.to_string(), spec }
    }
}

impl Provider for OAuth2 {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> Schema {
        schema(&self.name, &self.spec)
    }

    fn default_base_url(&self, _region: &str) -> Url {
        self.spec.base_url.clone()
    }

    fn hosts(&self) -> Vec<HostRule> {
        let mut rules: Vec<HostRule> = url_host_rule(&self.spec.base_url).into_iter().collect();
        rules.extend(self.spec.hosts.iter().cloned());
        rules
    }

    fn inject(&self, _cred: &dyn FieldSource, _path: &str, token: Option<&Secret>) -> Result<Injection, OutboundError> {
        bearer_value(token.ok_or(OutboundError::NoToken)?)
    }

    fn uses_access_token(&self) -> bool {
        true
    }

    fn per_credential_host(&self) -> bool {
        self.spec.instance_url
    }

    fn credential_base_url(&self, cred: &dyn FieldSource) -> Option<Url> {
        if !self.spec.instance_url {
            return None;
        }
        cred.public_field("instance_url").and_then(|u| Url::parse(u).ok())
    }

    fn has_webhooks(&self) -> bool {
        false
    }

    fn verify(&self, _d: &Delivery<'_>, _k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        Err(Reject::BadSignature(format!("provider {} has no webhook scheme", self.name)))
    }

    fn check_path(&self, _cred: &dyn FieldSource) -> Option<String> {
        self.spec.verify_path.clone()
    }
}

fn scope(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_whitespace)
}

/// A Microsoft directory: `common`, `organizations`, `consumers`, a GUID or a domain.
fn directory(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

fn https_url(s: &str) -> bool {
    Url::parse(s).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some() && u.username().is_empty())
}

/// Until the connect flow stores a refresh token the credential cannot be used.
fn needs_consent(p: &mut ParsedFields) -> Result<(), (Option<&'static str>, String)> {
    if !p.has("refresh_token") {
        p.status = Some(CredStatus::Inactive);
        p.warnings.push(
            "no refresh_token yet; the credential stays inactive until the connect flow (oauth/{provider}/start) completes"
                .into(),
        );
    }
    Ok(())
}

/// The fields of a Google service-account key file keyward does not use, accepted so the
/// file can be put as it is.
const KEY_FILE_EXTRAS: [&str; 7] = [
    "type",
    "project_id",
    "client_id",
    "auth_uri",
    "auth_provider_x509_cert_url",
    "client_x509_cert_url",
    "universe_domain",
];

fn schema(name: &str, spec: &OAuth2Spec) -> Schema {
    let templated =
        spec.token_url.contains("{directory}") || spec.auth_url.as_deref().is_some_and(|u| u.contains("{directory}"));
    let mut fields = Vec::new();
    let mut cross: Option<CrossCheck> = None;
    match spec.grant {
        Grant::AuthorizationCode => {
            fields.push(FieldDef::public("client_id", true, Rule::Opaque));
            // A public client (PKCE, client id in the body) has no secret.
            let public_client = spec.pkce && spec.client_auth == ClientAuth::Post;
            fields.push(FieldDef::secret("client_secret", !public_client, Rule::Opaque));
            fields.push(FieldDef::secret("refresh_token", false, Rule::Opaque));
            fields.push(FieldDef::public_list("scopes", false, Rule::Pattern("a scope without spaces", scope)));
            if spec.instance_url {
                fields.push(FieldDef::public("instance_url", false, Rule::Pattern("an https:// URL", https_url)));
            }
            cross = Some(needs_consent);
        }
        Grant::ClientCredentials => {
            fields.push(FieldDef::public("client_id", true, Rule::Opaque));
            fields.push(FieldDef::secret("client_secret", true, Rule::Opaque));
            fields.push(FieldDef::public_list("scopes", false, Rule::Pattern("a scope without spaces", scope)));
            if spec.account_credentials {
                fields.push(FieldDef::public("account_id", true, Rule::Opaque));
            }
        }
        Grant::JwtBearer => {
            fields.push(FieldDef::public("client_email", true, Rule::Opaque));
            fields.push(FieldDef::public("private_key_id", false, Rule::Opaque));
            fields.push(FieldDef::secret(
                "private_key",
                true,
                Rule::Pattern("an RSA key in PEM -----BEGIN PRIVATE KEY----- (PKCS#8)", super::rs256::is_rsa_pkcs8),
            ));
            fields.push(FieldDef::public("token_uri", false, Rule::Pattern("an https:// URL", https_url)));
            fields.push(FieldDef::public_list("scopes", true, Rule::Pattern("a scope without spaces", scope)));
            fields.push(FieldDef::public("subject", false, Rule::Opaque));
            fields.extend(KEY_FILE_EXTRAS.iter().map(|f| FieldDef::public(f, false, Rule::Opaque)));
        }
    }
    if templated {
        fields.push(FieldDef::public(
            "directory",
            false,
            Rule::Pattern("common, organizations, consumers, a directory id or a domain", directory),
        ));
    }
    Schema { provider: name.to_string(), fields, cross }
}

/// The claims of a JWT-bearer assertion (PROVIDERS-2.md §9.1, google-auth's
/// `_make_authorization_grant_assertion`): one hour, `aud` the token endpoint.
pub fn assertion_claims(cred: &dyn FieldSource, scopes: &[&str], aud: &str, now: u64) -> Value {
    let mut claims = serde_json::json!({
        "iat": now,
        "exp": now + 3600,
        "iss": cred.public_field("client_email").unwrap_or_default(),
        "aud": aud,
        "scope": scopes.join(" "),
    });
    if let Some(sub) = cred.public_field("subject") {
        claims["sub"] = Value::String(sub.to_string());
    }
    claims
}

/// A signed JWT-bearer assertion with the credential's key (`kid` = `private_key_id`).
pub fn assertion(cred: &dyn FieldSource, claims: &Value) -> Result<zeroize::Zeroizing<String>, OutboundError> {
    let key = cred.secret_field("private_key").ok_or_else(|| OutboundError::MissingField("private_key".into()))?;
    let mut header = serde_json::json!({"typ": "JWT", "alg": "RS256"});
    if let Some(kid) = cred.public_field("private_key_id") {
        header["kid"] = Value::String(kid.to_string());
    }
    super::rs256::sign(&header, claims, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(p: &str) -> OAuth2Spec {
        preset(p).unwrap_or_else(|| panic!("{p}"))
    }

    #[test]
    fn every_preset_has_its_endpoints_and_a_live_check_or_says_why_not() {
        for p in PRESETS {
            let s = spec(p);
            let fill = |u: &str| Url::parse(&OAuth2Spec::fill(u, None)).is_ok();
            assert!(fill(&s.token_url), "{p}");
            assert!(s.auth_url.as_deref().is_some_and(fill), "{p}");
            assert_eq!(s.revoke == Revoke::None, s.revoke_url.is_none(), "{p}");
            // Google's built-in provider keeps its own check path.
            assert_eq!(s.verify_path.is_none(), p == "google", "{p}");
        }
        assert!(preset("github").is_none());
    }

    #[test]
    fn microsoft_fills_its_directory_and_always_asks_for_offline_access() {
        let s = spec("microsoft");
        assert_eq!(
            OAuth2Spec::fill(&s.token_url, Some("contoso.onmicrosoft.com")),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        let mine = vec!["https://graph.microsoft.com/Calendars.ReadWrite".to_string(), "offline_access".to_string()];
        assert_eq!(s.scopes(&mine), ["offline_access", "https://graph.microsoft.com/Calendars.ReadWrite"]);
        let o = OAuth2::new("outlook", s);
        assert!(o.schema().parse(json!({"client_id": "c", "client_secret": "s", "directory": "a/b"})).is_err());
        let p = o.schema().parse(json!({"client_id": "c", "client_secret": "s", "directory": "common"})).unwrap();
        assert_eq!(p.status, Some(CredStatus::Inactive), "no refresh token yet");
    }

    #[test]
    fn each_grant_asks_for_its_own_fields() {
        let zoom = OAuth2Spec { grant: Grant::ClientCredentials, ..spec("zoom") };
        let z = OAuth2::new("zoom", zoom).schema();
        assert!(z.parse(json!({"client_id": "c", "client_secret": "s"})).is_err(), "account_id");
        let p = z.parse(json!({"client_id": "c", "client_secret": "s", "account_id": "a"})).unwrap();
        assert_eq!(p.status, None, "usable at once");
        let sa = OAuth2::new("gsa", OAuth2Spec { grant: Grant::JwtBearer, ..spec("google") }).schema();
        let bad = sa.parse(json!({"client_email": "x@y", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "scopes": ["s"]}));
        assert!(bad.is_err_and(|e| e.field.as_deref() == Some("private_key")));
        // A PKCE public client needs no secret; a Basic-authenticated one does.
        let pub_client = OAuth2::new("hs", spec("hubspot")).schema();
        assert!(pub_client.parse(json!({"client_id": "c"})).is_ok());
        assert!(OAuth2::new("cal", spec("calendly")).schema().parse(json!({"client_id": "c"})).is_err());
    }

    #[test]
    fn a_salesforce_token_goes_only_to_the_tenants_instance() {
        let sf = OAuth2::new("crm", spec("salesforce"));
        let with = super::super::outbound::tests::fields(&[], &[("instance_url", "https://acme.my.salesforce.com")]);
        assert_eq!(
            sf.credential_base_url(&with).map(|u| u.to_string()),
            Some("https://acme.my.salesforce.com/".into())
        );
        assert!(sf.per_credential_host());
        assert!(sf
            .schema()
            .parse(json!({"client_id": "c", "client_secret": "s", "instance_url": "http://x"}))
            .is_err());
    }
}
