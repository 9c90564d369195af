//! A jail: one filter over some logs, its offenders, and the rule that turns
//! `maxretry` failures within `findtime` into a ban of `bantime`.
use crate::{
    bans::aggregate,
    bans::never_ban::{NeverBan, Vetted},
    bans::state::Position,
    bans::Scope,
    logs::filter::{self, Filter, LogTz, Outcome},
    logs::follow::{self, Follower, Start},
    logs::offenders::Offenders,
};
use anyhow::Result;
use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

/// The configuration used when there is no file: ban a brute-forcer after 10
/// real failures in a minute; count challenges only as a flood (a site of
/// hundreds of phones behind one NAT address produces one per registration).
pub const DEFAULT_JAILS: &str = r#"
[jails.freeswitch]
logpath = ["/var/log/freeswitch/freeswitch.log"]
filter = "freeswitch"
maxretry = 10
findtime = "1m"
bantime = "1h"
bantime_increment = true

[jails.freeswitch-flood]
logpath = ["/var/log/freeswitch/freeswitch.log"]
filter = "freeswitch-challenge"
maxretry = 600
findtime = "1m"
bantime = "10m"
"#;

// ---- A jail's configuration (`[jails.NAME]`), read by `config`. ----

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    End,
    Beginning,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Paths or globs.
    #[serde(default, deserialize_with = "one_or_many")]
    pub logpath: Vec<String>,
    /// A built-in filter name.
    pub filter: Option<String>,
    /// Inline filter: regexes with `<HOST>` (instead of `filter`).
    #[serde(default, deserialize_with = "regexes_with_host")]
    pub failregex: Vec<String>,
    #[serde(default, deserialize_with = "regexes")]
    pub ignoreregex: Vec<String>,
    #[serde(default = "default_maxretry")]
    pub maxretry: u32,
    #[serde(
        default = "default_findtime",
        deserialize_with = "crate::duration::serde::finite"
    )]
    pub findtime: Duration,
    /// `None`: permanent (`-1`).
    #[serde(
        default = "default_bantime",
        deserialize_with = "crate::duration::serde::bantime"
    )]
    pub bantime: Option<Duration>,
    #[serde(default, alias = "bantime.increment")]
    pub bantime_increment: bool,
    #[serde(default = "default_factor", alias = "bantime.factor")]
    pub bantime_factor: f64,
    #[serde(
        default = "default_maxtime",
        alias = "bantime.maxtime",
        deserialize_with = "crate::duration::serde::finite"
    )]
    pub bantime_maxtime: Duration,
    /// `"all"` or a list of ports (merged into the protected set). Default:
    /// the global protected ports.
    #[serde(default)]
    pub ports: Option<Ports>,
    /// IPv6 offenders are counted and banned as their /N.
    #[serde(default = "default_v6_prefix")]
    pub ipv6_prefix: u8,
    /// Most distinct sources tracked at once; the least recently seen go first.
    #[serde(default = "default_max_offenders")]
    pub max_offenders: usize,
    /// Send this jail's bans to the fleet (CrowdSec alerts, Redis): a log
    /// line FreeSWITCH wrote is evidence worth sharing.
    #[serde(default = "yes")]
    pub export: bool,
    /// Prefix aggregation (see `bans::aggregate`): this many distinct
    /// members of one prefix banned within `findtime` ban the prefix.
    #[serde(default)]
    pub aggregate_after: Option<u32>,
    /// The prefix lengths aggregated to (defaults: /24, and /64 or /48).
    #[serde(default)]
    pub aggregate_v4: Option<u8>,
    #[serde(default)]
    pub aggregate_v6: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    All,
    List(Vec<u16>),
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<u16>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(Ports::All),
            Raw::Word(w) => Err(de::Error::custom(format!(
                "expected \"all\" or a list of ports, got {w:?}"
            ))),
            Raw::List(l) => Ok(Ports::List(l)),
        }
    }
}

