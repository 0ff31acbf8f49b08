//! keyward: a sidecar secrets proxy. Apps call providers through it with no credential in
//! hand; it injects each tenant's credential, verifies inbound webhooks, and keeps every
//! secret encrypted at rest and out of logs.
//!
//! This is the daemon crate. Below it, and unable to see it, are `keyward-core` (pure:
//! secret types, ids, time, units, redaction, the provider model) and `keyward-store`
//! (records, the audit chain, sled and PostgreSQL; never plaintext). docs/architecture.md
//! draws the whole tree.
//!
//! # Layout
//!
//! Layers, lowest first. A module may import from its own layer and the layers below it,
//! never from a layer above, and no import cycle may join two modules; `tests/layers.rs`
//! reads this list and fails on either.
//!
//! 1. **foundation**: [`hardening`], [`malloc`], [`shutdown`], [`telemetry`], [`metrics`] —
//!    memory hygiene, glibc's allocation cache, signals and drain, logging, the Prometheus
//!    registry (figures from above arrive through `metrics::DerivedSource`).
//! 2. **keys and transport**: [`vault`], [`tls`], [`otlp`] — the master keyring and
//!    sealing; rustls configurations; the OpenTelemetry exporter and trace-context
//!    propagation.
//! 3. **credentials**: [`creds`] — store + vault; the only producer of plaintext; the
//!    cache; audited writes.
//! 4. **http**: [`http`] — body types and bounded reads, hop-by-hop rules, the upstream
//!    client, the app listener's request-target parser.
//! 5. **services**: [`oauth`], [`live`] — OAuth tokens and the connect flow (every OAuth provider); live checks
//!    and route discovery. They return their own typed errors.
//! 6. **edge**: [`error`], [`listen`], [`policy`], [`access`] — the one error-to-HTTP
//!    mapping; socket binding and accept loops; client policy and rate limits; the access
//!    log's records.
//! 7. **servers**: [`proxy`], [`webhook`], [`admin`], [`console`], [`ops`] — the listeners'
//!    services; the console renders pages from the admin API (it imports `admin`, never
//!    the other way).
//! 8. **configuration**: [`config`] — TOML parsed into the components' own config types.
//! 9. **composition**: [`app`], [`migrate`] — building and running the daemon; store moves.
//! 10. **command line**: [`cli`], [`ctl`], [`fuzzing`], `main` — argument parsing, the admin
//!     client, and the parsers' entry points for `fuzz/`.

mod access;
mod admin;
mod app;
pub mod cli;
pub mod config;
mod console;
mod creds;
pub mod ctl;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod hardening;
mod http;
mod listen;
mod live;
pub mod malloc;
mod metrics;
mod migrate;
mod oauth;
mod ops;
pub mod otlp;
mod policy;
mod proxy;
mod shutdown;
pub mod telemetry;
mod tls;
mod vault;
mod webhook;

// # The public interface
//
// What the binary (main.rs), the tests and the benchmarks use (`App` and the shutdown
// channel run the daemon in-process in tests); everything else is private
// to the crate, so `unreachable_pub` and `dead_code` can see it. The command line's own
// modules (`cli`, `config`, `ctl`, `hardening`, `telemetry`) are public whole: every item
// in them exists for main.rs.
pub use admin::roles::{new_token as new_admin_token, valid_user_name, Role as AdminRole};
pub use app::{serve, App, StartError};
pub use creds::{CredError, Credentials};
pub use migrate::migrate;
pub use shutdown::{channel as shutdown_channel, Shutdown, ShutdownTrigger};
pub use tls::install_crypto_provider;
pub use vault::{write_new_key_file, KeyCheck, Keyring, VaultError};
pub use webhook::offline;

// The crates below, under the names the tests and benchmarks know them by.
pub use keyward_core::{env, ids, providers, redact, secret};
pub use keyward_store as store;
