//! Support for sipguard's kernel and end-to-end tests. Nothing here is mocked:
//! `kernel` loads the real XDP object and runs packets through it with
//! BPF_PROG_TEST_RUN; `netns` and `daemon` build real namespaces joined by a
//! veth pair and drive the real `sipguard` binary.
//!
//! Everything a test creates (pin directories, namespaces, daemons) has a
//! unique name and is removed by a `Drop` guard, also when the test fails.
pub mod daemon;
pub mod kernel;
pub mod netns;
pub mod packet;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test (in this process or another) uses: `prefix` + pid + counter.
/// Short enough for interface names (15 characters) when `prefix` is ≤ 3.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 1_000_000)
}

/// A unique pin directory on the BPF filesystem, removed (pins and all) on drop.
pub struct PinDir {
    pub path: std::path::PathBuf,
}

impl PinDir {
    pub fn new() -> anyhow::Result<Self> {
        let path =
            std::path::Path::new(sipguard::bpffs::DEFAULT_MOUNT).join(unique("sipguard-test-"));
        sipguard::bpffs::ensure_pin_dir(&path)?;
        Ok(Self { path })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
