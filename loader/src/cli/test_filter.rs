//! `sipguard test-filter LOGFILE`: run a jail's filter over a log, like
//! `fail2ban-regex`: lines read, matched, missed, ignored, per-host counts,
//! and with `--replay` who would have been banned and when, under the jail's
//! thresholds and timed by the lines' own timestamps.
use crate::{
    bans::never_ban::NeverBan,
    config::{self, Config, JailConfig, StartAt},
    logs::filter::{self, Outcome},
    logs::jail::Jail,
};
use anyhow::{Context as _, Result};
use ipnet::IpNet;
use serde_json::json;
use std::{
    cell::Cell,
    collections::HashMap,
    io::IsTerminal as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The log file to read.
    pub logfile: PathBuf,
    /// Use this jail of the configuration: its filter and thresholds [default: freeswitch].
    #[arg(long, conflicts_with_all = ["filter", "failregex"])]
    pub jail: Option<String>,
    /// A built-in filter instead (freeswitch, freeswitch-challenge, asterisk, kamailio).
    #[arg(long, conflicts_with = "failregex")]
    pub filter: Option<String>,
    /// An inline failregex with <HOST> instead (repeatable).
    #[arg(long)]
    pub failregex: Vec<String>,
    /// An ignoreregex for --failregex (repeatable).
    #[arg(long, requires = "failregex")]
    pub ignoreregex: Vec<String>,
    /// Also show who would have been banned, and when.
    #[arg(long)]
    pub replay: bool,
    #[arg(long)]
    pub json: bool,
}

/// The jail whose filter and thresholds to use.
fn jail_config(args: &Args, config_path: &Path) -> Result<(String, JailConfig, filter::LogTz)> {
    let config = Config::load(config_path, false)?;
    let defaults = Config::parse(config::DEFAULT_TOML, "built-in default")?;
    let name = args.jail.clone().unwrap_or_else(|| "freeswitch".into());
    let mut jail = config
        .jails
        .get(&name)
        .or_else(|| defaults.jails.get(&name))
        .cloned()
        .with_context(|| {
            format!(
                "no jail named '{name}' in {} or the built-in default",
                config_path.display()
            )
        })?;
    if let Some(f) = &args.filter {
        filter::Filter::builtin(f)?;
        jail.filter = Some(f.clone());
        jail.failregex.clear();
    } else if !args.failregex.is_empty() {
        jail.filter = None;
        jail.failregex = args.failregex.clone();
        jail.ignoreregex = args.ignoreregex.clone();
    }
    Ok((name, jail, config.log_timezone))
}

