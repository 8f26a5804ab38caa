//! Fault injection for the crash tests: `SET yezzey.fault_injection =
//! '<point>'` makes the next offload or load that reaches that point kill
//! the postmaster and itself with SIGKILL, as a power cut would.
use crate::{pg, settings};
use rustix::process::{getpid, kill_process, Pid, Signal};

pub fn point(name: &str) {
    if settings::fault_point().as_deref() == Some(name) {
        pgrx::warning!("yezzey: fault injection at {name}: killing the server");
        if let Some(postmaster) = Pid::from_raw(pg::postmaster_pid()) {
            let _ = kill_process(postmaster, Signal::KILL);
        }
        let _ = kill_process(getpid(), Signal::KILL);
    }
}
