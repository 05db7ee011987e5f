//! Ctrl-C (SIGINT) and SIGTERM as a counter the engine polls, and names for the signals that kill
//! a worker. The worker runs in its own process group, so a terminal's Ctrl-C reaches only the host,
//! which then cancels the pass through the protocol.

use std::sync::atomic::{AtomicUsize, Ordering};

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

/// How many interrupts arrived since [`watch_interrupts`] (they are never reset: once the user
/// interrupts, every later pass is cancelled too).
pub fn interrupts() -> usize {
    INTERRUPTS.load(Ordering::SeqCst)
}

#[cfg(unix)]
extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

/// Counts SIGINT and SIGTERM instead of dying of them (installed once per process).
#[cfg(unix)]
pub fn watch_interrupts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid; the handler only touches an atomic, which is
            // async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction =
                    on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    });
}

/// Without unix signals the default Ctrl-C handling (ending the process tree) stays.
#[cfg(not(unix))]
pub fn watch_interrupts() {}

/// "signal 11 (SIGSEGV, segmentation fault)".
pub fn describe_signal(signal: i32) -> String {
    #[cfg(unix)]
    let name = match signal {
        libc::SIGSEGV => Some("SIGSEGV, segmentation fault"),
        libc::SIGABRT => Some("SIGABRT, aborted"),
        libc::SIGBUS => Some("SIGBUS, bus error"),
        libc::SIGILL => Some("SIGILL, illegal instruction"),
        libc::SIGFPE => Some("SIGFPE, arithmetic exception"),
        libc::SIGKILL => Some("SIGKILL, killed"),
        libc::SIGTERM => Some("SIGTERM, terminated"),
        libc::SIGINT => Some("SIGINT, interrupted"),
        _ => None,
    };
    #[cfg(not(unix))]
    let name: Option<&str> = None;
    match name {
        Some(name) => format!("signal {signal} ({name})"),
        None => format!("signal {signal}"),
    }
}
