//! Bans shared across a fleet of boxes through engines operators already
//! run: CrowdSec (sipguard as its XDP bouncer, and as a source of alerts),
//! Redis (a channel between sipguard daemons), APIBAN (a SIP blocklist).
//!
//! Each engine runs on its own threads with blocking I/O and talks to the
//! daemon's event loop through channels only: what it learns arrives as
//! `Inbound` messages, in batches small enough that log bans are never held
//! up behind a large list; what the box bans itself leaves as `Outbound`.
//! An engine that goes away costs nothing but its updates: what it asked for
//! stays in force (with its own end), and it is resynchronised on return.
pub mod apiban;
pub mod crowdsec;
pub mod redis;

use crate::bans::Scope;
use ipnet::IpNet;
use std::{
    sync::mpsc::{self, SyncSender, TrySendError},
    time::Duration,
};

/// Remote bans handed to the event loop at once: a 100 000-decision list
/// arrives as 100 of these, and log lines are read between them.
pub const BATCH: usize = 1000;

/// One origin's ban, as an engine gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteDecision {
    pub net: IpNet,
    /// Time left; `None`: permanent.
    pub left: Option<Duration>,
    pub reason: String,
    /// What the origin asked to drop: `PortsOnly` for bans that rest on
    /// packets alone (never widened, whatever this box's settings).
    pub scope: Scope,
}

/// What an engine tells the daemon.
#[derive(Debug)]
pub enum Inbound {
    /// `origin`'s bans (each replaces its earlier ban of the network).
    Bans {
        origin: String,
        bans: Vec<RemoteDecision>,
    },
    /// `origin` no longer bans these.
    Unbans { origin: String, nets: Vec<IpNet> },
    /// `origin`'s complete list was just sent: its other bans are lifted.
    Complete {
        origin: String,
        nets: std::collections::HashSet<IpNet>,
    },
    /// Of the origins starting with `prefix`, only `keep` have bans now.
    OnlyOrigins {
        prefix: String,
        keep: std::collections::HashSet<String>,
    },
    /// Another node's operator unbanned this network everywhere.
    FleetUnban { net: IpNet, node: String },
    /// Where a feed has read up to, kept in the state file.
    Cursor { feed: String, value: String },
}

/// What this box bans itself, for the engines that publish it.
#[derive(Clone, Debug)]
pub enum Outbound {
    Ban {
        net: IpNet,
        /// The offender's address (an IPv6 ban is of its /64).
        jail: String,
        /// log, manual, flood, scanner.
        cause: String,
        left: Option<Duration>,
        reason: String,
        /// The ban's own scope: a packet-evidence ban leaves as
        /// `PortsOnly` and stays so on every box.
        scope: Scope,
    },
    Unban {
        net: IpNet,
        /// The operator asked for every box (`unban --fleet`).
        fleet: bool,
    },
}

/// The inbound channel's sender side, for engine threads.
pub type InboundTx = tokio::sync::mpsc::Sender<Inbound>;

/// A worker's outbound queue; `send` never blocks the daemon.
pub struct Outlet {
    name: &'static str,
    tx: SyncSender<Outbound>,
    dropped: u64,
}

impl Outlet {
    pub fn new(name: &'static str, capacity: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        (
            Self {
                name,
                tx,
                dropped: 0,
            },
            rx,
        )
    }

    pub fn send(&mut self, o: Outbound) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(o) {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    "{}: {} ban event(s) not published, its queue is full",
                    self.name,
                    self.dropped
                );
            }
        }
    }
}

/// Sleeps `d` unless `stop` is closed first (the worker is being replaced);
/// true when it should stop.
pub fn sleep_or_stop(stop: &mpsc::Receiver<()>, d: Duration) -> bool {
    !matches!(stop.recv_timeout(d), Err(mpsc::RecvTimeoutError::Timeout))
}

