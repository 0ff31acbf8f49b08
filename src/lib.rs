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
//! 1. **foundation**: [`hardening`], [`shutdown`], [`telemetry`], [`metrics`] — memory
//!    hygiene, signals and drain, logging, the Prometheus registry (figures from above
//!    arrive through `metrics::DerivedSource`).
//! 2. **keys and transport**: [`vault`], [`tls`] — the master keyring and sealing; rustls
//!    configurations.
//! 3. **credentials**: [`creds`] — store + vault; the only producer of plaintext; the
//!    cache; audited writes.
//! 4. **http**: [`http`] — body types and bounded reads, hop-by-hop rules, the upstream
//!    client, the app listener's request-target parser.
//! 5. **services**: [`oauth`], [`live`] — Google tokens and the connect flow; live checks
//!    and route discovery. They return their own typed errors.
//! 6. **edge**: [`error`], [`listen`], [`policy`] — the one error-to-HTTP mapping; socket
//!    binding and accept loops; client policy and rate limits.
//! 7. **servers**: [`proxy`], [`webhook`], [`admin`], [`ops`] — the four listeners' services.
//! 8. **configuration**: [`config`] — TOML parsed into the components' own config types.
//! 9. **composition**: [`app`], [`migrate`] — building and running the daemon; store moves.
//! 10. **command line**: [`cli`], [`ctl`], `main` — argument parsing and the admin client.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod creds;
pub mod ctl;
pub mod error;
pub mod hardening;
pub mod http;
pub mod listen;
pub mod live;
pub mod metrics;
pub mod migrate;
pub mod oauth;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod vault;
pub mod webhook;

pub use keyward_core::{ids, providers, redact, secret};
pub use keyward_store as store;
