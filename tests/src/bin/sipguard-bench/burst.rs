//! The operator's worst burst: `BIG_BURST` sources' failures appended at
//! once to a followed log. A row of `bench scale`, and `bench burst` alone
//! (a minute, to measure a change to the ban path without the rest).
use crate::report::Section;
use crate::scale::{addr, append, failure_lines, jail_config, memory, wait_until, BANNED_BASE};
use anyhow::{bail, Context as _, Result};
use sipguard_tests::{daemon::Daemon, netns::Pair, Sandbox};
use std::time::{Duration, Instant};

/// A million sources' failures at once.
pub const BIG_BURST: u32 = 1_000_000;

/// `bench burst`: the big burst's row alone.
pub fn run(out: &mut Section) -> Result<()> {
    say!(out, "## A burst of {BIG_BURST} failure lines\n");
    say!(out, "{BIG_BURST} failure lines from as many sources appended to a followed log in one write, `maxretry = 1`, timed until the last source is in the kernel map (the row of `bench scale`, alone).\n");
    say!(out, "| bans | seconds | bans/s | the daemon's CPU time meanwhile: its loop, all its threads | the daemon's peak resident memory |");
    say!(out, "|---:|---:|---:|---:|---:|");
    let b = big_burst()?;
    let rate = f64::from(b.bans) / b.secs;
    say!(
        out,
        "| {} | {:.2} | {rate:.0} | {:.2} s, {:.2} s | {:.0} MiB |",
        b.bans,
        b.secs,
        b.loop_cpu_secs,
        b.cpu_secs,
        b.peak_mib
    );
    say!(out, "\nCPU time is user and system time; the loop's (the main thread's) bounds the rate when the machine has a core for the other threads.");
    Ok(())
}

/// What a burst measured.
pub struct Burst {
    pub bans: u32,
    /// From the write to the last ban in the kernel map.
    pub secs: f64,
    /// The daemon's CPU time over those seconds: all its threads, its loop.
    pub cpu_secs: f64,
    pub loop_cpu_secs: f64,
    /// The daemon's peak resident memory (MiB).
    pub peak_mib: f64,
}

/// `BIG_BURST` failure lines from as many sources appended at once to a
/// followed log (`maxretry = 1`), as an operator would see a campaign's
/// burst: how many were banned, how long until the last is in the kernel
/// map, and the daemon's peak resident memory.
pub fn big_burst() -> Result<Burst> {
    let pair = Pair::new()?;
    let sb = Sandbox::new(&jail_config(1))?;
    let log = sb.path("freeswitch.log");
    std::fs::write(&log, "")?;
    let daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let maps = sipguard::kernel::maps::KernelMaps::open(&sb.pin)?;
    let lines: String = failure_lines(BANNED_BASE, BIG_BURST);
    let last = ipnet::IpNet::from(std::net::IpAddr::V4(addr(BANNED_BASE, BIG_BURST - 1)));
    let pid = daemon.pid();
    let (all, main) = (
        format!("/proc/{pid}/stat"),
        format!("/proc/{pid}/task/{pid}/stat"),
    );
    let (cpu_before, loop_before) = (cpu_secs(&all)?, cpu_secs(&main)?);
    let start = Instant::now();
    append(&log, &lines)?;
    drop(lines);
    let secs = wait_until(
        start,
        Duration::from_millis(5),
        Duration::from_secs(300),
        || Ok(maps.ban_entry(last)?.is_some()),
    )?;
    let (cpu_secs, loop_cpu_secs) = (cpu_secs(&all)? - cpu_before, cpu_secs(&main)? - loop_before);
    let banned = maps.bans()?.len();
    if banned != BIG_BURST as usize {
        bail!("sipguard banned {banned} of {BIG_BURST} sources");
    }
    // What the burst left to do (the change log, a snapshot) settles first.
    std::thread::sleep(Duration::from_secs(3));
    let (_, peak_mib) = memory(daemon.pid())?;
    Ok(Burst {
        bans: BIG_BURST,
        secs,
        cpu_secs,
        loop_cpu_secs,
        peak_mib,
    })
}

/// The CPU time used so far, user and system, by the process or thread
/// whose `stat` file (in `/proc`) is `path`.
fn cpu_secs(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // After the command's name (in parentheses, which may hold spaces):
    // state is field 3, utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i - 3)
            .with_context(|| format!("field {i} of {path}"))?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) / per_sec)
}
