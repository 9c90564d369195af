//! Matching log lines: fail2ban-style `failregex`/`ignoreregex` with `<HOST>`,
//! and the built-in FreeSWITCH filters.
//!
//! Security: anything a SIP client sends can end up in the log (usernames,
//! User-Agents, whole headers with siptrace on). So
//! * the built-in filters are anchored: a line counts only if it starts with
//!   the prefix FreeSWITCH itself writes (an optional syslog/journald prefix,
//!   an optional session UUID, its own timestamp, the optional CPU-idle
//!   percentage, the level, `sofia_reg.c:NNNN`), so failure text that merely
//!   appears inside another line (a siptrace header, a dialplan `log`) does
//!   not;
//! * `<HOST>` is anchored to the very end of the line (FreeSWITCH writes
//!   `from ip <HOST>` last), so nothing inside `for [...]` (the SIP user and
//!   domain, chosen by the attacker) can supply it;
//! * a line's time is read only from that prefix, at the start of the line.
use anyhow::{bail, Context as _, Result};
use chrono::{
    DateTime, Datelike as _, FixedOffset, Local, NaiveDate, NaiveDateTime, TimeZone as _,
};
use regex::Regex;
use std::{net::IpAddr, sync::LazyLock};

/// What `<HOST>` becomes: an IPv4 address, or an IPv6 address (which may end
/// in an embedded IPv4). Host names are not accepted: no DNS lookups, ever.
const HOST_PATTERN: &str = r"(?P<host>(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?|(?:\d{1,3}\.){3}\d{1,3})";

/// A syslog or journald prefix: an RFC 3164 date (`Oct  1 12:00:00`) or an
/// ISO one (`2016-09-25T18:57:58.150982` or with a space, with an optional
/// offset), the host,
/// and `freeswitch[PID]: `.
const SYSLOG: &str = r"(?:(?P<systime>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?)|[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}) \S+ freeswitch(?:\[\d+\])?: ";
/// A session UUID, which FreeSWITCH writes first with `log-uuid`.
const UUID: &str = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12} ";
/// FreeSWITCH's own timestamp (`2013-12-31 17:39:54.767815`, or year-less).
const FSTIME: &str = r"(?P<fstime>(?:\d{4}-)?\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,9})?) ";
/// The CPU-idle percentage FreeSWITCH 1.10.7+ writes after the time.
const CPU: &str = r"(?:\d{1,3}\.\d{1,2}% )?";

/// The start of every line FreeSWITCH writes to its log, anchored: with a
/// syslog prefix, FreeSWITCH's own timestamp may be absent; without one, it
/// is required.
pub static LINE_START: LazyLock<String> = LazyLock::new(|| {
    // A group name may appear once: the syslog branch's timestamp is `fstime2`.
    let optional = FSTIME.replace("fstime", "fstime2");
    format!("^(?:{SYSLOG}(?:{UUID})?(?:{optional})?|(?:{UUID})?{FSTIME}){CPU}")
});

/// The level/location part of FreeSWITCH's sofia_reg lines in every shape we
/// know: `[WARNING] sofia_reg.c:1842 `, `[WARN] [SOFIA] [sofia_reg.c:2248] `.
const SOFIA: &str = r"\[(?:WARNING|WARN)\] (?:\[SOFIA\] )?\[?sofia_reg\.c:\d+\]? ";

/// Any level and source location, for anchoring imported filters: the
/// imported regex may itself start with the level, or with the message.
const ANY_LEVEL: &str = r"(?:\[[A-Z]+\] (?:\[[A-Z]+\] )?\[?[\w.]+\.c(?:pp)?:\d+\]? )?";

/// Built-in filters: (name, description, failregex list, each after the
/// anchored FreeSWITCH prefix).
pub const BUILTIN: &[(&str, &str, &[&str])] = &[
    (
        "freeswitch",
        "real authentication failures: 'SIP auth failure' and 'Can't find user'",
        &[
            r"SIP auth failure \([A-Z]+\) on sofia profile '[^']*' for \[.*\] from ip <HOST>\s*$",
            r"Can't find user \[.*\] from <HOST>\s*$",
        ],
    ),
    (
        "freeswitch-challenge",
        "digest challenges: one per normal registration, so only a flood of them is suspicious",
        &[r"SIP auth challenge \([A-Z]+\) on sofia profile '[^']*' for \[.*\] from ip <HOST>\s*$"],
    ),
];

