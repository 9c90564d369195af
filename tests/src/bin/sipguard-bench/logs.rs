//! `cargo xtask bench logs`: log throughput of `sipguard test-filter` (the
//! daemon's matching code) against `fail2ban-regex` with fail2ban's own
//! FreeSWITCH filter, on the same generated million-line log.
use crate::report::Section;
use anyhow::{bail, Result};

// A deterministic sequence, so every run generates the same log.
use sipguard_tests::rng::Rng;

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
                rng.next_u64() as u32,
                rng.next_u64() & 0xffff_ffff_ffff
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
            line.push_str(chatter[rng.below(chatter.len())]);
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

pub fn run(out: &mut Section) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("freeswitch.log");
    let written = generate_log(&log)?;
    let bin = sipguard_tests::daemon::bin();
    let (json, secs, rss) = timed(
        std::process::Command::new(&bin)
            .args(["test-filter", "--filter", "freeswitch", "--json"])
            .arg(&log),
    )?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
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
    say!(out, "## Log throughput ({LOG_LINES} generated FreeSWITCH lines, ~2.5% failures from {} sources)\n", want.len());
    say!(
        out,
        "| tool | seconds | lines/s | × fail2ban-regex | peak RSS MiB | failing hosts found |"
    );
    say!(out, "|---|---:|---:|---:|---:|---:|");
    let ours_lps = LOG_LINES as f64 / secs;
    let f2b = if std::path::Path::new("/usr/bin/fail2ban-regex").exists() {
        let r = timed(
            std::process::Command::new("fail2ban-regex")
                .args(["-o", "ip"])
                .arg(&log)
                .arg("/etc/fail2ban/filter.d/freeswitch.conf"),
        );
        match r {
            Ok((ips, s, m)) => Some((
                ips.lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect::<std::collections::BTreeSet<_>>(),
                s,
                m,
            )),
            Err(e) => {
                say!(out, "(fail2ban-regex failed: {e:#})");
                None
            }
        }
    } else {
        say!(
            out,
            "(fail2ban-regex is not installed: `apt-get install fail2ban` for the baseline)"
        );
        None
    };
    let ratio = f2b
        .as_ref()
        .map_or("–".to_owned(), |(_, s, _)| format!("{:.1}", s / secs));
    say!(
        out,
        "| sipguard test-filter | {secs:.2} | {ours_lps:.0} | {ratio} | {rss:.0} | {} of {} |",
        ours.intersection(&want).count(),
        want.len()
    );
    if let Some((hosts, s, m)) = &f2b {
        let f2b_lps = LOG_LINES as f64 / s;
        say!(out, "| fail2ban-regex 1.0 (its freeswitch filter) | {s:.2} | {f2b_lps:.0} | 1.0 | {m:.0} | {} of {} |", hosts.intersection(&want).count(), want.len());
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
