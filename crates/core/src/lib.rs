//! keyward's pure core: the types every layer shares and the rules that need no I/O.
//! Nothing here opens a socket or a file or needs an async runtime, so it can be fuzzed and
//! unit-tested alone.

pub mod env;
pub mod ids;
pub mod providers;
pub mod redact;
pub mod secret;
pub mod status;
pub mod time;
pub mod units;

/// Entry points for the fuzz targets (fuzz/), not an interface: parsers that are private to
/// their provider file but worth fuzzing on their own.
#[doc(hidden)]
pub mod internal {
    pub use crate::providers::twilio::{decode_form, port_variants, FormPair};
    pub use crate::providers::vonage::fuzz_callback_jwt;
}
