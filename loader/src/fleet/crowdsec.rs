//! CrowdSec, both ways.
//!
//! * **Bouncer**: the LAPI's decision stream (`GET /v1/decisions/stream`,
//!   `X-Api-Key`), pulled every `update_frequency`: `startup=true` first and
//!   after every failure (the full list; what is no longer in it is lifted),
//!   `startup=false` otherwise (what is new, what was deleted). IPv4, IPv6
//!   and ranges go into the XDP maps with the time they have left. When
//!   several decisions name one network, the longest wins and a deletion
//!   lifts only its own (as cs-firewall-bouncer does). Usage metrics are
//!   pushed where the LAPI has `POST /v1/usage-metrics`.
//! * **Detections**: with machine credentials, each ban this box makes from
//!   a jail, a flood or a scanner becomes an alert with an explicit decision
//!   (`sipguard/<jail>`), so every other bouncer of the LAPI enforces it.
//!   Batched, retried with backoff, never in a ban's way.
use super::{deliver, sleep_or_stop, Inbound, InboundTx, Outbound, RemoteDecision};
use crate::{
    bans::names::{Name, Names},
    net_table::NetTable,
};
use anyhow::{bail, Context as _, Result};
use ipnet::IpNet;
use serde::Deserialize;
use smallvec::SmallVec;
use std::{
    collections::HashSet,
    io::Read as _,
    sync::mpsc,
    time::{Duration, Instant},
};

pub const ORIGIN: &str = "crowdsec";
/// Largest decision stream read (a million decisions is about 250 MB).
const MAX_STREAM: u64 = 512 << 20;
/// Alerts sent per request, and how long a ban waits for company.
const ALERT_BATCH: usize = 100;
const ALERT_WAIT: Duration = Duration::from_secs(1);
/// Alerts kept while the LAPI is away; the oldest go first beyond.
const ALERT_QUEUE: usize = 10_000;
/// How often usage metrics are pushed.
const USAGE_EVERY: Duration = Duration::from_secs(30 * 60);
/// A local ban with no end is sent as a decision of this length.
const PERMANENT_AS: Duration = Duration::from_secs(365 * 86_400);

/// `[crowdsec]`, as the workers need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub api_url: String,
    /// The bouncer key (`cscli bouncers add NAME -o raw`).
    pub api_key: Option<String>,
    pub update_frequency: Duration,
    pub scopes: Vec<String>,
    pub origins: Vec<String>,
    pub scenarios_containing: Vec<String>,
    pub scenarios_not_containing: Vec<String>,
    /// Decision types enforced (`ban`; a `captcha` cannot be solved in XDP).
    pub types: Vec<String>,
    pub all_ports: bool,
    /// Machine credentials (`cscli machines add`), for sending detections.
    pub machine_id: Option<String>,
    pub password: Option<String>,
}

