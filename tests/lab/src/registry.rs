//! What the lab running in this process has started, so that a signal
//! handler, which cannot wait for destructors, can still tear it down.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::netns;

/// Process ids and namespace prefix of the lab running in this process.
static RUNNING: Mutex<Running> = Mutex::new(Running {
    prefix: None,
    pids: BTreeSet::new(),
});

struct Running {
    prefix: Option<String>,
    pids: BTreeSet<u32>,
}

fn running() -> std::sync::MutexGuard<'static, Running> {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn register_pid(pid: u32) {
    running().pids.insert(pid);
}

pub(crate) fn unregister_pid(pid: u32) {
    running().pids.remove(&pid);
}

/// Kills this run's processes, removes its containers and deletes its
/// namespaces, for a signal handler that cannot wait for destructors.
pub fn emergency_teardown() {
    let (prefix, pids) = {
        let state = running();
        (state.prefix.clone(), state.pids.clone())
    };
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if let Some(prefix) = prefix {
        for name in crate::docker::labelled(Some(&prefix)) {
            let _ = crate::docker::docker(&["rm", "--force", "--volumes", &name]);
        }
        for name in netns::list_with_prefix(&format!("{prefix}-")) {
            let _ = netns::ip(&["netns", "del", &name]);
        }
    }
}

pub(crate) fn set_prefix(prefix: &str) {
    running().prefix = Some(prefix.to_owned());
}

/// Processes this lab started that are still registered (not stopped).
pub(crate) fn live_pids() -> BTreeSet<u32> {
    running().pids.clone()
}
