//! Memory hygiene at start: no core dumps, no ptrace by other users, and memory locked
//! when the limit allows it, so secrets are not written to swap or crash files.
//!
//! Uses rustix's safe wrappers (no `unsafe` here). `mlockall` with `MCL_FUTURE` makes every
//! later allocation count against RLIMIT_MEMLOCK, and an allocation past the limit fails:
//! so keyward locks memory only when the limit is unlimited (systemd: LimitMEMLOCK=infinity)
//! and otherwise warns once, naming the limit to raise.

use rustix::mm::MlockAllFlags;
use rustix::process::{getrlimit, set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};

/// What [`apply`] managed to do, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hygiene {
    /// RLIMIT_CORE set to 0.
    pub core_dumps_off: bool,
    /// PR_SET_DUMPABLE = 0.
    pub not_dumpable: bool,
    /// mlockall succeeded.
    pub memory_locked: bool,
    /// Why memory is not locked, when it is not.
    pub mlock_note: Option<String>,
}

/// Applies every measure it can; never fails the start.
pub fn apply() -> Hygiene {
    let core_dumps_off = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }).is_ok()
        || setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: getrlimit(Resource::Core).maximum }).is_ok();
    let not_dumpable = set_dumpable_behavior(DumpableBehavior::NotDumpable).is_ok();
    let limit = getrlimit(Resource::Memlock);
    let (memory_locked, mlock_note) = if limit.current.is_none() {
        match rustix::mm::mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE) {
            Ok(()) => (true, None),
            Err(e) => (false, Some(format!("mlockall failed ({e}); secrets may be swapped"))),
        }
    } else {
        (
            false,
            Some(format!(
                "memory not locked: RLIMIT_MEMLOCK is {} bytes; raise it to unlimited (systemd LimitMEMLOCK=infinity, docker --ulimit memlock=-1) so secrets never reach swap",
                limit.current.unwrap_or(0)
            )),
        )
    };
    Hygiene { core_dumps_off, not_dumpable, memory_locked, mlock_note }
}
/// Raises the soft descriptor limit to the hard one (what systemd's LimitNOFILE grants);
/// returns the soft limit now in force.
pub fn raise_nofile() -> usize {
    let l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: l.maximum, maximum: l.maximum });
    }
    let now = getrlimit(Resource::Nofile).current;
    now.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Wipes an environment variable that held a secret (the master key): overwrites its value
/// in the process's initial environment block, which `/proc/PID/environ` shows and `getenv`
/// still reads after `remove_var`, then removes it so no child inherits it. Writing through
/// `/proc/self/mem` keeps this free of `unsafe`. Returns whether the block was found and wiped.
pub fn scrub_env(name: &str) -> bool {
    let wiped = wipe_initial_env(name).unwrap_or(false);
    std::env::remove_var(name);
    wiped
}

fn wipe_initial_env(name: &str) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3; env_start and
    // env_end are fields 50 and 51 (proc(5)).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (Some(start), Some(end)) = (field(50), field(51)) else { return Ok(false) };
    if end <= start || end - start > 1 << 20 {
        return Ok(false);
    }
    let mut mem = std::fs::OpenOptions::new().read(true).write(true).open("/proc/self/mem")?;
    mem.seek(SeekFrom::Start(start))?;
    let mut block = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    mem.read_exact(&mut block)?;
    let prefix = format!("{name}=");
    let mut wiped = false;
    let mut offset = 0;
    for entry in block.split(|b| *b == 0) {
        if entry.starts_with(prefix.as_bytes()) && entry.len() > prefix.len() {
            let at = start + (offset + prefix.len()) as u64;
            mem.seek(SeekFrom::Start(at))?;
            mem.write_all(&vec![0u8; entry.len() - prefix.len()])?;
            wiped = true;
        }
        offset += entry.len() + 1;
    }
    block.fill(0);
    Ok(wiped)
}
