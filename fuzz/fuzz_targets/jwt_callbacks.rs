//! Vonage's signed-callback JWTs from arbitrary header and claims JSON, with and without a
//! valid HS256 MAC: no panic, and an accepted token is HS256, MACed, binds the body's
//! hash and has its `iat` in the window (asserted inside `fuzz_callback_jwt`).
#![no_main]

use keyward_core::internal::fuzz_callback_jwt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: [flags][header length][header…][claims length][claims…][body…]
    let Some((&flags, rest)) = data.split_first() else { return };
    let take = |r: &[u8]| -> Option<(Vec<u8>, Vec<u8>)> {
        let (&n, r) = r.split_first()?;
        let n = usize::from(n).min(r.len());
        Some((r[..n].to_vec(), r[n..].to_vec()))
    };
    let Some((header, rest)) = take(rest) else { return };
    let Some((claims, body)) = take(&rest) else { return };
    // A well-formed HS256 header half the time, so the claim checks are reached.
    let header = if flags & 2 == 0 { br#"{"alg":"HS256","typ":"JWT"}"#.to_vec() } else { header };
    let now = 1_700_000_000 + u64::from(flags >> 2);
    let _ = fuzz_callback_jwt(&header, &claims, &body, flags & 1 == 1, now);
});
