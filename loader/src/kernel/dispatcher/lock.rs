//! libxdp's lock: an exclusive flock on the `xdp` folder of the BPF
//! filesystem (`$LIBXDP_BPFFS/xdp`, else `/sys/fs/bpf/xdp`), held by every
//! libxdp user while it reads or changes a dispatcher's pinned state.
use anyhow::{Context as _, Result};
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// libxdp's override of the BPF filesystem's mount point.
pub const BPFFS_ENV: &str = "LIBXDP_BPFFS";

/// The folder libxdp pins dispatchers in (and locks).
pub fn xdp_dir() -> PathBuf {
    std::env::var_os(BPFFS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::kernel::bpffs::DEFAULT_MOUNT))
        .join("xdp")
}

/// The lock, released on drop (closing the folder releases the flock).
pub struct Lock {
    _dir: File,
}

/// Takes the lock on `dir`, creating the folder (mode 0700) as libxdp does;
/// waits for another holder.
pub fn acquire(dir: &Path) -> Result<Lock> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })
            .with_context(|| format!("cannot create libxdp's folder {}", dir.display()))?;
    }
    let file = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    // SAFETY: flock(2) on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot lock {}", dir.display()));
    }
    Ok(Lock { _dir: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let xdp = dir.path().join("xdp");
        let first = acquire(&xdp).unwrap();
        let other = File::open(&xdp).unwrap();
        // SAFETY: flock(2) on an fd we own.
        let busy = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(busy, -1, "held");
        drop(first);
        // SAFETY: as above.
        let free = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(free, 0, "released on drop");
    }
}