pub fn run(args: &Args, config_path: &Path) -> Result<()> {
    let (name, jc, tz) = jail_config(args, config_path)?;
    for re in jc.failregex.iter().filter(|re| !filter::is_anchored(re)) {
        eprintln!(
            "test-filter: WARNING: failregex {re:?} is not anchored (^): it also matches failure \
             text inside other lines (siptrace headers, dialplan logs), which SIP clients can write"
        );
    }
    let mut jail = Jail::new(&name, &jc, StartAt::Beginning, tz)?;
    let file = std::fs::File::open(&args.logfile)
        .with_context(|| format!("cannot open {}", args.logfile.display()))?;
    let size = file.metadata()?.len().max(1);
    let mut file = file;

    let (mut lines, mut matched, mut ignored, mut bad_host, mut too_long, mut ambiguous) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut hosts: HashMap<IpAddr, u64> = HashMap::new();
    let mut bans: Vec<(i64, crate::logs::jail::BanRequest)> = Vec::new();
    let mut banned_until: HashMap<IpNet, i64> = HashMap::new();
    let mut ban_counts: HashMap<IpNet, u32> = HashMap::new();
    let now = Cell::new(0i64);
    let no_ignore = NeverBan::default();
    let tty = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut on_line = |raw: &[u8], read: u64, oversized: bool| {
        lines += 1;
        // The clock only every few thousand lines: reading it per line
        // would cost as much as skipping a line that cannot match.
        if lines % 4096 == 0 && last_progress.elapsed().as_secs() >= 2 {
            last_progress = Instant::now();
            let pct = read * 100 / size;
            if tty {
                eprint!("\r{pct:3}% {lines} lines, {matched} matched");
            } else {
                eprintln!("{pct}% {lines} lines, {matched} matched");
            }
        }
        if oversized {
            too_long += 1;
            return;
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // A line no rule can match: not even decoded (a miss).
        if !jail.may_match(raw) {
            return;
        }
        // Valid UTF-8 (nearly every line) is used as it is; only a line
        // with invalid bytes pays for the replacement.
        let line = match std::str::from_utf8(raw) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(raw),
        };
        match jail.check(&line) {
            Outcome::Miss => {}
            Outcome::Ignored => ignored += 1,
            Outcome::BadHost(_) => bad_host += 1,
            Outcome::Ambiguous => ambiguous += 1,
            Outcome::Hit { host, time_ms } => {
                matched += 1;
                *hosts.entry(host).or_default() += 1;
                if args.replay {
                    if let Some(t) = time_ms {
                        now.set(t);
                    }
                    let t = now.get();
                    let req = jail.on_line(
                        &line,
                        t,
                        false,
                        &no_ignore,
                        &|n| banned_until.get(n).is_some_and(|&until| until > t),
                        &|n| ban_counts.get(n).copied().unwrap_or(0),
                    );
                    if let Some(req) = req {
                        let until = req.duration.map_or(i64::MAX, |d| t + d.as_millis() as i64);
                        banned_until.insert(req.net, until);
                        *ban_counts.entry(req.net).or_default() += 1;
                        bans.push((t, req));
                    }
                }
            }
        }
    };
    split_lines(&mut file, crate::logs::follow::MAX_LINE, &mut on_line)?;
    if tty && lines > 0 {
        eprint!("\r{:60}\r", "");
    }
    let missed = lines - matched - ignored - bad_host - too_long - ambiguous;
    let mut by_host: Vec<(IpAddr, u64)> = hosts.into_iter().collect();
    by_host.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if args.json {
        let out = json!({
            "jail": name,
            "lines": lines, "matched": matched, "missed": missed, "ignored": ignored,
            "bad_host": bad_host, "too_long": too_long, "ambiguous": ambiguous,
            "hosts": by_host.iter().map(|(h, n)| json!({"host": h.to_string(), "count": n})).collect::<Vec<_>>(),
            "bans": bans.iter().map(|(t, b)| json!({
                "time_ms": t, "net": crate::addr::display(&b.net),
                "duration_secs": b.duration.map(|d| d.as_secs()), "reason": b.reason,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "Jail:    {name} (maxretry {} within {})",
        jc.maxretry,
        humantime::format_duration(jc.findtime)
    );
    println!(
        "Lines:   {lines} lines, {matched} matched, {missed} missed, {ignored} ignored, {bad_host} with a bad host, {too_long} too long, {ambiguous} ambiguous (crafted: counted for nobody)"
    );
    println!("Hosts:   {} distinct", by_host.len());
    for (host, n) in by_host.iter().take(20) {
        println!("  {host:<40} {n}");
    }
    if by_host.len() > 20 {
        println!("  ... and {} more (--json lists all)", by_host.len() - 20);
    }
    if args.replay {
        println!("Replay:  {} ban(s)", bans.len());
        for (t, b) in &bans {
            let when = chrono::DateTime::from_timestamp_millis(*t)
                .map(|d| {
                    d.with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M:%S")
                        .to_string()
                })
                .unwrap_or_else(|| "?".into());
            let how = b.duration.map_or("permanently".to_owned(), |d| {
                format!("for {}", humantime::format_duration(d))
            });
            println!(
                "  {when}  {:<40} {how} ({})",
                crate::addr::display(&b.net),
                b.reason
            );
        }
    }
    Ok(())
}

/// Reads `input` in big chunks and calls `on_line(line, bytes read so far,
/// too long)` for each line (without its newline; a last line without one
/// too). Newlines are found with SIMD search; a line longer than `max` is
/// reported once as too long, and never held in memory whole.
fn split_lines(
    input: &mut impl std::io::Read,
    max: usize,
    on_line: &mut impl FnMut(&[u8], u64, bool),
) -> std::io::Result<u64> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut partial: Vec<u8> = Vec::new();
    let mut oversized = false;
    let mut read = 0u64;
    loop {
        let n = input.read(&mut chunk)?;
        if n == 0 {
            if oversized || !partial.is_empty() {
                on_line(&partial, read, oversized);
            }
            return Ok(read);
        }
        read += n as u64;
        let data = &chunk[..n];
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            if oversized {
                on_line(&[], read, true);
                oversized = false;
            } else if partial.is_empty() {
                let line = &data[start..nl];
                if line.len() > max {
                    on_line(&[], read, true);
                } else {
                    on_line(line, read, false);
                }
            } else {
                partial.extend_from_slice(&data[start..nl]);
                if partial.len() > max {
                    on_line(&[], read, true);
                } else {
                    on_line(&partial, read, false);
                }
                partial.clear();
            }
            start = nl + 1;
        }
        if !oversized {
            partial.extend_from_slice(&data[start..]);
            if partial.len() > max {
                oversized = true;
                partial.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8], max: usize) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        split_lines(&mut &input[..], max, &mut |l: &[u8], _, long| {
            out.push((String::from_utf8_lossy(l).into_owned(), long))
        })
        .unwrap();
        out
    }

    #[test]
    fn lines_are_split_and_long_ones_reported_once() {
        let got = lines_of(b"a\nbb\n\nlast", 8);
        let want: Vec<(String, bool)> = ["a", "bb", "", "last"]
            .iter()
            .map(|s| (s.to_string(), false))
            .collect();
        assert_eq!(got, want);
        let got = lines_of(b"ok\n0123456789abcdef\nnext\n0123456789", 8);
        assert_eq!(
            got,
            [
                ("ok".to_owned(), false),
                (String::new(), true),
                ("next".to_owned(), false),
                (String::new(), true)
            ]
        );
    }
}
