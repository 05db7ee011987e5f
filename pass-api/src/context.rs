//! The context a host lends a running pass: output folder, device, log, progress, cancellation.
//!
//! [`PassContext`] is an opaque host handle plus a [`HostVTable`] of `extern "C"` callbacks. The
//! vtable is a prefix type, so new host services are appended there without a major version bump.
//! A host implements [`HostCallbacks`] and lends `PassContext::new(&host)`; a plugin calls the
//! context's methods. The context is valid only during the `run_pass` call it was passed to, and
//! its callbacks may be called from any thread the pass uses.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::prefix_type::WithMetadata;
use abi_stable::std_types::{RStr, RString};
use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

/// The level of a log line from a pass.
#[repr(u8)]
#[derive(
    StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something looks wrong but the pass goes on.
    Warn = 2,
    /// What the pass is doing, for the user.
    Info = 3,
    /// Details for whoever debugs the pass.
    Debug = 4,
    /// Very verbose details.
    Trace = 5,
}

/// The host's state behind a [`PassContext`], opaque to the plugin.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct HostHandle(*const c_void);

/// The host's callbacks. Fields are only appended after `is_cancelled`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostVTableRef)))]
pub struct HostVTable {
    /// The folder the pass writes its output model into (it exists and is empty at the start).
    pub output_dir: extern "C" fn(HostHandle) -> RString,
    /// The device the pass should run on (`cpu`, `gpu`, `npu`).
    pub device: extern "C" fn(HostHandle) -> RString,
    /// Logs a message at a level.
    pub log: extern "C" fn(HostHandle, LogLevel, RStr<'_>),
    /// Reports progress: `done` of `total` units (`total` 0 when unknown), with a short message.
    pub progress: extern "C" fn(HostHandle, u64, u64, RStr<'_>),
    /// Whether the host asked the pass to stop; a pass polls this between units of work.
    #[sabi(last_prefix_field)]
    pub is_cancelled: extern "C" fn(HostHandle) -> bool,
}

/// A host's services, lent to a pass for the duration of one `run_pass` call.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct PassContext<'a> {
    host: HostHandle,
    vtable: HostVTableRef,
    borrow: PhantomData<&'a ()>,
}

// SAFETY: a context is only made by `PassContext::new` from a `&'a H` with `H: HostCallbacks`,
// which is `Sync`, and the lifetime keeps it from outliving that borrow.
unsafe impl Send for PassContext<'_> {}
// SAFETY: as above.
unsafe impl Sync for PassContext<'_> {}

/// What a host implements to lend a [`PassContext`]. Implementations must be thread-safe; a
/// panic in a callback is caught at the boundary and ignored.
pub trait HostCallbacks: Sync {
    /// The folder the pass writes into.
    fn output_dir(&self) -> &str;
    /// The device the pass runs on.
    fn device(&self) -> &str;
    /// Receives a log line.
    fn log(&self, level: LogLevel, message: &str);
    /// Receives progress.
    fn progress(&self, done: u64, total: u64, message: &str);
    /// Whether the pass should stop.
    fn is_cancelled(&self) -> bool;
}

impl std::fmt::Debug for PassContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassContext").finish_non_exhaustive()
    }
}

impl<'a> PassContext<'a> {
    /// Lends `host` to a pass.
    pub fn new<H: HostCallbacks>(host: &'a H) -> Self {
        PassContext {
            host: HostHandle((host as *const H).cast()),
            vtable: VTableOf::<H>::VTABLE,
            borrow: PhantomData,
        }
    }

    /// The folder the pass writes its output model into.
    pub fn output_dir(&self) -> String {
        (self.vtable.output_dir())(self.host).into_string()
    }

    /// The device the pass should run on.
    pub fn device(&self) -> String {
        (self.vtable.device())(self.host).into_string()
    }

    /// Logs `message` at `level` through the host.
    pub fn log(&self, level: LogLevel, message: &str) {
        (self.vtable.log())(self.host, level, RStr::from(message))
    }

    /// Reports `done` of `total` units of work (`total` 0 when unknown).
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        (self.vtable.progress())(self.host, done, total, RStr::from(message))
    }

    /// Whether the host asked the pass to stop.
    pub fn is_cancelled(&self) -> bool {
        (self.vtable.is_cancelled())(self.host)
    }
}

