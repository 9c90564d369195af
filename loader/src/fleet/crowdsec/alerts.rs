//! Detections: with machine credentials, each exportable ban this box
//! makes (the daemon filters: packet evidence only with `[flood] export`)
//! becomes an alert with an explicit decision named by [`super::mark`], so
//! other bouncers enforce it, and sipguard ones with its own scope. An
//! operator's `unban` here deletes this machine's decisions of that
//! network in the LAPI, so every bouncer lifts it too. Batched, retried
//! with backoff, never in a ban's way.
use super::{mark, Settings};
use crate::{
    bans::Scope,
    fleet::{no_redirect, Outbound},
};
use anyhow::{bail, Context as _, Result};
use ipnet::IpNet;
use serde::Deserialize;
use std::{
    collections::VecDeque,
    io::Read as _,
    sync::mpsc,
    time::{Duration, Instant},
};

/// Alerts sent per request, and how long a ban waits for company.
const ALERT_BATCH: usize = 100;
const ALERT_WAIT: Duration = Duration::from_secs(1);
/// Alerts (and deletions) kept while the LAPI is away; the oldest go first.
const ALERT_QUEUE: usize = 10_000;
const DELETION_QUEUE: usize = 1_000;
/// A local ban with no end is sent as a decision of this length.
const PERMANENT_AS: Duration = Duration::from_secs(365 * 86_400);
/// This machine's alerts of one network looked at, and their answer's size.
const ALERTS_LOOKED_AT: usize = 50;
const MAX_ALERTS_ANSWER: u64 = 1 << 20;

/// Starts the detections sender, supervised; it stops when the daemon
/// drops the outlet's sender.
pub fn start(s: Settings, rx: mpsc::Receiver<Outbound>) {
    // Never fired: the worker ends when `rx` is disconnected. Held by the
    // closure so that a restart's backoff is not cut short.
    let (keep, stop) = mpsc::channel::<()>();
    let mut sender = Sender::new(s);
    crate::fleet::supervise("crowdsec-alerts", stop, move |_| {
        let _ = &keep;
        sender.run(&rx)
    });
}

/// An alert not yet sent, with its network (an unban takes it back).
struct Pending {
    net: IpNet,
    alert: serde_json::Value,
}

