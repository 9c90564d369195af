//! `cargo xtask bench fleet`: sipguard as a CrowdSec bouncer at scale.
//!
//! A LAPI fixture (the decision stream's real format, served by the tests'
//! HTTP server in a namespace: a real LAPI takes minutes to hold 100 000
//! decisions) answers `startup=true` with 100 000 decisions; the daemon is
//! timed from ready to all of them in the XDP map, and its memory read.
//! Then a 10 000-decision delta arrives while failure lines keep coming:
//! each log ban's latency (line appended → ban in the kernel map) is
//! measured before and during the delta. The baseline is `ipset restore`
//! loading as many addresses, what cs-firewall-bouncer does, in the same run.
use crate::report::Section;
use anyhow::{bail, Result};
use sipguard_tests::{
    daemon::{cli_ok, Daemon},
    http::Server,
    netns::{Netns, Pair},
    Sandbox,
};
use std::{
    io::Write as _,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const FULL: u32 = 100_000;
const DELTA: u32 = 10_000;
/// Decisions in 100.64.0.0/10; the delta after them; log offenders in 198.18.0.0/15.
const BASE: u32 = 0x6440_0000;
const LOG_BASE: u32 = 0xC612_0000;

fn decisions(from: u32, n: u32) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"duration":"3h59m58.9807811s","id":{},"origin":"CAPI","scenario":"crowdsecurity/sip-bf","scope":"Ip","type":"ban","value":"{}"}}"#,
                from + i + 1,
                Ipv4Addr::from(BASE + from + i)
            )
        })
        .collect();
    format!(r#"{{"deleted":null,"new":[{}]}}"#, items.join(","))
}

fn remote_bans(sb: &Sandbox) -> Result<u64> {
    let Ok(text) = cli_ok(sb, &["status", "--json"]) else {
        return Ok(0);
    };
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["remote"]["crowdsec"]["bans"].as_u64().unwrap_or(0))
}

