//! `/etc/sipguard/sipguard.toml`: global settings and jails.
//!
//! Values are validated while they are deserialized (durations, networks,
//! regexes), so a bad one is reported by the TOML parser with the file, the
//! line, the key and the reason. With no file at the default path, the
//! built-in default below applies: the FreeSWITCH jails on the default log.
pub use crate::logs::jail::{JailConfig, Ports, StartAt};
use crate::{addr, duration, kernel::program::AttachMode, logs::filter};
use anyhow::{bail, Context as _, Result};
use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

pub const DEFAULT_PATH: &str = crate::defaults::CONFIG;
pub const DEFAULT_LOG: &str = "/var/log/freeswitch/freeswitch.log";

/// The configuration used when there is no file: the built-in jails.
pub const DEFAULT_TOML: &str = crate::logs::jail::DEFAULT_JAILS;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Never counted, never banned, never dropped (also written to the XDP
    /// allowlist). Loopback and this host's own addresses are always added.
    #[serde(default)]
    pub ignoreip: Vec<Net>,
    /// Interfaces to attach to (default: the default route's).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Protected ports; when unset: what FreeSWITCH's profiles listen on
    /// (discovered), else the stock FreeSWITCH ports.
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
    #[serde(default)]
    pub all_ports: bool,
    /// Decide and record everything as usual, drop nothing: the program
    /// counts would-be drops (for rolling out on a live box).
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default = "default_mode")]
    pub xdp_mode: AttachMode,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Its nameservers are never banned (with gateways and own addresses).
    #[serde(default = "default_resolv_conf")]
    pub resolv_conf: PathBuf,
    /// Where to start reading a log seen for the first time.
    #[serde(default)]
    pub start: StartAt,
    /// The timezone of the logs' timestamps: `local` (the default), `UTC`,
    /// or an offset like `+02:00` (FreeSWITCH in a UTC container on a host
    /// in another zone).
    #[serde(default, deserialize_with = "log_tz")]
    pub log_timezone: filter::LogTz,
    #[serde(default)]
    pub jails: BTreeMap<String, JailConfig>,
    /// Packet-level flood defence in XDP.
    #[serde(default)]
    pub flood: FloodConfig,
    /// FreeSWITCH's configuration folder, read for its ports, trunks and
    /// log (unset: /etc/freeswitch, then /usr/local/freeswitch/conf; `""`:
    /// do not look).
    #[serde(default)]
    pub freeswitch_conf: Option<PathBuf>,
    /// What was read there (by the daemon, at start and reload).
    #[serde(skip)]
    pub discovered: Option<crate::freeswitch::Discovered>,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Hooks told of every ban and unban.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// CrowdSec: its decisions enforced here, this box's detections sent.
    #[serde(default)]
    pub crowdsec: Option<CrowdsecConfig>,
    /// A fleet of sipguard daemons sharing bans through Redis.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// The APIBAN blocklist.
    #[serde(default)]
    pub apiban: Option<ApibanConfig>,
    /// How much room bans from elsewhere may take.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Trusted sources and overload shedding.
    #[serde(default)]
    pub trust: trust::TrustConfig,
}

/// `[fleet]`: caps on the bans CrowdSec, Redis nodes and APIBAN hand in,
/// per origin and all together, so that a shared engine cannot fill the
/// blocklist or ban the Internet (see `bans::caps`). Over a cap a ban is
/// skipped and counted (`status`, `sipguard_bans_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// The widest prefix a remote ban may have.
    pub widest_ipv4_prefix: u8,
    pub widest_ipv6_prefix: u8,
    pub max_bans_per_origin: u64,
    pub max_ipv4_addresses_per_origin: u64,
    pub max_ipv6_64s_per_origin: u64,
    /// All remote origins together (each network once).
    pub max_remote_bans: u64,
    pub max_remote_ipv4_addresses: u64,
    pub max_remote_ipv6_64s: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        let c = crate::bans::caps::Caps::default();
        Self {
            widest_ipv4_prefix: c.min_prefix_v4,
            widest_ipv6_prefix: c.min_prefix_v6,
            max_bans_per_origin: c.per_origin.bans,
            max_ipv4_addresses_per_origin: c.per_origin.ipv4_addresses,
            max_ipv6_64s_per_origin: c.per_origin.ipv6_64s,
            max_remote_bans: c.all.bans,
            max_remote_ipv4_addresses: c.all.ipv4_addresses,
            max_remote_ipv6_64s: c.all.ipv6_64s,
        }
    }
}

