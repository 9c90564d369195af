//! `cargo xtask bench xdp`: the XDP program's cost per packet, measured in the
//! kernel with BPF_PROG_TEST_RUN, beside an empty XDP program in the same run.
//! Figures are medians of several runs of `REPEAT` packets each; what matters
//! is the ratio to the empty program, which cancels most of the machine.
use anyhow::{bail, Result};
use sipguard::{addr::parse_net, clock};
use sipguard_tests::{kernel::TestProgram, packet::*};
use std::time::Duration;

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "xdp".into());
    match what.as_str() {
        "xdp" => xdp(),
        "logs" => logs(),
        "latency" => latency(),
        other => bail!("unknown benchmark '{other}' (known: xdp, logs, latency)"),
    }
}

fn median_ns(mut f: impl FnMut() -> Result<Duration>) -> Result<f64> {
    let mut v = (0..RUNS)
        .map(|_| f().map(|d| d.as_nanos() as f64))
        .collect::<Result<Vec<_>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[RUNS / 2])
}

/// Fills the blocklist with `n` distinct /32s (v4) and /128s (v6) in
/// 100.64.0.0/10 and fd00::/16, none of them the probe sources.
fn fill(t: &mut TestProgram, n: u32) -> Result<()> {
    let now = clock::mono_now_ns();
    for i in 0..n {
        let v4 = std::net::Ipv4Addr::from(0x6440_0000u32 + i);
        t.maps
            .ban(ipnet::IpNet::from(std::net::IpAddr::V4(v4)), 0, 0, now)?;
        let v6 =
            std::net::Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i));
        t.maps
            .ban(ipnet::IpNet::from(std::net::IpAddr::V6(v6)), 0, 0, now)?;
    }
    Ok(())
}

fn xdp() -> Result<()> {
    let clean = [192, 0, 2, 1];
    let banned = [192, 0, 2, 66];
    let in_cidr = [198, 51, 100, 7];
    let clean6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let banned6 = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66,
    ];
    let cases: [(&str, Vec<u8>, u32); 7] = [
        ("non-SIP pass (udp/53, v4)", udp4(clean, 53), 2),
        ("SIP pass, unbanned (udp/5060, v4)", udp4(clean, 5060), 2),
        ("SIP pass, unbanned (udp/5060, v6)", udp6(clean6, 5060), 2),
        ("banned drop (v4 /32)", udp4(banned, 5060), 1),
        ("banned drop (v6 /128)", udp6(banned6, 5060), 1),
        ("CIDR-banned drop (v4 in /24)", udp4(in_cidr, 5060), 1),
        ("banned, other port pass (v4)", udp4(banned, 53), 2),
    ];
    println!("## XDP per-packet cost (BPF_PROG_TEST_RUN, {REPEAT} repeats, median of {RUNS})\n");
    println!("| blocklist size | case | ns/packet | × empty program | Mpps per core |");
    println!("|---:|---|---:|---:|---:|");
    let mut t = TestProgram::load()?;
    let now = clock::mono_now_ns();
    t.maps.ban(parse_net("192.0.2.66")?, 0, 0, now)?;
    t.maps.ban(parse_net("2001:db8::66")?, 0, 0, now)?;
    t.maps.ban(parse_net("198.51.100.0/24")?, 0, 0, now)?;
    let mut size = 0;
    for target in [1u32, 10_000, 1_000_000] {
        fill(&mut t, target - size)?;
        size = target;
        let floor = median_ns(|| Ok(t.run_floor(&udp4(clean, 5060), REPEAT)?.1))?;
        println!(
            "| {size} (+3) | empty XDP program (floor) | {floor:.1} | 1.00 | {:.1} |",
            1e3 / floor
        );
        for (name, frame, action) in &cases {
            let ns = median_ns(|| {
                let (got, d) = t.run_repeat(frame, REPEAT)?;
                if got != *action {
                    bail!("{name}: action {got}, expected {action}");
                }
                Ok(d)
            })?;
            println!(
                "| {size} (+3) | {name} | {ns:.1} | {:.2} | {:.1} |",
                ns / floor,
                1e3 / ns
            );
        }
    }
    println!(
        "\nLine rate for 64-byte frames: 10 GbE 14.88 Mpps, 25 GbE 37.2 Mpps, 100 GbE 148.8 Mpps."
    );
    rate_limiter()
}

