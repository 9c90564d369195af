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
use chrono::FixedOffset;
use regex::Regex;
use std::{net::IpAddr, sync::LazyLock};

mod many;
mod time;
pub use time::{line_time_ms, other_time_ms};

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

/// Which SIP server wrote a log: where its lines start, and how their time
/// is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Server {
    #[default]
    FreeSwitch,
    Asterisk,
    Kamailio,
}

/// A syslog prefix for a daemon: an RFC 3164 date (`Nov  4 18:30:40`, also
/// with one space) or an ISO one, the host, and `DAEMON[PID]: `.
fn syslog_of(daemon: &str) -> String {
    format!(
        r"(?:(?:\d{{4}}-\d{{2}}-\d{{2}}[T ]\d{{2}}:\d{{2}}:\d{{2}}(?:\.\d{{1,9}})?(?:Z|[+-]\d{{2}}:?\d{{2}})?|[A-Z][a-z]{{2}} +\d{{1,2}} \d{{2}}:\d{{2}}:\d{{2}}) \S+ (?:\S*/)?{daemon}(?:\[\d+\])?: )"
    )
}

/// Asterisk's own line start (`main/logger.c`): an optional syslog prefix,
/// the optional `[time]`, the level with thread and call ids, and the source
/// (`chan_sip.c:`, `res_pjsip/pjsip_distributor.c:`, `chan_sip.c:23417 in
/// handle_request_register:`) or the dialplan extension (`Ext. s:6 in @
/// from-sip-external:`, whose name contains no space).
static ASTERISK_START: LazyLock<String> = LazyLock::new(|| {
    format!(
        r"^{}?(?:\[(?:\d{{4}}-\d{{2}}-\d{{2}}|[A-Z][a-z]{{2}} +\d{{1,2}}) \d{{2}}:\d{{2}}:\d{{2}}(?:\.\d{{1,9}})?\] ?)?(?:NOTICE|SECURITY|WARNING) ?(?:\[\d+\])?(?:\[C-[\da-f]+\])?:? (?:[\w/.-]+\.c:\d*(?: in)?(?: \w+:)?|Ext\. \S+?:\d*(?: in @ [^:\s]+:)?) ",
        syslog_of("asterisk")
    )
});

/// Kamailio's line start for what the routing script logs (`xlog`,
/// `xnotice`, `xalert`): syslog (`kamailio[PID]: LEVEL: <script>: `) or
/// stderr (` 0(PID) LEVEL: <script>: `). Only script output carries
/// `<script>: `.
static KAMAILIO_START: LazyLock<String> = LazyLock::new(|| {
    format!(
        r"^(?:{}|\s*\d+\(\d+\) )(?:[A-Z]+: )?<script>: ",
        syslog_of("kamailio")
    )
});

impl Server {
    /// The server whose logs a fail2ban filter of this name reads.
    pub fn of_filter(name: &str) -> Self {
        if name.starts_with("asterisk") {
            Server::Asterisk
        } else if name.starts_with("kamailio") || name.starts_with("opensips") {
            Server::Kamailio
        } else {
            Server::FreeSwitch
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Server::FreeSwitch => "FreeSWITCH",
            Server::Asterisk => "Asterisk",
            Server::Kamailio => "Kamailio",
        }
    }

    /// Where a built-in filter's message starts.
    fn builtin_start(self) -> String {
        match self {
            Server::FreeSwitch => format!("{}{SOFIA}", *LINE_START),
            Server::Asterisk => ASTERISK_START.clone(),
            Server::Kamailio => KAMAILIO_START.clone(),
        }
    }

    /// Real failure lines of this server, in every shape we know: a filter
    /// meant for it that matches none is broken (`import-fail2ban`).
    pub fn real_lines(self) -> &'static [&'static str] {
        match self {
            Server::FreeSwitch => REAL_FAILURE_LINES,
            Server::Asterisk => ASTERISK_FAILURE_LINES,
            Server::Kamailio => KAMAILIO_FAILURE_LINES,
        }
    }

    /// The built-in filter for its failures.
    pub fn builtin_filter(self) -> &'static str {
        match self {
            Server::FreeSwitch => "freeswitch",
            Server::Asterisk => "asterisk",
            Server::Kamailio => "kamailio",
        }
    }
}

