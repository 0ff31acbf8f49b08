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
//! An operator who sets `glibc.malloc.tcache_count` in `GLIBC_TUNABLES` keeps that value
//! (`glibc.malloc.tcache_count=7` is glibc's default, i.e. opting out). Other tunables in
//! the variable are kept.

/// Chunks kept per size class and thread. At 64 connections 256 removes nearly all of the
/// slow path (instructions per request: 7 → 59.2k, 64 → 57.3k, 256 → 55.5k, 1,000 → 54.9k);
/// the bound on what a thread can hold back is 256 chunks of each of glibc's 64 cached sizes.
pub const TCACHE_COUNT: u32 = 256;

const VAR: &str = "GLIBC_TUNABLES";
const TUNABLE: &str = "glibc.malloc.tcache_count";

/// What `GLIBC_TUNABLES` should be for this process, or `None` when it is already right
/// (the operator's own `tcache_count`, or ours after the re-execution).
pub fn tunables(current: Option<&str>) -> Option<String> {
    match current {
        Some(cur) if cur.split(':').any(|t| t.split_once('=').is_some_and(|(name, _)| name == TUNABLE)) => None,
        Some(cur) if !cur.is_empty() => Some(format!("{cur}:{TUNABLE}={TCACHE_COUNT}")),
        _ => Some(format!("{TUNABLE}={TCACHE_COUNT}")),
    }
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
        let err = std::process::Command::new("/proc/self/exe").arg0(arg0).args(args).env(VAR, value).exec();
        Some(format!("glibc's allocation cache is at its default size: re-executing with {VAR} failed ({err}); set {VAR}={TUNABLE}={TCACHE_COUNT} in the environment to avoid the re-execution"))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunable_is_added_to_what_the_operator_set_and_never_replaces_their_count() {
        assert_eq!(tunables(None).as_deref(), Some("glibc.malloc.tcache_count=256"));
        assert_eq!(tunables(Some("")).as_deref(), Some("glibc.malloc.tcache_count=256"));
        assert_eq!(
            tunables(Some("glibc.malloc.mmap_threshold=131072")).as_deref(),
            Some("glibc.malloc.mmap_threshold=131072:glibc.malloc.tcache_count=256")
        );
        assert_eq!(tunables(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(tunables(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=64")), None);
        // A name that merely starts the same is a different tunable.
        assert_eq!(
            tunables(Some("glibc.malloc.tcache_count_x=1")).as_deref(),
            Some("glibc.malloc.tcache_count_x=1:glibc.malloc.tcache_count=256")
        );
    }
}
