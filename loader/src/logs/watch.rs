//! Waking up when a log changes: inotify on the folders of the jails' logs
//! (folders, so that rotations and files created later are seen too). The
//! daemon also polls on a slower clock, so a missed or unsupported event
//! (NFS, a folder created later) only costs latency, never lines.
use anyhow::{Context as _, Result};
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};
use tokio::io::unix::AsyncFd;

pub struct LogWatch {
    fd: AsyncFd<OwnedFd>,
}

impl LogWatch {
    /// Watches the folders holding `paths` (or glob patterns); folders that do
    /// not exist are skipped (the slow poll covers them).
    pub fn new(paths: &[String]) -> Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut dirs: Vec<PathBuf> = paths.iter().filter_map(|p| folder_of(p)).collect();
        dirs.sort();
        dirs.dedup();
        let mask = libc::IN_MODIFY
            | libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE;
        for dir in dirs {
            let Ok(c) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: valid fd and C string.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
                tracing::debug!(
                    "not watching {}: {}",
                    dir.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        // SAFETY: we own `fd`; it stays open, and the same descriptor, for as
        // long as the AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Waits for the next change, then drains the pending events.
    pub async fn changed(&self) {
        let Ok(mut guard) = self.fd.readable().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a valid buffer from our own nonblocking fd.
        while unsafe {
            libc::read(
                self.fd.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        } > 0
        {}
        guard.clear_ready();
    }
}

/// The folder to watch for a path or glob: the part before any wildcard.
fn folder_of(pattern: &str) -> Option<PathBuf> {
    let fixed = match pattern.find(['*', '?', '[']) {
        Some(i) => &pattern[..i],
        None => pattern,
    };
    let p = Path::new(fixed);
    let dir = if pattern.len() == fixed.len() {
        p.parent()?
    } else if fixed.ends_with('/') {
        p
    } else {
        p.parent()?
    };
    dir.is_dir().then(|| dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_of_paths_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        assert_eq!(
            folder_of(&format!("{d}/freeswitch.log")),
            Some(dir.path().to_owned())
        );
        assert_eq!(
            folder_of(&format!("{d}/*.log")),
            Some(dir.path().to_owned())
        );
        assert_eq!(
            folder_of(&format!("{d}/fs-*.log")),
            Some(dir.path().to_owned())
        );
        assert_eq!(folder_of("/nonexistent-sipguard/x.log"), None);
    }

    #[tokio::test]
    async fn a_write_wakes_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("freeswitch.log");
        std::fs::write(&log, "").unwrap();
        let watch = LogWatch::new(&[log.display().to_string()]).unwrap();
        std::fs::write(&log, "line\n").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.changed())
            .await
            .expect("woken");
    }
}
