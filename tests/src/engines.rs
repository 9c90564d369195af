//! Real engines for the fleet tests, each started inside a test namespace
//! and removed on drop: a CrowdSec local API (Debian's `crowdsec -no-cs`,
//! with its own database and no Central API) driven with `cscli`, and a
//! `redis-server` with an append-only file (so a restart loses nothing).
use crate::netns::{in_netns_at, Netns};
use anyhow::{bail, Context as _, Result};
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The port engines listen on inside their namespace (namespaces do not
/// share ports, so one constant serves every test).
pub const LAPI_PORT: u16 = 18080;
pub const REDIS_PORT: u16 = 16379;

/// A process started in a namespace, killed on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(ns_path: &str, cmd: &str, args: &[&str], log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={ns_path}"))
            .arg(cmd)
            .args(args)
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {cmd} (cargo xtask setup installs it)"))?;
        Ok(Self {
            child: Some(child),
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts TCP on `port` inside `ns`.
fn wait_listening(ns_path: &str, port: u16, proc_: &mut Proc, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = in_netns_at(ns_path, move || {
            Ok(std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_millis(200),
            )
            .is_ok())
        })?;
        if ok {
            return Ok(());
        }
        if let Some(c) = proc_.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("{what} exited with {status}:\n{}", proc_.log());
            }
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen within 30 s:\n{}", proc_.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CrowdSec local API in a namespace, listening on every address there.
pub struct Lapi {
    proc_: Proc,
    dir: tempfile::TempDir,
    ns_path: String,
}

impl Lapi {
    pub fn start(ns: &Netns) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("data"))?;
        for f in ["profiles.yaml", "simulation.yaml"] {
            std::fs::copy(format!("/etc/crowdsec/{f}"), dir.path().join(f)).with_context(|| {
                format!("/etc/crowdsec/{f} (cargo xtask setup installs crowdsec)")
            })?;
        }
        std::fs::write(
            dir.path().join("config.yaml"),
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n  working_dir: {d}\n\
config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  simulation_path: {d}/simulation.yaml\n  hub_dir: /var/lib/crowdsec/hub/\n  index_path: /var/lib/crowdsec/hub/.index.json\n  notification_dir: {d}/notifications/\n  plugin_dir: /usr/lib/crowdsec/plugins/\n\
db_config:\n  log_level: info\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: true\n\
api:\n  client:\n    insecure_skip_verify: false\n    credentials_path: {d}/local_api_credentials.yaml\n  server:\n    log_level: info\n    listen_uri: 0.0.0.0:{LAPI_PORT}\n    profiles_path: {d}/profiles.yaml\n    trusted_ips:\n      - 127.0.0.1\n      - ::1\n\
prometheus:\n  enabled: false\n"
            ),
        )?;
        let mut lapi = Self {
            proc_: Proc {
                child: None,
                log: dir.path().join("lapi.log"),
            },
            ns_path: ns.path(),
            dir,
        };
        lapi.run()?;
        // The machine cscli itself uses to add decisions.
        lapi.cscli(&[
            "machines",
            "add",
            "sipguard-tests",
            "--password",
            "tests-Passw0rd-123",
            "-f",
            &format!("{d}/local_api_credentials.yaml"),
        ])?;
        Ok(lapi)
    }

    fn run(&mut self) -> Result<()> {
        let config = self.config();
        self.proc_ = Proc::start(
            &self.ns_path,
            "crowdsec",
            &["-c", &config, "-no-cs"],
            self.dir.path().join("lapi.log"),
        )?;
        wait_listening(
            &self.ns_path,
            LAPI_PORT,
            &mut self.proc_,
            "the CrowdSec LAPI",
        )
    }

    fn config(&self) -> String {
        self.dir.path().join("config.yaml").display().to_string()
    }

    /// `cscli ARGS` against this LAPI; its output.
    pub fn cscli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .args(["cscli", "-c", &self.config()])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "cscli {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new bouncer's API key.
    pub fn bouncer_key(&self, name: &str) -> Result<String> {
        Ok(self
            .cscli(&["bouncers", "add", name, "-o", "raw"])?
            .trim()
            .to_owned())
    }

    /// A new machine's credentials (written to a file of the test's).
    pub fn machine(&self, name: &str, password: &str) -> Result<()> {
        let creds = self.dir.path().join(format!("{name}.yaml"));
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            password,
            "-f",
            creds.to_str().unwrap(),
        ])?;
        Ok(())
    }

    /// The decisions in force, as `cscli decisions list -o json` shows them.
    pub fn decisions(&self) -> Result<serde_json::Value> {
        let out = self.cscli(&["decisions", "list", "-o", "json"])?;
        Ok(serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null))
    }

    /// Kills the LAPI (an outage) and starts it again on the same database.
    pub fn kill(&mut self) {
        self.proc_.kill();
    }

    pub fn restart(&mut self) -> Result<()> {
        self.proc_.kill();
        self.run()
    }

    pub fn log(&self) -> String {
        self.proc_.log()
    }
}