/// One failregex of a built-in filter, written after the server's line
/// start. `unique`: text that must appear only once in a matching line.
/// Where a client's text can stand on both sides of `<HOST>` (a display
/// name before it, an extension after it), a line that repeats the words
/// around the host was crafted, and which host is real cannot be told:
/// such a line counts nobody (`Outcome::Ambiguous`) rather than maybe the
/// wrong one.
pub struct Rule {
    pub re: &'static str,
    pub unique: Option<&'static str>,
}

const fn rule(re: &'static str) -> Rule {
    Rule { re, unique: None }
}

pub struct Builtin {
    pub name: &'static str,
    pub about: &'static str,
    pub server: Server,
    pub rules: &'static [Rule],
}

/// Built-in filters.
pub const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "freeswitch",
        about: "real authentication failures: 'SIP auth failure' and 'Can't find user'",
        server: Server::FreeSwitch,
        rules: &[
            rule(
                r"SIP auth failure \([A-Z]+\) on sofia profile '[^']*' for \[.*\] from ip <HOST>\s*$",
            ),
            rule(r"Can't find user \[.*\] from <HOST>\s*$"),
        ],
    },
    Builtin {
        name: "freeswitch-challenge",
        about:
            "digest challenges: one per normal registration, so only a flood of them is suspicious",
        server: Server::FreeSwitch,
        rules: &[rule(
            r"SIP auth challenge \([A-Z]+\) on sofia profile '[^']*' for \[.*\] from ip <HOST>\s*$",
        )],
    },
    // fail2ban's asterisk filter, anchored to Asterisk's line start, with a
    // client's text (From, display name, user, Call-ID) only where it cannot
    // supply the host: before a host that Asterisk's own words end the line
    // after (greedy `.*` then takes the last, real one), or guarded by `unique`.
    Builtin {
        name: "asterisk",
        about: "chan_sip, chan_pjsip, IAX2 and AMI failures, and security events",
        server: Server::Asterisk,
        rules: &[
            rule(
                r"Registration from '.*' failed for '<HOST>(?::\d+)?' - (?:Wrong password|Username/auth name mismatch|No matching peer found|Not a local domain|Device does not match ACL|Peer is not supposed to register|ACL error \(permit/deny\))\s*$",
            ),
            Rule {
                re: r"Call from '.*' \((?:(?:TCP|UDP|TLS|WSS?):)?\[?<HOST>\]?:\d+\) to extension '.*' rejected because extension not found in context '[^']*'\.?\s*$",
                unique: Some(") to extension '"),
            },
            rule(
                r"(?:Host )?<HOST> (?:failed (?:to authenticate\b|MD5 authentication\b)|tried to authenticate with nonexistent user\b)",
            ),
            rule(r"No registration for peer '.*' \(from <HOST>\)\s*$"),
            rule(r"hacking attempt detected '<HOST>'\s*$"),
            // The fields after RemoteAddress that come from the client
            // (Response, ReceivedHash) were quoted strings in SIP: their own
            // quotes arrive escaped (\"), so they cannot fake a field.
            rule(
                r#"SecurityEvent="(?:FailedACL|InvalidAccountID|ChallengeResponseFailed|InvalidPassword)",.*,RemoteAddress="IPV[46]/[A-Z]+/<HOST>/\d+"(?:,\w+="(?:[^"\\]|\\.)*")*\s*$"#,
            ),
            rule(r#""Rejecting unknown SIP connection from \[?<HOST>\]?(?::\d+)?"\s*$"#),
            Rule {
                re: r"Request (?:'[^']*' )?from '.*' failed for '\[?<HOST>\]?(?::\d+)?' \(callid: .*\) - (?:No matching endpoint found|Not match Endpoint(?: Contact)? ACL|(?:Failed|Error) to authenticate)\s*$",
                unique: Some("' failed for '"),
            },
        ],
    },
    // What kamailio.cfg's routing script logs: the stock anti-flood recipe
    // (`pike blocking $rm from $fu (IP:$si:$sp)`) and authentication
    // failures logged as the README shows. `$fu` comes from the client, but
    // only before the host, which the script's own text ends the line after.
    Builtin {
        name: "kamailio",
        about: "xlog recipes: pike blocking, and auth failures ending in (IP:$si:$sp) or from $si",
        server: Server::Kamailio,
        rules: &[
            rule(r"(?:ALERT: )?pike blocking \S+ from .* \(IP:\[?<HOST>\]?:\d+\)\s*$"),
            rule(r"(?i:auth(?:entication)?(?: check)? failed)\b.* \(IP:\[?<HOST>\]?:\d+\)\s*$"),
            rule(r"(?i:auth(?:entication)?(?: check)? failed)\b.* from <HOST>\s*$"),
        ],
    },
];

