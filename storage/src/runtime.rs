//! The I/O runtime: one small tokio runtime per process, created on first use.
//!
//! Why per process and lazy: PostgreSQL backends are forked from the
//! postmaster, and threads do not survive `fork()`. The postmaster never
//! touches object storage, so no runtime exists before the fork; each backend
//! that reads offloaded data builds its own (two worker threads that own the
//! HTTP connection pool and run readahead). A background worker serving all
//! backends would share connections but cost an IPC round trip per frame and
//! a single point of failure; the per-process design keeps a backend's reads
//! independent and its cost proportional to its own use. If a process that
//! has a runtime forks anyway, the child notices (the pid differs) and builds
//! a fresh one rather than waiting on threads that do not exist.
//!
//! Runtime threads block every signal: PostgreSQL's handlers (latches,
//! interrupts) must only run on the process's main thread.
use std::future::Future;
use std::sync::Mutex;
use tokio::runtime::Runtime;

static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// Number of worker threads in each process's runtime.
pub const WORKER_THREADS: usize = 2;

/// Most threads for blocking work (frame encoding, cache writes).
pub const MAX_BLOCKING_THREADS: usize = 4;

/// File descriptors the runtime itself holds: its epoll instance, the
/// eventfd that wakes it and the socket pair of its signal driver (checked
/// by a test below).
pub const RUNTIME_FDS: usize = 4;

fn block_all_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on stack-allocated sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    }
}

fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: restoring a mask obtained from pthread_sigmask.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

fn build() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("yezzey-io")
        .on_thread_start(|| {
            block_all_signals();
        })
        .enable_all()
        .build()
}

/// This process's runtime, created on first use.
pub fn runtime() -> &'static Runtime {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return rt;
        }
        // Inherited across fork(): its threads are gone. Leak it (dropping
        // would try to join threads that do not exist) and build anew.
    }
    // Threads inherit the creating thread's mask, so block first.
    let old = block_all_signals();
    let rt = build().expect("building the yezzey I/O runtime");
    restore_signals(&old);
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    rt
}

/// Runs a future to completion on the calling thread, with the runtime's
/// workers available for anything it spawns.
pub fn block_on<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

#[cfg(test)]
mod tests {
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn runtime_fds_are_as_counted() {
        // A runtime built as every process builds its own; other tests
        // running meanwhile can only add descriptors, so take the least.
        let grown = (0..5)
            .map(|_| {
                let before = open_fds();
                let rt = super::build().unwrap();
                rt.block_on(async { tokio::task::yield_now().await });
                let n = open_fds().saturating_sub(before);
                drop(rt);
                n
            })
            .min()
            .unwrap();
        assert!(
            grown <= super::RUNTIME_FDS,
            "a runtime opens {grown} descriptors, more than RUNTIME_FDS"
        );
    }

    #[test]
    fn runtime_threads_block_signals() {
        let masked = super::block_on(async {
            tokio::spawn(async {
                // SAFETY: querying the current thread's mask.
                unsafe {
                    let mut cur: libc::sigset_t = std::mem::zeroed();
                    libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
                    libc::sigismember(&cur, libc::SIGUSR1) == 1
                        && libc::sigismember(&cur, libc::SIGINT) == 1
                }
            })
            .await
            .unwrap()
        });
        assert!(masked, "runtime worker threads must block signals");
        // The caller's own mask is unchanged.
        unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            assert_eq!(libc::sigismember(&cur, libc::SIGUSR1), 0);
        }
    }
}