/// How often each worker was restarted: (name, after an error, after a panic).
static RESTARTS: std::sync::Mutex<Vec<(&'static str, u64, u64)>> =
    std::sync::Mutex::new(Vec::new());

/// The restarts so far, for `status` and the metrics.
pub fn restarts() -> Vec<(&'static str, u64, u64)> {
    RESTARTS.lock().map(|r| r.clone()).unwrap_or_default()
}

/// `status`'s `fleet.workers`: each restarted worker's restarts, by cause.
pub fn workers_report() -> serde_json::Value {
    restarts()
        .into_iter()
        .map(|(n, errors, panics)| {
            (
                n.to_owned(),
                serde_json::json!({ "errors": errors, "panics": panics }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn count_restart(name: &'static str, panicked: bool) {
    if let Ok(mut r) = RESTARTS.lock() {
        let i = match r.iter().position(|(n, ..)| *n == name) {
            Some(i) => i,
            None => {
                r.push((name, 0, 0));
                r.len() - 1
            }
        };
        if panicked {
            r[i].2 += 1;
        } else {
            r[i].1 += 1;
        }
    }
}

/// Backoff between restarts: doubling from the first to the last, back to
/// the first after a run that lasted `HEALTHY`.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_LAST: Duration = Duration::from_secs(60);
const HEALTHY: Duration = Duration::from_secs(60);

/// Runs `work` on a thread of its own (`sipguard-NAME`) until it returns
/// `Ok(())` or `stop`'s sender is dropped; after an error or a panic it is
/// run again, with backoff. An engine's hostile answer can crash a parser:
/// that must cost one restart, logged and counted, never the feed for good.
pub fn supervise<F>(name: &'static str, stop: mpsc::Receiver<()>, mut work: F)
where
    F: FnMut(&mpsc::Receiver<()>) -> anyhow::Result<()> + Send + 'static,
{
    let spawned = std::thread::Builder::new()
        .name(format!("sipguard-{name}"))
        .spawn(move || {
            let mut backoff = BACKOFF_FIRST;
            let mut last_error = String::new();
            loop {
                let started = std::time::Instant::now();
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&stop)));
                if started.elapsed() >= HEALTHY {
                    backoff = BACKOFF_FIRST;
                }
                match run {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        count_restart(name, false);
                        let text = crate::text::escape(&format!("{e:#}")).into_owned();
                        if text != last_error {
                            tracing::warn!("{name}: {text}; again in {} s", backoff.as_secs());
                        } else {
                            tracing::debug!("{name}: {text}; again in {} s", backoff.as_secs());
                        }
                        last_error = text;
                    }
                    Err(panic) => {
                        count_restart(name, true);
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(
                            "{name} panicked ({}); restarted in {} s",
                            crate::text::escape(&what),
                            backoff.as_secs()
                        );
                        last_error.clear();
                    }
                }
                if sleep_or_stop(&stop, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_LAST);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("{name}: cannot start its thread: {e}");
    }
}

/// Hands batches to the daemon; false once the daemon is gone.
pub fn deliver(tx: &InboundTx, origin: &str, bans: Vec<RemoteDecision>) -> bool {
    for chunk in bans.chunks(BATCH) {
        let msg = Inbound::Bans {
            origin: origin.to_owned(),
            bans: chunk.to_vec(),
        };
        if tx.blocking_send(msg).is_err() {
            return false;
        }
    }
    true
}

/// An HTTP agent with bounded waits (an engine that hangs is an outage)
/// that follows no redirect: its requests carry credentials (`X-Api-Key`,
/// a Bearer token) that must never reach another host. A 3xx comes back
/// as an answer; [`no_redirect`] makes it an error.
pub fn http_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .redirects(0)
        .user_agent(concat!("sipguard/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `resp`, unless it is a redirect: then a clear error naming where it
/// pointed (without its secrets), and nothing was sent there.
pub fn no_redirect(resp: ureq::Response) -> anyhow::Result<ureq::Response> {
    if !(300..400).contains(&resp.status()) {
        return Ok(resp);
    }
    let to = resp
        .header("location")
        .map_or_else(|| "nowhere".to_owned(), crate::text::redact_url);
    anyhow::bail!(
        "the server answered {} (a redirect to {to}); redirects are not followed with credentials: configure the final URL",
        resp.status()
    )
}

/// Percent-encodes a query parameter value.
pub fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Go duration (`3h59m57s`, `59m58.9807811s`, `-1h2m`, `300ms`), as
/// CrowdSec writes them. Negative ones (already over) are `None`.
pub fn go_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (negative, mut rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut any = false;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
        any = true;
    }
    if !any || negative || !total.is_finite() {
        return None;
    }
    Some(Duration::from_secs_f64(total.min(100.0 * 365.0 * 86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_panics_or_fails_is_restarted_and_counted() {
        let (stop_tx, stop) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel::<u32>();
        let mut runs = 0u32;
        supervise("test-worker", stop, move |_| {
            runs += 1;
            match runs {
                1 => panic!("hostile answer"),
                2 => anyhow::bail!("engine away"),
                _ => {
                    done_tx.send(runs).unwrap();
                    Ok(())
                }
            }
        });
        // 1 s, then 2 s of backoff.
        assert_eq!(done.recv_timeout(Duration::from_secs(10)), Ok(3));
        let r = restarts();
        let (_, errors, panics) = r.iter().find(|(n, ..)| *n == "test-worker").unwrap();
        assert_eq!((*errors, *panics), (1, 1));
        assert_eq!(
            workers_report()["test-worker"],
            serde_json::json!({ "errors": 1, "panics": 1 })
        );
        drop(stop_tx);
    }

    #[test]
    fn go_durations() {
        for (text, secs) in [
            ("3h59m57s", 14_397.0),
            ("59m58.9807811s", 3_598.980_781_1),
            ("1.5h", 5_400.0),
            ("300ms", 0.3),
            ("2h0m0s", 7_200.0),
            ("0", 0.0),
        ] {
            let d = go_duration(text).unwrap_or_else(|| panic!("{text}"));
            assert!((d.as_secs_f64() - secs).abs() < 1e-6, "{text}: {d:?}");
        }
        for bad in ["-1h2m3s", "-5m", "", "h", "12", "1x", "1h-2m", "9e999h"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
        assert_eq!(
            query_value("sipguard/freeswitch x"),
            "sipguard%2Ffreeswitch%20x"
        );
    }
}

impl Plan {
    /// The addresses of the engines this box talks to (host names resolved,
    /// all at once, within 3 s): they join the never-ban set, so that no
    /// entry from anywhere can cut the box off its fleet.
    pub fn endpoints(&self) -> Vec<std::net::IpAddr> {
        let mut hosts: Vec<String> = Vec::new();
        if let Some(c) = &self.crowdsec {
            hosts.extend(url_host(&c.api_url));
        }
        if let Some(r) = &self.redis {
            hosts.extend(redis::host_of(&r.url));
        }
        if let Some(a) = &self.apiban {
            hosts.extend(url_host(&a.url));
        }
        let mut out: Vec<std::net::IpAddr> =
            crate::addr::resolve_within(&hosts, Duration::from_secs(3))
                .into_iter()
                .flatten()
                .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The host of an `http(s)://[user@]host[:port]/...` URL.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The engines' threads for one configuration; dropping it stops them.
#[derive(Default)]
pub struct Workers {
    /// Dropped to stop the threads (their receivers see the disconnect).
    _stops: Vec<mpsc::Sender<()>>,
    outlets: Vec<Outlet>,
}

/// What to start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub crowdsec: Option<crowdsec::Settings>,
    pub redis: Option<redis::Settings>,
    pub apiban: Option<apiban::Settings>,
}

impl Workers {
    /// Starts what `plan` asks for; an engine that cannot start is logged
    /// and left out (protection goes on without it).
    pub fn start(plan: &Plan, tx: &InboundTx, apiban_cursor: Option<String>) -> Self {
        let mut stops = Vec::new();
        let mut stop = || {
            let (s, r) = mpsc::channel::<()>();
            stops.push(s);
            r
        };
        let mut outlets = Vec::new();
        if let Some(s) = &plan.crowdsec {
            if let Some(key) = &s.api_key {
                crowdsec::start_bouncer(s.clone(), key.clone(), tx.clone(), stop());
                tracing::info!(
                    "CrowdSec: enforcing the decisions of {}",
                    crate::text::redact_url(&s.api_url)
                );
            }
            if s.machine_id.is_some() {
                let (outlet, rx) = Outlet::new("CrowdSec alerts", 10_000);
                crowdsec::start_alerts(s.clone(), rx);
                outlets.push(outlet);
                tracing::info!(
                    "CrowdSec: sending this box's bans to {} as alerts",
                    crate::text::redact_url(&s.api_url)
                );
            }
        }
        if let Some(s) = &plan.redis {
            let (outlet, rx) = Outlet::new("Redis fleet", 100_000);
            match redis::start(s.clone(), tx.clone(), rx, stop()) {
                Ok(()) => outlets.push(outlet),
                Err(e) => tracing::error!("Redis fleet: {e:#}"),
            }
        }
        if let Some(s) = &plan.apiban {
            let cursor = apiban_cursor.unwrap_or_else(|| apiban::FIRST_ID.to_owned());
            apiban::start(s.clone(), cursor, tx.clone(), stop());
        }
        Self {
            _stops: stops,
            outlets,
        }
    }

    /// Hands one of this box's own ban changes to every engine that
    /// publishes them; without any it is not even made (a burst of a
    /// million bans copies no names for nobody).
    pub fn publish(&mut self, o: impl FnOnce() -> Outbound) {
        if self.outlets.is_empty() {
            return;
        }
        let o = o();
        for outlet in &mut self.outlets {
            outlet.send(o.clone());
        }
    }

    /// Whether any engine publishes (`unban --fleet` needs one).
    pub fn publishes(&self) -> bool {
        self.outlets.iter().any(|o| o.name == "Redis fleet")
    }
}