/// The failregex list of a built-in filter, anchored to its server's line start.
pub fn builtin(name: &str) -> Option<Vec<String>> {
    let b = BUILTIN.iter().find(|b| b.name == name)?;
    let start = b.server.builtin_start();
    Some(b.rules.iter().map(|r| format!("{start}{}", r.re)).collect())
}

/// The fixed words a built-in failregex starts its message with (up to its
/// first regex syntax), which every line it matches must contain.
fn literal_of(re: &str) -> Option<memchr::memmem::Finder<'static>> {
    let end = re.find(['\\', '(', '[', '.', '*', '+', '?', '{', '|', '^', '$', '<'])?;
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
/// an anchored one is kept; any other must follow the server's line start
/// (for FreeSWITCH: its prefix, and optionally a level and source location).
pub fn anchored(re: &str, server: Server) -> String {
    if is_anchored(re) {
        return re.to_owned();
    }
    match server {
        Server::FreeSwitch => format!("{}{ANY_LEVEL}{re}", *LINE_START),
        Server::Asterisk => format!("{}{re}", *ASTERISK_START),
        // The script's message may itself start with a level word
        // (`xlog("L_ALERT", "ALERT: pike blocking ...")`).
        Server::Kamailio => format!("{}(?:[A-Z]+: )?{re}", *KAMAILIO_START),
    }
}

/// True if a failregex only matches from the start of a line.
pub fn is_anchored(re: &str) -> bool {
    re.starts_with('^') || re.starts_with("\\A")
}

