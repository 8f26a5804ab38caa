//! Fault injection for the crash tests: `SET yezzey.fault_injection =
//! '<point>'` makes the next offload or load that reaches that point kill
//! the postmaster and itself with SIGKILL, as a power cut would.
use crate::settings;

pub fn point(name: &str) {
    if settings::fault_point().as_deref() == Some(name) {
        pgrx::warning!("yezzey: fault injection at {name}: killing the server");
        // SAFETY: signalling our own postmaster and ourselves.
        unsafe {
            libc::kill(pgrx::pg_sys::PostmasterPid, libc::SIGKILL);
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
