//! Fault injection for the crash tests: `SET yezzey.fault_injection =
//! '<point>'` makes the next offload or load that reaches that point kill
//! the postmaster and itself with SIGKILL, as a power cut would;
//! `'<point>:pause=<seconds>'` makes it wait there instead, so a test can
//! act in the window between two steps.
use crate::{pg, settings};
use rustix::process::{getpid, kill_process, Pid, Signal};

pub fn point(name: &str) {
    let Some(setting) = settings::fault_point() else {
        return;
    };
    let (at, pause) = match setting.split_once(":pause=") {
        Some((at, secs)) => (at, secs.parse::<f64>().ok().filter(|s| s.is_finite())),
        None => (setting.as_str(), None),
    };
    if at != name {
        return;
    }
    if let Some(secs) = pause {
        pgrx::notice!("yezzey: fault injection at {name}: pausing {secs} s");
        std::thread::sleep(std::time::Duration::from_secs_f64(secs.clamp(0.0, 600.0)));
        return;
    }
    pgrx::warning!("yezzey: fault injection at {name}: killing the server");
    if let Some(postmaster) = Pid::from_raw(pg::postmaster_pid()) {
        let _ = kill_process(postmaster, Signal::KILL);
    }
    let _ = kill_process(getpid(), Signal::KILL);
}