impl JailConfig {
    /// The jail's prefix aggregation, or what is wrong with its keys.
    pub fn aggregation(&self) -> Result<Option<aggregate::Settings>, String> {
        if self.aggregate_after.is_some()
            && !aggregate::AGGREGATING_FILTERS.contains(&self.filter.as_deref().unwrap_or(""))
        {
            return Err(aggregate::FILTER_WHY.into());
        }
        aggregate::Settings::of(
            self.aggregate_after,
            self.aggregate_v4,
            self.aggregate_v6,
            self.ipv6_prefix,
            self.findtime,
        )
    }

    /// The filter of a jail.
    pub fn filter(&self, tz: LogTz) -> Result<Filter> {
        let f = match &self.filter {
            Some(name) => Filter::builtin(name),
            None => Filter::new(&self.failregex, &self.ignoreregex),
        }?;
        Ok(f.with_timezone(tz))
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}

fn regexes_with_host<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = one_or_many(d)?;
    for re in &list {
        crate::logs::filter::compile_failregex(re)
            .map_err(|e| de::Error::custom(format!("{e:#}")))?;
    }
    Ok(list)
}

fn regexes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = one_or_many(d)?;
    for re in &list {
        crate::logs::filter::compile_ignoreregex(re)
            .map_err(|e| de::Error::custom(format!("{e:#}")))?;
    }
    Ok(list)
}

fn yes() -> bool {
    true
}
fn default_maxretry() -> u32 {
    5
}
fn default_findtime() -> Duration {
    Duration::from_secs(600)
}
fn default_bantime() -> Option<Duration> {
    Some(Duration::from_secs(3600))
}
fn default_factor() -> f64 {
    2.0
}
fn default_maxtime() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_v6_prefix() -> u8 {
    64
}
fn default_max_offenders() -> usize {
    1_000_000
}

/// A ban a jail asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct BanRequest {
    pub net: IpNet,
    /// The address whose failures earned the ban (inside `net`).
    pub host: IpAddr,
    pub jail: String,
    pub duration: Option<Duration>,
    pub reason: String,
    pub line: String,
    pub scope: Scope,
}

/// Counters shown by `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JailStats {
    pub lines: u64,
    pub total_failed: u64,
    pub ignored_ip: u64,
    pub ignored_regex: u64,
    pub too_old: u64,
    /// Failure lines stamped more than `findtime` away from the clock (in
    /// the past or the future): a timezone mismatch shows here.
    pub skewed: u64,
    pub bad_host: u64,
    /// Lines that repeat the words around their host: crafted, counted
    /// for nobody.
    pub ambiguous: u64,
    pub already_banned: u64,
}

pub struct Jail {
    pub name: String,
    pub config: JailConfig,
    filter: Filter,
    pub offenders: Offenders,
    followers: BTreeMap<PathBuf, Follower>,
    start: StartAt,
    pub stats: JailStats,
    skew: SkewWatch,
    /// Every ban request's reason, made once (formatted per request, it
    /// took 2 % of a million-line burst's time).
    reason: String,
    /// Its prefixes on their way to an aggregated ban (`aggregate_after`).
    pub aggregate: Option<aggregate::Tracker>,
}

/// Notices a log whose timestamps are off by a steady amount (FreeSWITCH
/// logging in another timezone): then every line looks too old, or from the
/// future, and a jail would silently never ban. History re-read at start is
/// off by varying amounts and does not trigger it.
#[derive(Debug, Default)]
struct SkewWatch {
    run: u32,
    first_ms: i64,
    warned: Option<std::time::Instant>,
}

/// Consecutive live lines off by about the same amount before a warning.
const SKEW_RUN: u32 = 10;
/// How close their offsets must be to count as one steady offset.
const SKEW_SPREAD_MS: i64 = 300_000;
/// At most one warning per jail this often.
const SKEW_WARN_EVERY: Duration = Duration::from_secs(600);

