//! `cargo xtask bench latency`: from a failure line appended to the log to
//! the ban in the XDP map, through the real daemon in a namespace.
use crate::report::Section;
use anyhow::{bail, Result};
use std::time::Duration;

pub fn run(out: &mut Section) -> Result<()> {
    use sipguard_tests::{daemon::Daemon, netns::Pair, Sandbox};
    const BANS: u32 = 1000;
    let sb = Sandbox::new("[jails.fs]\nlogpath = \"{dir}/freeswitch.log\"\nfilter = \"freeswitch\"\nmaxretry = 1\nbantime = \"1h\"\n")?;
    std::fs::write(sb.path("freeswitch.log"), "")?;
    let pair = Pair::new()?;
    let _daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let maps = sipguard::maps::KernelMaps::open(&sb.pin)?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(sb.path("freeswitch.log"))?;
    let mut samples = Vec::new();
    for i in 0..BANS {
        let ip = std::net::Ipv4Addr::from(0x6440_0000u32 + i);
        let net = ipnet::IpNet::from(std::net::IpAddr::V4(ip));
        let line = format!(
            "{} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u@d] from ip {ip}\n",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.6f")
        );
        let start = std::time::Instant::now();
        std::io::Write::write_all(&mut log, line.as_bytes())?;
        while maps.ban_entry(net)?.is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                bail!("{ip} not banned within 5 s");
            }
            // Spin, not sleep: a sleep's wake-up granularity would be measured
            // instead of the daemon.
            std::thread::yield_now();
        }
        samples.push(start.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    say!(
        out,
        "## Line-to-ban latency ({BANS} bans, line appended → entry in the XDP map)\n"
    );
    say!(out, "| p50 ms | p99 ms | max ms |");
    say!(out, "|---:|---:|---:|");
    say!(
        out,
        "| {:.2} | {:.2} | {:.2} |",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*samples.last().unwrap())
    );
    say!(
        out,
        "\n(The daemon wakes on inotify events for the log folders; it also polls every 100 ms.)"
    );
    Ok(())
}