/// A decision as the LAPI sends it.
#[derive(Clone, Debug, Deserialize)]
pub struct Decision {
    #[serde(default)]
    pub id: i64,
    #[serde(default)]
    pub origin: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub scenario: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Stream {
    #[serde(default)]
    pub new: Option<Vec<Decision>>,
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
}

/// The decisions in force, by network: each decision's end, so that a
/// deletion lifts only its own and the longest of the rest stays. Held for
/// a community list of a million: a network's one decision inline, its
/// scenario by index (~80 bytes a network; a map of maps of Strings took
/// ~350).
#[derive(Default)]
pub struct Book {
    by_net: NetTable<SmallVec<[Held; 1]>>,
    scenarios: Names,
}

/// One decision in force: its id, end (`None`: none) and scenario.
type Held = (i64, Option<Instant>, Name);

impl Book {
    /// Applies a stream; returns the networks whose ban changed, with
    /// their new state (`None`: no decision left), and what was refused.
    pub fn apply(
        &mut self,
        s: &Settings,
        stream: Stream,
        now: Instant,
    ) -> (Vec<(IpNet, Option<RemoteDecision>)>, Vec<String>) {
        let mut touched = HashSet::new();
        let mut refused = Vec::new();
        for d in stream.deleted.unwrap_or_default() {
            if let Ok(net) = decision_net(&d) {
                if let Some(ids) = self.by_net.get_mut(&net) {
                    let before = ids.len();
                    ids.retain(|h| h.0 != d.id);
                    if ids.len() != before {
                        touched.insert(net);
                    }
                    if ids.is_empty() {
                        self.by_net.remove(&net);
                    }
                }
            }
        }
        for d in stream.new.unwrap_or_default() {
            if !s.types.iter().any(|t| t.eq_ignore_ascii_case(&d.kind)) {
                continue;
            }
            let net = match decision_net(&d) {
                Ok(net) => net,
                Err(e) => {
                    refused.push(format!("decision {} ({}): {e:#}", d.id, d.value));
                    continue;
                }
            };
            let Some(left) = super::go_duration(&d.duration) else {
                continue; // already over, or unreadable: nothing to enforce
            };
            let held = (d.id, now.checked_add(left), self.scenarios.id(&d.scenario));
            match self.by_net.get_mut(&net) {
                Some(ids) => match ids.iter_mut().find(|h| h.0 == d.id) {
                    Some(h) => *h = held,
                    None => ids.push(held),
                },
                None => {
                    self.by_net.insert(net, SmallVec::from_buf([held]));
                }
            }
            touched.insert(net);
        }
        let out = touched
            .into_iter()
            .map(|net| (net, self.effective(&net, s.all_ports, now)))
            .collect();
        (out, refused)
    }

    /// The longest decision in force for `net`.
    fn effective(&self, net: &IpNet, all_ports: bool, now: Instant) -> Option<RemoteDecision> {
        let ids = self.by_net.get(net)?;
        let (_, end, scenario) = ids.iter().max_by_key(|(_, end, _)| {
            end.map_or(u128::MAX, |e| e.duration_since(now).as_nanos())
        })?;
        Some(RemoteDecision {
            net: *net,
            left: end.map(|e| e.saturating_duration_since(now)),
            reason: match &**self.scenarios.text(*scenario) {
                "" => "a CrowdSec decision".to_owned(),
                scenario => scenario.to_owned(),
            },
            scope: if all_ports {
                crate::bans::Scope::AllPorts
            } else {
                crate::bans::Scope::Ports
            },
        })
    }

    pub fn nets(&self) -> HashSet<IpNet> {
        self.by_net.iter().map(|(net, _)| *net).collect()
    }

