//! Signals without an async runtime or handler-safety puzzles: SIGTERM, SIGINT and SIGHUP are
//! blocked in every thread, and one thread takes them synchronously with `sigwait`.

use std::io;
use std::mem::MaybeUninit;

/// A signal the daemon acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: shut down gracefully.
    Terminate,
    /// SIGHUP: re-read the masternode list.
    Reload,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialize and fill a local sigset_t.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Blocks the handled signals in the calling thread and every thread it starts afterwards.
/// Call first thing in `main`, before any thread exists.
pub fn block() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: set is initialized; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for the next handled signal (they must be blocked, see [`block`]).
pub fn wait() -> Signal {
    let set = handled_set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: set is initialized and sig is a valid out pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue;
        }
        match sig {
            libc::SIGHUP => return Signal::Reload,
            libc::SIGTERM | libc::SIGINT => return Signal::Terminate,
            _ => continue,
        }
    }
}
