//! One announcer, told once of every ban and unban, whatever made it: the
//! metrics, the notifications, the fleet and the daemon's log. It takes
//! what it tells from the request (scope, duration, reason), never from the
//! ban read back, so what leaves this box is what was asked for here.
use crate::{
    addr,
    config::Config,
    fleet::{Outbound, Workers},
    kernel::clock,
    logs::jail::BanRequest,
    ops::metrics::Metrics,
    ops::notify::{Event, Notifier},
    text::escape,
};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};

/// Which bans leave this box for the fleet (see `Announcer::exported`).
#[derive(Default)]
pub(super) struct ExportPolicy {
    flood: bool,
    scanner: bool,
    /// Log jails with `export = false`.
    kept_home: BTreeSet<String>,
}

impl ExportPolicy {
    pub(super) fn of(config: &Config) -> Self {
        Self {
            flood: config.flood.export,
            scanner: config.flood.scanner_export,
            kept_home: config
                .jails
                .iter()
                .filter(|(_, j)| !j.export)
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }
}

pub(super) struct Announcer {
    /// What the daemon counts for Prometheus as it happens.
    pub(super) metrics: Metrics,
    /// Exec hooks and webhooks, told of bans and unbans off the loop.
    pub(super) notifier: Notifier,
    /// CrowdSec, Redis, APIBAN: this box's own bans go out through them.
    pub(super) workers: Workers,
    pub(super) export: ExportPolicy,
    ban_log: BanLog,
}

impl Announcer {
    pub(super) fn new(notifier: Notifier) -> Self {
        Self {
            metrics: Metrics::default(),
            notifier,
            workers: Workers::default(),
            export: ExportPolicy::default(),
            ban_log: BanLog::default(),
        }
    }

    /// A ban this box made (`cause`: log, flood, scanner, manual): counted,
    /// notified, and sent to the fleet when its policy lets it leave.
    pub(super) fn ban(&mut self, r: &BanRequest, cause: &str) {
        self.metrics.banned(&r.jail, cause);
        self.notifier.send(|| {
            Event::new(
                "ban",
                r.net,
                &r.jail,
                cause,
                &r.reason,
                Some(r.duration),
                &r.line,
            )
        });
        if !self.exported(&r.jail, cause) {
            return;
        }
        self.workers.publish(|| Outbound::Ban {
            net: r.net,
            jail: r.jail.clone(),
            cause: cause.to_owned(),
            left: r.duration,
            reason: r.reason.clone(),
            scope: r.scope,
        });
    }

    /// The daemon's line for an automatic ban (within `LOGGED_BANS_PER_SECOND`).
    pub(super) fn log_ban(&mut self, r: &BanRequest) {
        if !self.ban_log.one_more(&r.jail) {
            return;
        }
        let how = r.duration.map_or("permanently".to_owned(), |d| {
            format!("for {}", clock::human(d))
        });
        // Jail (a feed's origin) and reason may come from outside.
        tracing::info!(
            "[{}] banned {} {how}: {}",
            escape(&r.jail),
            addr::display(&r.net),
            escape(&r.reason)
        );
    }

    /// Whether a ban leaves this box for the fleet. A ban on packet
    /// evidence (a flood, a scanner's packet: a source address anyone can
    /// forge) stays here unless its jail says `export = true`, and then it
    /// leaves as what it is (`PortsOnly`, its own short duration). Log jails
    /// export unless `export = false`; manual bans go as the operator made
    /// them (the feeds decide whether they take manual bans).
    fn exported(&self, jail: &str, cause: &str) -> bool {
        match cause {
            "flood" => self.export.flood,
            "scanner" => self.export.scanner,
            // A forger's to choose, and never worth a fleet's ban.
            "invalid" => false,
            "log" => !self.export.kept_home.contains(jail),
            // A prefix this box aggregated from its own members' bans: the
            // members travel, each box aggregates from its own evidence.
            super::aggregate::CAUSE => false,
            _ => true,
        }
    }

    /// A ban of this box lifted: expired, by the operator, evicted to make room.
    pub(super) fn unban(&mut self, net: IpNet, jail: &str, cause: &str) {
        self.metrics.unbanned(jail, cause);
        self.notifier
            .send(|| Event::new("unban", net, jail, cause, "", None, ""));
    }

    /// The operator's unban (or a fleet member's) leaves the fleet's list
    /// too; `fleet`: every member is asked to lift it.
    pub(super) fn unban_everywhere(&mut self, net: IpNet, fleet: bool) {
        self.workers.publish(|| Outbound::Unban { net, fleet });
    }

    /// A feed's ban taken, counted under its bounded label.
    pub(super) fn remote_ban(&mut self, label: &str, kind: &str) {
        self.metrics.banned(label, kind);
    }

    /// A feed's ban lifted, counted under its bounded label (a shared Redis
    /// can name thousands of nodes).
    pub(super) fn remote_unban(&mut self, label: &str, cause: &str) {
        self.metrics.unbanned(label, cause);
    }

    /// Once a second: the bans not logged one by one, per jail.
    pub(super) fn second_over(&mut self) {
        self.ban_log.second_over();
    }
}

/// The daemon's log line per ban, up to `LOGGED_BANS_PER_SECOND`; past
/// that (a burst of thousands), the rest of the second's bans are counted
/// per jail and told in one line a jail when the second is over. Formatting
/// and writing a line took a third of the loop's time in a burst, and
/// journald drops most of them anyway (10 000 messages in 30 s by default);
/// every ban stays in `sipguard list`, `status`, the state and the metrics.
#[derive(Default)]
pub(super) struct BanLog {
    this_second: u32,
    unlogged: BTreeMap<String, u64>,
}

const LOGGED_BANS_PER_SECOND: u32 = 100;

impl BanLog {
    /// Whether a ban of `jail` gets a line of its own.
    fn one_more(&mut self, jail: &str) -> bool {
        if self.this_second < LOGGED_BANS_PER_SECOND {
            self.this_second += 1;
            return true;
        }
        match self.unlogged.get_mut(jail) {
            Some(n) => *n += 1,
            None => {
                self.unlogged.insert(jail.to_owned(), 1);
            }
        }
        false
    }

    fn second_over(&mut self) {
        for (jail, n) in std::mem::take(&mut self.unlogged) {
            tracing::info!(
                "[{jail}] banned {n} more in the last second, not logged one by one (`sipguard list` has every ban)"
            );
        }
        self.this_second = 0;
    }
}