/// Kernel map entries always left to log-driven and manual bans: remote
/// and packet bans together never take more than the rest.
pub const RESERVED_LOCAL_BANS: u64 = common::MAX_BANS as u64 / 4;

impl FleetConfig {
    pub fn caps(&self) -> crate::bans::caps::Caps {
        use crate::bans::caps::{Caps, Limits};
        Caps {
            min_prefix_v4: self.widest_ipv4_prefix,
            min_prefix_v6: self.widest_ipv6_prefix,
            per_origin: Limits {
                bans: self.max_bans_per_origin,
                ipv4_addresses: self.max_ipv4_addresses_per_origin,
                ipv6_64s: self.max_ipv6_64s_per_origin,
            },
            all: Limits {
                bans: self.max_remote_bans,
                ipv4_addresses: self.max_remote_ipv4_addresses,
                ipv6_64s: self.max_remote_ipv6_64s,
            },
        }
    }
}

/// `[crowdsec]`: sipguard as a CrowdSec bouncer (and, with machine
/// credentials, as a source of alerts).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdsecConfig {
    #[serde(default = "default_lapi")]
    pub api_url: String,
    /// The bouncer key (`cscli bouncers add sipguard -o raw`), or a file
    /// holding it.
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    #[serde(
        default = "default_update_frequency",
        deserialize_with = "duration::serde::finite"
    )]
    pub update_frequency: Duration,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub origins: Vec<String>,
    #[serde(default)]
    pub scenarios_containing: Vec<String>,
    #[serde(default)]
    pub scenarios_not_containing: Vec<String>,
    /// Decision types enforced: `ban` (XDP can only drop).
    #[serde(default = "default_decision_types")]
    pub decision_types: Vec<String>,
    /// A decision drops all of the source's traffic, as firewall bouncers do
    /// (false: only the protected ports).
    #[serde(default = "yes")]
    pub all_ports: bool,
    /// Machine credentials (`cscli machines add`): send this box's bans as alerts.
    #[serde(default)]
    pub machine_id: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Decisions taken from one LAPI answer; beyond, the rest are skipped
    /// (counted, logged): what a hostile LAPI can make this box hold.
    #[serde(default = "default_max_decisions")]
    pub max_decisions: usize,
}

fn default_max_decisions() -> usize {
    crate::fleet::crowdsec::DEFAULT_MAX_DECISIONS
}
fn default_lapi() -> String {
    "http://127.0.0.1:8080/".into()
}
fn default_update_frequency() -> Duration {
    Duration::from_secs(10)
}
fn default_scopes() -> Vec<String> {
    vec!["ip".into(), "range".into()]
}
fn default_decision_types() -> Vec<String> {
    vec!["ban".into()]
}

impl CrowdsecConfig {
    /// The workers' settings, with the key read from its file.
    pub fn settings(&self) -> Result<crate::fleet::crowdsec::Settings> {
        let api_key = match (&self.api_key, &self.api_key_file) {
            (Some(k), _) => Some(k.trim().to_owned()),
            // A key is small: a FIFO or a huge file in its place is an
            // error, never a stall.
            (None, Some(f)) => Some(
                String::from_utf8(
                    crate::files::read_small(f, 64 * 1024)
                        .with_context(|| format!("[crowdsec] api_key_file {}", f.display()))?,
                )
                .with_context(|| format!("[crowdsec] api_key_file {}: not UTF-8", f.display()))?
                .trim()
                .to_owned(),
            ),
            (None, None) => None,
        };
        Ok(crate::fleet::crowdsec::Settings {
            api_url: self.api_url.clone(),
            api_key,
            update_frequency: self.update_frequency,
            scopes: self.scopes.clone(),
            origins: self.origins.clone(),
            scenarios_containing: self.scenarios_containing.clone(),
            scenarios_not_containing: self.scenarios_not_containing.clone(),
            types: self.decision_types.clone(),
            all_ports: self.all_ports,
            machine_id: self.machine_id.clone(),
            password: self.password.clone(),
            max_decisions: self.max_decisions,
        })
    }
}

