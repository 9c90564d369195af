//! The real `sipguard` binary: the daemon inside the server namespace, and
//! the CLI.
use crate::Sandbox;
use anyhow::{bail, Context as _, Result};
use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

/// The binary under test: `SIPGUARD_BIN` (set by `cargo xtask test`), else the debug build.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIPGUARD_BIN") {
        // Tests run from the package folder: make a relative path absolute.
        return std::path::absolute(p).expect("current dir readable");
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sipguard");
    assert!(
        p.exists(),
        "{} missing: run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// `sipguard ARGS` against `sandbox`, in the host's namespaces.
pub fn cli(sandbox: &Sandbox, args: &[&str]) -> Result<Output> {
    Ok(Command::new(bin())
        .args(sandbox.args())
        .args(args)
        .output()?)
}

/// Like `cli`, but fails unless the command succeeded; returns stdout.
pub fn cli_ok(sandbox: &Sandbox, args: &[&str]) -> Result<String> {
    let out = cli(sandbox, args)?;
    if !out.status.success() {
        bail!(
            "sipguard {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A daemon running in a network namespace; killed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    /// The `NOTIFY_SOCKET` the daemon tells it is ready on, as systemd's.
    notify: UnixDatagram,
    notify_path: PathBuf,
    /// Every notification received so far.
    notes: Vec<String>,
}

impl Daemon {
    /// Starts `sipguard run ARGS` in `netns` (network namespace only, so the
    /// host's /sys/fs/bpf stays visible) and waits until it tells its
    /// `NOTIFY_SOCKET` `READY=1`, as systemd would.
    pub fn start(netns: &crate::netns::Netns, sandbox: &Sandbox, args: &[&str]) -> Result<Self> {
        let mut daemon = Self::spawn(netns, sandbox, args, &[])?;
        daemon.wait_for("READY=1", Duration::from_secs(30))?;
        Ok(daemon)
    }

    /// Starts the daemon with more environment, without waiting.
    pub fn spawn(
        netns: &crate::netns::Netns,
        sandbox: &Sandbox,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let name = crate::unique("sipguard-daemon-");
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let notify_path = std::env::temp_dir().join(format!("{name}.notify"));
        let notify = UnixDatagram::bind(&notify_path)?;
        let file = std::fs::File::create(&log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path()))
            .arg(bin())
            .args(sandbox.args())
            .arg("run")
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("cannot start the daemon")?;
        Ok(Self {
            child: Some(child),
            log,
            notify,
            notify_path,
            notes: Vec::new(),
        })
    }

    /// Waits for a notification with the line `line` (e.g. `READY=1`) and
    /// returns it whole; each notification is returned once.
    pub fn wait_for(&mut self, line: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.notes.iter().position(|n| n.lines().any(|l| l == line)) {
                return Ok(self.notes.remove(i));
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("daemon exited with {status} before {line}:\n{}", self.log());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no {line} from the daemon within {within:?} (got {:?}):\n{}",
                    self.notes,
                    self.log()
                );
            }
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.notify.recv(&mut buf) {
                self.notes
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// The daemon's process id (nsenter execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, sig: i32) -> Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("daemon ignored signal {sig} for 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: a clean stop (the program stays attached).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)
    }

    /// SIGKILL: the daemon dies without cleaning up.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.notify_path);
    }
}

/// `sipguard run ARGS` with `sandbox`'s config in `ns`, which must refuse to
/// start (a bad config, an interface it cannot attach to): its stderr.
pub fn refused_run(ns: &crate::netns::Netns, sandbox: &Sandbox, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(bin())
        .args(sandbox.args())
        .arg("run")
        .args(args)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        bail!("sipguard run {args:?} started, and should have refused: {err}");
    }
    Ok(err)
}