fn wait(limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<f64> {
    let start = Instant::now();
    while !done()? {
        if start.elapsed() > limit {
            bail!("not within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Appends 3 failure lines of `ip`; returns ms until its ban is in the map.
fn log_ban_ms(
    sb: &Sandbox,
    maps: &sipguard::kernel::maps::KernelMaps,
    ip: Ipv4Addr,
) -> Result<f64> {
    let stamp = chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.6f");
    let lines: String = (0..3)
        .map(|i| format!("{stamp} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u{i}@d] from ip {ip}\n"))
        .collect();
    let net = ipnet::IpNet::from(std::net::IpAddr::V4(ip));
    let start = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(sb.path("freeswitch.log"))?
        .write_all(lines.as_bytes())?;
    while maps.ban_entry(net)?.is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{ip} not banned within 10 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(out: &mut Section) -> Result<()> {
    say!(
        out,
        "## sipguard as a CrowdSec bouncer: {FULL} decisions, and a {DELTA}-decision delta\n"
    );
    let pair = Pair::new()?;
    let full = Arc::new(decisions(0, FULL));
    let delta = Arc::new(decisions(FULL, DELTA));
    let armed = Arc::new(AtomicBool::new(false));
    let (f, d, a) = (full.clone(), delta.clone(), armed.clone());
    let lapi = Server::start(
        &pair.server,
        Box::new(move |req| {
            if req.path.contains("startup=true") {
                (200, f.to_string())
            } else if a.swap(false, Ordering::SeqCst) {
                (200, d.to_string())
            } else {
                (200, r#"{"deleted":null,"new":null}"#.into())
            }
        }),
    )?;
    let sb = Sandbox::new(&format!(
        "[crowdsec]\napi_url = \"{}\"\napi_key = \"bench\"\nupdate_frequency = \"1s\"\n[jails.fs]\nlogpath = \"{{dir}}/freeswitch.log\"\nfilter = \"freeswitch\"\nmaxretry = 3\nbantime = \"1h\"\n",
        lapi.url("/")
    ))?;
    std::fs::write(sb.path("freeswitch.log"), "")?;
    let daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let secs = wait(Duration::from_secs(120), || {
        Ok(remote_bans(&sb)? == u64::from(FULL))
    })?;
    let maps = sipguard::kernel::maps::KernelMaps::open(&sb.pin)?;
    let in_map = maps.banned_nets()?.len();
    if in_map != FULL as usize {
        bail!("{in_map} of {FULL} decisions in the map");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))?;
    let mib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let (rss, hwm) = (mib("VmRSS:"), mib("VmHWM:"));

    // The baseline: ipset restore of as many addresses, in a namespace.
    let ns = Netns::new()?;
    let mut script = format!(
        "create cs-bench hash:ip timeout 0 maxelem {}\n",
        FULL.max(65536)
    );
    for i in 0..FULL {
        script.push_str(&format!(
            "add cs-bench {} timeout 14398\n",
            Ipv4Addr::from(BASE + i)
        ));
    }
    let start = Instant::now();
    let ipset = ns.exec("ipset", &["restore"], script.as_bytes());
    let ipset_secs = start.elapsed().as_secs_f64();

    say!(out, "| what | seconds | × ipset restore | memory |");
    say!(out, "|---|---:|---:|---:|");
    say!(out, "| sipguard: {FULL} decisions from `startup=true` in the XDP map, from the daemon ready (pull, parse, vet, write) | {secs:.2} | {:.2} | {rss:.0} MiB resident (peak {hwm:.0} MiB) |", secs / ipset_secs);
    match ipset {
        Ok(_) => say!(out, "| `ipset restore`, {FULL} addresses with timeouts (the command alone) | {ipset_secs:.2} | 1.00 | |"),
        Err(e) => say!(out, "| `ipset restore` failed: {} | | | |", format!("{e:#}").lines().next().unwrap_or("")),
    }

    // Log bans before and during a 10 000-decision delta.
    let mut next = 0u32;
    let mut source = || {
        next += 1;
        Ipv4Addr::from(LOG_BASE + next)
    };
    let before: Vec<f64> = (0..10)
        .map(|_| log_ban_ms(&sb, &maps, source()))
        .collect::<Result<_>>()?;
    armed.store(true, Ordering::SeqCst);
    let delta_start = Instant::now();
    let mut during = Vec::new();
    let mut delta_secs = None;
    while delta_start.elapsed() < Duration::from_secs(30) {
        during.push(log_ban_ms(&sb, &maps, source())?);
        if maps
            .ban_entry(ipnet::IpNet::from(std::net::IpAddr::V4(Ipv4Addr::from(
                BASE + FULL + DELTA - 1,
            ))))?
            .is_some()
        {
            delta_secs = Some(delta_start.elapsed().as_secs_f64());
            // A few more while the loop settles.
            for _ in 0..5 {
                during.push(log_ban_ms(&sb, &maps, source())?);
            }
            break;
        }
    }
    let Some(delta_secs) = delta_secs else {
        bail!("the delta did not land within 30 s");
    };
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    say!(
        out,
        "\n| log bans (3 failure lines → ban in the map) | bans | median ms | max ms |"
    );
    say!(out, "|---|---:|---:|---:|");
    say!(
        out,
        "| with {FULL} decisions in force, no delta | {} | {:.2} | {:.2} |",
        before.len(),
        median(before.clone()),
        max(&before)
    );
    say!(out, "| while a {DELTA}-decision delta arrives and is applied (landed {delta_secs:.2} s after it was offered, pulls every 1 s) | {} | {:.2} | {:.2} |", during.len(), median(during.clone()), max(&during));
    say!(out, "\nThe delta reaches the daemon's loop in batches of 1 000 bans; log lines are read between batches.");
    if std::env::var_os("SIPGUARD_BENCH_DEBUG").is_some() {
        eprintln!("{}", daemon.log());
    }
    drop(daemon);
    Ok(())
}
