//! Support for sipguard's kernel and end-to-end tests. Nothing here is mocked:
//! `kernel` loads the real XDP object and runs packets through it with
//! BPF_PROG_TEST_RUN; `netns` and `daemon` build real namespaces joined by a
//! veth pair and drive the real `sipguard` binary.
//!
//! Everything a test creates (pin directories, namespaces, daemons) has a
//! unique name and is removed by a `Drop` guard, also when the test fails.
pub mod daemon;
pub mod engines;
pub mod esl;
pub mod fixture;
pub mod http;
pub mod kernel;
pub mod netns;
pub mod packet;
pub mod rng;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test (in this process or another) uses: `prefix` + pid + counter.
/// Short enough for interface names (15 characters) when `prefix` is ≤ 3.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 1_000_000)
}

/// Everything a test's sipguard touches, unique to the test and removed on
/// drop: a pin directory on the BPF filesystem, and a temporary folder with
/// the config file, the state file, the control socket and the logs.
pub struct Sandbox {
    pub pin: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox whose config file holds `config` (TOML). `{dir}` in it is
    /// replaced by the sandbox folder (for log paths).
    pub fn new(config: &str) -> anyhow::Result<Self> {
        let pin = std::path::Path::new(sipguard::kernel::bpffs::DEFAULT_MOUNT)
            .join(unique("sipguard-test-"));
        sipguard::kernel::bpffs::ensure_pin_dir(&pin)?;
        let dir = tempfile::tempdir()?;
        let s = Self { pin, dir };
        s.write_config(config)?;
        Ok(s)
    }

    /// No jails: the kernel path alone.
    pub fn bare() -> anyhow::Result<Self> {
        Self::new("")
    }

    /// Writes the config file. A FreeSWITCH installed on the machine is not
    /// read unless the test names a `freeswitch_conf`: tests see only what
    /// they set up.
    pub fn write_config(&self, config: &str) -> anyhow::Result<()> {
        let mut text = config.replace("{dir}", &self.dir.path().display().to_string());
        if !text.contains("freeswitch_conf") {
            text.insert_str(0, "freeswitch_conf = \"\"\n");
        }
        std::fs::write(self.config(), text)?;
        Ok(())
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> std::path::PathBuf {
        self.path("sipguard.toml")
    }

    pub fn socket(&self) -> std::path::PathBuf {
        self.path("sipguard.sock")
    }

    pub fn state(&self) -> std::path::PathBuf {
        self.path("state.json")
    }

    /// The global options that point sipguard at this sandbox.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--config".into(),
            self.config().into(),
            "--pin-dir".into(),
            self.pin.clone().into(),
            "--socket".into(),
            self.socket().into(),
            "--state-file".into(),
            self.state().into(),
        ]
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}