pub fn builtin_names() -> String {
    BUILTIN
        .iter()
        .map(|b| b.name)
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

/// Real Asterisk failure lines (from fail2ban's samples): chan_sip,
/// chan_pjsip, IAX2, AMI, security events, syslog.
pub const ASTERISK_FAILURE_LINES: &[&str] = &[
    "[2012-02-13 17:21:54] NOTICE[1638] chan_sip.c: Registration from '<sip:301@example.com>' failed for '1.2.3.4' - Wrong password",
    "[2016-05-23 10:18:16] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request from '\"1000\" <sip:1000@10.0.0.1>' failed for '1.2.3.4:48336' (callid: 276666022) - Failed to authenticate",
    "[2013-07-06 09:09:25] SECURITY[3308] res_security_log.c: SecurityEvent=\"InvalidPassword\",EventTV=\"1373098165-824497\",Severity=\"Error\",Service=\"SIP\",EventVersion=\"2\",AccountID=\"972592891005\",SessionID=\"0x88aab6c\",LocalAddress=\"IPV4/UDP/92.28.73.180/5060\",RemoteAddress=\"IPV4/UDP/141.255.164.106/5084\",Challenge=\"41d26de5\",ReceivedChallenge=\"41d26de5\",ReceivedHash=\"7a6a3a2e95a05260aee612896e1b4a39\"",
    "Nov 4 18:30:40 localhost asterisk[32229]: NOTICE[32257]: chan_sip.c:23417 in handle_request_register: Registration from '<sip:301@example.com>' failed for '192.168.200.100:36998' - Wrong password",
    "[2015-03-16 18:46:34] NOTICE[3453] chan_sip.c: hacking attempt detected '192.168.2.102'",
];

/// Kamailio script log lines of the recipes the `kamailio` filter knows.
pub const KAMAILIO_FAILURE_LINES: &[&str] = &[
    "Nov 30 10:00:01 sbc /usr/sbin/kamailio[1234]: ALERT: <script>: ALERT: pike blocking INVITE from sip:100@203.0.113.9 (IP:203.0.113.9:5060)",
    "2024-11-30T10:00:01.123456+00:00 sbc kamailio[1234]: NOTICE: <script>: auth failed: REGISTER from sip:alice@example.com (IP:198.51.100.7:5071)",
    " 0(1234) NOTICE: <script>: Authentication failed for sip:bob@example.com from 2001:db8::7",
];

/// How many of a server's real failure lines a filter matches.
pub fn real_lines_matched(filter: &Filter, server: Server) -> usize {
    server
        .real_lines()
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
    /// A failregex matched a line that repeats the words around its host
    /// (see `Rule::unique`): crafted, and counted for nobody.
    Ambiguous,
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
    /// For each failregex, text a matching line must hold only once.
    uniques: Vec<Option<memchr::memmem::Finder<'static>>>,
    ignore: Vec<Regex>,
    tz: LogTz,
    /// Whose line start the time is read from.
    server: Server,
}

impl Filter {
    pub fn new(failregex: &[String], ignoreregex: &[String]) -> Result<Self> {
        if failregex.is_empty() {
            bail!("a filter needs at least one failregex");
        }
        Ok(Self {
            literals: vec![None; failregex.len()],
            host_markers: vec![None; failregex.len()],
            uniques: vec![None; failregex.len()],
            fail: failregex
                .iter()
                .map(|r| compile_failregex(r))
                .collect::<Result<_>>()?,
            ignore: ignoreregex
                .iter()
                .map(|r| compile_ignoreregex(r))
                .collect::<Result<_>>()?,
            tz: LogTz::Local,
            server: Server::FreeSwitch,
        })
    }

    /// Reads line times from `server`'s line start.
    pub fn for_server(mut self, server: Server) -> Self {
        self.server = server;
        self
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
        if let Some(b) = BUILTIN.iter().find(|b| b.name == name) {
            filter.server = b.server;
            filter.literals = b.rules.iter().map(|r| literal_of(r.re)).collect();
            filter.host_markers = b.rules.iter().map(|r| host_marker(r.re)).collect();
            filter.uniques = b
                .rules
                .iter()
                .map(|r| {
                    r.unique
                        .map(|u| memchr::memmem::Finder::new(u.as_bytes()).into_owned())
                })
                .collect();
        }
        Ok(filter)
    }

    /// False when no rule can match `line`: none of the rules' fixed
    /// words is in it (most lines of a busy log). Read on the raw bytes, so
    /// such a line is never even decoded.
    pub fn may_match(&self, line: &[u8]) -> bool {
        self.literals.len() < self.fail.len()
            || self
                .literals
                .iter()
                .any(|lit| lit.as_ref().is_none_or(|lit| lit.find(line).is_some()))
    }

    pub fn check(&self, line: &str) -> Outcome {
        let mut found = None;
        let mut matched_rule = 0;
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
                matched_rule = i;
                break;
            }
        }
        let Some(text) = found else {
            return Outcome::Miss;
        };
        if let Some(Some(unique)) = self.uniques.get(matched_rule) {
            if unique.find_iter(line.as_bytes()).nth(1).is_some() {
                return Outcome::Ambiguous;
            }
        }
        if self.ignore.iter().any(|re| re.is_match(line)) {
            return Outcome::Ignored;
        }
        let Ok(host) = text.parse::<IpAddr>() else {
            return Outcome::BadHost(text.to_owned());
        };
        let time_ms = match self.server {
            Server::FreeSwitch => line_time_ms(line, self.tz),
            Server::Asterisk | Server::Kamailio => other_time_ms(line, self.tz),
        };
        Outcome::Hit {
            host: host.to_canonical(),
            time_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Local, TimeZone as _};

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
            real_lines_matched(&Filter::builtin("freeswitch").unwrap(), Server::FreeSwitch),
            REAL_FAILURE_LINES.len()
        );
        assert_eq!(
            real_lines_matched(
                &Filter::builtin("freeswitch-challenge").unwrap(),
                Server::FreeSwitch
            ),
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
        for b in BUILTIN {
            let name = b.name;
            let fast = Filter::builtin(name).unwrap();
            if b.server == Server::FreeSwitch {
                assert!(fast.literals.iter().all(Option::is_some), "{name}");
                assert!(fast.host_markers.iter().all(Option::is_some), "{name}");
            }
            let plain = Filter::new(&builtin(name).unwrap(), &[])
                .unwrap()
                .for_server(b.server);
            let challenge = REAL_FAILURE_LINES[2].replace("failure", "challenge");
            let crafted = "2024-03-01 12:00:00.1 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'i' for [x] from ip 192.0.2.1 [@d] from ip 203.0.113.66  ";
            for line in REAL_FAILURE_LINES
                .iter()
                .chain(ASTERISK_FAILURE_LINES)
                .chain(KAMAILIO_FAILURE_LINES)
                .copied()
                .chain([
                    challenge.as_str(),
                    crafted,
                    "2024-03-01 12:00:00.1 [DEBUG] sofia_reg.c:1 Registration from 192.0.2.1",
                    "",
                ])
            {
                assert_eq!(fast.check(line), plain.check(line), "{name}: {line}");
                // The byte prefilter turns away only lines that miss.
                if !fast.may_match(line.as_bytes()) {
                    assert_eq!(plain.check(line), Outcome::Miss, "{name}: {line}");
                }
            }
            // With a fixed word in every rule, an ordinary line is turned away.
            if fast.literals.iter().all(Option::is_some) {
                let ordinary = b"2024-03-01 12:00:00.1 [DEBUG] switch_core.c:1 Session 42 locked";
                assert!(!fast.may_match(ordinary), "{name}");
            }
        }
    }

    #[test]
    fn custom_filters_are_anchored_on_import() {
        let plain =
            "SIP auth failure \\([A-Z]+\\) on sofia profile '[^']*' for \\[.*\\] from ip <HOST>$";
        assert!(!is_anchored(plain));
        let f = Filter::new(&[anchored(plain, Server::FreeSwitch)], &[]).unwrap();
        assert!(matches!(
            f.check(REAL_FAILURE_LINES[2]),
            Outcome::Hit { .. }
        ));
        assert_eq!(
            f.check("User-Agent: x 2024-03-01 12:00:00.1 [WARNING] sofia_reg.c:1 SIP auth failure (REGISTER) on sofia profile 'i' for [u@d] from ip 192.0.2.1"),
            Outcome::Miss
        );
        let already = "^custom <HOST>$";
        assert_eq!(anchored(already, Server::FreeSwitch), already);
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

    #[test]
    fn asterisk_and_kamailio_real_lines() {
        for server in [Server::Asterisk, Server::Kamailio] {
            let f = Filter::builtin(server.builtin_filter()).unwrap();
            assert_eq!(
                real_lines_matched(&f, server),
                server.real_lines().len(),
                "{server:?}"
            );
            // And none of another server's lines.
            assert_eq!(real_lines_matched(&f, Server::FreeSwitch), 0);
        }
        assert_eq!(
            real_lines_matched(&Filter::builtin("freeswitch").unwrap(), Server::Asterisk),
            0
        );
        assert_eq!(
            hit("kamailio", KAMAILIO_FAILURE_LINES[2]),
            ip("2001:db8::7")
        );
    }

    /// A client's From, display name, Call-ID or digest response can say
    /// anything; Asterisk's and Kamailio's lines still count their real host
    /// or nobody, never a host the client wrote.
    #[test]
    fn crafted_asterisk_and_kamailio_fields_cannot_supply_the_host() {
        let victim = "6.6.6.6";
        // A From ending like Asterisk's own text, before the real host.
        let l = format!("[2024-01-01 10:00:00] NOTICE[1] chan_sip.c: Registration from '<sip:x' failed for '{victim}' - Wrong password@y>' failed for '1.2.3.4' - Wrong password");
        assert_eq!(hit("asterisk", &l), ip("1.2.3.4"));
        // The same words in a display name and a Call-ID around the host.
        let l = format!("[2024-01-01 10:00:00] NOTICE[1] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '\"a' failed for '{victim}:5060' (callid: z\" <sip:a@b>' failed for '1.2.3.4:5060' (callid: c) - Failed to authenticate");
        assert_eq!(
            Filter::builtin("asterisk").unwrap().check(&l),
            Outcome::Ambiguous
        );
        let l = format!("[2024-01-01 10:00:00] NOTICE[1] chan_sip.c: Call from '' (1.2.3.4:5060) to extension 'x' rejected because extension not found in context 'default'. (' ({victim}:1) to extension 'y' rejected because extension not found in context 'default'.");
        assert_eq!(
            Filter::builtin("asterisk").unwrap().check(&l),
            Outcome::Ambiguous
        );
        // A security event: a fake RemoteAddress in the Call-ID (before),
        // and one in the digest response (after, its quotes escaped).
        let l = format!(
            r#"[2015-05-24 08:42:16] SECURITY[4583] res_security_log.c: SecurityEvent="ChallengeResponseFailed",EventTV="x",Severity="Error",Service="PJSIP",EventVersion="1",AccountID="<unknown>",SessionID="",LocalAddress="IPV4/UDP/1.1.1.1/5060",RemoteAddress="IPV4/UDP/{victim}/1"",LocalAddress="IPV4/UDP/1.2.3.4/5060",RemoteAddress="IPV4/UDP/10.0.0.9/5060",Challenge="c",Response="\",RemoteAddress=\"IPV4/UDP/{victim}/1\"",ExpectedResponse="""#
        );
        assert_eq!(hit("asterisk", &l), ip("10.0.0.9"));
        // Failure text inside another line counts nobody.
        let l = format!("[2024-01-01 10:00:00] VERBOSE[1] pbx.c: Executing [s@x:1] NoOp(\"SIP/x\", \"Registration from '' failed for '{victim}' - Wrong password\")");
        assert_eq!(hit("asterisk", &l), None);
        // Kamailio: the From URI before the script's own end of line.
        let l = format!("Nov 30 10:00:01 sbc kamailio[1]: ALERT: <script>: ALERT: pike blocking INVITE from sip:a@b (IP:{victim}:5060) (IP:1.2.3.4:5060)");
        assert_eq!(hit("kamailio", &l), ip("1.2.3.4"));
        // Kamailio lines that are not the script's count nobody.
        let l = format!("Nov 30 10:00:01 sbc kamailio[1]: ERROR: tm [t_reply.c:1]: auth failed for x (IP:{victim}:5060)");
        assert_eq!(hit("kamailio", &l), None);
    }

    #[test]
    fn asterisk_and_kamailio_times_come_from_the_line_start() {
        let utc = "UTC".parse::<LogTz>().unwrap();
        let t = |l: &str| other_time_ms(l, utc);
        assert_eq!(
            t("[2012-02-13 17:21:54] NOTICE[1638] chan_sip.c: x"),
            Some(1_329_153_714_000)
        );
        assert_eq!(
            t("2024-11-30T10:00:01.5+01:00 sbc kamailio[1]: x"),
            Some(1_732_957_201_500)
        );
        let year_less = t("Nov  4 18:30:40 localhost asterisk[1]: x").unwrap();
        assert!(year_less <= chrono::Utc::now().timestamp_millis() + 86_400_000);
        assert_eq!(t("NOTICE[566]: chan_sip.c: no time"), None);
        assert_eq!(t("x [2012-02-13 17:21:54] not at the start"), None);
    }
}