/// The static vtable that forwards to `H`'s [`HostCallbacks`].
struct VTableOf<H>(PhantomData<H>);

impl<H: HostCallbacks> VTableOf<H> {
    const WITH_METADATA: &'static WithMetadata<HostVTable> = &WithMetadata::new(HostVTable {
        output_dir: output_dir::<H>,
        device: device::<H>,
        log: log::<H>,
        progress: progress::<H>,
        is_cancelled: is_cancelled::<H>,
    });
    const VTABLE: HostVTableRef = HostVTableRef(Self::WITH_METADATA.static_as_prefix());
}

/// Runs `f` on the host behind `handle`, returning `fallback` if it panics.
fn with_host<H: HostCallbacks, T>(handle: HostHandle, fallback: T, f: impl FnOnce(&H) -> T) -> T {
    // SAFETY: `handle` was made from a `&H` by `PassContext::new`, and the context's lifetime keeps
    // that borrow alive while the plugin can call back.
    let host = unsafe { &*handle.0.cast::<H>() };
    catch_unwind(AssertUnwindSafe(|| f(host))).unwrap_or(fallback)
}

extern "C" fn output_dir<H: HostCallbacks>(handle: HostHandle) -> RString {
    with_host(handle, RString::new(), |host: &H| {
        RString::from(host.output_dir())
    })
}

extern "C" fn device<H: HostCallbacks>(handle: HostHandle) -> RString {
    with_host(handle, RString::new(), |host: &H| {
        RString::from(host.device())
    })
}

extern "C" fn log<H: HostCallbacks>(handle: HostHandle, level: LogLevel, message: RStr<'_>) {
    with_host(handle, (), |host: &H| host.log(level, message.as_str()))
}

extern "C" fn progress<H: HostCallbacks>(
    handle: HostHandle,
    done: u64,
    total: u64,
    message: RStr<'_>,
) {
    with_host(handle, (), |host: &H| {
        host.progress(done, total, message.as_str())
    })
}

extern "C" fn is_cancelled<H: HostCallbacks>(handle: HostHandle) -> bool {
    with_host(handle, false, |host: &H| host.is_cancelled())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder {
        lines: Mutex<Vec<String>>,
        cancelled: AtomicBool,
    }

    impl HostCallbacks for Recorder {
        fn output_dir(&self) -> &str {
            "/out"
        }
        fn device(&self) -> &str {
            "cpu"
        }
        fn log(&self, level: LogLevel, message: &str) {
            self.lines
                .lock()
                .unwrap()
                .push(format!("{level:?} {message}"));
        }
        fn progress(&self, done: u64, total: u64, message: &str) {
            self.lines
                .lock()
                .unwrap()
                .push(format!("{done}/{total} {message}"));
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn calls_reach_the_host() {
        let host = Recorder::default();
        let ctx = PassContext::new(&host);
        assert_eq!(
            (ctx.output_dir().as_str(), ctx.device().as_str()),
            ("/out", "cpu")
        );
        ctx.log(LogLevel::Info, "hello");
        ctx.progress(1, 2, "half");
        assert!(!ctx.is_cancelled());
        host.cancelled.store(true, Ordering::SeqCst);
        assert!(ctx.is_cancelled());
        assert_eq!(*host.lines.lock().unwrap(), ["Info hello", "1/2 half"]);
    }

    struct Panicky;

    impl HostCallbacks for Panicky {
        fn output_dir(&self) -> &str {
            panic!("no output dir")
        }
        fn device(&self) -> &str {
            "cpu"
        }
        fn log(&self, _: LogLevel, _: &str) {
            panic!("no log")
        }
        fn progress(&self, _: u64, _: u64, _: &str) {}
        fn is_cancelled(&self) -> bool {
            panic!("no flag")
        }
    }

    #[test]
    fn a_panicking_host_callback_does_not_cross_the_boundary() {
        let ctx = PassContext::new(&Panicky);
        assert_eq!(ctx.output_dir(), "");
        ctx.log(LogLevel::Error, "dropped");
        assert!(!ctx.is_cancelled());
    }
}
