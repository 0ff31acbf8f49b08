//! The TOML shapes as written (CONTRACT.md §3), before validation. Unknown keys are
//! refused everywhere (`deny_unknown_fields`), so a typo is an error, not a silent default.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) store: RawStore,
    pub(super) master_key: RawMasterKey,
    pub(super) app: Option<RawApp>,
    pub(super) webhooks: Option<RawWebhooks>,
    pub(super) admin: RawAdmin,
    pub(super) ops: Option<RawOps>,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) providers: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) danger: RawDanger,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) verification: RawVerification,
    #[serde(default)]
    pub(super) telemetry: RawTelemetry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) access_log: Option<String>,
    pub(super) otlp_endpoint: Option<String>,
    pub(super) otlp_ca: Option<String>,
    pub(super) sample_ratio: Option<f64>,
    pub(super) service_name: Option<String>,
    #[serde(default)]
    pub(super) resource_attributes: BTreeMap<String, String>,
    pub(super) propagate_to_providers: Option<String>,
    pub(super) audit_checkpoint_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerification {
    pub(super) interval: Option<String>,
    pub(super) concurrency: Option<usize>,
    pub(super) discover_routes: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) backend: Option<String>,
    pub(super) path: Option<String>,
    pub(super) deleted_retention: Option<String>,
    pub(super) cache_entries: Option<usize>,
    pub(super) url: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) password_credential: Option<String>,
    pub(super) tls_ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMasterKey {
    pub(super) file: Option<String>,
    pub(super) env: Option<String>,
    pub(super) credential: Option<String>,
    pub(super) vault_transit: Option<RawTransit>,
    pub(super) pkcs11: Option<RawPkcs11>,
    #[serde(default)]
    pub(super) previous: Vec<String>,
    pub(super) previous_vault_transit: Option<RawTransit>,
    pub(super) previous_pkcs11: Option<RawPkcs11>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransit {
    pub(super) address: String,
    pub(super) key: String,
    pub(super) mount: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) approle: Option<RawAppRole>,
    pub(super) kubernetes: Option<RawKubernetes>,
    pub(super) ca_file: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) cache_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppRole {
    pub(super) role_id_file: String,
    pub(super) secret_id_file: String,
    pub(super) mount: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub(super) role: String,
    pub(super) jwt_file: Option<String>,
    pub(super) mount: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPkcs11 {
    pub(super) module: String,
    pub(super) token_label: String,
    pub(super) pin_file: String,
    pub(super) key_label: String,
    pub(super) sessions: Option<usize>,
    pub(super) cache_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) unix: Option<String>,
    pub(super) unix_mode: Option<String>,
    pub(super) tcp: Option<String>,
    pub(super) tls: Option<RawMtls>,
    #[serde(default)]
    pub(super) clients: Vec<RawClient>,
    pub(super) max_connections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMtls {
    pub(super) cert: String,
    pub(super) key: String,
    pub(super) client_ca: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) uid: Option<u32>,
    pub(super) san: Option<String>,
    pub(super) tenants: Vec<String>,
    pub(super) providers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    pub(super) listen: String,
    pub(super) public_base_url: String,
    pub(super) forward_to: String,
    pub(super) max_body: Option<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) forward_timeout: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_source: Option<usize>,
    pub(super) body_read_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) unix: Option<String>,
    pub(super) tcp: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
    #[serde(default)]
    pub(super) console: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: String,
    pub(super) role: String,
    pub(super) token_sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOps {
    pub(super) listen: String,
    #[serde(default)]
    pub(super) metrics_tenant_labels: bool,
    pub(super) drain_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) connect_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) extra_ca: Option<String>,
    pub(super) http2: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) per_tenant: String,
    pub(super) burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuiltin {
    pub(super) base_url: Option<String>,
    pub(super) rate_limit: Option<RawRateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGoogle {
    pub(super) base_url: Option<String>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) token_url: Option<String>,
    pub(super) auth_url: Option<String>,
    pub(super) revoke_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInject {
    pub(super) header: Option<String>,
    pub(super) value: Option<String>,
    pub(super) basic: Option<[String; 2]>,
    pub(super) query: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhookScheme {
    pub(super) scheme: String,
    pub(super) header: Option<String>,
    pub(super) tolerance: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGeneric {
    pub(super) base_url: String,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    pub(super) fields: Vec<String>,
    #[serde(default)]
    pub(super) public_fields: Vec<String>,
    pub(super) inject: RawInject,
    pub(super) webhook: Option<RawWebhookScheme>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) verify_path: Option<String>,
}

/// `[providers.<name>]` with an `oauth2` table (CONTRACT.md §8.3).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuthProvider {
    pub(super) oauth2: RawOAuth2,
    pub(super) base_url: Option<String>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) verify_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth2 {
    pub(super) preset: Option<String>,
    pub(super) auth_url: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) revoke_url: Option<String>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) pkce: Option<bool>,
    pub(super) client_auth: Option<String>,
    pub(super) grant: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDanger {
    #[serde(default)]
    pub(super) allow_plain_http_upstream: bool,
    #[serde(default)]
    pub(super) create_missing_master_key: bool,
    #[serde(default)]
    pub(super) app_plain_tcp: bool,
    #[serde(default)]
    pub(super) admin_plain_tcp: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}
