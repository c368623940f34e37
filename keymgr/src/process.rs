//! Keeping the key out of core dumps and away from other processes of the same user.

use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};

/// Makes this process non-dumpable (`PR_SET_DUMPABLE=0`: no core file, no
/// `ptrace` attach and a root-owned `/proc/<pid>` for other processes of the
/// same user) and sets `RLIMIT_CORE` to 0, so a crash never writes the private
/// key held in memory to disk, even where a core pattern pipes dumps to a
/// collector. Call it first thing in `main`, before any key is read.
///
/// # Errors
/// When either call fails (neither should on Linux).
pub fn harden_process() -> nix::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    prctl::set_dumpable(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::resource::getrlimit;

    #[test]
    fn the_process_is_not_dumpable_and_has_no_core_limit() {
        // nextest runs each test in its own process, so this changes nothing else.
        harden_process().unwrap();
        assert!(!prctl::get_dumpable().unwrap());
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
    }
}