/// `[redis]`: this box's bans published, the other nodes' enforced.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://` (TLS).
    pub url: String,
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    /// This box's name in the fleet (default: the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// The fleet's shared key (whole content, trimmed; a root-only file):
    /// signs every entry. Without it the fleet is not started.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The key before a rotation: verifies, never signs.
    #[serde(default)]
    pub previous_key_file: Option<PathBuf>,
    /// Apply `unban --fleet` from other (signed) members.
    #[serde(default = "yes")]
    pub accept_fleet_unban: bool,
    /// A private CA (PEM) for `rediss://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_redis_prefix() -> String {
    "sipguard:".into()
}

impl RedisConfig {
    /// The fleet's settings, keys read; an error says why the fleet cannot
    /// start (no key, a key open to others, too short).
    pub fn settings(&self) -> Result<crate::fleet::redis::Settings> {
        use crate::fleet::redis::read_key;
        let key_file = self.key_file.as_deref().context(
            "[redis] needs `key_file`: every member signs its entries with the fleet's key (make one with `openssl rand -hex 32 > FILE; chmod 600 FILE`)",
        )?;
        Ok(crate::fleet::redis::Settings {
            url: self.url.clone(),
            prefix: self.prefix.clone(),
            node: self.node.clone().unwrap_or_else(host_name),
            key: read_key(key_file).context("[redis] key_file")?,
            previous_key: match &self.previous_key_file {
                Some(p) => Some(read_key(p).context("[redis] previous_key_file")?),
                None => None,
            },
            accept_fleet_unban: self.accept_fleet_unban,
            ca_file: self.ca_file.clone(),
        })
    }
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sipguard".into())
}

/// `[apiban]`: the APIBAN SIP blocklist.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApibanConfig {
    pub key: String,
    #[serde(default = "default_apiban_set")]
    pub set: String,
    #[serde(
        default = "default_apiban_interval",
        deserialize_with = "duration::serde::finite"
    )]
    pub interval: Duration,
    #[serde(default = "default_apiban_url")]
    pub url: String,
}

fn default_apiban_set() -> String {
    "sip".into()
}
fn default_apiban_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_apiban_url() -> String {
    "https://apiban.org/api/".into()
}

impl ApibanConfig {
    pub fn settings(&self) -> crate::fleet::apiban::Settings {
        crate::fleet::apiban::Settings {
            url: self.url.clone(),
            key: self.key.clone(),
            set: self.set.clone(),
            interval: self.interval,
        }
    }
}

/// `[notify]`: exec hooks and webhooks on ban and unban.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Programs (absolute paths) run with the event in `SIPGUARD_*`.
    #[serde(default)]
    pub exec: Vec<String>,
    /// `http://` or `https://` URLs that receive each event as a JSON POST.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Longest a hook may take before it is given up (killed).
    #[serde(
        default = "default_notify_timeout",
        deserialize_with = "duration::serde::finite"
    )]
    pub timeout: Duration,
    /// While bans come faster than one a second: one digest this often.
    #[serde(
        default = "default_digest_every",
        deserialize_with = "duration::serde::finite"
    )]
    pub digest_every: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            exec: Vec::new(),
            webhooks: Vec::new(),
            timeout: default_notify_timeout(),
            digest_every: default_digest_every(),
        }
    }
}

impl NotifyConfig {
    pub fn hooks(&self) -> crate::ops::notify::Hooks {
        crate::ops::notify::Hooks {
            exec: self.exec.clone(),
            webhooks: self.webhooks.clone(),
            timeout: self.timeout,
            digest_every: self.digest_every,
        }
    }
}

fn default_notify_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_digest_every() -> Duration {
    Duration::from_secs(60)
}

/// `[metrics]`: Prometheus metrics over HTTP, on loopback unless told
/// otherwise (they show what is banned and how fast; no addresses).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_metrics_listen")]
    pub listen: std::net::SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> std::net::SocketAddr {
    crate::defaults::METRICS_LISTEN
        .parse()
        .expect("a valid address")
}

