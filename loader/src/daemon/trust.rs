//! Trusted sources in the daemon: the registry FreeSWITCH's event socket
//! fills (see `trust`), the operator's entries, and the kernel's trusted
//! map made of them, key by key as they change.
use super::Daemon;
use crate::{
    freeswitch::EventSocket,
    kernel::{clock, trust::TrustMaps},
    trust::{
        client::{self, EslMsg, Settings},
        operator,
        registrations::{RegEvent, Registry},
    },
};
use anyhow::Result;
use common::{RateKey, TrustEntry, TRUST_OPERATOR, TRUST_REGISTERED};
use std::{collections::BTreeMap, time::Duration};

mod operator_entries;

/// The event socket as `status` shows it (never the password).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(super) struct EslView {
    /// `off`, `connecting`, `connected`, `down`.
    pub state: &'static str,
    pub address: Option<String>,
    pub from: Option<String>,
    pub last_error: Option<String>,
    pub connects: u64,
    pub events: u64,
    pub bad_events: u64,
    /// Connections dropped before the password: the local socket there
    /// was not root's nor FreeSWITCH's user's.
    pub refused_peers: u64,
}

/// One of the operator's trusted sources.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operator {
    addr: std::net::IpAddr,
    /// Unix seconds (what the file keeps); `None`: no end.
    until_unix: Option<i64>,
    /// The same as the kernel's clock has it (0: no end).
    until_ns: u64,
}

impl Operator {
    fn new(addr: std::net::IpAddr, until_unix: Option<i64>) -> Self {
        let until_ns = match until_unix {
            None => 0,
            Some(u) => {
                let left = u64::try_from(u.saturating_sub(operator::unix_now())).unwrap_or(0);
                clock::mono_now_ns()
                    .saturating_add(left.saturating_mul(1_000_000_000))
                    .max(1)
            }
        };
        Self {
            addr,
            until_unix,
            until_ns,
        }
    }
}

pub(super) struct TrustState {
    maps: Option<TrustMaps>,
    pub(super) registry: Registry,
    /// The operator's entries (`sipguard trust`), kept in a file.
    pub(super) operator: BTreeMap<RateKey, Operator>,
    /// That file.
    operator_file: std::path::PathBuf,
    settings: Option<Settings>,
    /// Dropped to stop the worker.
    stop: Option<std::sync::mpsc::Sender<()>>,
    tx: client::EslTx,
    pub(super) rx: Option<tokio::sync::mpsc::Receiver<EslMsg>>,
    pub(super) view: EslView,
    grace: Duration,
    /// The connection whose listing was last applied.
    generation: u64,
    /// Writes to the kernel's trusted map that failed.
    pub(super) write_failures: u64,
    /// Why the operator's file could not be read at start: it is then
    /// never overwritten, and `sipguard trust`/`untrust` are refused.
    operator_file_error: Option<String>,
    pub(super) overload: crate::trust::overload::Overload,
}

impl TrustState {
    pub(super) fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        Self {
            maps: None,
            registry: Registry::new(crate::config::trust::TrustConfig::default().max_entries),
            operator: BTreeMap::new(),
            operator_file: std::path::PathBuf::new(),
            settings: None,
            stop: None,
            tx,
            rx: Some(rx),
            view: EslView {
                state: "off",
                ..EslView::default()
            },
            grace: Duration::from_secs(600),
            generation: 0,
            write_failures: 0,
            operator_file_error: None,
            overload: Default::default(),
        }
    }

    /// Writes (or removes) the kernel's entry of `key` from what the
    /// registry and the operator say now; a failure is logged (at powers
    /// of two: a full map fails for every key) and counted.
    pub(super) fn write(&mut self, key: RateKey) {
        if let Err(e) = self.try_write(key) {
            self.write_failures += 1;
            if self.write_failures.is_power_of_two() {
                tracing::warn!(
                    "trusted map: {e:#} ({} write(s) failed so far)",
                    self.write_failures
                );
            }
        }
    }

    /// `write`, its error returned (to an operator's request).
    fn try_write(&mut self, key: RateKey) -> Result<()> {
        let Some(maps) = self.maps.as_mut() else {
            return Ok(());
        };
        let reg = self.registry.key(&key).map(|k| k.until_ns);
        let op = self.operator.get(&key).map(|o| o.until_ns);
        let entry = match (reg, op) {
            (_, Some(until)) => Some((
                if until == 0 {
                    0
                } else {
                    until.max(reg.unwrap_or(0))
                },
                TRUST_OPERATOR,
            )),
            (Some(until), None) => Some((until, TRUST_REGISTERED)),
            (None, None) => None,
        };
        match entry {
            Some((expires_at_ns, origin)) => maps
                .trust(
                    key,
                    TrustEntry {
                        expires_at_ns,
                        trusted_at_ns: clock::mono_now_ns(),
                        origin,
                        _pad: 0,
                    },
                )
                .map(|_| ()),
            None => maps.untrust(&key).map(|_| ()),
        }
    }
}