/// A redis-server in a namespace, listening on every address there, with
/// an append-only file written at every command.
pub struct Redis {
    proc_: Proc,
    dir: tempfile::TempDir,
    ns_path: String,
}

impl Redis {
    pub fn start(ns: &Netns) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut r = Self {
            proc_: Proc {
                child: None,
                log: dir.path().join("redis.log"),
            },
            ns_path: ns.path(),
            dir,
        };
        r.run()?;
        Ok(r)
    }

    fn run(&mut self) -> Result<()> {
        let dir = self.dir.path().display().to_string();
        let port = REDIS_PORT.to_string();
        self.proc_ = Proc::start(
            &self.ns_path,
            "redis-server",
            &[
                "--port",
                &port,
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--dir",
                &dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            self.dir.path().join("redis.log"),
        )?;
        wait_listening(&self.ns_path, REDIS_PORT, &mut self.proc_, "redis-server")
    }

    /// `redis-cli ARGS` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .args(["redis-cli", "-p", &REDIS_PORT.to_string()])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("redis-cli {} failed", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `redis-cli -x ARGS` with `len` bytes of `fill` as its last
    /// argument (streamed to it in chunks: the test itself holds 1 MiB).
    pub fn cli_with_value(&self, args: &[&str], fill: u8, len: usize) -> Result<String> {
        use std::io::Write as _;
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .args(["redis-cli", "-p", &REDIS_PORT.to_string(), "-x"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let chunk = vec![fill; 1 << 20];
        let mut stdin = child.stdin.take().context("redis-cli's stdin")?;
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            stdin.write_all(&chunk[..n])?;
            left -= n;
        }
        drop(stdin);
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.starts_with("ERR") {
            bail!("redis-cli -x {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }

    pub fn kill(&mut self) {
        self.proc_.kill();
    }

    pub fn restart(&mut self) -> Result<()> {
        self.proc_.kill();
        self.run()
    }
}

/// The fleet key the tests' members share.
pub const FLEET_KEY: &str = "test-fleet-key-0123456789abcdef";

/// Writes a fleet key file (`key`, mode `mode`) in `dir`; its path.
pub fn write_fleet_key(dir: &std::path::Path, key: &str, mode: u32) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("fleet.key");
    std::fs::write(&path, format!("{key}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    Ok(path)
}

/// A fleet stream entry as a member holding `key` publishes it (the
/// daemon's own signing code): its text and MAC.
pub fn signed_event(key: &str, e: &sipguard::fleet::redis::entry::Entry) -> (String, String) {
    let text = e.text();
    let mac = signed_text(key, &text);
    (text, mac)
}

/// The MAC of any stream entry text under `key`: a signed member can sign
/// anything, so that what it signs is still checked.
pub fn signed_text(key: &str, text: &str) -> String {
    let key = sipguard::fleet::redis::Secret::new(key.as_bytes().to_vec());
    sipguard::fleet::redis::entry::mac_hex(&key, "sipguard:events", text)
}

/// A ban entry of `node` for `net`, published now, for an hour.
pub fn ban_entry(node: &str, net: &str) -> sipguard::fleet::redis::entry::Entry {
    let now = chrono::Utc::now().timestamp_millis();
    sipguard::fleet::redis::entry::Entry {
        op: sipguard::fleet::redis::entry::Op::Ban,
        node: node.into(),
        net: sipguard::addr::parse_ban_net(net).expect("a network"),
        scope: sipguard::bans::Scope::Ports,
        end_ms: Some(now + 3_600_000),
        ts_ms: now,
        jail: "test".into(),
    }
}

impl Redis {
    /// Adds a stream entry with these fields, as anyone who can write to
    /// the Redis can.
    pub fn add_event(&self, fields: &[(&str, &str)]) -> Result<()> {
        let mut args = vec!["XADD", "sipguard:events", "*"];
        for (k, v) in fields {
            args.extend([*k, *v]);
        }
        self.cli(&args).map(|_| ())
    }
}
