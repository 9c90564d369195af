//! The shared end-to-end fixture: a sandbox, a namespace pair, and the
//! daemon attached to the server's veth, with the CLI and map readers every
//! end-to-end test needs. Everything it makes is removed on drop.
use crate::{
    daemon::{cli_ok, Daemon},
    netns::Pair,
    Sandbox,
};
use anyhow::Result;
use std::time::{Duration, Instant};

pub struct Setup {
    // Dropped in this order: the daemon, then the namespaces, then the pins.
    pub daemon: Daemon,
    pub pair: Pair,
    pub sb: Sandbox,
}

impl Setup {
    /// A sandbox with `config` (TOML, `{dir}` for its folder), a namespace
    /// pair, and the daemon attached to the server's veth in driver mode.
    pub fn new(config: &str) -> Result<Self> {
        Self::with_args(config, &[])
    }

    /// Like `new`, with more `sipguard run` arguments.
    pub fn with_args(config: &str, args: &[&str]) -> Result<Self> {
        let sb = Sandbox::new(config)?;
        let pair = Pair::new()?;
        let daemon = Daemon::start(&pair.server, &sb, &Self::run_args(&pair, args))?;
        Ok(Self { daemon, pair, sb })
    }

    fn run_args<'a>(pair: &'a Pair, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--iface", pair.server_if.as_str()];
        args.extend_from_slice(extra);
        args
    }

    /// A daemon on `pair` and `sb` as this setup starts them, once READY
    /// (for a test that starts one while doing something else).
    pub fn start_daemon(pair: &Pair, sb: &Sandbox) -> Result<Daemon> {
        Daemon::start(&pair.server, sb, &Self::run_args(pair, &[]))
    }

    /// Stops the daemon (SIGTERM) and starts a new one.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.stop()?;
        self.start_again()
    }

    /// Starts a new daemon after `daemon.stop()` or `daemon.kill()`.
    pub fn start_again(&mut self) -> Result<()> {
        self.daemon = Daemon::start(
            &self.pair.server,
            &self.sb,
            &Self::run_args(&self.pair, &[]),
        )?;
        Ok(())
    }

    /// A reboot as far as sipguard can tell: the daemon stopped, every pin
    /// (maps and links) gone, only the state file left; then a new start.
    pub fn reboot(&mut self) -> Result<()> {
        self.daemon.stop()?;
        std::fs::remove_dir_all(&self.sb.pin)?;
        self.start_again()
    }

    /// `sipguard ARGS` against this sandbox; its output, or an error.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        cli_ok(&self.sb, args)
    }

    /// `sipguard ARGS --json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        Ok(serde_json::from_str(&self.cli(&all)?)?)
    }

    /// A verdict counter's packets (`sipguard stats`).
    pub fn counter(&self, name: &str) -> Result<u64> {
        Ok(self.json(&["stats"])?["counters"][name]["packets"]
            .as_u64()
            .unwrap_or(0))
    }

    /// The banned addresses, as `list` shows them.
    pub fn banned(&self) -> Result<Vec<String>> {
        Ok(self
            .json(&["list"])?
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|b| b["address"].as_str().map(str::to_owned))
            .collect())
    }

    /// `GET PATH` on the daemon's metrics endpoint (127.0.0.1:9713 inside
    /// the server's namespace): status line and body.
    pub fn http_get(&self, path: &str) -> Result<(String, String)> {
        http_get(&self.pair.server, "127.0.0.1:9713", path)
    }

    /// One sample of the metrics, `name{labels}` exactly as exposed.
    pub fn metric(&self, series: &str) -> Result<Option<f64>> {
        let (status, body) = self.http_get("/metrics")?;
        anyhow::ensure!(status.contains("200"), "{status}");
        Ok(sample(&body, series))
    }

    /// The allowlist, as `ADDRESS/PREFIX`.
    pub fn allowed(&self) -> Result<Vec<String>> {
        Ok(self
            .json(&["list", "--allowed"])?
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|a| format!("{}/{}", a["address"].as_str().unwrap_or("?"), a["prefix"]))
            .collect())
    }
}

/// A jail on `{dir}/freeswitch.log`: 3 failures within a minute ban for an
/// hour (the log-driven tests' configuration, after any global keys).
pub const FREESWITCH_JAIL: &str = r#"
[jails.freeswitch]
logpath = "{dir}/freeswitch.log"
filter = "freeswitch"
maxretry = 3
findtime = "1m"
bantime = "1h"
"#;

/// Now, as FreeSWITCH stamps its log lines.
pub fn now_stamp() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

/// A FreeSWITCH authentication failure of `ip` (user `user`), stamped now.
pub fn failure(ip: &str, user: &str) -> String {
    format!(
        "{} 97.10% [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [{user}@10.0.8.5] from ip {ip}\n",
        now_stamp()
    )
}

/// `n` failures of `ip`.
pub fn failures(ip: &str, n: usize) -> String {
    (0..n).map(|i| failure(ip, &format!("10{i}"))).collect()
}

/// Appends `text` to the sandbox's `freeswitch.log` (creating it).
pub fn append(sb: &Sandbox, text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sb.path("freeswitch.log"))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Waits (at most `secs` seconds) until `f` holds; fails with `what`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f()? {
        if Instant::now() >= deadline {
            anyhow::bail!("not within {secs} s: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A plain HTTP/1.1 GET from inside `ns`: the status line and the body.
pub fn http_get(ns: &crate::netns::Netns, host: &str, path: &str) -> Result<(String, String)> {
    use std::io::{Read as _, Write as _};
    let (host, path) = (host.to_owned(), path.to_owned());
    let raw = crate::netns::in_netns(ns, move || {
        let mut stream = std::net::TcpStream::connect(&host)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        Ok(out)
    })?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

/// The value of `series` (`name{labels}` as exposed) in a Prometheus text
/// exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
