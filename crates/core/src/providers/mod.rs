//! Providers: one file per provider holding its credential schema, how it injects auth and
//! how it verifies webhooks; plus generic providers declared in config. Pure: no I/O.

pub mod config;
mod elevenlabs;
pub mod fields;
mod generic;
mod google;
pub mod inbound;
pub mod outbound;
mod resend;
pub mod twilio;
mod vapi;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use fields::{FieldError, ParsedFields, Schema};
pub use outbound::{FieldSource, Injection, OutboundError};

use crate::ids::ProviderName;
use config::{BuiltinOverride, GenericProvider, ProvidersConfig};

/// The built-in providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// Vapi
    Vapi,
    /// Twilio
    Twilio,
    /// Google (Calendar)
    Google,
    /// Resend
    Resend,
    /// ElevenLabs
    ElevenLabs,
}

impl Builtin {
    /// Every built-in, in documentation order.
    pub const ALL: [Builtin; 5] =
        [Builtin::Vapi, Builtin::Twilio, Builtin::Google, Builtin::Resend, Builtin::ElevenLabs];

    /// The provider name used in URLs and config.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Vapi => "vapi",
            Builtin::Twilio => "twilio",
            Builtin::Google => "google",
            Builtin::Resend => "resend",
            Builtin::ElevenLabs => "elevenlabs",
        }
    }

    fn schema(self) -> Schema {
        match self {
            Builtin::Vapi => vapi::schema(),
            Builtin::Twilio => twilio::schema(),
            Builtin::Google => google::schema(),
            Builtin::Resend => resend::schema(),
            Builtin::ElevenLabs => elevenlabs::schema(),
        }
    }
}

/// What kind of provider a name refers to.
#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// Built in, with config overrides.
    Builtin(Builtin, BuiltinOverride),
    /// Declared in config.
    Generic(GenericProvider),
}

/// One provider as configured.
#[derive(Debug)]
pub struct ProviderDef {
    /// Name.
    pub name: ProviderName,
    /// Kind and settings.
    pub kind: ProviderKind,
    /// Credential schema.
    pub schema: Schema,
}

/// Every provider this daemon knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    defs: BTreeMap<String, Arc<ProviderDef>>,
}

impl Providers {
    /// Built-ins (with their overrides) plus the config's generic providers.
    pub fn from_config(cfg: &ProvidersConfig) -> Providers {
        let mut defs = BTreeMap::new();
        for b in Builtin::ALL {
            let ov = cfg.builtin.get(b.name()).cloned().unwrap_or_default();
            if let Ok(name) = ProviderName::parse(b.name()) {
                defs.insert(
                    b.name().to_string(),
                    Arc::new(ProviderDef { name, kind: ProviderKind::Builtin(b, ov), schema: b.schema() }),
                );
            }
        }
        for (name, g) in &cfg.generic {
            let schema = generic::schema(name.as_str(), g);
            defs.insert(
                name.as_str().to_string(),
                Arc::new(ProviderDef { name: name.clone(), kind: ProviderKind::Generic(g.clone()), schema }),
            );
        }
        Providers { defs }
    }

    /// Looks a provider up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<ProviderDef>> {
        self.defs.get(name)
    }

    /// Every provider name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.defs.keys().map(String::as_str)
    }
}

impl Providers {
    /// Only the built-in providers, without overrides (tests and benchmarks).
    pub fn default_builtin() -> Providers {
        Providers::from_config(&ProvidersConfig::default())
    }
}

impl ProviderDef {
    /// The per-tenant rate limit configured for this provider.
    pub fn rate_limit(&self) -> Option<config::RateLimit> {
        match &self.kind {
            ProviderKind::Builtin(_, ov) => ov.rate_limit,
            ProviderKind::Generic(g) => g.rate_limit,
        }
    }

    /// The built-in this is, if any.
    pub fn builtin(&self) -> Option<Builtin> {
        match &self.kind {
            ProviderKind::Builtin(b, _) => Some(*b),
            ProviderKind::Generic(_) => None,
        }
    }
}
