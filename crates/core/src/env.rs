//! Where keyward reads environment variables, behind a trait so tests pass a map instead
//! of mutating the process environment.

use std::collections::BTreeMap;

/// Where keyward reads environment variables. Production uses [`ProcessEnv`]; tests inject
/// a map so they never mutate the process environment.
pub trait Env: Send + Sync {
    /// The variable's value, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}