/// Where the event socket is: `[trust] esl` (`""`: off), else as
/// discovered; the password from `[trust]`, else as discovered.
pub(super) fn esl_settings(
    c: &crate::config::trust::TrustConfig,
    discovered: Option<&crate::freeswitch::Found<EventSocket>>,
) -> Result<Option<Settings>> {
    let password = c.password()?;
    let (addr, from, found_password, owner) = match (&c.esl, discovered) {
        (Some(e), _) if e.is_empty() => return Ok(None),
        (Some(e), _) => (
            crate::config::trust::parse_esl(e)?,
            "[trust] esl".to_owned(),
            None,
            None,
        ),
        (None, Some(d)) => (
            d.value.addr(),
            d.from.clone(),
            Some(d.value.password.clone()),
            d.value.owner_uid,
        ),
        (None, None) => return Ok(None),
    };
    let Some(password) = password.or(found_password) else {
        anyhow::bail!("[trust] esl is set without `esl_password` or `esl_password_file`");
    };
    Ok(Some(Settings {
        addr,
        password,
        from,
        max_rows: c.max_entries,
        uid: c.esl_uid.or(owner),
        relist: c.relist,
    }))
}

impl Daemon {
    /// `[trust]` applied: the kernel's budgets, the registry's bound, and
    /// the event-socket worker (restarted only when its settings change).
    pub(super) fn apply_trust_config(&mut self) -> Result<()> {
        if self.trust.maps.is_none() {
            self.trust.maps = Some(TrustMaps::open(&self.config.pin_dir)?);
            self.trust.operator_file = operator::path(&self.config.state_file);
            self.take_in_trust()?;
        }
        let t = &mut self.trust;
        let c = &self.config.trust;
        t.overload.threshold = c.overload_pps;
        if let Some(maps) = t.maps.as_mut() {
            maps.set_config(c.kernel())?;
            // The program's settings were just written anew: the overload
            // flag goes back as it is.
            maps.set_overloaded(t.overload.on)?;
        }
        t.registry.set_max(c.max_entries);
        t.grace = c.grace;
        let discovered = self
            .config
            .discovered
            .as_ref()
            .and_then(|d| d.event_socket.as_ref());
        let settings = match esl_settings(c, discovered) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("trusted registrations off: {e:#}");
                None
            }
        };
        if settings == t.settings && (t.stop.is_some() || settings.is_none()) {
            return Ok(());
        }
        t.stop = None;
        t.settings = settings.clone();
        match settings {
            Some(s) => {
                t.view = EslView {
                    state: "connecting",
                    address: Some(s.addr.to_string()),
                    from: Some(s.from.clone()),
                    ..EslView::default()
                };
                let (stop_tx, stop) = std::sync::mpsc::channel();
                client::start(s, t.tx.clone(), stop);
                t.stop = Some(stop_tx);
            }
            None => {
                tracing::info!(
                    "no FreeSWITCH event socket configured or found: trust comes only from `sipguard trust`"
                );
                t.view = EslView {
                    state: "off",
                    ..EslView::default()
                };
            }
        }
        Ok(())
    }

    /// What the event-socket worker says.
    pub(super) fn on_esl(&mut self, msg: EslMsg) {
        let now = clock::mono_now_ns();
        let grace = self.trust.grace;
        let t = &mut self.trust;
        match msg {
            EslMsg::Connected { generation } => {
                t.view.state = "connected";
                t.view.connects += 1;
                t.view.last_error = None;
                t.generation = t.generation.max(generation);
            }
            EslMsg::PeerRefused { error } => {
                t.view.refused_peers += 1;
                if t.view.refused_peers.is_power_of_two() {
                    tracing::error!(
                        "event socket: password withheld ({} time(s) so far): {error}",
                        t.view.refused_peers
                    );
                }
            }
            EslMsg::Down { error } => {
                t.view.state = "down";
                t.view.last_error = Some(error);
            }
            EslMsg::BadEvent { error } => {
                t.view.bad_events += 1;
                if t.view.bad_events.is_power_of_two() {
                    tracing::warn!(
                        "event socket: an event or listing skipped ({} so far): {error}",
                        t.view.bad_events
                    );
                }
            }
            EslMsg::Listing {
                generation,
                listing,
            } => {
                let (rows, unreadable, complete) =
                    (listing.rows, listing.unreadable, listing.complete);
                let unix_now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let n = rows.len();
                let current = rows
                    .into_iter()
                    .map(|r| {
                        let left = u64::try_from(r.expires_at - unix_now).unwrap_or(0);
                        (r.id, r.addr, until(now, left, grace))
                    })
                    .collect();
                let changed = t.registry.replace_older(current, generation, complete);
                let line = format!(
                    "FreeSWITCH lists {n} registration(s){}{}: {} address(es) trusted",
                    if unreadable > 0 {
                        format!(" ({unreadable} unreadable, skipped)")
                    } else {
                        String::new()
                    },
                    if complete {
                        ""
                    } else {
                        " (not the whole table: nothing forgotten)"
                    },
                    t.registry.keys().count()
                );
                // Every `relist`: said when it changed something or was
                // not whole, else only at debug level.
                if !changed.is_empty() || !complete {
                    tracing::info!("{line}");
                } else {
                    tracing::debug!("{line}");
                }
                for key in changed {
                    t.write(key);
                }
            }
            EslMsg::Event { event, generation } => {
                t.view.events += 1;
                match event {
                    RegEvent::Register { id, addr, expires } => {
                        let refused = t.registry.refused;
                        let changed =
                            t.registry
                                .register(id, addr, until(now, expires, grace), generation);
                        if t.registry.refused > refused && t.registry.refused.is_power_of_two() {
                            tracing::warn!(
                                "trust: {} registration(s) not kept, [trust] max_entries reached",
                                t.registry.refused
                            );
                        }
                        for key in changed {
                            t.write(key);
                        }
                    }
                    RegEvent::Gone { id, why } => {
                        if let Some(key) = t.registry.remove(&id) {
                            tracing::debug!("registration {why}");
                            t.write(key);
                        }
                    }
                }
            }
        }
    }

    /// Every `overload::SAMPLE`: the box's SIP packets per second, and
    /// the overload state it makes (the kernel flag, log, notification).
    pub(super) fn sample_overload(&mut self) {
        use crate::trust::overload::Change;
        let t = &mut self.trust;
        if t.overload.threshold == 0 && !t.overload.on {
            return;
        }
        let Some(maps) = t.maps.as_mut() else {
            return;
        };
        let total = match maps.sip_packets() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot read the SIP packet counters: {e:#}");
                return;
            }
        };
        let change = t.overload.sample(total, std::time::Instant::now());
        if change.is_none() && t.overload.on {
            // Still overloaded: the program's hold on the flag renewed.
            if let Err(e) = maps.renew_overload(true) {
                tracing::error!("cannot renew the overload flag: {e:#}");
            }
        }
        let Some(change) = change else {
            return;
        };
        let on = matches!(change, Change::Entered { .. });
        if let Err(e) = maps.set_overloaded(on) {
            tracing::error!("cannot set the overload flag: {e:#}");
        }
        let c = &self.config.trust;
        let (kind, reason) = match change {
            Change::Entered { pps } => {
                let r = format!(
                    "{pps} SIP packets/s over overload_pps {}: untrusted sources held to {} /s, trusted keep {} /s",
                    c.overload_pps, c.untrusted_rate, c.trusted_rate
                );
                tracing::warn!("overloaded: {r}");
                ("overload", r)
            }
            Change::Left { pps } => {
                let r = format!(
                    "{pps} SIP packets/s, below {} % of overload_pps {}: normal budgets back",
                    (crate::trust::overload::LEAVE_RATIO * 100.0) as u32,
                    c.overload_pps
                );
                tracing::warn!("overload over: {r}");
                ("overload_end", r)
            }
        };
        self.announce
            .notifier
            .send(|| crate::ops::notify::Event::state(kind, &reason));
    }

    /// Clears the overload flag (at stop).
    pub(super) fn end_overload(&mut self) {
        if let Some(maps) = self.trust.maps.as_mut() {
            if self.trust.overload.on {
                if let Err(e) = maps.set_overloaded(false) {
                    tracing::warn!("cannot clear the overload flag: {e:#}");
                }
            }
        }
    }

    /// Trusted sources in force (registered addresses and the operator's).
    pub(super) fn trusted_count(&self) -> u64 {
        let t = &self.trust;
        let registered = t
            .registry
            .keys()
            .filter(|(k, _)| !t.operator.contains_key(*k))
            .count();
        (registered + t.operator.len()) as u64
    }

    /// `status`'s `trust`: the event socket (never its password), what is
    /// trusted, and the overload (with the packets it shed, from the
    /// kernel's `counters`: null when they cannot be read).
    pub(super) fn trust_report(&self, counters: Option<&[common::Counter]>) -> serde_json::Value {
        let t = &self.trust;
        let shed = counters.map(|c| c[common::counter::DROP_SHED as usize].packets);
        serde_json::json!({
            "esl": t.view,
            "registrations": t.registry.len(),
            "registered_addresses": t.registry.keys().count(),
            "registrations_refused": t.registry.refused,
            "operator": t.operator.len(),
            "map_write_failures": t.write_failures,
            "trusted": self.trusted_count(),
            "overload": {
                "overloaded": t.overload.on,
                "entered": t.overload.entered,
                "sip_packets_per_second": t.overload.pps,
                "overload_pps": t.overload.threshold,
                "shed": shed,
            },
        })
    }

    /// Once a second: registrations past their time, operator entries
    /// ended.
    pub(super) fn trust_tick(&mut self) {
        let now = clock::mono_now_ns();
        let t = &mut self.trust;
        let mut keys = t.registry.sweep(now);
        let ended: Vec<RateKey> = t
            .operator
            .iter()
            .filter(|(_, o)| o.until_ns != 0 && o.until_ns <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &ended {
            t.operator.remove(k);
        }
        if !ended.is_empty() {
            self.save_operator_trust();
        }
        let t = &mut self.trust;
        keys.extend(ended);
        for key in keys {
            t.write(key);
        }
    }
}

/// Longest a registration is believed (FreeSWITCH's own registrations
/// last minutes to hours; a broken or hostile peer's `expires` is cut).
const MAX_EXPIRES_SECS: u64 = 7 * 86_400;

/// `CLOCK_MONOTONIC` ns `secs` (at most `MAX_EXPIRES_SECS`) + `grace` from `now`.
fn until(now: u64, secs: u64, grace: Duration) -> u64 {
    let secs = secs.min(MAX_EXPIRES_SECS);
    now.saturating_add(
        secs.saturating_add(grace.as_secs())
            .saturating_mul(1_000_000_000),
    )
}