    pub fn clear(&mut self) {
        *self = Book::default();
    }
}

/// A decision's network: `Ip` is one address, `Range` a prefix; nothing
/// wider than sipguard ever bans.
fn decision_net(d: &Decision) -> Result<IpNet> {
    match d.scope.to_ascii_lowercase().as_str() {
        "ip" => {
            let net = crate::addr::parse_net(&d.value)?;
            if net.prefix_len() != net.max_prefix_len() {
                bail!("an Ip decision holds a range");
            }
            Ok(net)
        }
        "range" => crate::addr::parse_ban_net(&d.value),
        other => bail!("scope {other:?} is not enforced"),
    }
}

/// The stream URL with the operator's filters.
fn stream_url(s: &Settings, startup: bool) -> String {
    let mut url = format!(
        "{}/v1/decisions/stream?startup={startup}",
        s.api_url.trim_end_matches('/')
    );
    for (key, list) in [
        ("scopes", &s.scopes),
        ("origins", &s.origins),
        ("scenarios_containing", &s.scenarios_containing),
        ("scenarios_not_containing", &s.scenarios_not_containing),
    ] {
        if !list.is_empty() {
            url.push_str(&format!("&{key}={}", super::query_value(&list.join(","))));
        }
    }
    url
}

fn pull(agent: &ureq::Agent, s: &Settings, key: &str, startup: bool) -> Result<Stream> {
    let resp = agent
        .get(&stream_url(s, startup))
        .set("X-Api-Key", key)
        .call()
        .map_err(|e| match e {
            ureq::Error::Status(403, _) | ureq::Error::Status(401, _) => {
                anyhow::anyhow!("the LAPI refused the bouncer key ({e})")
            }
            e => anyhow::Error::new(e),
        })?;
    // Parsed as it arrives: a community list of a million decisions is
    // ~200 MB of JSON, never held whole.
    let mut body =
        std::io::BufReader::with_capacity(1 << 16, resp.into_reader().take(MAX_STREAM + 1));
    let parsed = serde_json::from_reader(&mut body);
    if body.get_ref().limit() == 0 {
        bail!("the decision stream is over {MAX_STREAM} bytes");
    }
    parsed.context("unreadable decision stream")
}

/// Starts the bouncer; it stops when `stop`'s sender is dropped.
pub fn start_bouncer(s: Settings, key: String, tx: InboundTx, stop: mpsc::Receiver<()>) {
    std::thread::Builder::new()
        .name("sipguard-crowdsec".into())
        .spawn(move || bouncer(&s, &key, &tx, &stop))
        .expect("cannot start the CrowdSec thread");
}

fn bouncer(s: &Settings, key: &str, tx: &InboundTx, stop: &mpsc::Receiver<()>) {
    let agent = super::http_agent();
    let mut book = Book::default();
    let mut startup = true;
    let mut failing = false;
    let mut last_usage: Option<Instant> = None;
    let mut usage_supported = true;
    loop {
        match pull(&agent, s, key, startup) {
            Ok(stream) => {
                if failing {
                    tracing::info!("CrowdSec: the LAPI at {} answers again", s.api_url);
                    failing = false;
                }
                if startup {
                    book.clear();
                }
                let (changes, refused) = book.apply(s, stream, Instant::now());
                for r in refused.iter().take(10) {
                    tracing::warn!("CrowdSec: refused {r}");
                }
                let (bans, unbans): (Vec<_>, Vec<_>) =
                    changes.into_iter().partition(|(_, d)| d.is_some());
                let bans: Vec<RemoteDecision> = bans.into_iter().filter_map(|(_, d)| d).collect();
                let unbans: Vec<IpNet> = unbans.into_iter().map(|(n, _)| n).collect();
                let n = bans.len();
                if !deliver(tx, ORIGIN, bans) {
                    return;
                }
                for chunk in unbans.chunks(super::BATCH) {
                    let msg = Inbound::Unbans {
                        origin: ORIGIN.into(),
                        nets: chunk.to_vec(),
                    };
                    if tx.blocking_send(msg).is_err() {
                        return;
                    }
                }
                if startup {
                    tracing::info!("CrowdSec: {n} decision(s) in force from {}", s.api_url);
                    let msg = Inbound::Complete {
                        origin: ORIGIN.into(),
                        nets: book.nets(),
                    };
                    if tx.blocking_send(msg).is_err() {
                        return;
                    }
                }
                startup = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "CrowdSec: cannot pull decisions from {}: {e:#}; what is in force stays, and the full list is read again once it answers",
                        s.api_url
                    );
                }
                failing = true;
                startup = true;
            }
        }
        if usage_supported && last_usage.is_none_or(|t| t.elapsed() >= USAGE_EVERY) {
            last_usage = Some(Instant::now());
            usage_supported = push_usage(&agent, s, key, book.by_net.len());
        }
        if sleep_or_stop(stop, s.update_frequency) {
            return;
        }
    }
}

/// `POST /v1/usage-metrics`; false when the LAPI does not have it (older
/// than 1.6), so it is not asked again.
fn push_usage(agent: &ureq::Agent, s: &Settings, key: &str, active: usize) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = serde_json::json!({
        "remediation_components": [{
            "version": env!("CARGO_PKG_VERSION"),
            "type": "sipguard",
            "name": "sipguard",
            "os": { "name": std::env::consts::OS, "version": "" },
            "feature_flags": [],
            "utc_startup_timestamp": now,
            "metrics": [{
                "meta": { "window_size_seconds": USAGE_EVERY.as_secs(), "utc_now_timestamp": now },
                "items": [{ "name": "active_decisions", "value": active, "unit": "ip", "labels": { "origin": ORIGIN } }]
            }]
        }]
    });
    let url = format!("{}/v1/usage-metrics", s.api_url.trim_end_matches('/'));
    match agent.post(&url).set("X-Api-Key", key).send_json(body) {
        Ok(_) => true,
        Err(ureq::Error::Status(404, _)) | Err(ureq::Error::Status(405, _)) => {
            tracing::info!("CrowdSec: this LAPI takes no usage metrics (older than 1.6)");
            false
        }
        Err(e) => {
            tracing::debug!("CrowdSec: usage metrics: {e}");
            true
        }
    }
}

