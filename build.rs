//! Lays out the release binary's code in the order of `build/symbol-order.txt`: the
//! functions a serving keyward executes, hottest first (`bench/run --order`). The kernel
//! maps code 64 KiB around each page fault, so functions touched at start-up and per
//! request, spread over ~10 MB of text, kept most of it resident; placed together they
//! fill a fraction of that (docs/benchmarks.md, "RSS: the binary's code").
//!
//! Only where the linker takes the option (LLD does: rustc ≥ 1.90 links
//! x86_64-unknown-linux-gnu with its own rust-lld; GNU ld does not), which a test link of
//! an empty program with it shows before the option is passed on. Names the
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
        && env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty();
    let file = Path::new(&env("CARGO_MANIFEST_DIR")).join(ORDER);
    if wanted && file.is_file() && links_with(&file) {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", file.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether this compiler's linker accepts the ordering file: links an empty program with it.
fn links_with(order: &Path) -> bool {
    let Ok(out) = std::env::var("OUT_DIR") else { return false };
    let dir = Path::new(&out);
    let src = dir.join("probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // With the flags the real link gets (a `-C link-arg=-fuse-ld=bfd` among them, say).
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    Command::new(rustc)
        .args(flags.split('\x1f').filter(|f| !f.is_empty()))
        .arg(&src)
        .arg("-o")
        .arg(dir.join("probe"))
        .arg("-C")
        .arg(format!("link-arg=-Wl,--symbol-ordering-file={}", order.display()))
        .arg("-C")
        .arg("link-arg=-Wl,--no-warn-symbol-ordering")
        .output()
        .is_ok_and(|o| o.status.success())
}
