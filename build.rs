//! Lays out the release binary's code in the order of `build/symbol-order.txt`: the
//! functions a serving keyward executes, hottest first (`bench/run --order`). The kernel
//! maps code 64 KiB around each page fault, so functions touched at start-up and per
//! request, spread over ~10 MB of text, kept most of it resident; placed together they
//! fill a fraction of that (docs/benchmarks.md, "RSS: the binary's code").
//!
//! Only where the linker is known to be LLD, which reads the file: rustc ≥ 1.90 links
//! x86_64-unknown-linux-gnu with its own rust-lld unless a linker is configured. Names the
//! file lists but a build no longer has are skipped (the file goes stale slowly: symbol
//! hashes follow crate metadata, not source text), so a stale file costs layout, never a
//! build. `KEYWARD_NO_SYMBOL_ORDER=1` turns it off.

use std::path::Path;
use std::process::Command;

fn main() {
    const ORDER: &str = "build/symbol-order.txt";
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-env-changed=KEYWARD_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let wanted = env("PROFILE") == "release"
        && env("TARGET") == "x86_64-unknown-linux-gnu"
        && env("KEYWARD_NO_SYMBOL_ORDER").is_empty()
        && env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        && !env("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        && rustc_minor().is_some_and(|m| m >= 90);
    let file = Path::new(&env("CARGO_MANIFEST_DIR")).join(ORDER);
    if wanted && file.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", file.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The `1.N` of the compiler building this crate.
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let release = text.lines().find_map(|l| l.strip_prefix("release: "))?;
    release.split('.').nth(1)?.parse().ok()
}
