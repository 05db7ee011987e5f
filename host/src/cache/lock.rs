//! An exclusive advisory lock on a file (flock(2)): held until dropped, released by the kernel when the process
//! dies, so a run killed with SIGKILL never leaves a cache entry locked.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};

/// A held lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Log once when waiting longer than this for another run.
const PATIENCE: Duration = Duration::from_millis(200);

impl Lock {
    /// Waits for the lock on `path` (created if missing).
    pub fn acquire(path: &Path) -> anyhow::Result<Self> {
        if let Some(lock) = Self::try_acquire(path)? {
            return Ok(lock);
        }
        let start = std::time::Instant::now();
        let mut told = false;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            if let Some(lock) = Self::try_acquire(path)? {
                return Ok(lock);
            }
            if !told && start.elapsed() > PATIENCE {
                tracing::info!("waiting for another run that holds {}", path.display());
                told = true;
            }
        }
    }

    /// The lock on `path` if no one holds it.
    pub fn try_acquire(path: &Path) -> anyhow::Result<Option<Self>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(Lock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(anyhow!("cannot lock {}: {err}", path.display()))
        }
    }
}
