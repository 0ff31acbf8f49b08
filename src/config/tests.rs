use std::collections::BTreeMap;

use super::*;

const MINIMAL: &str = r#"
[store]
path = "/var/lib/keyward"
[master_key]
file = "/run/key"
[admin]
unix = "/run/keyward/admin.sock"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/keyward/keyward.toml"), text, &BTreeMap::new())
}

fn key_of(text: &str) -> String {
    parse(text).unwrap_err().key().unwrap_or("(none)").to_string()
}

#[test]
fn a_minimal_config_parses_with_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.store.deleted_retention, Duration::from_secs(14 * 86_400));
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.app.is_none());
}

#[test]
fn the_example_config_with_every_key_parses() {
    let text = include_str!("../../config/keyward.toml");
    let c = parse(text).unwrap();
    assert!(c.app.is_some() && c.webhooks.is_some() && c.ops.is_some());
    assert!(c.providers.generic.contains_key(&ProviderName::parse("acme").unwrap()));
}

#[test]
fn the_dev_config_parses() {
    let c =
        Config::parse(Path::new("config/dev.toml"), include_str!("../../config/dev.toml"), &BTreeMap::new()).unwrap();
    assert!(c.danger.create_missing_master_key);
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let e = parse(&MINIMAL.replace("path =", "pathx = \"x\"\npath =")).unwrap_err().to_string();
    assert!(e.contains("/etc/keyward/keyward.toml"), "{e}");
    assert!(e.contains("store") && e.contains("pathx"), "{e}");
    assert!(parse(&format!("{MINIMAL}\n[bogus]\nx = 1\n")).unwrap_err().to_string().contains("bogus"));
}

#[test]
fn bad_values_name_their_key() {
    assert_eq!(
        key_of(&format!("{MINIMAL}\n[upstream]\nconnect_timeout = \"5 seconds\"\n")),
        "upstream.connect_timeout"
    );
    assert_eq!(
            key_of(&format!("{MINIMAL}\n[webhooks]\nlisten = \"0.0.0.0:8443\"\npublic_base_url = \"https://u:p@h.example\"\nforward_to = \"http://127.0.0.1:3000\"\n")),
            "webhooks.public_base_url"
        );
    assert_eq!(
            key_of(&format!("{MINIMAL}\n[webhooks]\nlisten = \"0.0.0.0:8443\"\npublic_base_url = \"https://h.example\"\nforward_to = \"http://127.0.0.1:3000\"\nmax_body = \"1 MB\"\n")),
            "webhooks.max_body"
        );
    assert_eq!(key_of(&format!("{MINIMAL}\n[app]\ntcp = \"127.0.0.1:7443\"\n")), "app.tls");
    assert_eq!(key_of(&format!("{MINIMAL}\n[app]\nunix = \"/a.sock\"\nunix_mode = \"0666\"\n")), "app.unix_mode");
    assert_eq!(
        key_of(&format!("{MINIMAL}\n[providers.twilio]\nbase_url = \"http://127.0.0.1:1\"\n")),
        "providers.twilio.base_url"
    );
    assert_eq!(
        key_of(&format!("{MINIMAL}\n[providers.twilio]\nrate_limit = {{ per_tenant = \"fast\" }}\n")),
        "providers.twilio.rate_limit.per_tenant"
    );
    assert_eq!(key_of(&format!("{MINIMAL}\n[log]\nformat = \"xml\"\n")), "log.format");
    assert_eq!(key_of(&MINIMAL.replace("file = \"/run/key\"", "file = \"/run/key\"\nenv = \"K\"")), "master_key");
}

#[test]
fn a_missing_section_is_named() {
    let e = parse("[store]\npath = \"/x\"\n[admin]\nunix = \"/a\"\n").unwrap_err().to_string();
    assert!(e.contains("master_key"), "{e}");
}

#[test]
fn syntax_errors_give_line_and_column() {
    let e = parse("[store]\npath = \n").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
}

#[test]
fn relative_paths_are_resolved_against_the_config_directory() {
    let c = parse(&MINIMAL.replace("/var/lib/keyward", "data")).unwrap();
    assert_eq!(c.store.path, Path::new("/etc/keyward/data"));
}

#[test]
fn generic_providers_check_their_templates() {
    let base =
        format!("{MINIMAL}\n[providers.acme]\nbase_url = \"https://api.acme.example\"\nfields = [\"api_key\"]\n");
    let ok =
        parse(&format!("{base}inject = {{ header = \"Authorization\", value = \"Bearer {{api_key}}\" }}\n")).unwrap();
    let acme = &ok.providers.generic[&ProviderName::parse("acme").unwrap()];
    assert_eq!(acme.hosts, vec!["api.acme.example".to_string()]);
    assert_eq!(
        key_of(&format!("{base}inject = {{ header = \"Authorization\", value = \"Bearer {{token}}\" }}\n")),
        "providers.acme.inject.value"
    );
    assert_eq!(key_of(&format!("{base}inject = {{ header = \"X\" }}\n")), "providers.acme.inject");
    assert_eq!(
        key_of(&format!(
            "{base}inject = {{ query = \"key\", value = \"{{api_key}}\" }}\nwebhook = {{ scheme = \"stripe\" }}\n"
        )),
        "providers.acme.fields"
    );
}