/// The failregex list of a built-in filter, anchored to the FreeSWITCH prefix.
pub fn builtin(name: &str) -> Option<Vec<String>> {
    BUILTIN
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, res)| {
            res.iter()
                .map(|re| format!("{}{SOFIA}{re}", *LINE_START))
                .collect()
        })
}

/// The fixed words a built-in failregex starts its message with (up to its
/// first regex syntax), which every line it matches must contain.
fn literal_of(re: &str) -> Option<memchr::memmem::Finder<'static>> {
    let end = re.find(['\\', '(', '[', '.', '*', '+', '?', '{', '|', '^', '$'])?;
    let words = &re[..end];
    (words.len() >= 8).then(|| memchr::memmem::Finder::new(words.as_bytes()).into_owned())
}

/// The fixed text right before `<HOST>` in a failregex that ends with
/// `<HOST>\s*$` (so the host is whatever follows the line's last one).
fn host_marker(re: &'static str) -> Option<&'static str> {
    let before = re.strip_suffix("<HOST>\\s*$")?;
    let start = before.rfind(['\\', ']', ')', '*', '+', '?', '}', '|', '.'])? + 1;
    let marker = &before[start..];
    (marker.len() >= 4 && !marker.trim().is_empty()).then_some(marker)
}

/// `re` anchored as fail2ban anchors its filters (`^%(__prefix_line)s`):
/// an anchored one is kept; any other must follow the FreeSWITCH line prefix
/// (and optionally a level and source location).
pub fn anchored(re: &str) -> String {
    if is_anchored(re) {
        re.to_owned()
    } else {
        format!("{}{ANY_LEVEL}{re}", *LINE_START)
    }
}

/// True if a failregex only matches from the start of a line.
pub fn is_anchored(re: &str) -> bool {
    re.starts_with('^') || re.starts_with("\\A")
}

pub fn builtin_names() -> String {
    BUILTIN
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The timezone the log's timestamps are written in (`log_timezone`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogTz {
    /// The daemon's own (what FreeSWITCH uses on the same host).
    #[default]
    Local,
    /// A fixed offset: `UTC`, `+02:00`, `-0500`.
    Fixed(FixedOffset),
}

impl std::str::FromStr for LogTz {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("local") {
            return Ok(LogTz::Local);
        }
        if t.eq_ignore_ascii_case("utc") || t == "Z" {
            return Ok(LogTz::Fixed(FixedOffset::east_opt(0).expect("valid")));
        }
        let (sign, rest) = match t.as_bytes().first() {
            Some(b'+') => (1, &t[1..]),
            Some(b'-') => (-1, &t[1..]),
            _ => bail!("invalid log_timezone '{s}': expected local, UTC, or an offset like +02:00"),
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        let (h, m) = match digits.len() {
            2 => (digits.parse::<i32>().ok(), Some(0)),
            4 => (digits[..2].parse().ok(), digits[2..].parse().ok()),
            _ => (None, None),
        };
        match (h, m) {
            (Some(h), Some(m)) if h <= 14 && m < 60 => Ok(LogTz::Fixed(
                FixedOffset::east_opt(sign * (h * 3600 + m * 60)).expect("in range"),
            )),
            _ => bail!("invalid log_timezone '{s}': expected local, UTC, or an offset like +02:00"),
        }
    }
}

/// Real FreeSWITCH authentication-failure lines in every shape we know
/// (including fail2ban's test samples). A filter meant for FreeSWITCH that
/// matches none of them is broken: `import-fail2ban` checks against these.
pub const REAL_FAILURE_LINES: &[&str] = &[
    "2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:1478 SIP auth failure (INVITE) on sofia profile 'internal' for [000972543480510@192.168.2.51] from ip 5.11.47.236",
    "2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:2531 Can't find user [1001@192.168.2.51] from 5.11.47.236",
    "2021-10-29 14:13:24.894719 82.43% [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [215@10.0.8.5] from ip 108.181.22.221",
    "c2a1b7e2-1f1c-4a5e-9d6f-2b0a3c1d4e5f 2021-10-29 14:13:24.894719 95.00% [WARNING] sofia_reg.c:1842 SIP auth failure (INVITE) on sofia profile 'external' for [x@y] from ip 2001:db8::1",
    "08-03 08:10:21.026299 [WARN] [SOFIA] [sofia_reg.c:2248] SIP auth failure (INVITE) on sofia profile 'external' for [41801148436701961@148.251.134.154] from ip 192.0.2.4",
    "2016-09-25T18:57:58.150982 www.srv.tld freeswitch[122921]: 2016-09-25 18:57:58.150982 [WARNING] sofia_reg.c:2889 Can't find user [201@::1] from 192.0.2.1",
    "2016-09-25T18:57:58.150982 www.srv.tld freeswitch[122921]: 2016-09-25 18:57:58.150982 [WARNING] sofia_reg.c:1720 SIP auth failure (INVITE) on sofia profile 'sipinterface_1' for [9810972597751739@::1] from ip 192.0.2.2",
    "08-03 07:56:53.026292 [WARN] [SOFIA] [sofia_reg.c:4130] Can't find user [101@148.251.134.154] from 192.0.2.3",
    "2021-10-29 21:04:58.150982 00.00% [WARNING] sofia_reg.c:2889 Can't find user [201@::1] from 192.0.2.5",
];

/// How many of `REAL_FAILURE_LINES` a filter matches.
pub fn real_lines_matched(filter: &Filter) -> usize {
    REAL_FAILURE_LINES
        .iter()
        .filter(|l| matches!(filter.check(l), Outcome::Hit { .. }))
        .count()
}

/// Compiles one failregex, replacing `<HOST>` (also `<ADDR>`, `<IP4>`, `<IP6>`).
pub fn compile_failregex(re: &str) -> Result<Regex> {
    let count = ["<HOST>", "<ADDR>", "<IP4>", "<IP6>"]
        .iter()
        .map(|t| re.matches(t).count())
        .sum::<usize>();
    if count != 1 {
        bail!("failregex must contain <HOST> exactly once (found {count}): {re}");
    }
    let expanded = re
        .replace("<HOST>", HOST_PATTERN)
        .replace("<ADDR>", HOST_PATTERN)
        .replace("<IP4>", HOST_PATTERN)
        .replace("<IP6>", HOST_PATTERN);
    Regex::new(&expanded).with_context(|| format!("invalid failregex {re:?}"))
}

pub fn compile_ignoreregex(re: &str) -> Result<Regex> {
    Regex::new(re).with_context(|| format!("invalid ignoreregex {re:?}"))
}

/// What a filter says about one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No failregex matched.
    Miss,
    /// A failregex matched, but so did an ignoreregex.
    Ignored,
    /// A failregex matched but what `<HOST>` captured is not an IP address.
    BadHost(String),
    /// A failure from `host`, at the line's own time when it has one (ms since
    /// the epoch, local time as FreeSWITCH writes it).
    Hit { host: IpAddr, time_ms: Option<i64> },
}

