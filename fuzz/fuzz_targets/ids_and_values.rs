//! Id and config-value parsers on arbitrary input never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = keyward_core::ids::TenantId::parse(s);
        let _ = keyward_core::ids::RouteId::parse(s);
        let _ = keyward_core::units::parse_duration(s);
        let _ = keyward_core::units::parse_size(s);
    }
});