impl SkewWatch {
    /// Records one live line off by `skew_ms`; returns true when a warning
    /// is due.
    fn observe(&mut self, skew_ms: i64, findtime_ms: i64) -> bool {
        if skew_ms.abs() <= findtime_ms {
            self.run = 0;
            return false;
        }
        if self.run == 0 || (skew_ms - self.first_ms).abs() > SKEW_SPREAD_MS {
            self.run = 1;
            self.first_ms = skew_ms;
            return false;
        }
        self.run += 1;
        let due =
            self.run >= SKEW_RUN && self.warned.is_none_or(|t| t.elapsed() >= SKEW_WARN_EVERY);
        if due {
            self.warned = Some(std::time::Instant::now());
        }
        due
    }
}

/// The network an address is counted and banned as: itself for IPv4, its
/// /`ipv6_prefix` for IPv6 (an attacker owns a whole /64 and rotates in it).
pub fn offender_net(host: IpAddr, ipv6_prefix: u8) -> IpNet {
    match host {
        IpAddr::V4(_) => IpNet::from(host),
        IpAddr::V6(v6) => IpNet::V6(
            ipnet::Ipv6Net::new(v6, ipv6_prefix)
                .expect("prefix checked by config")
                .trunc(),
        ),
    }
}

/// `bantime` for a source banned `previous` times before: multiplied by
/// `factor` each time, capped at `maxtime`, when `bantime_increment` is on.
pub fn ban_duration(config: &JailConfig, previous: u32) -> Option<Duration> {
    let base = config.bantime?;
    if !config.bantime_increment || previous == 0 {
        return Some(base);
    }
    let scaled = base.as_secs_f64() * config.bantime_factor.powi(previous.min(64) as i32);
    Some(Duration::from_secs_f64(scaled.min(config.bantime_maxtime.as_secs_f64())).max(base))
}

impl Jail {
    pub fn new(name: &str, config: &JailConfig, start: StartAt, tz: LogTz) -> Result<Self> {
        for re in config
            .failregex
            .iter()
            .filter(|re| !filter::is_anchored(re))
        {
            tracing::warn!(
                "jail {name}: failregex {re:?} is not anchored (^): it also matches failure text \
                 that appears inside other lines, where a SIP client can write it"
            );
        }
        Ok(Self {
            name: name.to_owned(),
            filter: config.filter(tz)?,
            offenders: Offenders::new(
                config.maxretry,
                i64::try_from(config.findtime.as_millis()).unwrap_or(i64::MAX),
                config.max_offenders,
            ),
            config: config.clone(),
            followers: BTreeMap::new(),
            start,
            stats: JailStats::default(),
            skew: SkewWatch::default(),
            reason: format!(
                "{} failures within {}",
                config.maxretry,
                humantime::format_duration(config.findtime)
            ),
            aggregate: config
                .aggregation()
                .map_err(|e| anyhow::anyhow!("jail {name}: {e}"))?
                .map(|s| aggregate::Tracker::new(name, s)),
        })
    }

    /// False when the jail's filter cannot match `line` (see
    /// `Filter::may_match`).
    pub fn may_match(&self, line: &[u8]) -> bool {
        self.filter.may_match(line)
    }

    /// What the jail's filter says about a line (no counting).
    pub fn check(&self, line: &str) -> Outcome {
        self.filter.check(line)
    }

    pub fn all_ports(&self) -> bool {
        self.config.ports == Some(Ports::All)
    }

    /// Picks up files matching the jail's `logpath` that are not followed yet.
    /// `saved` positions win; otherwise files present at startup start at
    /// `start`, and files that appear later are read from their beginning.
    pub fn refresh_files(&mut self, saved: &BTreeMap<String, Position>, at_startup: bool) {
        for path in follow::expand(&self.config.logpath) {
            if self.followers.contains_key(&path) {
                continue;
            }
            let key = path.display().to_string();
            let start = match saved.get(&key) {
                Some(pos) => Start::Saved(*pos),
                None if at_startup && self.start == StartAt::End => Start::End,
                None => Start::Beginning,
            };
            self.followers
                .insert(path.clone(), Follower::new(path, start));
        }
    }

