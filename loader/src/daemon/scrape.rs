//! What a Prometheus scrape reads beyond the live counters, and the
//! per-origin summary `status` and the metrics share.
use super::Daemon;
use crate::{
    bans::caps::{self},
    control::RemoteOrigin,
    fleet::{self},
    ops::metrics,
};
use std::collections::BTreeMap;

impl Daemon {
    /// What Prometheus reads beyond the live counters.
    pub(super) fn metrics_snapshot(&self) -> metrics::Snapshot {
        let maps = self.bans.kernel();
        let verdicts = maps
            .counters()
            .map(|c| {
                c.iter()
                    .zip(common::counter::NAMES)
                    .map(|(c, name)| (name, c.packets, c.bytes))
                    .collect()
            })
            .unwrap_or_default();
        // Kept counted as bans change: jails and origins, not bans.
        let mut by_jail: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for (jail, family, n) in self.bans.counts_by_jail() {
            *by_jail.entry((jail.to_owned(), family)).or_default() += n;
        }
        // Bans from elsewhere, under their origin: the largest few, the
        // rest as `other` (anyone writing to a shared Redis names nodes).
        let remote = self.bans.remote();
        let tallies = remote.tallies().map(|(o, t)| (o, *t)).collect();
        for (origin, t) in caps::top(tallies, caps::METRIC_ORIGINS, |t| t.total()) {
            for (f, family) in crate::bans::FAMILIES.iter().enumerate() {
                if t.bans[f] > 0 {
                    *by_jail.entry((origin.clone(), family)).or_default() += t.bans[f];
                }
            }
        }
        let refused = |pick: fn(&caps::Refusals) -> u64| {
            let all = remote.refused().iter().map(|(o, r)| (o, pick(r))).collect();
            caps::top(all, caps::METRIC_ORIGINS, |n| *n)
                .into_iter()
                .filter(|(_, n)| *n > 0)
        };
        let never_ban: Vec<(String, u64)> = refused(|r| r.never_ban).collect();
        let over_cap: Vec<(String, u64)> = refused(|r| r.over_cap).collect();
        let family_total = |f: &str| {
            by_jail
                .iter()
                .filter(|((_, g), _)| *g == f)
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        let allowed_v4 = self.never_ban.nets().filter(|n| n.addr().is_ipv4()).count() as u64;
        let allowed_v6 = self.never_ban.nets().count() as u64 - allowed_v4;
        let mut log_lines = Vec::new();
        for j in &self.jails {
            let s = &j.stats;
            for (result, n) in [
                ("read", s.lines),
                ("matched", s.total_failed),
                ("ignored", s.ignored_ip + s.ignored_regex),
                ("too_old", s.too_old),
                ("skewed", s.skewed),
                ("ambiguous", s.ambiguous),
                ("too_long", j.skipped_long_lines()),
            ] {
                log_lines.push((j.name.clone(), result, n));
            }
        }
        metrics::Snapshot {
            verdicts,
            maps: vec![
                (
                    "banned_v4",
                    family_total("ipv4"),
                    u64::from(common::MAX_BANS),
                ),
                (
                    "banned_v6",
                    family_total("ipv6"),
                    u64::from(common::MAX_BANS),
                ),
                ("allowed_v4", allowed_v4, u64::from(common::MAX_ALLOWED)),
                ("allowed_v6", allowed_v6, u64::from(common::MAX_ALLOWED)),
            ],
            bans: by_jail
                .into_iter()
                .map(|((jail, family), n)| (jail, family, n))
                .collect(),
            log_lines,
            lost_reports: maps.lost_reports().unwrap_or(0),
            refused: self
                .refused
                .iter()
                .map(|(j, n)| (j.clone(), *n))
                .chain(never_ban)
                .collect(),
            over_cap,
            dry_run: self.config.dry_run,
            notifications_dropped: self.announce.notifier.dropped,
            fleet_rejected: fleet::redis::rejected(),
            worker_restarts: fleet::restarts(),
            trusted: self.trusted_count(),
            overloaded: self.trust.overload.on,
            overload_entered: self.trust.overload.entered,
            sip_pps: self.trust.overload.pps,
        }
    }

    /// Bans from elsewhere, by origin (the largest `caps::STATUS_ORIGINS`, the
    /// rest as `other`), with the address space they hold and what was
    /// refused: never-ban set, caps. Kept counted: O(origins).
    pub(super) fn remote_summary(&self) -> BTreeMap<String, RemoteOrigin> {
        self.bans
            .remote()
            .summary(caps::STATUS_ORIGINS)
            .into_iter()
            .map(|(o, s)| {
                let origin = RemoteOrigin {
                    bans: s.held.total(),
                    ipv4_addresses: s.held.space[0],
                    ipv6_64s: s.held.space[1],
                    over_cap: s.over_cap,
                    refused_never_ban: s.never_ban,
                };
                (crate::text::escape(&o).into_owned(), origin)
            })
            .collect()
    }
}