struct Sender {
    s: Settings,
    agent: ureq::Agent,
    token: Option<String>,
    queue: VecDeque<Pending>,
    deletions: VecDeque<IpNet>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Sender {
    fn new(s: Settings) -> Self {
        Self {
            s,
            agent: crate::fleet::http_agent(),
            token: None,
            queue: VecDeque::new(),
            deletions: VecDeque::new(),
            backoff: Duration::from_secs(1),
            retry_at: None,
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<Outbound>) -> Result<()> {
        loop {
            let idle = self.queue.is_empty() && self.deletions.is_empty();
            let wait = if idle {
                Duration::from_secs(3600)
            } else {
                self.retry_at
                    .map_or(ALERT_WAIT, |t| t.saturating_duration_since(Instant::now()))
            };
            match rx.recv_timeout(wait) {
                Ok(o) => {
                    if !self.take(o) {
                        continue;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let idle = self.queue.is_empty() && self.deletions.is_empty();
            if idle || self.retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            match self.flush() {
                Ok(()) => {
                    self.backoff = Duration::from_secs(1);
                    self.retry_at = None;
                }
                Err(e) => {
                    tracing::warn!(
                        "CrowdSec: cannot send {} alert(s) and {} deletion(s): {}; again in {} s",
                        self.queue.len().min(ALERT_BATCH),
                        self.deletions.len(),
                        crate::text::redact_in(&format!("{e:#}"), &self.s.api_url),
                        self.backoff.as_secs()
                    );
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Queues what the daemon published; true when it is time to send.
    fn take(&mut self, o: Outbound) -> bool {
        match o {
            // Manual bans are the operator's business, not detections.
            Outbound::Ban { cause, .. } if cause == "manual" => false,
            Outbound::Ban {
                net,
                jail,
                left,
                reason,
                scope,
                ..
            } => {
                if self.queue.len() >= ALERT_QUEUE {
                    self.queue.pop_front();
                }
                let machine = self.s.machine_id.as_deref().unwrap_or("");
                let alert = alert(&net, &jail, machine, left, &reason, scope);
                self.queue.push_back(Pending { net, alert });
                self.queue.len() >= ALERT_BATCH || self.retry_at.is_some()
            }
            Outbound::Unban { net, .. } => {
                self.queue.retain(|p| p.net != net);
                if self.deletions.len() >= DELETION_QUEUE {
                    self.deletions.pop_front();
                }
                if !self.deletions.contains(&net) {
                    self.deletions.push_back(net);
                }
                true
            }
        }
    }

    /// Sends a batch of alerts, then the deletions.
    fn flush(&mut self) -> Result<()> {
        if !self.queue.is_empty() {
            let n = self.queue.len().min(ALERT_BATCH);
            let batch: Vec<serde_json::Value> =
                self.queue.iter().take(n).map(|p| p.alert.clone()).collect();
            let url = format!("{}/v1/alerts", self.base());
            self.authorized("POST", &url, Some(&serde_json::Value::Array(batch)))?;
            self.queue.drain(..n);
        }
        while let Some(&net) = self.deletions.front() {
            match self.delete_own(&net) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "CrowdSec: deleted this machine's {n} decision(s) of {} after the operator's unban",
                    crate::addr::display(&net)
                ),
                // Refused for good (not an outage): said once, not retried,
                // so it cannot hold up the alerts behind it.
                Err(e) if refused_for_good(&e) => tracing::warn!(
                    "CrowdSec: cannot delete this machine's decisions of {}: {}",
                    crate::addr::display(&net),
                    crate::text::redact_in(&format!("{e:#}"), &self.s.api_url)
                ),
                Err(e) => return Err(e),
            }
            self.deletions.pop_front();
        }
        Ok(())
    }

    fn base(&self) -> String {
        self.s.api_url.trim_end_matches('/').to_owned()
    }

    /// Deletes this machine's decisions of `net` (a watcher may delete
    /// decisions by id: `DELETE /v1/decisions/ID`, LAPI 1.0 and on);
    /// returns how many. Other machines' decisions are theirs.
    fn delete_own(&mut self, net: &IpNet) -> Result<usize> {
        let value = source_value(net);
        let url = format!(
            "{}/v1/alerts?value={}&has_active_decision=true&limit={ALERTS_LOOKED_AT}",
            self.base(),
            crate::fleet::query_value(&value)
        );
        let resp = self.authorized("GET", &url, None)?;
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_ALERTS_ANSWER + 1)
            .read_to_end(&mut body)?;
        if body.len() as u64 > MAX_ALERTS_ANSWER {
            bail!("the LAPI's alerts of {value} are over {MAX_ALERTS_ANSWER} bytes");
        }
        let ids = own_decisions(&body, self.s.machine_id.as_deref().unwrap_or(""))?;
        for id in &ids {
            let url = format!("{}/v1/decisions/{id}", self.base());
            self.authorized("DELETE", &url, None)?;
        }
        Ok(ids.len())
    }

    /// Sends a request with the machine's token, logging in first and once
    /// again when it expired.
    fn authorized(
        &mut self,
        method: &str,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<ureq::Response> {
        for attempt in 0..2 {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => {
                    let t = login(&self.agent, &self.s)?;
                    self.token = Some(t.clone());
                    t
                }
            };
            let req = self
                .agent
                .request(method, url)
                .set("Authorization", &format!("Bearer {token}"));
            let sent = match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            };
            match sent {
                Ok(r) => return no_redirect(r),
                Err(ureq::Error::Status(401, _)) if attempt == 0 => self.token = None,
                Err(e) => return Err(e.into()),
            }
        }
        bail!("the LAPI refused the machine's token")
    }
}

/// A 4xx other than an expired token: asking again would not help.
fn refused_for_good(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ureq::Error>(),
        Some(ureq::Error::Status(400..=499, _))
    )
}

/// The ids of `machine`'s decisions in an alerts answer.
fn own_decisions(body: &[u8], machine: &str) -> Result<Vec<i64>> {
    #[derive(Deserialize)]
    struct Alert {
        #[serde(default)]
        machine_id: Option<Box<str>>,
        #[serde(default)]
        decisions: Option<Vec<Decision>>,
    }
    #[derive(Deserialize)]
    struct Decision {
        #[serde(default)]
        id: i64,
    }
    let alerts: Option<Vec<Alert>> =
        serde_json::from_slice(body).context("unreadable alerts answer")?;
    Ok(alerts
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !machine.is_empty() && a.machine_id.as_deref() == Some(machine))
        .flat_map(|a| a.decisions.unwrap_or_default())
        .map(|d| d.id)
        .filter(|id| *id > 0)
        .collect())
}

fn source_value(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// An alert with an explicit decision, in the LAPI's model: the scenario
/// names the jail, this machine and, for packet evidence, `ports-only`;
/// the decision lasts what the local ban lasts.
pub fn alert(
    net: &IpNet,
    jail: &str,
    machine: &str,
    left: Option<Duration>,
    reason: &str,
    scope: Scope,
) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let single = net.prefix_len() == net.max_prefix_len();
    let ip_scope = if single { "Ip" } else { "Range" };
    let value = source_value(net);
    let scenario = mark::scenario(jail, machine, scope);
    let duration = format!("{}s", left.unwrap_or(PERMANENT_AS).as_secs().max(1));
    let mut source = serde_json::json!({ "scope": ip_scope, "value": value });
    source[if single { "ip" } else { "range" }] = value.clone().into();
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
            "scope": ip_scope,
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
    let resp = agent
        .post(&url)
        .send_json(serde_json::json!({ "machine_id": id, "password": password, "scenarios": [] }))
        // The error's text holds no password: ureq names the URL and status.
        .map_err(|e| anyhow::anyhow!("machine login refused: {e}"))?;
    let mut body = Vec::new();
    no_redirect(resp)?
        .into_reader()
        .take(64 << 10)
        .read_to_end(&mut body)?;
    let v: serde_json::Value = serde_json::from_slice(&body).context("unreadable login answer")?;
    v["token"]
        .as_str()
        .filter(|t| t.len() < 8192)
        .map(str::to_owned)
        .context("the LAPI's login answer has no token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_say_what_they_rest_on() {
        let a = alert(
            &"2001:db8::/64".parse().unwrap(),
            "freeswitch",
            "box-a",
            Some(Duration::from_secs(3600)),
            "3 failures",
            Scope::Ports,
        );
        assert_eq!(a["scenario"], "sipguard/freeswitch machine=box-a");
        assert_eq!(a["source"]["range"], "2001:db8::/64");
        assert_eq!(a["decisions"][0]["duration"], "3600s");
        assert_eq!(a["decisions"][0]["scope"], "Range");
        let f = alert(
            &"192.0.2.1/32".parse().unwrap(),
            "sip-flood",
            "box-a",
            Some(Duration::from_secs(600)),
            "flood",
            Scope::PortsOnly,
        );
        assert_eq!(
            f["decisions"][0]["scenario"],
            "sipguard/sip-flood machine=box-a ports-only"
        );
        assert_eq!(f["decisions"][0]["duration"], "600s");
        assert_eq!(f["source"]["ip"], "192.0.2.1");
    }

    #[test]
    fn only_this_machines_decisions_are_deleted() {
        let body = br#"[{"machine_id":"box-a","decisions":[{"id":4},{"id":5}]},
            {"machine_id":"other","decisions":[{"id":6}]},{},{"decisions":null}]"#;
        assert_eq!(own_decisions(body, "box-a").unwrap(), [4, 5]);
        assert!(own_decisions(body, "").unwrap().is_empty());
        assert!(own_decisions(b"null", "box-a").unwrap().is_empty());
        assert!(own_decisions(b"<html>", "box-a").is_err());
    }
}