/// Starts the detections sender: each local ban it receives becomes an
/// alert with its decision.
pub fn start_alerts(s: Settings, rx: mpsc::Receiver<Outbound>) {
    std::thread::Builder::new()
        .name("sipguard-crowdsec-alerts".into())
        .spawn(move || alerts(&s, &rx))
        .expect("cannot start the CrowdSec alerts thread");
}

fn alerts(s: &Settings, rx: &mpsc::Receiver<Outbound>) {
    let agent = super::http_agent();
    let mut token: Option<String> = None;
    let mut queue: std::collections::VecDeque<serde_json::Value> = Default::default();
    let mut backoff = Duration::from_secs(1);
    let mut retry_at: Option<Instant> = None;
    loop {
        let wait = if queue.is_empty() {
            Duration::from_secs(3600)
        } else {
            retry_at.map_or(ALERT_WAIT, |t| t.saturating_duration_since(Instant::now()))
        };
        match rx.recv_timeout(wait) {
            Ok(Outbound::Ban {
                net,
                jail,
                cause,
                left,
                reason,
                ..
            }) if cause != "manual" => {
                if queue.len() >= ALERT_QUEUE {
                    queue.pop_front();
                }
                queue.push_back(alert(&net, &jail, left, &reason));
                if queue.len() < ALERT_BATCH && retry_at.is_none() {
                    continue;
                }
            }
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if queue.is_empty() || retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        let batch: Vec<serde_json::Value> = queue.iter().take(ALERT_BATCH).cloned().collect();
        match send_alerts(&agent, s, &mut token, &batch) {
            Ok(()) => {
                queue.drain(..batch.len());
                backoff = Duration::from_secs(1);
                retry_at = None;
            }
            Err(e) => {
                tracing::warn!(
                    "CrowdSec: cannot send {} alert(s): {e:#}; again in {} s",
                    batch.len(),
                    backoff.as_secs()
                );
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// An alert with an explicit decision, in the LAPI's model.
fn alert(net: &IpNet, jail: &str, left: Option<Duration>, reason: &str) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let single = net.prefix_len() == net.max_prefix_len();
    let (scope, value) = if single {
        ("Ip", net.addr().to_string())
    } else {
        ("Range", net.to_string())
    };
    let scenario = format!("sipguard/{jail}");
    let duration = format!("{}s", left.unwrap_or(PERMANENT_AS).as_secs().max(1));
    let mut source = serde_json::json!({ "scope": scope, "value": value });
    if single {
        source["ip"] = value.clone().into();
    } else {
        source["range"] = value.clone().into();
    }
    serde_json::json!({
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": env!("CARGO_PKG_VERSION"),
        "message": format!("sipguard banned {value}: {reason}"),
        "events_count": 1,
        "events": [],
        "start_at": now,
        "stop_at": now,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "source": source,
        "decisions": [{
            "duration": duration,
            "origin": "crowdsec",
            "scenario": scenario,
            "scope": scope,
            "type": "ban",
            "value": value,
        }],
    })
}

fn login(agent: &ureq::Agent, s: &Settings) -> Result<String> {
    let (Some(id), Some(password)) = (&s.machine_id, &s.password) else {
        bail!("no machine credentials");
    };
    let url = format!("{}/v1/watchers/login", s.api_url.trim_end_matches('/'));
    let resp: serde_json::Value = agent
        .post(&url)
        .send_json(serde_json::json!({ "machine_id": id, "password": password, "scenarios": [] }))
        .map_err(|e| anyhow::anyhow!("machine login refused: {e}"))?
        .into_json()?;
    resp["token"]
        .as_str()
        .map(str::to_owned)
        .context("the LAPI's login answer has no token")
}

fn send_alerts(
    agent: &ureq::Agent,
    s: &Settings,
    token: &mut Option<String>,
    batch: &[serde_json::Value],
) -> Result<()> {
    let url = format!("{}/v1/alerts", s.api_url.trim_end_matches('/'));
    for attempt in 0..2 {
        let t = match token {
            Some(t) => t.clone(),
            None => {
                let t = login(agent, s)?;
                *token = Some(t.clone());
                t
            }
        };
        match agent
            .post(&url)
            .set("Authorization", &format!("Bearer {t}"))
            .send_json(serde_json::Value::Array(batch.to_vec()))
        {
            Ok(_) => return Ok(()),
            // The token expired: log in again, once.
            Err(ureq::Error::Status(401, _)) if attempt == 0 => *token = None,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("the LAPI refused the machine's token")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            api_url: "http://127.0.0.1:8080/".into(),
            api_key: None,
            update_frequency: Duration::from_secs(10),
            scopes: vec!["ip".into(), "range".into()],
            origins: vec![],
            scenarios_containing: vec!["ssh".into(), "sip".into()],
            scenarios_not_containing: vec![],
            types: vec!["ban".into()],
            all_ports: true,
            machine_id: None,
            password: None,
        }
    }

    fn d(id: i64, value: &str, scope: &str, duration: &str) -> Decision {
        Decision {
            id,
            origin: "cscli".into(),
            kind: "ban".into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "manual 'ban' from 'x'".into(),
        }
    }

    #[test]
    fn the_longest_decision_wins_and_deletions_lift_their_own() {
        let s = settings();
        let now = Instant::now();
        let mut book = Book::default();
        let stream = Stream {
            new: Some(vec![
                d(1, "192.0.2.7", "Ip", "1h"),
                d(2, "192.0.2.7", "Ip", "3h59m57.5s"),
                d(3, "2001:db8::/64", "Range", "59m58.9807811s"),
                d(4, "0.0.0.0/0", "Range", "1h"),
                d(5, "192.0.2.0/24", "Ip", "1h"),
                d(6, "not an address", "Ip", "1h"),
                d(7, "example.com", "Country", "1h"),
                d(8, "192.0.2.9", "Ip", "-5m"),
            ]),
            deleted: None,
        };
        let (changes, refused) = book.apply(&s, stream, now);
        assert_eq!(refused.len(), 4, "{refused:?}");
        let left = |changes: &[(IpNet, Option<RemoteDecision>)], net: &str| {
            changes
                .iter()
                .find(|(n, _)| *n == net.parse::<IpNet>().unwrap())
                .and_then(|(_, d)| d.as_ref().and_then(|d| d.left))
        };
        assert_eq!(changes.len(), 2);
        assert_eq!(left(&changes, "192.0.2.7/32").unwrap().as_secs(), 14_397);
        // Deleting the longer one leaves the other.
        let mut del = d(2, "192.0.2.7", "Ip", "-1s");
        del.kind = "ban".into();
        let (changes, _) = book.apply(
            &s,
            Stream {
                new: None,
                deleted: Some(vec![del]),
            },
            now,
        );
        assert_eq!(left(&changes, "192.0.2.7/32").unwrap().as_secs(), 3_600);
        let (changes, _) = book.apply(
            &s,
            Stream {
                new: None,
                deleted: Some(vec![d(1, "192.0.2.7", "Ip", "0")]),
            },
            now,
        );
        assert_eq!(changes, [("192.0.2.7/32".parse().unwrap(), None)]);
        assert_eq!(book.nets().len(), 1);
    }

    #[test]
    fn urls_and_alerts() {
        let url = stream_url(&settings(), true);
        assert_eq!(
            url,
            "http://127.0.0.1:8080/v1/decisions/stream?startup=true&scopes=ip%2Crange&scenarios_containing=ssh%2Csip"
        );
        let a = alert(
            &"2001:db8::/64".parse().unwrap(),
            "freeswitch",
            Some(Duration::from_secs(3600)),
            "3 failures",
        );
        assert_eq!(a["scenario"], "sipguard/freeswitch");
        assert_eq!(a["source"]["range"], "2001:db8::/64");
        assert_eq!(a["decisions"][0]["duration"], "3600s");
        assert_eq!(a["decisions"][0]["scope"], "Range");
    }
}