/// `[flood]`: the per-source rate limit on the protected ports, and when a
/// source that keeps exceeding it is banned (jail `sip-flood`).
///
/// The defaults let a site of hundreds of phones behind one NAT address
/// re-register at once after a power cut (each REGISTER, 401, REGISTER: a few
/// packets per phone, well inside `burst`) and keep up its keepalives (far
/// below `rate`), while a single source sending thousands of SIP packets per
/// second is limited within a second and banned after `escalate_after`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Packets per second per source (IPv4 address, IPv6 /64).
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// Packets a source may send at once above its rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Ban a source limited during this many distinct seconds...
    #[serde(default = "default_escalate_after")]
    pub escalate_after: u32,
    /// ...with no gap between them longer than this (seconds).
    #[serde(
        default = "default_escalate_window",
        deserialize_with = "duration::serde::finite"
    )]
    pub window: Duration,
    /// How long a flooding source is banned (`-1`: permanently). Short:
    /// the source address of a flood can be forged.
    #[serde(
        default = "default_flood_bantime",
        deserialize_with = "duration::serde::bantime"
    )]
    pub bantime: Option<Duration>,
    /// Drop UDP SIP requests whose User-Agent is a known scanner's.
    #[serde(default = "yes")]
    pub scanners: bool,
    /// Also ban the source of a scanner's packet (jail `sip-scanner`). Off
    /// by default: dropping the packets costs a forger's victim nothing,
    /// banning would let one forged packet ban any address.
    #[serde(default)]
    pub scanner_bans: bool,
    #[serde(
        default = "default_scanner_bantime",
        deserialize_with = "duration::serde::bantime"
    )]
    pub scanner_bantime: Option<Duration>,
    /// Most bans each packet jail (`sip-flood`, `sip-scanner`) makes in a
    /// minute; over it the packets are still dropped, the bans skipped.
    #[serde(default = "default_max_bans_per_minute")]
    pub max_bans_per_minute: u32,
    /// Most packet bans in force at once; at the cap the oldest is lifted,
    /// so log-driven and manual bans always have room.
    #[serde(default = "default_max_packet_bans")]
    pub max_packet_bans: usize,
    /// Send `sip-flood` bans to the fleet (CrowdSec alerts, Redis). Off:
    /// a flood's source address can be forged, and a fleet would multiply
    /// the forger's ban. On, they leave ports-only with their own duration.
    #[serde(default)]
    pub export: bool,
    /// The same for `sip-scanner` bans.
    #[serde(default)]
    pub scanner_export: bool,
    /// Invalid messages per source (see `config/sip_budgets.rs`); 0: off.
    #[serde(default = "sip_budgets::default_invalid_rate")]
    pub invalid_rate: u32,
    #[serde(default = "sip_budgets::default_invalid_burst")]
    pub invalid_burst: u32,
    /// Ban a source over it for `escalate_after` seconds (jail `sip-invalid`).
    #[serde(default = "yes")]
    pub invalid_bans: bool,
    #[serde(
        default = "sip_budgets::default_invalid_bantime",
        deserialize_with = "duration::serde::bantime"
    )]
    pub invalid_bantime: Option<Duration>,
    /// `[flood.methods]`: requests per source and method class.
    #[serde(default)]
    pub methods: sip_budgets::MethodBudgets,
}

impl Default for FloodConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: default_rate(),
            burst: default_burst(),
            escalate_after: default_escalate_after(),
            window: default_escalate_window(),
            bantime: default_flood_bantime(),
            scanners: true,
            scanner_bans: false,
            scanner_bantime: default_scanner_bantime(),
            max_bans_per_minute: default_max_bans_per_minute(),
            max_packet_bans: default_max_packet_bans(),
            export: false,
            scanner_export: false,
            invalid_rate: sip_budgets::default_invalid_rate(),
            invalid_burst: sip_budgets::default_invalid_burst(),
            invalid_bans: true,
            invalid_bantime: sip_budgets::default_invalid_bantime(),
            methods: sip_budgets::MethodBudgets::new(),
        }
    }
}

fn default_scanner_bantime() -> Option<Duration> {
    Some(Duration::from_secs(3600))
}
fn default_max_bans_per_minute() -> u32 {
    60
}
fn default_max_packet_bans() -> usize {
    65_536
}

fn default_rate() -> u32 {
    500
}
fn default_burst() -> u32 {
    2000
}
fn default_escalate_after() -> u32 {
    5
}
fn default_escalate_window() -> Duration {
    Duration::from_secs(60)
}
fn default_flood_bantime() -> Option<Duration> {
    Some(Duration::from_secs(600))
}