    /// Whether a file has more written than the last poll read (a burst
    /// larger than one read): the caller polls again on its next turn.
    pub fn behind(&self) -> bool {
        self.followers.values().any(|f| f.behind)
    }

    /// Reads new lines from every file; returns the bans they call for.
    pub fn poll(
        &mut self,
        ignore: &NeverBan,
        banned: &dyn Fn(&IpNet) -> bool,
        previous_bans: &dyn Fn(&IpNet) -> u32,
        now_ms: i64,
    ) -> Vec<BanRequest> {
        // The lines a rule may match, one after the other in one text (a
        // string each cost an allocation and a free per line).
        let (mut text, mut ends) = (String::new(), Vec::new());
        let (filter, stats) = (&self.filter, &mut self.stats);
        for follower in self.followers.values_mut() {
            // A line no rule can match is counted and let go here, neither
            // decoded nor copied (what `on_line` would do with it too).
            let mut take = |l: &[u8]| {
                if filter.may_match(l) {
                    text.push_str(&String::from_utf8_lossy(l));
                    ends.push(text.len());
                } else {
                    stats.lines += 1;
                }
            };
            if let Err(e) = follower.poll(&mut take) {
                tracing::warn!(
                    "jail {}: reading {} failed: {e}",
                    self.name,
                    follower.path.display()
                );
            }
        }
        let mut start = 0;
        let lines: Vec<&str> = ends
            .iter()
            .map(|&end| {
                let line = &text[start..end];
                start = end;
                line
            })
            .collect();
        let outcomes = self.filter.check_all(&lines);
        lines
            .iter()
            .zip(outcomes)
            .filter_map(|(line, outcome)| {
                self.on_checked(line, outcome, now_ms, true, ignore, banned, previous_bans)
            })
            .collect()
    }

    /// Handles one line that arrived at `arrival_ms`. With `live`, a line whose
    /// own time is older than `findtime` is not counted (re-read or replayed
    /// history must not ban anyone).
    pub fn on_line(
        &mut self,
        line: &str,
        arrival_ms: i64,
        live: bool,
        ignore: &NeverBan,
        banned: &dyn Fn(&IpNet) -> bool,
        previous_bans: &dyn Fn(&IpNet) -> u32,
    ) -> Option<BanRequest> {
        let outcome = self.filter.check(line);
        self.on_checked(
            line,
            outcome,
            arrival_ms,
            live,
            ignore,
            banned,
            previous_bans,
        )
    }

    /// `on_line`, with what the filter says of the line (`Filter::check`).
    #[allow(clippy::too_many_arguments)]
    fn on_checked(
        &mut self,
        line: &str,
        outcome: Outcome,
        arrival_ms: i64,
        live: bool,
        ignore: &NeverBan,
        banned: &dyn Fn(&IpNet) -> bool,
        previous_bans: &dyn Fn(&IpNet) -> u32,
    ) -> Option<BanRequest> {
        let (host, time_ms) = self.failure(outcome)?;
        // The never-ban set is asked here, once, for every ban a log earns:
        // a protected host's failures are not counted at all (fail2ban's
        // ignoreip), and a network that would cover a protected address is
        // narrowed to the offender. The daemon does not ask again.
        let (net, narrowed) = match ignore.vet(offender_net(host, self.config.ipv6_prefix), host) {
            Vetted::Refused { .. } => {
                self.stats.ignored_ip += 1;
                return None;
            }
            Vetted::Narrowed {
                net,
                protected,
                why,
            } => (net, Some((protected, why))),
            Vetted::Ban(net) => (net, None),
        };
        let t = time_ms.unwrap_or(arrival_ms);
        let findtime_ms = i64::try_from(self.config.findtime.as_millis()).unwrap_or(i64::MAX);
        if live {
            self.watch_skew(t.saturating_sub(arrival_ms), findtime_ms);
        }
        if live && t < arrival_ms.saturating_sub(findtime_ms) {
            self.stats.too_old += 1;
            return None;
        }
        if banned(&net) {
            self.stats.already_banned += 1;
            return None;
        }
        if !self.offenders.record(net, t) {
            return None;
        }
        if let Some((protected, why)) = narrowed {
            tracing::warn!(
                "[{}] narrowed the ban of {} to {}: it would cover {} ({why})",
                self.name,
                crate::addr::display(&offender_net(host, self.config.ipv6_prefix)),
                crate::addr::display(&net),
                crate::addr::display(&protected)
            );
        }
        Some(self.ban_request(net, host, line, previous_bans(&net)))
    }