#[derive(Clone, Debug)]
pub struct Filter {
    fail: Vec<Regex>,
    /// For each failregex, a literal every line it matches contains: a line
    /// without it is skipped before the regex runs (most lines of a busy
    /// log), found with SIMD substring search.
    literals: Vec<Option<memchr::memmem::Finder<'static>>>,
    /// For each failregex that ends with `MARKER<HOST>\s*$` (the built-ins),
    /// the marker: a match is then found without the capture engine, and
    /// the host is what follows the line's last marker.
    host_markers: Vec<Option<&'static str>>,
    ignore: Vec<Regex>,
    tz: LogTz,
}

impl Filter {
    pub fn new(failregex: &[String], ignoreregex: &[String]) -> Result<Self> {
        if failregex.is_empty() {
            bail!("a filter needs at least one failregex");
        }
        Ok(Self {
            literals: vec![None; failregex.len()],
            host_markers: vec![None; failregex.len()],
            fail: failregex
                .iter()
                .map(|r| compile_failregex(r))
                .collect::<Result<_>>()?,
            ignore: ignoreregex
                .iter()
                .map(|r| compile_ignoreregex(r))
                .collect::<Result<_>>()?,
            tz: LogTz::Local,
        })
    }

    /// Reads line times in `tz` instead of the local timezone.
    pub fn with_timezone(mut self, tz: LogTz) -> Self {
        self.tz = tz;
        self
    }