/// The cost the rate limiter adds to unbanned SIP traffic, beside the same
/// packet with the limiter off and the empty program, in one run.
fn rate_limiter() -> Result<()> {
    let mut t = TestProgram::load()?;
    let frame = udp4([192, 0, 2, 1], 5060);
    let run = |t: &mut TestProgram, cfg: common::Config, want: u32| -> Result<f64> {
        t.maps.set_config(cfg)?;
        median_ns(|| {
            let (got, d) = t.run_repeat(&frame, REPEAT)?;
            if got != want {
                bail!("action {got}, expected {want}");
            }
            Ok(d)
        })
    };
    let floor = median_ns(|| Ok(t.run_floor(&frame, REPEAT)?.1))?;
    let off = run(&mut t, common::Config::default(), 2)?;
    // Never over: 100 M packets/s with an enormous burst.
    let under = run(
        &mut t,
        common::Config::default().with_rate(100_000_000, u32::MAX),
        2,
    )?;
    // Over after the first two packets: 1 packet/s, burst 1.
    let mut cfg = common::Config::default().with_rate(1, 1);
    cfg.escalate_secs = 5;
    cfg.escalate_window_secs = 60;
    let over = run(&mut t, cfg, 1)?;
    println!("\n## Rate limiter cost (SIP/UDP from one unbanned source, {REPEAT} repeats, median of {RUNS})\n");
    println!("| case | ns/packet | × empty program | added by the limiter |");
    println!("|---|---:|---:|---:|");
    println!("| empty XDP program (floor) | {floor:.1} | 1.00 | |");
    println!("| limiter off | {off:.1} | {:.2} | |", off / floor);
    println!(
        "| limiter on, under the rate (pass) | {under:.1} | {:.2} | {:+.1} ns |",
        under / floor,
        under - off
    );
    println!(
        "| limiter on, over the rate (drop) | {over:.1} | {:.2} | {:+.1} ns |",
        over / floor,
        over - off
    );

    // Scanner signatures on (limiter off), SIP packets of real sizes.
    let scan = |t: &mut TestProgram, body: &[u8], want: u32| -> Result<f64> {
        let f = sipguard_tests::packet::frame(
            &[],
            ETH_P_IP,
            &ipv4([192, 0, 2, 1], UDP, 0, 0, &udp_with(5060, body)),
        );
        median_ns(|| {
            let (got, d) = t.run_repeat(&f, REPEAT)?;
            if got != want {
                bail!("action {got}, expected {want}");
            }
            Ok(d)
        })
    };
    let phone = sip_options("User-Agent: Yealink SIP-T46S 66.86.0.15", 0);
    let no_ua = sip_options("", 400);
    let scanner = sip_options("User-Agent: friendly-scanner", 0);
    t.maps.set_config(common::Config::default())?;
    let phone_off = scan(&mut t, &phone, 2)?;
    t.maps.set_config(common::Config {
        flags: common::CONFIG_SCANNERS,
        ..common::Config::default()
    })?;
    let phone_on = scan(&mut t, &phone, 2)?;
    let no_ua_on = scan(&mut t, &no_ua, 2)?;
    let scanner_on = scan(&mut t, &scanner, 1)?;
    println!("\n## Scanner signature cost (SIP/UDP OPTIONS from one unbanned source, {REPEAT} repeats, median of {RUNS})\n");
    println!("| case | ns/packet | × empty program | added by the scan |");
    println!("|---|---:|---:|---:|");
    println!(
        "| scanners off, a phone's OPTIONS ({} bytes) | {phone_off:.1} | {:.2} | |",
        phone.len(),
        phone_off / floor
    );
    println!("| scanners on, a phone's OPTIONS (User-Agent at byte {}) | {phone_on:.1} | {:.2} | {:+.1} ns |", ua_at(&phone), phone_on / floor, phone_on - phone_off);
    println!("| scanners on, no User-Agent in the 512-byte window (worst case) | {no_ua_on:.1} | {:.2} | {:+.1} ns |", no_ua_on / floor, no_ua_on - phone_off);
    println!(
        "| scanners on, svmap's OPTIONS (drop) | {scanner_on:.1} | {:.2} | {:+.1} ns |",
        scanner_on / floor,
        scanner_on - phone_off
    );
    Ok(())
}

