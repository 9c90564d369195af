//! CrowdSec, both ways.
//!
//! * **Bouncer**: the LAPI's decision stream (`GET /v1/decisions/stream`,
//!   `X-Api-Key`), pulled every `update_frequency`: `startup=true` first and
//!   after every failure (the full list; what is no longer in it is lifted),
//!   `startup=false` otherwise (what is new, what was deleted). IPv4, IPv6
//!   and ranges go into the XDP maps with the time they have left. When
//!   several decisions name one network, the longest wins and a deletion
//!   lifts only its own (as cs-firewall-bouncer does). The answer is read
//!   as it arrives into bounded records, at most `max_decisions` of them
//!   (`stream`). A sipguard export marked `ports-only` stays so; this
//!   machine's own exports are skipped (it holds its own ban). Usage
//!   metrics are pushed where the LAPI has `POST /v1/usage-metrics`.
//! * **Detections** (`alerts`): with machine credentials, each exportable
//!   ban becomes an alert with an explicit decision; an operator's unban
//!   deletes this machine's decisions of the network.
//!
//! The LAPI is shared: anyone who can write to it is an attacker. Nothing
//! it answers can widen this box's own bans, hold more than `max_decisions`
//! records, or draw the bouncer key across a redirect.
mod alerts;
mod book;
pub mod mark;
pub mod stream;

use super::{deliver, no_redirect, sleep_or_stop, Inbound, InboundTx, RemoteDecision};
use anyhow::Result;
use book::{Book, Pass};
use ipnet::IpNet;
use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

pub use alerts::start as start_alerts;

pub const ORIGIN: &str = "crowdsec";
/// Largest decision stream read (a million decisions is about 250 MB).
const MAX_STREAM: u64 = 512 << 20;
/// How often usage metrics are pushed.
const USAGE_EVERY: Duration = Duration::from_secs(30 * 60);
/// Decisions taken from one answer unless `[crowdsec] max_decisions` says.
pub const DEFAULT_MAX_DECISIONS: usize = 200_000;

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
    /// Decisions taken from one answer; the rest are skipped, counted.
    pub max_decisions: usize,
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

/// What one pull changed: the networks whose ban changed, with their new
/// state (`None`: no decision left).
struct Pulled {
    changes: Vec<(IpNet, Option<RemoteDecision>)>,
    pass: Pass,
    tally: stream::Tally,
}

/// Pulls the stream and applies it to `book` as it arrives.
fn pull(
    agent: &ureq::Agent,
    s: &Settings,
    key: &str,
    startup: bool,
    book: &mut Book,
) -> Result<Pulled> {
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
    let resp = no_redirect(resp)?;
    let now = Instant::now();
    if startup {
        book.clear();
    } else {
        book.prune(now);
    }
    let mut pass = Pass::default();
    let tally = stream::read(
        resp.into_reader(),
        s.max_decisions,
        MAX_STREAM,
        &mut |list, d| book.apply(s, list, &d, now, &mut pass),
    )
    .map_err(|e| anyhow::anyhow!("unreadable decision stream: {e:#}"))?;
    let changes = pass
        .touched
        .iter()
        .map(|net| (*net, book.effective(net, s.all_ports, now)))
        .collect();
    Ok(Pulled {
        changes,
        pass,
        tally,
    })
}

/// Starts the bouncer, supervised; it stops when `stop`'s sender is dropped.
pub fn start_bouncer(s: Settings, key: String, tx: InboundTx, stop: mpsc::Receiver<()>) {
    super::supervise("crowdsec", stop, move |stop| {
        bouncer(&s, &key, &tx, stop);
        Ok(())
    });
}

/// Logs what an answer held beyond what is enforced, once per kind while
/// it lasts (a LAPI over the cap says so at every pull otherwise).
#[derive(Default)]
struct Noted {
    over_cap: bool,
    malformed: bool,
}

