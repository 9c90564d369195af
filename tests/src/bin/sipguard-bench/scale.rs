//! `cargo xtask bench scale`: how many bans, how fast, at what memory.
//!
//! * ban rate: failure lines appended at once until every source is banned,
//!   through the sipguard daemon and through fail2ban-server with its
//!   `iptables-allports` action; and one process per ban, the way fail2ban
//!   runs its action (`sipguard ban` against `iptables -I`, `ipset add`,
//!   `nft add element`);
//! * bulk loads: the daemon starting with 1 000 000 saved bans, against
//!   iptables-restore, ipset restore and `nft -f` loading as many;
//! * the daemon's resident memory with 1 000 000 bans and 1 000 000 tracked
//!   offenders;
//! * the state store the daemon is to keep its state in (see `store`).
//!
//! Firewall commands only ever run inside namespaces this benchmark creates.
use crate::report::Section;
use anyhow::{bail, Context as _, Result};
use sipguard_tests::{
    daemon::{cli_ok, Daemon},
    netns::{in_netns_scoped, Netns, Pair},
    Sandbox,
};
use std::{
    io::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

/// Failure lines appended at once: the "ban 100 000 addresses" figure.
const BURST: u32 = 100_000;
/// Bans made one process at a time (and by fail2ban, which bans ~50/s).
const ONE_BY_ONE: u32 = 500;
/// Saved bans the daemon starts with, offenders it then tracks.
const SAVED: u32 = 1_000_000;
/// Banned sources start here (100.64.0.0/10, shared address space); offenders
/// that are never banned start at 100.96.0.0.
pub(crate) const BANNED_BASE: u32 = 0x6440_0000;
const OFFENDER_BASE: u32 = 0x6460_0000;

pub fn run(out: &mut Section) -> Result<()> {
    ban_rate(out)?;
    let start = bulk(out)?;
    crate::store::run(out, Some(start))
}

pub(crate) fn addr(base: u32, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(base + i)
}

/// A FreeSWITCH auth-failure line for `ip`, stamped now, in the shape both
/// sipguard's and fail2ban's filters match.
fn failure_line(ip: Ipv4Addr) -> String {
    format!(
        "{} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u@d] from ip {ip}\n",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.6f")
    )
}

/// One failure line for each of `n` sources from `base` on.
pub(crate) fn failure_lines(base: u32, n: u32) -> String {
    (0..n).map(|i| failure_line(addr(base, i))).collect()
}

pub(crate) fn append(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())?;
    Ok(())
}

