//! Masking: a secret anywhere in arbitrary bytes is masked, lengths are kept, and nothing
//! else changes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 16) + 4;
    if rest.len() < n {
        return;
    }
    let (secret, text) = rest.split_at(n);
    if secret.contains(&b'*') {
        return;
    }
    let pats = vec![Zeroizing::new(secret.to_vec())];
    let mut buf = text.to_vec();
    keyward_core::redact::mask(&mut buf, &pats);
    assert_eq!(buf.len(), text.len());
    assert!(!buf.windows(secret.len()).any(|w| w == secret), "the secret survived masking");
    for (a, b) in buf.iter().zip(text) {
        assert!(a == b || *a == b'*');
    }
});
