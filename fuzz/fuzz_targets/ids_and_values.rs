//! Id and config-value parsers on arbitrary input never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = keyward::ids::TenantId::parse(s);
        let _ = keyward::ids::RouteId::parse(s);
        let _ = keyward::config::parse_duration(s);
        let _ = keyward::config::parse_size(s);
    }
});
