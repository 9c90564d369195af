//! `cargo xtask bench latency`: from a failure line appended to the log to
//! the ban in the XDP map, and to the first packet from that source dropped,
//! through the real daemon in a namespace.
//!
//! A prober in the client namespace sends a SIP packet from the source being
//! banned every `PROBE_EVERY`; the ban's own packet counter in the map going
//! above zero is the first drop.
use crate::report::Section;
use anyhow::{bail, Result};
use sipguard_tests::{
    daemon::Daemon,
    netns::{self, Pair, RawSocket, SERVER_V4},
    packet::routable_udp4,
    Sandbox,
};
use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant},
};

const BANS: u32 = 1000;
const PROBE_EVERY: Duration = Duration::from_micros(100);
const BASE: u32 = 0x6440_0000;

pub fn run(out: &mut Section) -> Result<()> {
    let sb = Sandbox::new("[jails.fs]\nlogpath = \"{dir}/freeswitch.log\"\nfilter = \"freeswitch\"\nmaxretry = 1\nbantime = \"1h\"\n")?;
    std::fs::write(sb.path("freeswitch.log"), "")?;
    let pair = Pair::new()?;
    let _daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let maps = sipguard::kernel::maps::KernelMaps::open(&sb.pin)?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(sb.path("freeswitch.log"))?;
    let macs = pair.macs()?;
    let server = SERVER_V4.parse::<Ipv4Addr>()?.octets();
    let frames: Vec<Vec<u8>> = (0..BANS)
        .map(|i| {
            let body = format!("OPTIONS sip:{SERVER_V4} SIP/2.0\r\nCall-ID: probe-{i}\r\n\r\n");
            routable_udp4(
                macs,
                Ipv4Addr::from(BASE + i).octets(),
                server,
                5060,
                body.as_bytes(),
            )
        })
        .collect();
    let current = AtomicU32::new(0);
    let stop = AtomicBool::new(false);
    let path = pair.client.path();
    let (to_map, to_drop) = std::thread::scope(|scope| -> Result<_> {
        let prober = scope.spawn(|| -> Result<()> {
            netns::enter(&path)?;
            let sock = RawSocket::bind(&pair.client_if)?;
            while !stop.load(Ordering::Relaxed) {
                sock.send(&frames[current.load(Ordering::Relaxed) as usize])?;
                std::thread::sleep(PROBE_EVERY);
            }
            Ok(())
        });
        let result = measure(&maps, &mut log, &current);
        stop.store(true, Ordering::Relaxed);
        prober.join().expect("prober thread")?;
        result
    })?;
    say!(
        out,
        "## Line-to-ban and line-to-drop latency ({BANS} bans)\n"
    );
    say!(out, "From appending one failure line to the log (`maxretry = 1`) until the source's entry is in the XDP map, and until a packet from it is dropped. A prober sends a packet from that source every {} µs (plus the sleep's own wake-up delay), so the second figure includes up to one probe interval.\n", PROBE_EVERY.as_micros());
    say!(out, "| line appended → | p50 ms | p99 ms | max ms |");
    say!(out, "|---|---:|---:|---:|");
    for (what, mut samples) in [
        ("ban in the XDP map", to_map),
        ("first packet dropped", to_drop),
    ] {
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        say!(
            out,
            "| {what} | {:.2} | {:.2} | {:.2} |",
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(*samples.last().expect("samples"))
        );
    }
    say!(
        out,
        "\n(The daemon wakes on inotify events for the log folders; it also polls every 100 ms.)"
    );
    Ok(())
}

/// Appends one failure line per source in turn; returns, per ban, the time
/// until it was in the map and until its first drop.
fn measure(
    maps: &sipguard::kernel::maps::KernelMaps,
    log: &mut std::fs::File,
    current: &AtomicU32,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut to_map, mut to_drop) = (Vec::new(), Vec::new());
    for i in 0..BANS {
        let ip = Ipv4Addr::from(BASE + i);
        let net = ipnet::IpNet::from(std::net::IpAddr::V4(ip));
        current.store(i, Ordering::Relaxed);
        let line = format!(
            "{} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u@d] from ip {ip}\n",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.6f")
        );
        let start = Instant::now();
        std::io::Write::write_all(log, line.as_bytes())?;
        let mut in_map = None;
        loop {
            if let Some(entry) = maps.ban_entry(net)? {
                in_map.get_or_insert_with(|| start.elapsed());
                if maps.ban_stats(&entry)?.packets > 0 {
                    break;
                }
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!("{ip} not banned and dropped within 5 s");
            }
            // Spin, not sleep: a sleep's wake-up granularity would be measured
            // instead of the daemon.
            std::thread::yield_now();
        }
        to_map.push(in_map.expect("banned before dropped"));
        to_drop.push(start.elapsed());
    }
    Ok((to_map, to_drop))
}