    pub fn builtin(name: &str) -> Result<Self> {
        let res = builtin(name).with_context(|| {
            format!(
                "unknown filter '{name}' (built-in filters: {})",
                builtin_names()
            )
        })?;
        let mut filter = Self::new(&res, &[])?;
        if let Some((_, _, res)) = BUILTIN.iter().find(|(n, _, _)| *n == name) {
            filter.literals = res.iter().map(|re| literal_of(re)).collect();
            filter.host_markers = res.iter().map(|re| host_marker(re)).collect();
        }
        Ok(filter)
    }

    pub fn check(&self, line: &str) -> Outcome {
        let mut found = None;
        for (i, re) in self.fail.iter().enumerate() {
            if let Some(Some(lit)) = self.literals.get(i) {
                if lit.find(line.as_bytes()).is_none() {
                    continue;
                }
            }
            found = match self.host_markers.get(i).copied().flatten() {
                Some(marker) => re
                    .is_match(line)
                    .then(|| line.trim_end().rsplit_once(marker).map_or("", |(_, h)| h)),
                None => re
                    .captures(line)
                    .map(|c| c.name("host").map_or("", |m| m.as_str())),
            };
            if found.is_some() {
                break;
            }
        }
        let Some(text) = found else {
            return Outcome::Miss;
        };
        if self.ignore.iter().any(|re| re.is_match(line)) {
            return Outcome::Ignored;
        }
        let Ok(host) = text.parse::<IpAddr>() else {
            return Outcome::BadHost(text.to_owned());
        };
        Outcome::Hit {
            host: host.to_canonical(),
            time_ms: line_time_ms(line, self.tz),
        }
    }
}

/// The prefix alone, to read a line's time from the start of the line
/// (never from text a client wrote further on).
static PREFIX: LazyLock<Regex> = LazyLock::new(|| Regex::new(&LINE_START).expect("valid"));

static STARTS_WITH_UUID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{UUID}")).expect("valid"));
static CPU_NEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^ \d{1,3}\.\d{1,2}% \[").expect("valid"));

static FS_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(\d{4})-)?(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")
        .expect("valid")
});

