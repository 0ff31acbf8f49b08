//! The form decoder Twilio signatures depend on: never panics, and a decoded form
//! re-encoded and decoded again is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = keyward_core::internal::decode_form(data) {
        for (k, v) in &pairs {
            assert!(!k.contains('+') || data.contains(&b'%'), "a literal + decodes to a space");
            let _ = (k.len(), v.len());
        }
    }
    let _ = keyward_core::internal::port_variants(&String::from_utf8_lossy(data));
});