impl Noted {
    fn note(&mut self, s: &Settings, p: &Pulled) {
        let t = p.tally;
        let over = t.over_cap + p.pass.over_book;
        if over > 0 && !self.over_cap {
            tracing::warn!(
                "CrowdSec: more than max_decisions = {} decisions in force: {} more skipped (raise [crowdsec] max_decisions if they are wanted)",
                s.max_decisions,
                over
            );
        }
        self.over_cap = over > 0;
        if t.malformed > 0 && !self.malformed {
            tracing::warn!(
                "CrowdSec: {} element(s) of the decision stream were no decision within bounds, skipped",
                t.malformed
            );
        }
        self.malformed = t.malformed > 0;
        for r in &p.pass.refused {
            tracing::warn!("CrowdSec: refused {r}");
        }
        if p.pass.refused_count > p.pass.refused.len() {
            tracing::warn!(
                "CrowdSec: {} more decision(s) refused",
                p.pass.refused_count - p.pass.refused.len()
            );
        }
    }
}

fn bouncer(s: &Settings, key: &str, tx: &InboundTx, stop: &mpsc::Receiver<()>) {
    let agent = super::http_agent();
    let mut book = Book::default();
    let mut startup = true;
    let mut failing = false;
    let mut noted = Noted::default();
    let mut last_usage: Option<Instant> = None;
    let mut usage_supported = true;
    let url = crate::text::redact_url(&s.api_url);
    loop {
        match pull(&agent, s, key, startup, &mut book) {
            Ok(pulled) => {
                if failing {
                    tracing::info!("CrowdSec: the LAPI at {url} answers again");
                    failing = false;
                }
                noted.note(s, &pulled);
                if !hand_over(tx, &book, pulled, startup, &url) {
                    return;
                }
                startup = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "CrowdSec: cannot pull decisions from {url}: {}; what is in force stays, and the full list is read again once it answers",
                        crate::text::redact_in(&format!("{e:#}"), &s.api_url)
                    );
                }
                failing = true;
                startup = true;
            }
        }
        if usage_supported && last_usage.is_none_or(|t| t.elapsed() >= USAGE_EVERY) {
            last_usage = Some(Instant::now());
            usage_supported = push_usage(&agent, s, key, book.networks());
        }
        if sleep_or_stop(stop, s.update_frequency) {
            return;
        }
    }
}

/// Hands a pull's changes to the daemon; false once it is gone.
fn hand_over(tx: &InboundTx, book: &Book, pulled: Pulled, startup: bool, url: &str) -> bool {
    let (bans, unbans): (Vec<_>, Vec<_>) =
        pulled.changes.into_iter().partition(|(_, d)| d.is_some());
    let bans: Vec<RemoteDecision> = bans.into_iter().filter_map(|(_, d)| d).collect();
    let unbans: Vec<IpNet> = unbans.into_iter().map(|(n, _)| n).collect();
    let n = bans.len();
    if !deliver(tx, ORIGIN, bans) {
        return false;
    }
    for chunk in unbans.chunks(super::BATCH) {
        let msg = Inbound::Unbans {
            origin: ORIGIN.into(),
            nets: chunk.to_vec(),
        };
        if tx.blocking_send(msg).is_err() {
            return false;
        }
    }
    if startup {
        tracing::info!(
            "CrowdSec: {n} decision(s) in force from {url} ({} of this machine's own skipped)",
            pulled.pass.own
        );
        let msg = Inbound::Complete {
            origin: ORIGIN.into(),
            nets: book.nets(),
        };
        if tx.blocking_send(msg).is_err() {
            return false;
        }
    }
    true
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn settings() -> Settings {
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
            max_decisions: DEFAULT_MAX_DECISIONS,
        }
    }

    #[test]
    fn urls() {
        let url = stream_url(&settings(), true);
        assert_eq!(
            url,
            "http://127.0.0.1:8080/v1/decisions/stream?startup=true&scopes=ip%2Crange&scenarios_containing=ssh%2Csip"
        );
    }
}