/// The time of a line, in ms since the epoch, from the prefix FreeSWITCH
/// wrote at its start: FreeSWITCH's own timestamp (in `tz`), else the
/// syslog one when it is ISO. A year-less date (`08-03 08:10:21`) is taken
/// in the current year, or the previous one if that would put it more than
/// a day in the future. `None` when the line has no such prefix.
pub fn line_time_ms(line: &str, tz: LogTz) -> Option<i64> {
    // Most lines start with FreeSWITCH's timestamp (after a session UUID
    // with `log-uuid`): read it there when the level or the CPU percentage
    // follows (not a syslog host), without running the capture engine.
    let after_uuid = if STARTS_WITH_UUID.is_match(line) {
        UUID.len()
    } else {
        0
    };
    if let Some(m) = line.get(after_uuid..).and_then(|rest| FS_TIME.find(rest)) {
        let after = &line[after_uuid + m.end()..];
        if after.starts_with(" [") || CPU_NEXT.is_match(after) {
            return fs_time_ms(m.as_str(), tz);
        }
    }
    let caps = PREFIX.captures(line)?;
    if let Some(fs) = caps.name("fstime").or_else(|| caps.name("fstime2")) {
        return fs_time_ms(fs.as_str(), tz);
    }
    let sys = caps.name("systime")?.as_str().replacen(' ', "T", 1);
    let sys = sys.as_str();
    if let Ok(t) = DateTime::parse_from_rfc3339(sys) {
        return Some(t.timestamp_millis());
    }
    let t = NaiveDateTime::parse_from_str(sys, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    to_ms(t, tz)
}

fn to_ms(t: NaiveDateTime, tz: LogTz) -> Option<i64> {
    match tz {
        LogTz::Local => Local
            .from_local_datetime(&t)
            .earliest()
            .map(|t| t.timestamp_millis()),
        LogTz::Fixed(off) => off
            .from_local_datetime(&t)
            .earliest()
            .map(|t| t.timestamp_millis()),
    }
}

fn fs_time_ms(text: &str, tz: LogTz) -> Option<i64> {
    let caps = FS_TIME.captures(text)?;
    let num = |i: usize| {
        caps.get(i)
            .map(|m| m.as_str().parse::<u32>().ok())
            .unwrap_or(None)
    };
    let (month, day, h, m, s) = (num(2)?, num(3)?, num(4)?, num(5)?, num(6)?);
    let nanos = caps.get(7).map_or(0, |f| {
        let digits = f.as_str();
        digits.parse::<u32>().unwrap_or(0) * 10u32.pow(9 - digits.len() as u32)
    });
    let at = |year: i32| -> Option<NaiveDateTime> {
        NaiveDate::from_ymd_opt(year, month, day)?.and_hms_nano_opt(h, m, s, nanos)
    };
    match caps.get(1) {
        Some(y) => to_ms(at(y.as_str().parse().ok()?)?, tz),
        None => {
            let now = chrono::Utc::now().timestamp_millis();
            let year = Local::now().year();
            let this_year = to_ms(at(year)?, tz)?;
            if this_year > now + 86_400_000 {
                to_ms(at(year - 1)?, tz)
            } else {
                Some(this_year)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(filter: &str, line: &str) -> Option<IpAddr> {
        match Filter::builtin(filter).unwrap().check(line) {
            Outcome::Hit { host, .. } => Some(host),
            _ => None,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_builtin_failure_filter_matches_every_real_line() {
        assert_eq!(
            real_lines_matched(&Filter::builtin("freeswitch").unwrap()),
            REAL_FAILURE_LINES.len()
        );
        assert_eq!(
            real_lines_matched(&Filter::builtin("freeswitch-challenge").unwrap()),
            0
        );
    }

    /// Every shape FreeSWITCH writes (issue 3's list).
    #[test]
    fn freeswitch_failure_shapes() {
        let cases = [
            ("2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:1478 SIP auth failure (INVITE) on sofia profile 'internal' for [000972543480510@192.168.2.51] from ip 5.11.47.236", "5.11.47.236"),
            ("2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:2531 Can't find user [1001@192.168.2.51] from 5.11.47.236", "5.11.47.236"),
            ("c2a1b7e2-1f1c-4a5e-9d6f-2b0a3c1d4e5f 2021-10-29 14:13:24.894719 95.00% [WARNING] sofia_reg.c:1842 SIP auth failure (INVITE) on sofia profile 'external' for [x@y] from ip 2001:db8::1", "2001:db8::1"),
            ("08-03 08:10:21.026299 [WARN] [SOFIA] [sofia_reg.c:2248] SIP auth failure (INVITE) on sofia profile 'external' for [41801148436701961@148.251.134.154] from ip 192.0.2.4", "192.0.2.4"),
            ("2016-09-25T18:57:58.150982 www.srv.tld freeswitch[122921]: 2016-09-25 18:57:58.150982 [WARNING] sofia_reg.c:2889 Can't find user [201@::1] from 192.0.2.1", "192.0.2.1"),
            ("2021-10-29 14:13:24.894719 82.43% [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [215@10.0.8.5] from ip 108.181.22.221", "108.181.22.221"),
            ("2024-03-01 12:00:00.123456 [WARNING] sofia_reg.c:1842 SIP auth failure (SUBSCRIBE) on sofia profile 'internal' for [215@10.0.8.5] from ip ::ffff:198.51.100.9", "198.51.100.9"),
        ];
        for (line, want) in cases {
            assert_eq!(hit("freeswitch", line), ip(want), "{line}");
        }
    }

    #[test]
    fn challenges_are_a_separate_filter() {
        let line = "2021-10-29 14:13:24.894719 82.43% [WARNING] sofia_reg.c:1842 SIP auth challenge (REGISTER) on sofia profile 'internal' for [215@10.0.8.5] from ip 108.181.22.221";
        assert_eq!(
            hit("freeswitch", line),
            None,
            "a challenge is not a failure"
        );
        assert_eq!(hit("freeswitch-challenge", line), ip("108.181.22.221"));
    }

    /// The sample lines of fail2ban's own test suite for its freeswitch filter
    /// (fail2ban/tests/files/logs/freeswitch), with fail2ban's expected host.
    /// Its "ddos" mode is our challenge filter, its "normal" mode our failures.
    #[test]
    fn fail2ban_sample_lines() {
        let ddos = [(
            "2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:1533 SIP auth challenge (INVITE) on sofia profile 'internal' for [011448708752617@192.168.2.51] from ip 81.94.202.251",
            Some("81.94.202.251"),
        )];
        let normal = [
            ("2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:1478 SIP auth failure (INVITE) on sofia profile 'internal' for [000972543480510@192.168.2.51] from ip 5.11.47.236", Some("5.11.47.236")),
            ("2013-12-31 17:39:54.767815 [DEBUG] sofia.c:7954 IP 185.24.234.141 Rejected by acl \"domains\". Falling back to Digest auth.", None),
            ("2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:2531 Can't find user [1001@192.168.2.51] from 5.11.47.236", Some("5.11.47.236")),
            ("2013-12-31 17:39:54.767815 [WARNING] sofia_reg.c:2531 Can't find user [100@192.168.2.51] from 185.24.234.141", Some("185.24.234.141")),
            ("2016-09-25T18:57:58.150982 www.srv.tld freeswitch[122921]: 2016-09-25 18:57:58.150982 [WARNING] sofia_reg.c:2889 Can't find user [201@::1] from 192.0.2.1", Some("192.0.2.1")),
            ("2016-09-25T18:57:58.150982 www.srv.tld freeswitch[122921]: 2016-09-25 18:57:58.150982 [WARNING] sofia_reg.c:1720 SIP auth failure (INVITE) on sofia profile 'sipinterface_1' for [9810972597751739@::1] from ip 192.0.2.2", Some("192.0.2.2")),
            ("08-03 07:56:53.026292 [WARN] [SOFIA] [sofia_reg.c:4130] Can't find user [101@148.251.134.154] from 192.0.2.3", Some("192.0.2.3")),
            ("08-03 08:10:21.026299 [WARN] [SOFIA] [sofia_reg.c:2248] SIP auth failure (INVITE) on sofia profile 'external' for [41801148436701961@148.251.134.154] from ip 192.0.2.4", Some("192.0.2.4")),
            ("2021-10-29 21:04:58.150982 00.00% [WARNING] sofia_reg.c:2889 Can't find user [201@::1] from 192.0.2.5", Some("192.0.2.5")),
            ("2021-10-29 21:05:58.894719 www.srv.tld freeswitch[123456]: 2021-10-29 14:13:24.894719 82.43% [WARNING] sofia_reg.c:2889 Can't find user [201@::1] from 192.0.2.5", Some("192.0.2.5")),
        ];
        for (line, want) in ddos {
            assert_eq!(
                hit("freeswitch-challenge", line),
                want.and_then(ip),
                "{line}"
            );
            assert_eq!(
                hit("freeswitch", line),
                None,
                "a challenge is not a failure: {line}"
            );
        }
        for (line, want) in normal {
            assert_eq!(hit("freeswitch", line), want.and_then(ip), "{line}");
        }
    }

    /// The attacker writes the user and domain. Nothing in them may make
    /// another address counted: the host is always the real trailing one.
    #[test]
    fn crafted_usernames_cannot_redirect_the_host() {
        let real = "203.0.113.66";
        let users = [
            "x] from ip 192.0.2.1",
            "] from ip 192.0.2.1 [",
            "a' for [b@c] from ip 192.0.2.1",
            "from ip 192.0.2.1",
            "192.0.2.1",
            "\"quoted\" from 192.0.2.1",
            "x] from ip 192.0.2.1\t",
            "2001:db8::1] from ip 2001:db8::1",
            "x@y] from 192.0.2.1 from ip 192.0.2.2",
        ];
        for user in users {
            let line = format!("2024-03-01 12:00:00.123456 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [{user}@10.0.8.5] from ip {real}");
            assert_eq!(hit("freeswitch", &line), ip(real), "{line}");
            let line = format!("2024-03-01 12:00:00.123456 [WARNING] sofia_reg.c:2531 Can't find user [{user}@10.0.8.5] from {real}");
            assert_eq!(hit("freeswitch", &line), ip(real), "{line}");
        }
        // A line that does not end with an address (truncated, or with
        // trailing text) counts nobody rather than someone in the middle.
        let line = "2024-03-01 12:00:00.1 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u@d] from ip 192.0.2.1 and more";
        assert_eq!(hit("freeswitch", line), None);
    }

    #[test]
    fn timestamps_come_from_freeswitch_not_from_the_user() {
        let f = Filter::builtin("freeswitch").unwrap();
        let line = "2024-03-01 12:00:00.250000 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [1999-01-01 00:00:00@d] from ip 192.0.2.1";
        let Outcome::Hit {
            time_ms: Some(t), ..
        } = f.check(line)
        else {
            panic!("no time")
        };
        let want = Local
            .with_ymd_and_hms(2024, 3, 1, 12, 0, 0)
            .unwrap()
            .timestamp_millis()
            + 250;
        assert_eq!(t, want);
        // Syslog prefix: FreeSWITCH's own timestamp (the last before the match) wins.
        let line = "2016-09-25T18:57:59.000000 host freeswitch[1]: 2016-09-25 18:57:58.150982 [WARNING] sofia_reg.c:2889 Can't find user [201@::1] from 192.0.2.1";
        let Outcome::Hit {
            time_ms: Some(t), ..
        } = f.check(line)
        else {
            panic!("no time")
        };
        assert_eq!(
            t,
            Local
                .with_ymd_and_hms(2016, 9, 25, 18, 57, 58)
                .unwrap()
                .timestamp_millis()
                + 150
        );
        // Year-less dates land within the last year.
        let t = line_time_ms("08-03 08:10:21.026299 [WARNING] x", LogTz::Local).unwrap();
        let now = Local::now().timestamp_millis();
        assert!(t <= now + 86_400_000 && t > now - 367 * 86_400_000);
    }

    /// Failure text that merely appears inside a line FreeSWITCH wrote for
    /// something else (a siptrace header, a dialplan `log`, a User-Agent
    /// logged at INFO) counts nobody: the built-in filters are anchored.
    #[test]
    fn injected_failure_text_counts_nobody() {
        let fail = "[WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@10.0.8.5] from ip 10.199.0.77";
        let find = "[WARNING] sofia_reg.c:2531 Can't find user [1000@10.0.8.5] from 10.199.0.77";
        let chal = "[WARNING] sofia_reg.c:1842 SIP auth challenge (REGISTER) on sofia profile 'internal' for [1000@10.0.8.5] from ip 10.199.0.77";
        let stamp = "2024-03-01 12:00:00.123456";
        let mut lines = Vec::new();
        for text in [fail, find, chal] {
            let stamped = format!("{stamp} {text}");
            lines.extend([
                // siptrace prints each header of the SIP message on its own line
                format!("User-Agent: x {text}"),
                format!("User-Agent: {stamped}"),
                format!("Subject: {stamped}"),
                format!("   {stamped}"),
                format!("\t{stamped}"),
                format!("x{stamped}"),
                // dialplan `log` and variables logged at INFO/NOTICE/WARNING
                format!("{stamp} [INFO] mod_dptools.c:1712 User-Agent: {text}"),
                format!("{stamp} 97.00% [NOTICE] switch_cpp.cpp:1466 {text}"),
                format!("{stamp} [WARNING] switch_cpp.cpp:1466 x {text}"),
                format!("{stamp} [WARNING] mod_logfile.c:12 {stamped}"),
                format!("c2a1b7e2-1f1c-4a5e-9d6f-2b0a3c1d4e5f {stamp} [INFO] switch_channel.c:1104 EXPORT (export_vars) [sip_user_agent]=[{stamped}]"),
                // a syslog line of another program
                format!("Mar  1 12:00:00 host kamailio[12]: {stamped}"),
                // no FreeSWITCH prefix at all
                text.to_owned(),
            ]);
        }
        for filter in ["freeswitch", "freeswitch-challenge"] {
            let f = Filter::builtin(filter).unwrap();
            for line in &lines {
                assert_eq!(f.check(line), Outcome::Miss, "{filter}: {line}");
            }
        }
    }

    #[test]
    fn line_times_come_only_from_the_prefix_and_follow_log_timezone() {
        let line = "2024-03-01 12:00:00.000000 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [2031-01-01 00:00:00@x] from ip 192.0.2.1";
        let utc = Filter::builtin("freeswitch")
            .unwrap()
            .with_timezone("UTC".parse().unwrap());
        let plus2 = Filter::builtin("freeswitch")
            .unwrap()
            .with_timezone("+02:00".parse().unwrap());
        let time = |f: &Filter| match f.check(line) {
            Outcome::Hit { time_ms, .. } => time_ms.unwrap(),
            other => panic!("{other:?}"),
        };
        let want = chrono::Utc
            .with_ymd_and_hms(2024, 3, 1, 12, 0, 0)
            .unwrap()
            .timestamp_millis();
        assert_eq!(time(&utc), want);
        assert_eq!(time(&plus2), want - 2 * 3_600_000);
        // An ISO syslog timestamp with an offset needs no log_timezone.
        assert_eq!(
            line_time_ms(
                "2024-03-01T14:00:00+02:00 host freeswitch[1]: [WARNING] x",
                LogTz::Local
            ),
            Some(want)
        );
        for bad in ["", "Mars/Olympus", "+2", "+25:00", "0200"] {
            assert!(bad.parse::<LogTz>().is_err(), "{bad}");
        }
        assert_eq!("local".parse::<LogTz>().unwrap(), LogTz::Local);
        assert!("-0530".parse::<LogTz>().is_ok());
    }

    /// Every built-in failregex has a literal prefilter and a host marker,
    /// and they change no outcome: the same lines match, with the same host,
    /// as with the plain regexes.
    #[test]
    fn builtin_prefilters_skip_only_lines_that_cannot_match() {
        for (name, _, _) in BUILTIN {
            let fast = Filter::builtin(name).unwrap();
            assert!(fast.literals.iter().all(Option::is_some), "{name}");
            assert!(fast.host_markers.iter().all(Option::is_some), "{name}");
            let plain = Filter::new(&builtin(name).unwrap(), &[]).unwrap();
            let challenge = REAL_FAILURE_LINES[2].replace("failure", "challenge");
            let crafted = "2024-03-01 12:00:00.1 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'i' for [x] from ip 192.0.2.1 [@d] from ip 203.0.113.66  ";
            for line in REAL_FAILURE_LINES.iter().copied().chain([
                challenge.as_str(),
                crafted,
                "2024-03-01 12:00:00.1 [DEBUG] sofia_reg.c:1 Registration from 192.0.2.1",
                "",
            ]) {
                assert_eq!(fast.check(line), plain.check(line), "{name}: {line}");
            }
        }
    }

    #[test]
    fn custom_filters_are_anchored_on_import() {
        let plain =
            "SIP auth failure \\([A-Z]+\\) on sofia profile '[^']*' for \\[.*\\] from ip <HOST>$";
        assert!(!is_anchored(plain));
        let f = Filter::new(&[anchored(plain)], &[]).unwrap();
        assert!(matches!(
            f.check(REAL_FAILURE_LINES[2]),
            Outcome::Hit { .. }
        ));
        assert_eq!(
            f.check("User-Agent: x 2024-03-01 12:00:00.1 [WARNING] sofia_reg.c:1 SIP auth failure (REGISTER) on sofia profile 'i' for [u@d] from ip 192.0.2.1"),
            Outcome::Miss
        );
        let already = "^custom <HOST>$";
        assert_eq!(anchored(already), already);
    }

    #[test]
    fn failregex_rules() {
        assert!(compile_failregex("no host here")
            .unwrap_err()
            .to_string()
            .contains("<HOST> exactly once"));
        assert!(compile_failregex("<HOST> and <HOST>").is_err());
        assert!(compile_failregex("from (<HOST>")
            .unwrap_err()
            .to_string()
            .contains("invalid failregex"));
        let f = Filter::new(
            &["login failed from <HOST>$".into()],
            &["from 192\\.0\\.2\\.9$".into()],
        )
        .unwrap();
        assert_eq!(
            f.check("login failed from 192.0.2.8"),
            Outcome::Hit {
                host: "192.0.2.8".parse().unwrap(),
                time_ms: None
            }
        );
        assert_eq!(f.check("login failed from 192.0.2.9"), Outcome::Ignored);
        assert_eq!(f.check("login ok from 192.0.2.8"), Outcome::Miss);
        assert_eq!(
            f.check("login failed from 999.1.1.1"),
            Outcome::BadHost("999.1.1.1".into())
        );
    }
}
