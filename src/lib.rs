//! keyward: a sidecar secrets proxy. Apps call providers through it with no credential in
//! hand; it injects each tenant's credential, verifies inbound webhooks, and keeps every
//! secret encrypted at rest and out of logs.
//!
//! # Layout
//!
//! Dependency direction, nothing points back up:
//! `main → cli/ctl | app → {listen, admin, ops} → creds → {providers, vault, store} → secret`.
//!
//! - [`config`]: TOML into typed values; pure.
//! - [`secret`]: the `Secret` type; redacted, zeroized.
//! - [`ids`]: tenant, provider and route ids, parsed at the edge.
//! - [`vault`]: master keyring, tenant data keys, AES-256-GCM seal/open.
//! - [`store`]: sealed records, routes and the audit chain behind one trait (sled).
//! - [`creds`]: store + vault; the only producer of plaintext; the cache; audited writes.
//! - [`providers`]: per-provider schemas, injection and webhook rules.
//! - [`admin`]: the admin API; [`ops`]: health and readiness.
//! - [`listen`]: socket binding and the accept loop; [`shutdown`]: signals and drain.
//! - [`app`]: the composition root; [`telemetry`]: logging; [`hardening`]: memory hygiene.
//! - [`cli`], [`ctl`]: the command line and its admin client.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod creds;
pub mod ctl;
pub mod error;
pub mod hardening;
pub mod listen;
pub mod live;
pub mod metrics;
pub mod migrate;
pub mod oauth;
pub mod ops;
pub mod proxy;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod vault;
pub mod webhook;

pub use keyward_core::{ids, providers, redact, secret};
pub use keyward_store as store;