#[test]
fn oauth2_providers_start_from_a_preset_or_name_their_endpoints() {
    use keyward_core::providers::config::{ClientAuth, Grant};
    let ok = parse(&format!(
        "{MINIMAL}\n[providers.outlook]\noauth2 = {{ preset = \"microsoft\" }}\n\
         [providers.crm]\nbase_url = \"https://api.crm.example\"\nverify_path = \"/me\"\n\
         oauth2 = {{ auth_url = \"https://id.crm.example/auth\", token_url = \"https://id.crm.example/token\", client_auth = \"client_secret_basic\", pkce = false }}\n"
    ))
    .unwrap();
    let (outlook, _) = &ok.providers.oauth2[&ProviderName::parse("outlook").unwrap()];
    assert_eq!(
        (outlook.preset, outlook.grant, outlook.scope_on_refresh),
        (Some("microsoft"), Grant::AuthorizationCode, true)
    );
    let (crm, _) = &ok.providers.oauth2[&ProviderName::parse("crm").unwrap()];
    assert_eq!((crm.client_auth, crm.pkce, crm.verify_path.as_deref()), (ClientAuth::Basic, false, Some("/me")));
    for (section, key, needle) in [
        ("oauth2 = { preset = \"github\" }", "providers.x.oauth2.preset", "microsoft, hubspot"),
        ("oauth2 = { preset = \"zoom\", grant = \"implicit\" }", "providers.x.oauth2.grant", "client_credentials"),
        (
            "oauth2 = { preset = \"zoom\", client_auth = \"mtls\" }",
            "providers.x.oauth2.client_auth",
            "client_secret_post",
        ),
        ("oauth2 = { token_url = \"https://t.example/token\" }", "providers.x.base_url", "needs base_url"),
        (
            "base_url = \"https://a.example\"\noauth2 = { auth_url = \"https://t.example/a\" }",
            "providers.x.oauth2.token_url",
            "needs token_url",
        ),
        (
            "base_url = \"https://a.example\"\noauth2 = { token_url = \"https://t.example/t\" }",
            "providers.x.oauth2.auth_url",
            "authorization_code",
        ),
        (
            "oauth2 = { preset = \"hubspot\", token_url = \"http://t.example/t\" }",
            "providers.x.oauth2.token_url",
            "https",
        ),
        ("oauth2 = { preset = \"hubspot\", scopes = [\"a\"] }", "providers.x.oauth2.scopes", "unknown field"),
    ] {
        let e = parse(&format!("{MINIMAL}\n[providers.x]\n{section}\n")).unwrap_err();
        assert_eq!(e.key(), Some(key), "{section}: {e}");
        assert!(e.to_string().contains(needle), "{section}: {e}");
    }
}

#[test]
fn env_overlay_changes_the_log_level_and_names_itself_on_error() {
    let mut env = BTreeMap::new();
    env.insert("KEYWARD_LOG".to_string(), "debug".to_string());
    let c = Config::parse(Path::new("/k.toml"), MINIMAL, &env).unwrap();
    assert_eq!(c.log.level, "debug");
    env.insert("KEYWARD_LOG_FORMAT".to_string(), "yaml".to_string());
    let e = Config::parse(Path::new("/k.toml"), MINIMAL, &env).unwrap_err();
    assert_eq!(e.key(), Some("KEYWARD_LOG_FORMAT (environment)"));
}

#[test]
fn durations_sizes_and_rates_parse() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("14d").unwrap(), Duration::from_secs(14 * 86_400));
    for bad in ["", "5", "s", "-5s", "5 s", "1.5s", "99999999999999999s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_size("64KiB").unwrap(), 65_536);
    assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
    assert!(parse_size("1MB").is_err());
    assert_eq!(parse_rate("50/s").unwrap(), 50.0);
    assert!(parse_rate("0/s").is_err());
}

#[test]
fn telemetry_settings_default_off_and_bad_ones_name_their_key() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!((c.telemetry.access_log.clone(), c.telemetry.otlp_endpoint.clone()), (AccessMode::Off, None));
    assert_eq!(c.telemetry.propagate_to_providers, TraceContextOut::AsReceived);
    let t = |body: &str| format!("{MINIMAL}\n[telemetry]\n{body}\n");
    let c = parse(&t("access_log = \"access.jsonl\"\notlp_endpoint = \"http://collector:4318\"\nsample_ratio = 0.25\npropagate_to_providers = \"never\"")).unwrap();
    assert_eq!(c.telemetry.access_log, AccessMode::File("/etc/keyward/access.jsonl".into()), "relative to the file");
    assert_eq!((c.telemetry.sample_ratio, c.telemetry.propagate_to_providers), (0.25, TraceContextOut::Never));
    assert_eq!(key_of(&t("sample_ratio = 1.5")), "telemetry.sample_ratio");
    assert_eq!(key_of(&t("otlp_endpoint = \"grpc://collector:4317\"")), "telemetry.otlp_endpoint");
    assert_eq!(key_of(&t("otlp_endpoint = \"http://u:p@collector:4318\"")), "telemetry.otlp_endpoint");
    assert_eq!(key_of(&t("propagate_to_providers = \"always\"")), "telemetry.propagate_to_providers");
    assert_eq!(key_of(&t("service_name = \" \"")), "telemetry.service_name");
}
