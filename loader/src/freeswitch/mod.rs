//! What FreeSWITCH itself says, read from its configuration tree: the ports
//! its SIP profiles listen on (so a source banned on 5060 is banned on 5080
//! too), its gateways (SIP trunks: never to be banned), and its log file.
//!
//! FreeSWITCH's `X-PRE-PROCESS` is a textual preprocessor (`set`, `include`
//! with globs relative to the including file, `$${var}`), so the files are
//! read one at a time, as a stream of tags in order (see `xml`): included
//! files are often fragments, which no whole-document parser would take.
use serde::Serialize;
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// Where FreeSWITCH's configuration is looked for when not configured:
/// Debian's packages, then a build from source.
pub const SEARCH: [&str; 2] = ["/etc/freeswitch", "/usr/local/freeswitch/conf"];

/// Longest a gateway's host name may take to resolve (all of them at once).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

mod event_socket;
mod walk;
mod xml;
pub use event_socket::EventSocket;
use walk::*;
use xml::*;

/// What was found, each with where it came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Discovered {
    pub conf_dir: PathBuf,
    pub ports: Vec<Found<u16>>,
    pub trunks: Vec<Trunk>,
    pub log: Option<Found<PathBuf>>,
    /// mod_event_socket's address and password.
    pub event_socket: Option<Found<EventSocket>>,
    /// What could not be read or understood.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Found<T> {
    pub value: T,
    /// `file: what`.
    pub from: String,
}

/// A gateway: the hosts FreeSWITCH sends to and registers with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trunk {
    pub gateway: String,
    pub host: String,
    pub addresses: Vec<IpAddr>,
    pub from: String,
}

impl Discovered {
    /// The protected ports FreeSWITCH listens on, sorted.
    pub fn port_numbers(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.ports.iter().map(|f| f.value).collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Every trunk address.
    pub fn trunk_addresses(&self) -> Vec<IpAddr> {
        self.trunks
            .iter()
            .flat_map(|t| t.addresses.clone())
            .collect()
    }
}

/// The configuration folder: `configured` (empty: discovery off), else the
/// first of `SEARCH` that holds a `vars.xml`.
pub fn conf_dir(configured: Option<&Path>) -> Option<PathBuf> {
    match configured {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p.to_owned()),
        None => SEARCH
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("vars.xml").is_file()),
    }
}

/// Reads the tree at `dir`. Host names are resolved (bounded in time).
pub fn discover(dir: &Path) -> Discovered {
    let mut d = Discovered {
        conf_dir: dir.to_owned(),
        ..Default::default()
    };
    let mut vars = builtin_vars(dir);
    let mut budget = Budget::new();
    // vars.xml: `set` lines only (and what it includes).
    let vars_xml = dir.join("vars.xml");
    read_top(&vars_xml, dir, &mut vars, &mut d.warnings, &mut budget);
    if !vars_xml.is_file() {
        d.warnings.push(format!("{}: no vars.xml", dir.display()));
    }

    // Every SIP profile, as sofia.conf.xml includes them.
    let profiles = glob_sorted(
        &dir.join("sip_profiles/*.xml"),
        &mut budget,
        &mut d.warnings,
    );
    if profiles.is_empty() {
        d.warnings
            .push(format!("{}: no sip_profiles/*.xml", dir.display()));
    }
    let mut pending_hosts = Hosts::default();
    for file in profiles {
        let tags = read_top(&file, dir, &mut vars, &mut d.warnings, &mut budget);
        profile_facts(&tags, &mut d, &mut pending_hosts);
    }

    d.log = log_file(dir, &mut vars, &mut d.warnings, &mut budget);
    d.event_socket = event_socket::event_socket(dir, &mut vars, &mut d.warnings, &mut budget);
    d.trunks = resolve(pending_hosts.list, &mut d.warnings);
    // A file included a hundred times says what is wrong with it once.
    let mut seen = std::collections::HashSet::new();
    d.warnings.retain(|w| seen.insert(w.clone()));
    d
}

