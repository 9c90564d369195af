//! Waking up when a log changes: inotify on the folders of the jails' logs
//! (folders, so that rotations and files created later are seen too). The
//! daemon also polls on a slower clock, so a missed or unsupported event
//! (NFS, a folder created later) only costs latency, never lines.
use anyhow::{Context as _, Result};
use inotify::{Inotify, WatchMask};
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;

pub struct LogWatch {
    /// Opened nonblocking by the crate: tokio waits for it to be readable.
    inotify: AsyncFd<Inotify>,
}

impl LogWatch {
    /// Watches the folders holding `paths` (or glob patterns); folders that do
    /// not exist are skipped (the slow poll covers them).
    pub fn new(paths: &[String]) -> Result<Self> {
        let inotify = Inotify::init().context("inotify_init")?;
        let mut dirs: Vec<PathBuf> = paths.iter().filter_map(|p| folder_of(p)).collect();
        dirs.sort();
        dirs.dedup();
        let mask = WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE;
        for dir in dirs {
            if let Err(e) = inotify.watches().add(&dir, mask) {
                tracing::debug!("not watching {}: {e}", dir.display());
            }
        }
        // SAFETY: the AsyncFd owns the Inotify, whose descriptor stays open,
        // and the same, for as long as the AsyncFd lives.
        let inotify =
            unsafe { AsyncFd::register_with_interest(inotify, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)
                .context("registering the inotify descriptor")?;
        Ok(Self { inotify })
    }

    /// Waits for the next change, then drains the pending events.
    pub async fn changed(&mut self) {
        let Ok(mut guard) = self.inotify.readable_mut().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        // Nonblocking: an empty queue reads as WouldBlock and ends the loop.
        while guard
            .get_inner_mut()
            .read_events(&mut buf)
            .is_ok_and(|mut events| events.next().is_some())
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
        let mut watch = LogWatch::new(&[log.display().to_string()]).unwrap();
        std::fs::write(&log, "line\n").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.changed())
            .await
            .expect("woken");
    }
}
