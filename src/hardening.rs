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
