//! The daemon's parsers on arbitrary input (one target, the first byte picks which): the
//! app listener's request-target and path checks, the admin router, the `X-Forwarded-*`
//! URL rebuild, Google token answers, config files, sealed blobs and wrapped keys, and the
//! audit chain verifier. None may panic; the invariants each keeps are asserted inside
//! `keyward::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    keyward::fuzzing::run(which, rest);
});