impl FloodConfig {
    /// The kernel's view: rate 0 turns the limiter off.
    pub fn apply(&self, mut config: common::Config) -> common::Config {
        let rate = if self.enabled { self.rate } else { 0 };
        config = config.with_rate(rate, self.burst);
        config.escalate_secs = self.escalate_after;
        config.escalate_window_secs = u32::try_from(self.window.as_secs()).unwrap_or(u32::MAX);
        if self.scanners {
            config.flags |= common::CONFIG_SCANNERS;
            if self.scanner_bans {
                config.flags |= common::CONFIG_REPORT_SCANNERS;
            }
        }
        config
    }
}

/// A network in the config (`192.0.2.0/24`, `2001:db8::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net(pub IpNet);

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        addr::parse_net(&s)
            .map(Net)
            .map_err(|e| de::Error::custom(format!("{e:#}")))
    }
}

fn yes() -> bool {
    true
}
fn default_ports() -> Vec<u16> {
    crate::defaults::PORTS.to_vec()
}
fn default_mode() -> AttachMode {
    AttachMode::Auto
}
fn default_pin_dir() -> PathBuf {
    crate::defaults::PIN_DIR.into()
}
fn default_state_file() -> PathBuf {
    crate::defaults::STATE_FILE.into()
}
fn default_resolv_conf() -> PathBuf {
    "/etc/resolv.conf".into()
}
fn default_socket() -> PathBuf {
    crate::defaults::SOCKET.into()
}
fn log_tz<'de, D: Deserializer<'de>>(d: D) -> Result<filter::LogTz, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(|e| de::Error::custom(format!("{e:#}")))
}

/// Where and what, never the line itself: toml's own message quotes the
/// offending line, which may hold a key, a password or a webhook's token
/// (a typo in `api_key = "..."`), and this error is logged.
fn parse_error(text: &str, origin: &str, e: &toml::de::Error) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow::anyhow!("{origin}: {}", e.message());
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = before.len() - line_start + 1;
    // The key of that line (what is left of `=`), which says no secret.
    let key = text[line_start..]
        .lines()
        .next()
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.len() <= 64)
        .map(|k| format!(", key {}", crate::text::escape(k)))
        .unwrap_or_default();
    anyhow::anyhow!(
        "{origin}, line {line}, column {column}{key}: {}",
        e.message().trim_end()
    )
}

impl Config {
    /// Parses and checks a configuration; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        aggregate::reject_packet_jails(text).with_context(|| origin.to_owned())?;
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
        config.check().with_context(|| origin.to_owned())?;
        Ok(config)
    }

    /// Loads `path`. A missing file at the default path means the built-in
    /// default; a missing file named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
                Self::parse(&text, &path.display().to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Self::parse(DEFAULT_TOML, "built-in default configuration")
            }
            Err(e) => Err(e).with_context(|| format!("cannot read config {}", path.display())),
        }
    }

    /// Protected ports: the global list (configured, else discovered, else
    /// the defaults) plus every jail's own.
    pub fn protected_ports(&self) -> Vec<u16> {
        let mut ports = self.sip_ports();
        for jail in self.jails.values().filter(|j| j.enabled) {
            if let Some(Ports::List(l)) = &jail.ports {
                ports.extend(l);
            }
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The SIP ports: `ports`, else FreeSWITCH's as discovered, else the
    /// defaults; not the ports a jail adds (those may be other services:
    /// the invalid-message budget judges only these).
    pub fn sip_ports(&self) -> Vec<u16> {
        let discovered = self
            .discovered
            .as_ref()
            .map(|d| d.port_numbers())
            .filter(|p| !p.is_empty());
        let mut ports = self
            .ports
            .clone()
            .or(discovered)
            .unwrap_or_else(default_ports);
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The kernel's invalid-message and per-method budgets.
    pub fn sip_limits(&self) -> common::SipLimits {
        let mut limits = self.flood.sip_limits();
        let ports = self.sip_ports();
        // More SIP ports than fit: every protected port is judged (zeros).
        if ports.len() <= common::MAX_INVALID_PORTS {
            limits.invalid_ports[..ports.len()].copy_from_slice(&ports);
        }
        limits
    }
}

mod aggregate;
mod check;
pub mod sip_budgets;
pub mod trust;

#[cfg(test)]
mod tests;