    /// The failing host of a line the filter said `outcome` of, and the
    /// time it is stamped with, counting the line in the stats whatever it
    /// turns out to be.
    fn failure(&mut self, outcome: Outcome) -> Option<(IpAddr, Option<i64>)> {
        self.stats.lines += 1;
        let hit = match outcome {
            Outcome::Miss => return None,
            Outcome::Ignored => {
                self.stats.ignored_regex += 1;
                return None;
            }
            Outcome::BadHost(_) => {
                self.stats.bad_host += 1;
                return None;
            }
            Outcome::Ambiguous => {
                self.stats.ambiguous += 1;
                return None;
            }
            Outcome::Hit { host, time_ms } => (host, time_ms),
        };
        self.stats.total_failed += 1;
        Some(hit)
    }

    /// A live line stamped `skew` ms away from its arrival: counted when
    /// beyond findtime, and a run of them says the log's timezone is off.
    fn watch_skew(&mut self, skew: i64, findtime_ms: i64) {
        if skew.abs() > findtime_ms {
            self.stats.skewed += 1;
        }
        if self.skew.observe(skew, findtime_ms) {
            tracing::warn!(
                "jail {}: the last {SKEW_RUN} failure lines are stamped about {} in the {} \
                 (more than findtime): is FreeSWITCH logging in another timezone? Set \
                 log_timezone (e.g. \"UTC\") in the configuration",
                self.name,
                humantime::format_duration(Duration::from_secs(skew.unsigned_abs() / 1000)),
                if skew < 0 { "past" } else { "future" }
            );
        }
    }

    fn ban_request(&self, net: IpNet, host: IpAddr, line: &str, previous: u32) -> BanRequest {
        BanRequest {
            net,
            host,
            jail: self.name.clone(),
            duration: ban_duration(&self.config, previous),
            reason: self.reason.clone(),
            // The first 1024 characters (a line of at most 1024 bytes has
            // no more: not counted one by one).
            line: match line.len() > 1024 {
                true => match line.char_indices().nth(1024) {
                    Some((end, _)) => line[..end].to_owned(),
                    None => line.to_owned(),
                },
                false => line.to_owned(),
            },
            scope: if self.all_ports() {
                Scope::AllPorts
            } else {
                Scope::Ports
            },
        }
    }

    pub fn positions(&self) -> impl Iterator<Item = (String, Position)> + '_ {
        self.followers
            .iter()
            .filter_map(|(p, f)| Some((p.display().to_string(), f.position()?)))
    }

    pub fn files(&self) -> Vec<String> {
        self.followers
            .keys()
            .map(|p| p.display().to_string())
            .collect()
    }

    pub fn skipped_long_lines(&self) -> u64 {
        self.followers.values().map(|f| f.skipped_long).sum()
    }
}

#[cfg(test)]
#[path = "jail_tests.rs"]
mod tests;
