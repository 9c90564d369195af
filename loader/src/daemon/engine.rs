//! The ban path: vet a request against the never-ban set, enforce it, and
//! the once-a-second tick that ends bans and refreshes the never-ban set.
use super::{saving::POSITIONS_SAVE_INTERVAL, Daemon};
use crate::{
    addr,
    bans::never_ban::{NeverBan, Sources, Vetted},
    bans::now_ms,
    freeswitch,
    kernel::clock,
    logs::jail::BanRequest,
};
use anyhow::Result;
use ipnet::IpNet;
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

/// How often the never-ban set is read again (addresses, routes and
/// resolvers change under a running daemon: DHCP, failover, VRRP).
const NEVER_BAN_REFRESH: Duration = Duration::from_secs(10);

/// How often old ban counts are forgotten (a walk over all of them).
const COUNT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

impl Daemon {
    /// Reads the never-ban set again (with the operator's allowlist) and,
    /// when it changed, makes the XDP allowlist hold exactly it.
    pub(super) fn refresh_never_ban(&mut self) -> Result<()> {
        let trunks = self
            .config
            .discovered
            .as_ref()
            .map(freeswitch::Discovered::trunk_addresses)
            .unwrap_or_default();
        let sources = Sources {
            resolv_conf: &self.config.resolv_conf,
            trunks: &trunks,
            engines: &self.feed_addrs,
            ..Sources::default()
        };
        let set = NeverBan::discover(
            self.config.ignoreip.iter().map(|n| n.0),
            self.operator_allowed.iter().copied(),
            &sources,
        );
        self.last_never_ban = Instant::now();
        if set == self.never_ban {
            return Ok(());
        }
        for (net, why) in set.entries() {
            if !self.never_ban.entries().iter().any(|(n, _)| n == net) {
                tracing::info!("never banned: {} ({why})", addr::display(net));
            }
        }
        self.never_ban = set;
        self.reconcile_allowlist()
    }

    /// The kernel allowlist becomes exactly the never-ban set: an entry no
    /// longer wanted (a network removed from `ignoreip`, an old gateway) is
    /// removed, also when a daemon before this one wrote it.
    pub(super) fn reconcile_allowlist(&mut self) -> Result<()> {
        let wanted: BTreeSet<IpNet> = self.never_ban.nets().collect();
        let maps = self.bans.maps();
        let mut present = BTreeSet::new();
        for entry in maps.allowed()? {
            if wanted.contains(&entry.net) {
                present.insert(entry.net);
            } else {
                tracing::info!("no longer allow-listed: {}", addr::display(&entry.net));
                maps.disallow(entry.net)?;
            }
        }
        // Only what is missing: an entry in place keeps its hit counters.
        for net in wanted.difference(&present) {
            maps.allow(*net)?;
        }
        Ok(())
    }

    /// A ban on packet evidence, checked against the never-ban set: as
    /// asked, narrowed to the offender's address, or refused (logged and
    /// counted). Its one check: a log's bans are checked by their jail, at
    /// the failure (`Jail::on_line`), and never again here.
    pub(super) fn vet(&mut self, mut r: BanRequest) -> Option<BanRequest> {
        match self.never_ban.vet(r.net, r.host) {
            Vetted::Ban(_) => Some(r),
            Vetted::Narrowed {
                net,
                protected,
                why,
            } => {
                tracing::warn!(
                    "[{}] narrowed the ban of {} to {}: it would cover {} ({why})",
                    r.jail,
                    addr::display(&r.net),
                    addr::display(&net),
                    addr::display(&protected)
                );
                r.net = net;
                Some(r)
            }
            Vetted::Refused { protected, why } => {
                tracing::warn!(
                    "[{}] refused to ban {}: it lies in {} ({why}), which is never banned",
                    r.jail,
                    addr::display(&r.net),
                    addr::display(&protected)
                );
                *self.refused.entry(r.jail).or_default() += 1;
                None
            }
        }
    }

    /// Writes a ban a jail or the XDP program asked for (`cause`: log,
    /// flood, scanner), and logs it; true when written. A ban already in
    /// force that lasts as long is left alone (nothing to log).
    pub(super) fn enforce(&mut self, r: BanRequest, cause: &str) -> bool {
        let made = self
            .bans
            .ban(r.net, &r.jail, r.duration, &r.reason, &r.line, r.scope);
        self.enforced(&r, cause, made)
    }

    /// What `enforce` does once the ban manager has made `r`'s ban, or
    /// not (`made`: what `BanManager::ban` returned).
    pub(super) fn enforced(&mut self, r: &BanRequest, cause: &str, made: Result<bool>) -> bool {
        match made {
            Ok(true) => {
                self.dirty = true;
                self.announce.log_ban(r);
                self.announce.ban(r, cause);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!("[{}] cannot ban {}: {e:#}", r.jail, addr::display(&r.net));
                false
            }
        }
    }

    /// A trace whose tracer is gone (SIGKILL, a lost session) or whose
    /// lease ran out is turned off now, not only at its deadline.
    pub(super) fn end_orphan_trace(&mut self) {
        match crate::kernel::trace_lease::end_orphan(&self.config.pin_dir) {
            Ok(Some(pid)) => {
                tracing::info!(
                    "trace by process {pid} turned off: the process is gone or its lease ran out"
                )
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("trace switch: {e:#}"),
        }
    }

    pub(super) fn tick(&mut self) {
        self.announce.second_over();
        self.end_orphan_trace();
        self.trust_tick();
        match self.bans.sweep() {
            Ok(ended) => {
                for (net, jail) in &ended {
                    tracing::info!("[{jail}] ban of {} ended", addr::display(net));
                    self.packet_bans.forget(net);
                    self.announce.unban(*net, jail, "expired");
                }
                self.dirty |= !ended.is_empty();
            }
            Err(e) => tracing::warn!("expiring bans failed: {e:#}"),
        }
        match self.bans.sweep_remote() {
            Ok(ended) => {
                for (_, origin) in &ended {
                    self.remote_unbanned(origin, "expired");
                }
                self.dirty |= !ended.is_empty();
            }
            Err(e) => tracing::warn!("expiring remote bans failed: {e:#}"),
        }
        if self.last_count_prune.elapsed() >= COUNT_PRUNE_INTERVAL {
            self.last_count_prune = Instant::now();
            let forgotten = self
                .bans
                .prune_counts(clock::mono_now_ns(), crate::bans::BAN_COUNT_MEMORY);
            self.dirty |= forgotten > 0;
        }
        if self.last_never_ban.elapsed() >= NEVER_BAN_REFRESH {
            if let Err(e) = self.refresh_never_ban() {
                tracing::warn!("updating the never-ban set failed: {e:#}");
            }
        }
        let now = now_ms();
        for jail in &mut self.jails {
            jail.refresh_files(&self.positions, false);
            jail.offenders.prune(now);
            if let Some(a) = &mut jail.aggregate {
                a.expire(now);
            }
        }
        let positions_due = self.last_positions_save.elapsed() >= POSITIONS_SAVE_INTERVAL
            && self.current_positions() != self.saved_positions;
        self.check_snapshot();
        if self.dirty || self.snapshot_wanted() {
            self.log_changes();
        }
        if positions_due {
            self.save_positions();
        }
    }
}