/// The tags of one file FreeSWITCH reads itself (not through an include).
fn read_top(
    file: &Path,
    conf: &Path,
    vars: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
    budget: &mut Budget,
) -> Vec<Tag> {
    let mut tags = Vec::new();
    read_tree(file, conf, 0, vars, &mut tags, warnings, budget);
    tags
}

/// mod_logfile's file, else FreeSWITCH's default under log_dir.
fn log_file(
    dir: &Path,
    vars: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
    budget: &mut Budget,
) -> Option<Found<PathBuf>> {
    let conf = dir.join("autoload_configs/logfile.conf.xml");
    let tags = read_top(&conf, dir, vars, warnings, budget);
    tags.iter()
        .find(|t| t.name == "param" && t.attr("name") == Some("logfile"))
        .and_then(|t| t.attr("value"))
        .map(|v| Found {
            value: PathBuf::from(v),
            from: format!("{}: param logfile", rel(dir, &conf)),
        })
        .or_else(|| {
            vars.get("log_dir").map(|l| Found {
                value: Path::new(l).join("freeswitch.log"),
                from: "FreeSWITCH's default: $${log_dir}/freeswitch.log".to_owned(),
            })
        })
}

/// FreeSWITCH's own variables that matter here, from where it is installed.
fn builtin_vars(dir: &Path) -> BTreeMap<String, String> {
    let log_dir = if dir.starts_with("/etc") {
        "/var/log/freeswitch".to_owned()
    } else {
        dir.parent()
            .unwrap_or(dir)
            .join("log")
            .display()
            .to_string()
    };
    BTreeMap::from([
        ("conf_dir".to_owned(), dir.display().to_string()),
        ("log_dir".to_owned(), log_dir),
    ])
}

