//! The `keyward` binary: parse the command line, set up telemetry, dispatch, and map
//! errors to exit codes (0 ok, 1 failed, 2 usage, 64 bad configuration). No logic here.

use std::process::ExitCode;

use clap::Parser;

use keyward::cli::{Cli, Command};
use keyward::config::{Config, ConfigError, ProcessEnv};
use keyward::{ctl, hardening, telemetry};

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime's threads: this may execute the program again (see the module).
    let malloc_note = matches!(cli.command, Command::Serve).then(keyward::malloc::apply).flatten();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keyward: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match cli.command {
        Command::Serve => runtime.block_on(serve(cli.config, malloc_note)),
        Command::CheckConfig => check_config(cli.config),
        Command::Admin(keyward::cli::AdminCmd::Token(keyward::cli::TokenCmd::New { name, role, out })) => {
            admin_token_new(&name, &role, out.as_deref())
        }
        Command::Keygen { out } => match keyward::write_new_key_file(&out) {
            Ok(()) => {
                println!("wrote a new master key to {} (mode 0600)", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Webhook(keyward::cli::WebhookCmd::Verify {
            provider,
            secret_file,
            credential_file,
            url,
            method,
            headers,
            body_file,
            now,
        }) => {
            let providers = match &cli.config {
                Some(path) => match Config::load(path, &ProcessEnv) {
                    Ok(c) => keyward_core::providers::Providers::from_config(&c.providers),
                    Err(e) => {
                        eprintln!("keyward: bad configuration: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                None => keyward_core::providers::Providers::default_builtin(),
            };
            // clap guarantees exactly one of the two.
            let (key_file, whole) = match (&secret_file, &credential_file) {
                (_, Some(f)) => (f, true),
                (Some(f), None) => (f, false),
                (None, None) => return fail("give --secret-file or --credential-file"),
            };
            let secret = match std::fs::read(key_file) {
                Ok(s) => zeroize::Zeroizing::new(s),
                Err(e) => return fail(&format!("cannot read {}: {e}", key_file.display())),
            };
            let body = match std::fs::read(&body_file) {
                Ok(b) => b,
                Err(e) => return fail(&format!("cannot read {}: {e}", body_file.display())),
            };
            let now = now.unwrap_or_else(keyward_core::time::now_secs);
            let headers = match keyward::offline::header_map(&headers) {
                Ok(h) => h,
                Err(why) => {
                    println!("invalid: {why}");
                    return ExitCode::from(EXIT_FAILED);
                }
            };
            let delivery =
                keyward_core::providers::Delivery { method: &method, url: &url, headers: &headers, body: &body, now };
            let verdict = if whole {
                keyward::offline::verify_offline_credential(&providers, &provider, &secret, &delivery)
            } else {
                keyward::offline::verify_offline(&providers, &provider, &secret, &delivery)
            };
            match verdict {
                Ok(()) => {
                    println!("valid");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    println!("invalid: {why}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Store(keyward::cli::StoreCmd::Migrate { from, to }) => {
            let (from, to) = match (load_config(Some(from)), load_config(Some(to))) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(code), _) | (_, Err(code)) => return code,
            };
            telemetry::init_cli();
            match runtime.block_on(keyward::migrate(&from, &to, &ProcessEnv)) {
                Ok(n) => {
                    println!("copied {} tenants, {} credentials, {} routes, {} audit entries; the target's audit chain verifies", n.tenants, n.credentials, n.routes, n.audit);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("{e:#}")),
            }
        }
        Command::Health { url } => match runtime.block_on(ctl::health(&url)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => fail(&format!("{url} is not ready")),
            Err(e) => fail(&format!("{e:#}")),
        },
        command => {
            telemetry::init_cli();
            runtime.block_on(client(cli.admin, cli.config, command))
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("keyward: {msg}");
    ExitCode::from(EXIT_FAILED)
}

fn load_config(path: Option<std::path::PathBuf>) -> Result<Config, ExitCode> {
    let Some(path) = path else {
        eprintln!("keyward: --config FILE is required");
        return Err(ExitCode::from(2));
    };
    Config::load(&path, &ProcessEnv).map_err(|e: ConfigError| {
        eprintln!("keyward: bad configuration: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check_config(path: Option<std::path::PathBuf>) -> ExitCode {
    match load_config(path) {
        Ok(c) => {
            print!("{}", c.summary());
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn serve(path: Option<std::path::PathBuf>, malloc_note: Option<String>) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let hygiene = hardening::apply();
    let traces = match keyward::otlp::pipeline(&config.telemetry) {
        Ok(t) => t,
        Err(e) => return fail(&format!("telemetry.otlp_endpoint: {e}")),
    };
    let log = telemetry::init(&config.log, traces.as_ref().map(keyward::otlp::Traces::tracer));
    tracing::info!(
        core_dumps_off = hygiene.core_dumps_off,
        not_dumpable = hygiene.not_dumpable,
        memory_locked = hygiene.memory_locked,
        "memory hygiene"
    );
    if let Some(note) = &hygiene.mlock_note {
        tracing::warn!("{note}");
    }
    if let Some(note) = &malloc_note {
        tracing::warn!("{note}");
    }
    for w in config.danger_warnings() {
        tracing::warn!("{w}");
    }
    let served = keyward::serve(config, &ProcessEnv, log).await;
    if let Some(t) = traces {
        t.shutdown().await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keyward could not start");
            eprintln!("keyward: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn client(admin: Option<String>, config: Option<std::path::PathBuf>, command: Command) -> ExitCode {
    let ep = match ctl::endpoint(admin.as_deref(), config.as_deref()) {
        Ok(ep) => ep,
        Err(e) => {
            let code = if e.downcast_ref::<ConfigError>().is_some() { EXIT_CONFIG } else { EXIT_FAILED };
            eprintln!("keyward: {e:#}");
            return ExitCode::from(code);
        }
    };
    let result = match command {
        Command::Cred(c) => ctl::cred(&ep, c).await.map(|()| true),
        Command::Route(c) => ctl::route(&ep, c).await.map(|()| true),
        Command::Audit(c) => ctl::audit(&ep, c).await,
        Command::Key(c) => ctl::key(&ep, c).await.map(|()| true),
        Command::Log(c) => ctl::log(&ep, c).await.map(|()| true),
        Command::Serve
        | Command::CheckConfig
        | Command::Keygen { .. }
        | Command::Admin(_)
        | Command::Webhook(_)
        | Command::Health { .. }
        | Command::Store(_) => Ok(true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILED),
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// `keyward admin token new NAME`: a fresh token and the config entry holding its digest.
fn admin_token_new(name: &str, role: &str, out: Option<&std::path::Path>) -> ExitCode {
    if keyward::AdminRole::parse(role).is_none() {
        eprintln!("keyward: --role must be viewer, operator or admin, not \"{role}\"");
        return ExitCode::from(2);
    }
    if !keyward::valid_user_name(name) {
        eprintln!("keyward: the name must be 1 to 64 letters, digits, '.', '_', '-' or '@'");
        return ExitCode::from(2);
    }
    let (token, digest) = match keyward::new_admin_token() {
        Ok(t) => t,
        Err(_) => return fail("the operating system's random number generator failed"),
    };
    let entry = format!("[[admin.users]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{digest}\"\n");
    match out {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| f.write_all(format!("{}\n", token.as_str()).as_bytes()));
            if let Err(e) = written {
                return fail(&format!("cannot write {} (never overwritten): {e}", path.display()));
            }
            println!(
                "# the token is in {} (mode 0600); add this to keyward.toml and restart:\n{entry}",
                path.display()
            );
        }
        None => println!(
            "# add this to keyward.toml and restart; hand the token to {name} (shown once):\n{entry}\n{}",
            token.as_str()
        ),
    }
    ExitCode::SUCCESS
}