/// Polls `done` every `every` until it holds or `limit` passes; returns the
/// seconds since `start`.
pub(crate) fn wait_until(
    start: Instant,
    every: Duration,
    limit: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<f64> {
    loop {
        if done()? {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > limit {
            bail!("not done within {} s", limit.as_secs());
        }
        std::thread::sleep(every);
    }
}

pub(crate) fn jail_config(maxretry: u32) -> String {
    format!("[jails.fs]\nlogpath = \"{{dir}}/freeswitch.log\"\nfilter = \"freeswitch\"\nmaxretry = {maxretry}\nbantime = \"1d\"\n")
}

fn ban_rate(out: &mut Section) -> Result<()> {
    say!(out, "## Bans per second\n");
    say!(out, "*At once*: {BURST} failure lines from as many sources appended to the log in one write, `maxretry = 1`, timed until the last source is in the kernel (the XDP map; fail2ban: its iptables chain). *One process per ban*: {ONE_BY_ONE} bans, one command each into an empty table, the way fail2ban runs its ban action. fail2ban-server reads the log with its `polling` backend (Debian's fail2ban without pyinotify), which looks at the file once a second.\n");
    say!(out, "| how | bans | seconds | bans/s | × sipguard |");
    say!(out, "|---|---:|---:|---:|---:|");

    // sipguard: log lines → daemon → map.
    let sb = Sandbox::new(&jail_config(1))?;
    let log = sb.path("freeswitch.log");
    std::fs::write(&log, "")?;
    let pair = Pair::new()?;
    let daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let maps = sipguard::kernel::maps::KernelMaps::open(&sb.pin)?;
    let lines: String = failure_lines(BANNED_BASE, BURST);
    let last = ipnet::IpNet::from(std::net::IpAddr::V4(addr(BANNED_BASE, BURST - 1)));
    let start = Instant::now();
    append(&log, &lines)?;
    // Lines are handled in order: the last source banned means all are.
    let secs = wait_until(
        start,
        Duration::from_millis(5),
        Duration::from_secs(120),
        || Ok(maps.ban_entry(last)?.is_some()),
    )?;
    let banned = maps.bans()?.len();
    if banned != BURST as usize {
        bail!("sipguard banned {banned} of {BURST} sources");
    }
    let sipguard_burst = f64::from(BURST) / secs;
    say!(out, "| sipguard daemon, failure lines at once | {BURST} | {secs:.2} | {sipguard_burst:.0} | 1.00 |");
    drop(daemon);
    let big = crate::burst::big_burst()?;

    match fail2ban_burst() {
        Ok((bans, secs)) => {
            let rate = f64::from(bans) / secs;
            say!(out, "| fail2ban-server {} (iptables-allports, DROP), failure lines at once | {bans} | {secs:.2} | {rate:.0} | {:.4} |", fail2ban_version(), rate / sipguard_burst);
        }
        Err(e) => say!(out, "| fail2ban-server: not measured ({e:#}) | | | | |"),
    }

    let (bans, secs, peak) = (big.bans, big.secs, big.peak_mib);
    let rate = f64::from(bans) / secs;
    say!(out, "| sipguard daemon, {bans} failure lines at once (the daemon's peak resident memory {peak:.0} MiB) | {bans} | {secs:.2} | {rate:.0} | {:.2} |", rate / sipguard_burst);

    // One process per ban.
    let sb = Sandbox::new("")?;
    let pair = Pair::new()?;
    let _daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let start = Instant::now();
    for i in 0..ONE_BY_ONE {
        cli_ok(
            &sb,
            &["ban", &addr(BANNED_BASE, i).to_string(), "--for", "1d"],
        )?;
    }
    let secs = start.elapsed().as_secs_f64();
    let sipguard_cli = f64::from(ONE_BY_ONE) / secs;
    say!(out, "| `sipguard ban`, one process per ban (through the daemon) | {ONE_BY_ONE} | {secs:.2} | {sipguard_cli:.0} | 1.00 |");
    // What starting each binary costs by itself, doing nothing.
    for (name, program, arg) in [
        (
            "`sipguard --version` (starting the process alone)",
            sipguard_tests::daemon::bin(),
            "--version",
        ),
        (
            "`iptables --version` (starting the process alone)",
            "iptables".into(),
            "--version",
        ),
    ] {
        let start = Instant::now();
        for _ in 0..ONE_BY_ONE {
            if !std::process::Command::new(&program)
                .arg(arg)
                .output()?
                .status
                .success()
            {
                bail!("{} {arg} failed", program.display());
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = f64::from(ONE_BY_ONE) / secs;
        say!(
            out,
            "| {name} | {ONE_BY_ONE} | {secs:.2} | {rate:.0} | {:.2} |",
            rate / sipguard_cli
        );
    }
    // (row, setup script for `nft -f`-like input or a command, ban command)
    type Setup = fn(&Netns) -> Result<()>;
    let commands: [(&str, Setup, &str, &[&str]); 4] = [
        (
            "`iptables -w -I f2b-… 1 -s IP -j DROP` (nf_tables)",
            |ns| iptables_chain(ns, "iptables"),
            "iptables",
            &["-w", "-I", "f2b-bench", "1", "-s", "{ip}", "-j", "DROP"],
        ),
        (
            "`iptables-legacy -w -I f2b-… 1 -s IP -j DROP`",
            |ns| iptables_chain(ns, "iptables-legacy"),
            "iptables-legacy",
            &["-w", "-I", "f2b-bench", "1", "-s", "{ip}", "-j", "DROP"],
        ),
        (
            "`ipset add f2b-… IP timeout 0`",
            |ns| {
                ns.exec(
                    "ipset",
                    &["create", "f2b-bench", "hash:ip", "timeout", "0"],
                    b"",
                )
                .map(drop)
            },
            "ipset",
            &["add", "f2b-bench", "{ip}", "timeout", "0"],
        ),
        (
            "`nft add element inet f2b-table addr-set-… { IP }`",
            |ns| {
                ns.exec(
                    "nft",
                    &["-f", "-"],
                    b"table inet f2b-table {\n set addr-set-bench { type ipv4_addr; }\n}\n",
                )
                .map(drop)
            },
            "nft",
            &[
                "add",
                "element",
                "inet",
                "f2b-table",
                "addr-set-bench",
                "{ {ip} }",
            ],
        ),
    ];
    for (name, setup, cmd, template) in commands {
        let ns = Netns::new()?;
        setup(&ns)?;
        // Started from a thread inside the namespace: no `ip netns exec`
        // wrapper in the timing, just the command, as fail2ban runs it.
        let secs = in_netns_scoped(&ns, || {
            let start = Instant::now();
            for i in 0..ONE_BY_ONE {
                let ip = addr(BANNED_BASE, i).to_string();
                let args: Vec<String> = template.iter().map(|a| a.replace("{ip}", &ip)).collect();
                let out = std::process::Command::new(cmd).args(&args).output()?;
                if !out.status.success() {
                    bail!(
                        "{cmd} {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
            Ok(start.elapsed().as_secs_f64())
        })?;
        let rate = f64::from(ONE_BY_ONE) / secs;
        say!(
            out,
            "| {name} | {ONE_BY_ONE} | {secs:.2} | {rate:.0} | {:.2} |",
            rate / sipguard_cli
        );
    }
    say!(out, "\nEach group's ratio is to the sipguard row above it. The daemon's ban is a map write (a system call); the one-process rows are bound by starting a process, for `sipguard ban` included.");
    Ok(())
}

fn iptables_chain(ns: &Netns, cmd: &str) -> Result<()> {
    ns.exec(cmd, &["-w", "-N", "f2b-bench"], b"")?;
    ns.exec(cmd, &["-w", "-A", "f2b-bench", "-j", "RETURN"], b"")?;
    ns.exec(
        cmd,
        &["-w", "-I", "INPUT", "-p", "all", "-j", "f2b-bench"],
        b"",
    )?;
    Ok(())
}

fn fail2ban_version() -> String {
    std::process::Command::new("fail2ban-server")
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_default()
}

/// fail2ban-server in a namespace of its own, with fail2ban's own FreeSWITCH
/// filter and `iptables-allports` action (DROP): `ONE_BY_ONE` failure lines
/// appended at once, timed until every source has its rule.
fn fail2ban_burst() -> Result<(u32, f64)> {
    if !std::path::Path::new("/etc/fail2ban/filter.d/freeswitch.conf").exists() {
        bail!("fail2ban is not installed: `apt-get install fail2ban` for this baseline");
    }
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf)?;
    for sub in ["filter.d", "action.d"] {
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(format!("/etc/fail2ban/{sub}"))
            .arg(&conf)
            .status()?;
        if !copied.success() {
            bail!("cannot copy /etc/fail2ban/{sub}");
        }
    }
    let d = dir.path().display();
    std::fs::write(
        conf.join("fail2ban.conf"),
        format!("[Definition]\nloglevel = INFO\nlogtarget = {d}/fail2ban.log\nsocket = {d}/fail2ban.sock\npidfile = {d}/fail2ban.pid\ndbfile = :memory:\n"),
    )?;
    std::fs::write(
        conf.join("jail.conf"),
        format!("[DEFAULT]\nbackend = polling\n\n[freeswitch]\nenabled = true\nfilter = freeswitch\nlogpath = {d}/freeswitch.log\nmaxretry = 1\nfindtime = 600\nbantime = 86400\naction = iptables-allports[name=freeswitch, protocol=all, blocktype=DROP]\n"),
    )?;
    let log = dir.path().join("freeswitch.log");
    std::fs::write(&log, "")?;
    let ns = Netns::new()?;
    let server = Fail2ban::start(&ns, &conf)?;
    // Ready when the jail runs (its iptables chain is made at the first ban).
    let f2b_log = dir.path().join("fail2ban.log");
    wait_until(
        Instant::now(),
        Duration::from_millis(100),
        Duration::from_secs(30),
        || {
            Ok(std::fs::read_to_string(&f2b_log)
                .unwrap_or_default()
                .contains("Jail 'freeswitch' started"))
        },
    )
    .context("fail2ban did not start its jail")?;
    let lines: String = failure_lines(BANNED_BASE, ONE_BY_ONE);
    let start = Instant::now();
    append(&log, &lines)?;
    let secs = wait_until(
        start,
        Duration::from_millis(200),
        Duration::from_secs(120),
        || {
            let Ok(rules) = ns.exec("iptables", &["-w", "-S", "f2b-freeswitch"], b"") else {
                return Ok(false); // no chain before the first ban
            };
            Ok(rules.lines().filter(|l| l.contains(" -s ")).count() >= ONE_BY_ONE as usize)
        },
    )
    .with_context(|| {
        format!(
            "fail2ban's log: {}",
            std::fs::read_to_string(dir.path().join("fail2ban.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        )
    })?;
    drop(server);
    Ok((ONE_BY_ONE, secs))
}

/// A fail2ban server in the foreground, stopped on drop.
struct Fail2ban {
    child: std::process::Child,
    conf: std::path::PathBuf,
    ns: String,
}

impl Fail2ban {
    fn start(ns: &Netns, conf: &std::path::Path) -> Result<Self> {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "fail2ban-client", "-c"])
            .arg(conf)
            .args(["-f", "start"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start fail2ban-client")?;
        Ok(Self {
            child,
            conf: conf.to_owned(),
            ns: ns.name.clone(),
        })
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "fail2ban-client", "-c"])
            .arg(&self.conf)
            .arg("stop")
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's rows with SAVED bans; its start with them (seconds).
fn bulk(out: &mut Section) -> Result<f64> {
    say!(out, "\n## Loading {SAVED} bans, and memory\n");
    say!(out, "| what | seconds | × sipguard | memory |");
    say!(out, "|---|---:|---:|---:|");
    let pair = Pair::new()?;
    // The fixed part of every start: loading and verifying the program, attaching.
    let empty = Sandbox::new("")?;
    let start = Instant::now();
    let mut daemon = Daemon::start(&pair.server, &empty, &["--iface", &pair.server_if])?;
    let bare = start.elapsed().as_secs_f64();
    daemon.stop()?;
    drop(empty);
    say!(out, "| sipguard daemon start, no bans (loading and verifying the XDP program, attaching) | {bare:.2} | | |");
    // Bans as the daemon makes them: each with its matched line and ban
    // count, every line written (as an older sipguard kept them; the
    // daemon keeps the newest bans' lines within its line budget). Its
    // own state, written at stop, is what the next start reads.
    let sb = Sandbox::new(&jail_config(1_000_000))?;
    std::fs::write(sb.path("freeswitch.log"), "")?;
    {
        let old = Sandbox::new(&jail_config(1_000_000))?;
        std::fs::write(old.path("freeswitch.log"), "")?;
        sipguard::bans::state::save(&old.state(), &saved_bans(SAVED))?;
        let mib = std::fs::metadata(old.state())?.len() as f64 / (1 << 20) as f64;
        let start = Instant::now();
        let mut daemon = Daemon::start(&pair.server, &old, &["--iface", &pair.server_if])?;
        let secs = start.elapsed().as_secs_f64();
        daemon.stop()?;
        std::fs::copy(old.state(), sb.state())?;
        say!(out, "| sipguard daemon start, {SAVED} saved bans with every matched line ({mib:.0} MiB: a state of an older sipguard) written to empty maps | {secs:.2} | | |");
    }
    // Cold: empty maps, as after a reboot; every saved ban is written.
    let start = Instant::now();
    let mut daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let cold = start.elapsed().as_secs_f64();
    let maps = sipguard::kernel::maps::KernelMaps::open(&sb.pin)?;
    let in_kernel = maps.bans()?.len();
    if in_kernel != SAVED as usize {
        bail!("the daemon restored {in_kernel} of {SAVED} bans");
    }
    // Memory once the daemon has settled (a start writes no snapshot).
    std::thread::sleep(Duration::from_secs(1));
    let (rss, hwm) = memory(daemon.pid())?;
    say!(out, "| sipguard daemon start, the {SAVED} saved bans (each with its ban count, the newest {} MiB of matched lines), as the daemon wrote them, to empty maps (as after a reboot) | {cold:.2} | 1.00 | {rss:.0} MiB resident 1 s after (peak {hwm:.0} MiB) |", sipguard::defaults::LINE_MEMORY >> 20);
    // Warm: the maps are still pinned (a restart after a crash or upgrade).
    daemon.kill()?;
    let start = Instant::now();
    let mut daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let warm = start.elapsed().as_secs_f64();
    say!(out, "| sipguard daemon restart, the {SAVED} bans still in the pinned maps | {warm:.2} | {:.2} | |", warm / cold);

    // Offenders: one failure each from SAVED other sources, never enough to ban.
    let lines: String = failure_lines(OFFENDER_BASE, SAVED);
    let start = Instant::now();
    append(&sb.path("freeswitch.log"), &lines)?;
    let secs = wait_until(
        start,
        Duration::from_millis(100),
        Duration::from_secs(120),
        || {
            // The daemon may be too busy reading to answer in time: ask again.
            let Ok(answer) = cli_ok(&sb, &["status", "fs", "--json"]) else {
                return Ok(false);
            };
            let status: serde_json::Value = serde_json::from_str(&answer)?;
            Ok(status["jails"][0]["filter"]["currently_failed"].as_u64() == Some(u64::from(SAVED)))
        },
    )?;
    let (rss, hwm) = memory(daemon.pid())?;
    say!(out, "| sipguard daemon: {SAVED} failure lines from as many sources, each tracked as an offender | {secs:.2} | | {rss:.0} MiB resident with {SAVED} bans and {SAVED} offenders (peak {hwm:.0} MiB) |");
    // The stop writes the state whole (a snapshot, as when the change log
    // outgrows the table); the peak is read until the daemon is gone.
    let pid = daemon.pid();
    let watching = std::thread::spawn(move || {
        let mut peak = 0.0f64;
        while let Ok((_, hwm)) = memory(pid) {
            peak = peak.max(hwm);
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let start = Instant::now();
    daemon.stop()?;
    let save_secs = start.elapsed().as_secs_f64();
    let peak = watching
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
    let save_mib = std::fs::metadata(sb.state())?.len() as f64 / (1 << 20) as f64;
    say!(out, "| sipguard daemon stop with {SAVED} bans and {SAVED} offenders: the state written whole, on the daemon's loop (the snapshot at stop) | {save_secs:.2} | | {save_mib:.0} MiB on disk (peak {peak:.0} MiB) |");
    background_snapshot(out, &pair, &sb, save_secs)?;
    // What a change costs between snapshots: one line per changed network.
    let mut log = sipguard::bans::changes::ChangeLog::new(&sb.state(), 0);
    let line = [sipguard::bans::changes::Change::Net {
        net: format!("{}/32", addr(BANNED_BASE, 7)),
        bans: vec![],
    }];
    let start = Instant::now();
    for _ in 0..100 {
        log.append(&line)?;
        log.flush();
    }
    let change_ms = start.elapsed().as_secs_f64() * 1e3 / 100.0;
    log.clear()?;
    log.flush();
    say!(out, "| sipguard change log: one changed ban appended and synced, with {SAVED} bans in the table (what a ban costs between snapshots) | {:.4} | | |", change_ms / 1e3);

    // The firewalls loading as many, each in a namespace of its own.
    let ips: Vec<String> = (0..SAVED)
        .map(|i| addr(BANNED_BASE, i).to_string())
        .collect();
    let loads: [(&str, &str, &[&str], String); 4] = [
        (
            "iptables-restore (nf_tables), one rule per ban",
            "iptables-restore",
            &["-w"],
            iptables_rules(&ips),
        ),
        (
            "iptables-legacy-restore, one rule per ban",
            "iptables-legacy-restore",
            &["-w"],
            iptables_rules(&ips),
        ),
        (
            "ipset restore, one hash:ip set",
            "ipset",
            &["restore"],
            ipset_script(&ips),
        ),
        (
            "nft -f, one ipv4_addr set",
            "nft",
            &["-f", "-"],
            nft_script(&ips),
        ),
    ];
    for (name, cmd, args, input) in loads {
        let ns = Netns::new()?;
        let start = Instant::now();
        let result = ns.exec(cmd, args, input.as_bytes());
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(_) => say!(
                out,
                "| {name}, {SAVED} bans | {secs:.2} | {:.2} | |",
                secs / cold
            ),
            Err(e) => say!(
                out,
                "| {name}, {SAVED} bans: failed after {secs:.1} s ({}) | | | |",
                format!("{e:#}").lines().next().unwrap_or("")
            ),
        }
    }
    say!(out, "\nThe daemon's start includes loading and verifying the XDP program, reading the state file and attaching; memory is the daemon's resident set (VmRSS; the kernel maps are not in it). The firewalls' rows time the command alone.");
    Ok(cold)
}

/// A snapshot while the daemon runs (due when the change log outgrows the
/// table; here the state is cut short, so one is due at once), its tables
/// handed a slice at a time to a writer thread: how long the longest slice
/// held the loop, against `on_loop` (the stop's snapshot, written on the
/// loop whole), and the daemon's peak memory meanwhile.
fn background_snapshot(out: &mut Section, pair: &Pair, sb: &Sandbox, on_loop: f64) -> Result<()> {
    let len = std::fs::metadata(sb.state())?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(sb.state())?
        .set_len(len - 1)?;
    let mut daemon = Daemon::start(&pair.server, sb, &["--iface", &pair.server_if])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let log = daemon.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("state written in the background"))
        {
            break line.to_owned();
        }
        if log.contains("saving state failed") || Instant::now() > deadline {
            bail!("no snapshot written in the background:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (_, peak) = memory(daemon.pid())?;
    daemon.stop()?;
    // "... in N ms (S slices on the loop, the longest L ms)"
    let number_after = |key: &str| -> Result<f64> {
        let rest = line
            .split(key)
            .nth(1)
            .with_context(|| format!("{key:?} in {line:?}"))?;
        Ok(rest.split([' ', ')']).next().unwrap_or("").parse()?)
    };
    let (took_ms, slices, longest_ms) = (
        number_after("background in ")?,
        number_after("ms (")?,
        number_after("the longest ")?,
    );
    say!(out, "| sipguard daemon: the {SAVED} bans written whole while it runs (the snapshot due when the change log outgrows the table), handed a slice at a time to a writer thread | {:.2} | | {slices:.0} slices, the longest held the loop {longest_ms:.1} ms ({:.0}× less than the whole on the loop); peak {peak:.0} MiB |", took_ms / 1e3, on_loop * 1e3 / longest_ms);
    Ok(())
}

/// (resident, peak resident) MiB of `pid`.
pub(crate) fn memory(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key}"))?;
        Ok(line[key.len()..]
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse::<f64>()?
            / 1024.0)
    };
    Ok((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// A state with `n` saved bans of the FreeSWITCH jail, each with the
/// line that matched, banned once before (as a day of a scan campaign
/// leaves them).
fn saved_bans(n: u32) -> sipguard::bans::state::State {
    let now = sipguard::bans::now_ms();
    sipguard::bans::state::State {
        version: sipguard::bans::state::VERSION,
        bans: (0..n)
            .map(|i| {
                let ip = addr(BANNED_BASE, i);
                sipguard::bans::state::SavedBan {
                    net: format!("{ip}/32"),
                    jail: "fs".into(),
                    banned_at: now,
                    expires_at: Some(now + 86_400_000),
                    reason: "3 failures in 10m".into(),
                    line: failure_line(ip).trim_end().to_owned(),
                    all_ports: false,
                    ports_only: false,
                    origin: None,
                    expires_mono: None,
                    count: 1,
                }
            })
            .collect(),
        ..Default::default()
    }
}

fn iptables_rules(ips: &[String]) -> String {
    let mut s = String::from("*filter\n:f2b-bench - [0:0]\n-A INPUT -p all -j f2b-bench\n");
    for ip in ips.iter().rev() {
        s.push_str(&format!("-A f2b-bench -s {ip}/32 -j DROP\n"));
    }
    s.push_str("-A f2b-bench -j RETURN\nCOMMIT\n");
    s
}

fn ipset_script(ips: &[String]) -> String {
    let mut s = format!(
        "create f2b-bench hash:ip timeout 0 maxelem {}\n",
        ips.len().max(65536)
    );
    for ip in ips {
        s.push_str(&format!("add f2b-bench {ip} timeout 0\n"));
    }
    s
}

fn nft_script(ips: &[String]) -> String {
    format!(
        "table inet f2b-table {{\nset addr-set-bench {{ type ipv4_addr; elements = {{ {} }} }}\n}}\n",
        ips.join(", ")
    )
}
