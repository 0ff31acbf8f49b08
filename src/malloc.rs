//! glibc's per-thread allocation cache, sized for a proxy with many requests in flight.
//!
//! glibc keeps up to 7 freed chunks of each small size per thread (the tcache); past that a
//! free goes to the shared bins and the next allocation of that size takes the slow path
//! (`_int_malloc`, `_int_free`, `malloc_consolidate`). With 64 requests in flight each
//! holding a few chunks of the same sizes, the 7 are always exhausted: at saturation the
//! malloc family was the largest item of keyward's own CPU (docs/benchmarks.md, "A/B: a
//! larger glibc tcache"). The size is a tunable that glibc reads only from the environment
//! when the process starts, so `keyward serve` sets it and executes itself again, once,
//! before any thread or file exists. Same PID, same arguments, same descriptors.
//!
//! The cache holds chunks up to 512 bytes (glibc caches up to 1,032): the request path's
//! chunks are nearly all smaller, while a cold credential lookup frees many larger ones
//! (store pages, decrypted records), and 256 of each larger size made a worker hold back
//! ~4 MiB more with 100,000 tenants all active ("A/B: a larger glibc tcache, bounded").
//!
//! An operator who sets `glibc.malloc.tcache_count` in `GLIBC_TUNABLES` keeps that value
//! and glibc's other defaults (`glibc.malloc.tcache_count=7` is glibc's default, i.e.
//! opting out). Other tunables in the variable are kept, `tcache_max` included.

use std::fmt::Write;

/// Chunks kept per size class and thread. At 64 connections 256 removes nearly all of the
/// slow path (instructions per request: 7 → 59.2k, 64 → 57.3k, 256 → 55.5k, 1,000 → 54.9k);
/// with [`TCACHE_MAX`] the bound on what a thread can hold back is 256 chunks of each of
/// glibc's 32 cached sizes up to 512 bytes (~2 MiB).
pub const TCACHE_COUNT: u32 = 256;

/// Largest chunk the cache holds, in bytes: 256 → +1.5 % instructions a proxied request,
/// 512 → +0.7 %, against glibc's 1,032 with the larger count; peak RSS with 100,000
/// tenants all active back to glibc's default's within the runs' spread.
pub const TCACHE_MAX: u32 = 512;

const VAR: &str = "GLIBC_TUNABLES";
const COUNT: &str = "glibc.malloc.tcache_count";
const MAX: &str = "glibc.malloc.tcache_max";

/// What `GLIBC_TUNABLES` should be for this process, or `None` when it is already right
/// (the operator's own `tcache_count`, or ours after the re-execution).
pub fn tunables(current: Option<&str>) -> Option<String> {
    let cur = current.unwrap_or("");
    let set = |name: &str| cur.split(':').any(|t| t.split_once('=').is_some_and(|(n, _)| n == name));
    if set(COUNT) {
        return None;
    }
    let mut out = cur.to_string();
    for (name, value) in [(COUNT, TCACHE_COUNT), (MAX, TCACHE_MAX)] {
        if !set(name) {
            if !out.is_empty() {
                out.push(':');
            }
            let _ = write!(out, "{name}={value}");
        }
    }
    Some(out)
}

/// Executes this program again with the tunable set, unless it is set. Returns only when
/// nothing was done or the execution failed (then with the reason, for the start-up log;
/// keyward runs on with glibc's default cache).
pub fn apply() -> Option<String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let current = std::env::var_os(VAR);
        // A value that is not UTF-8 is the operator's and is left alone.
        let current = match current.as_deref().map(std::ffi::OsStr::to_str) {
            Some(None) => return None,
            Some(Some(s)) => Some(s),
            None => None,
        };
        let value = tunables(current)?;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        // `/proc/self/exe` is this binary even when argv[0] is a bare name or the file was
        // replaced on disk since (an upgrade in place runs the old code to its end).
        let err = std::process::Command::new("/proc/self/exe").arg0(arg0).args(args).env(VAR, &value).exec();
        Some(format!("glibc's allocation cache is at its default size: re-executing with {VAR} failed ({err}); set {VAR}={value} in the environment to avoid the re-execution"))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "glibc.malloc.tcache_count=256:glibc.malloc.tcache_max=512";

    #[test]
    fn the_tunables_are_added_to_what_the_operator_set_and_never_replace_their_count() {
        assert_eq!(tunables(None).as_deref(), Some(OURS));
        assert_eq!(tunables(Some("")).as_deref(), Some(OURS));
        assert_eq!(
            tunables(Some("glibc.malloc.mmap_threshold=131072")).as_deref(),
            Some(format!("glibc.malloc.mmap_threshold=131072:{OURS}").as_str())
        );
        // The operator's count opts out of both; their own largest size is kept.
        assert_eq!(tunables(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(tunables(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=64")), None);
        assert_eq!(
            tunables(Some("glibc.malloc.tcache_max=128")).as_deref(),
            Some("glibc.malloc.tcache_max=128:glibc.malloc.tcache_count=256")
        );
        // Once applied (after the re-execution) nothing is left to do.
        assert_eq!(tunables(Some(OURS)), None);
        // A name that merely starts the same is a different tunable.
        assert_eq!(
            tunables(Some("glibc.malloc.tcache_count_x=1")).as_deref(),
            Some(format!("glibc.malloc.tcache_count_x=1:{OURS}").as_str())
        );
    }
}