/// A deterministic pseudo-random sequence (xorshift64*), so every run
/// generates the same log.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const LOG_LINES: u64 = 1_000_000;

/// A FreeSWITCH log in the real shapes: ~5% authentication lines (failures
/// and challenges, half of each) from 5 000 sources (10% IPv6), a session
/// UUID on 30% of lines, the CPU-idle percentage on half; the rest ordinary
/// chatter. Returns the addresses of failure lines, as written.
fn generate_log(path: &std::path::Path) -> Result<std::collections::BTreeSet<String>> {
    use std::io::Write as _;
    let mut rng = Rng(0x5167_0000_dead_beef);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut failing = std::collections::BTreeSet::new();
    let base = chrono::NaiveDate::from_ymd_opt(2026, 11, 2)
        .unwrap()
        .and_hms_opt(8, 0, 0)
        .unwrap();
    let chatter = [
        "[DEBUG] sofia.c:7254 Channel sofia/internal/1001@10.0.0.1 entering state [calling][0]",
        "[NOTICE] switch_channel.c:1133 New Channel sofia/external/+4930123456@198.51.100.7 [1f0e]",
        "[INFO] mod_dialplan_xml.c:637 Processing 1001 <1001>->2000 in context default",
        "[DEBUG] switch_core_state_machine.c:585 (sofia/internal/1001@10.0.0.1) Running State Change CS_ROUTING",
        "[WARNING] switch_rtp.c:8012 Bad RTP packet from 203.0.113.50:16384",
    ];
    for i in 0..LOG_LINES {
        let t = base + chrono::Duration::milliseconds(i as i64);
        let mut line = String::new();
        if rng.below(10) < 3 {
            line.push_str(&format!(
                "{:08x}-1f1c-4a5e-9d6f-{:012x} ",
                rng.next() as u32,
                rng.next() & 0xffff_ffff_ffff
            ));
        }
        line.push_str(&t.format("%Y-%m-%d %H:%M:%S%.6f ").to_string());
        if rng.below(2) == 0 {
            line.push_str(&format!("{}.{:02}% ", rng.below(100), rng.below(100)));
        }
        if rng.below(100) < 5 {
            let src = rng.below(5000);
            let ip = if src < 500 {
                format!("2001:db8:{:x}::{:x}", src, rng.below(65536))
            } else {
                format!(
                    "100.{}.{}.{}",
                    64 + src / 65536,
                    (src / 256) % 256,
                    src % 256
                )
            };
            let kind = rng.below(4);
            line.push_str(&match kind {
                0 => format!("[WARNING] sofia_reg.c:1842 SIP auth challenge (REGISTER) on sofia profile 'internal' for [{}@10.0.8.5] from ip {ip}", rng.below(1000)),
                1 => format!("[WARNING] sofia_reg.c:1842 SIP auth challenge (INVITE) on sofia profile 'external' for [{}@10.0.8.5] from ip {ip}", rng.below(1000)),
                2 => format!("[WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [{}@10.0.8.5] from ip {ip}", rng.below(1000)),
                _ => format!("[WARNING] sofia_reg.c:2531 Can't find user [{}@10.0.8.5] from {ip}", rng.below(1000)),
            });
            if kind >= 2 {
                failing.insert(ip);
            }
        } else {
            line.push_str(chatter[rng.below(chatter.len() as u64) as usize]);
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(failing)
}

/// Runs a command, returning (stdout, wall seconds, peak RSS in MiB).
fn timed(cmd: &mut std::process::Command) -> Result<(String, f64, f64)> {
    use std::os::unix::process::ExitStatusExt as _;
    let start = std::time::Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let mut status = 0;
    // SAFETY: plain wait4 on our own child, with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let secs = start.elapsed().as_secs_f64();
    let out = reader.join().expect("reader thread")?;
    let status = std::process::ExitStatus::from_raw(status);
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok((out, secs, usage.ru_maxrss as f64 / 1024.0))
}

fn logs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("freeswitch.log");
    let written = generate_log(&log)?;
    let bin = sipguard_tests::daemon::bin();
    let (out, secs, rss) = timed(
        std::process::Command::new(&bin)
            .args(["test-filter", "--filter", "freeswitch", "--json"])
            .arg(&log),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let ours: std::collections::BTreeSet<String> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_owned())
        .collect();
    let want: std::collections::BTreeSet<String> = written
        .iter()
        .map(|ip| ip.parse::<std::net::IpAddr>().unwrap().to_string())
        .collect();
    println!("## Log throughput ({LOG_LINES} generated FreeSWITCH lines, ~2.5% failures from {} sources)\n", want.len());
    println!(
        "| tool | seconds | lines/s | × fail2ban-regex | peak RSS MiB | failing hosts found |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let ours_lps = LOG_LINES as f64 / secs;
    let f2b = if std::path::Path::new("/usr/bin/fail2ban-regex").exists() {
        let r = timed(
            std::process::Command::new("fail2ban-regex")
                .args(["-o", "ip"])
                .arg(&log)
                .arg("/etc/fail2ban/filter.d/freeswitch.conf"),
        );
        match r {
            Ok((out, s, m)) => Some((
                out.lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect::<std::collections::BTreeSet<_>>(),
                s,
                m,
            )),
            Err(e) => {
                println!("(fail2ban-regex failed: {e:#})");
                None
            }
        }
    } else {
        println!("(fail2ban-regex is not installed: `apt-get install fail2ban` for the baseline)");
        None
    };
    let ratio = f2b
        .as_ref()
        .map_or("–".to_owned(), |(_, s, _)| format!("{:.1}", s / secs));
    println!(
        "| sipguard test-filter | {secs:.2} | {ours_lps:.0} | {ratio} | {rss:.0} | {} of {} |",
        ours.intersection(&want).count(),
        want.len()
    );
    if let Some((hosts, s, m)) = &f2b {
        let f2b_lps = LOG_LINES as f64 / s;
        println!("| fail2ban-regex 1.0 (its freeswitch filter) | {s:.2} | {f2b_lps:.0} | 1.0 | {m:.0} | {} of {} |", hosts.intersection(&want).count(), want.len());
    }
    if ours != want {
        bail!(
            "sipguard found {} hosts, the log has {} failing hosts",
            ours.len(),
            want.len()
        );
    }
    Ok(())
}

fn latency() -> Result<()> {
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
    println!("## Line-to-ban latency ({BANS} bans, line appended → entry in the XDP map)\n");
    println!("| p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|");
    println!(
        "| {:.2} | {:.2} | {:.2} |",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*samples.last().unwrap())
    );
    println!(
        "\n(The daemon wakes on inotify events for the log folders; it also polls every 100 ms.)"
    );
    Ok(())
}

fn ua_at(body: &[u8]) -> usize {
    body.windows(11)
        .position(|w| w == b"User-Agent:")
        .unwrap_or(0)
}