fn rel(conf: &Path, file: &Path) -> String {
    file.strip_prefix(conf)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// The ports a profile listens on and the hosts of its gateways.
fn profile_facts(tags: &[Tag], d: &mut Discovered, hosts: &mut Hosts) {
    let conf = d.conf_dir.clone();
    // A gateway: its name, and the file it is written in.
    let mut gateway: Option<(String, String)> = None;
    let mut gateway_params: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut profile: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut profile_file = String::new();
    for t in tags {
        match (t.name.as_str(), t.closing) {
            ("gateway", false) => {
                gateway = t.attr("name").map(|n| (n.to_owned(), rel(&conf, &t.file)));
                gateway_params.clear();
            }
            ("gateway", true) => {
                if let Some((name, file)) = gateway.take() {
                    gateway_hosts(&name, &file, &gateway_params, hosts, &mut d.warnings);
                }
            }
            ("profile", false) => profile_file = rel(&conf, &t.file),
            ("param", false) => {
                let (Some(k), Some(v)) = (t.attr("name"), t.attr("value")) else {
                    continue;
                };
                let at = (v.to_owned(), rel(&conf, &t.file));
                if gateway.is_some() {
                    gateway_params.insert(k.to_owned(), at);
                } else {
                    profile.insert(k.to_owned(), at);
                }
            }
            _ => {}
        }
    }
    if !profile_file.is_empty() {
        profile_ports(&profile, &profile_file, d);
    }
}

/// The ports a profile listens on, from its params (`profile`: name to
/// value and file), FreeSWITCH's defaults where it says nothing.
fn profile_ports(
    profile: &BTreeMap<String, (String, String)>,
    profile_file: &str,
    d: &mut Discovered,
) {
    let mut port = |key: &str, default: Option<u16>, value: Option<&(String, String)>| {
        let (text, file) = match value {
            Some((v, f)) => (v.clone(), f.clone()),
            None => match default {
                Some(p) => (p.to_string(), profile_file.to_owned()),
                None => return,
            },
        };
        // A binding is `[ADDRESS]:PORT`; a port is a number.
        let number = text.rsplit(':').next().unwrap_or("").trim();
        match number.parse::<u16>() {
            Ok(p) if p > 0 => d.ports.push(Found {
                value: p,
                from: format!(
                    "{file}: {key}{}",
                    if value.is_none() {
                        " (FreeSWITCH's default)"
                    } else {
                        ""
                    }
                ),
            }),
            _ => d.warnings.push(format!(
                "{file}: {key} = `{text}` is not a port (an unknown $${{variable}}?)"
            )),
        }
    };
    let tls_only = profile.get("tls-only").is_some_and(|(v, _)| is_true(v));
    if !tls_only {
        port("sip-port", Some(5060), profile.get("sip-port"));
    }
    if profile.get("tls").is_some_and(|(v, _)| is_true(v)) {
        port("tls-sip-port", Some(5061), profile.get("tls-sip-port"));
    }
    port("ws-binding", None, profile.get("ws-binding"));
    port("wss-binding", None, profile.get("wss-binding"));
}

fn is_true(v: &str) -> bool {
    matches!(v.trim(), "true" | "yes" | "on" | "1")
}

/// The gateways' hosts to resolve: (gateway, host, from), each host once,
/// at most `MAX_HOSTS`.
#[derive(Default)]
struct Hosts {
    list: Vec<(String, String, String)>,
    seen: std::collections::HashSet<String>,
    /// `MAX_HOSTS` were kept (and that was said).
    full: bool,
}

impl Hosts {
    fn add(&mut self, gateway: &str, host: String, from: String, warnings: &mut Vec<String>) {
        if self.seen.contains(&host) {
            return;
        }
        if self.list.len() == MAX_HOSTS {
            if !self.full {
                self.full = true;
                warnings.push(format!(
                    "{}: not protected, nor any gateway host after it: discovery keeps at most {MAX_HOSTS}",
                    crate::text::escape(&from)
                ));
            }
            return;
        }
        self.seen.insert(host.clone());
        self.list.push((gateway.to_owned(), host, from));
    }
}

/// A gateway's peers: proxy (else realm, else its name), register-proxy,
/// outbound-proxy.
fn gateway_hosts(
    name: &str,
    file: &str,
    params: &BTreeMap<String, (String, String)>,
    out: &mut Hosts,
    warnings: &mut Vec<String>,
) {
    let mut add = |key: &str, value: &str, file: &str| {
        if let Some(host) = sip_host(value) {
            let from = format!("{file}: gateway {name} {key}");
            out.add(name, host, from, warnings);
        }
    };
    match ["proxy", "realm"]
        .iter()
        .find_map(|k| params.get(*k).map(|v| (*k, v)))
    {
        Some((k, (v, f))) => add(k, v, f),
        None => add("name", name, file),
    }
    for key in ["register-proxy", "outbound-proxy"] {
        if let Some((v, f)) = params.get(key) {
            add(key, v, f);
        }
    }
}

/// The host of `sip:host:port;params`, `host:port`, `[v6]:port`, `host`.
fn sip_host(value: &str) -> Option<String> {
    let v = value.trim();
    let v = v
        .strip_prefix("sips:")
        .or_else(|| v.strip_prefix("sip:"))
        .unwrap_or(v);
    let v = v.split([';', '?', '/']).next().unwrap_or("");
    let v = v.rsplit('@').next().unwrap_or(v);
    let host = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if v.matches(':').count() > 1 {
        v // a bare IPv6 address
    } else {
        v.split(':').next().unwrap_or("")
    };
    let ok = !host.is_empty()
        && !host.contains("$${")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    ok.then(|| host.to_ascii_lowercase())
}

/// Addresses for the gateways' hosts: literal ones as they are, names
/// looked up in parallel, all within `RESOLVE_TIMEOUT`.
fn resolve(hosts: Vec<(String, String, String)>, warnings: &mut Vec<String>) -> Vec<Trunk> {
    let names: Vec<String> = hosts.iter().map(|(_, h, _)| h.clone()).collect();
    let found = crate::addr::resolve_within(&names, RESOLVE_TIMEOUT);
    let mut out = Vec::new();
    for ((gateway, host, from), addresses) in hosts.into_iter().zip(found) {
        if addresses.is_empty() {
            warnings.push(format!(
                "{from}: `{host}` did not resolve (within {} s); not protected until the next reload",
                RESOLVE_TIMEOUT.as_secs()
            ));
        }
        out.push(Trunk {
            gateway,
            host,
            addresses,
            from,
        });
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod xml_tests;
