//! Prefix aggregation's hook (see `bans::aggregate`): the log bans just
//! made are told to their jail's tracker, and what it decides is banned,
//! or said, here. A prefix ban goes the normal ban path (kept, restored,
//! listed, lifted by `unban`) but never leaves for the fleet: it is this
//! box's derivation from its own evidence, and every box derives its own
//! from the members, which travel as they are.
use super::Daemon;
use crate::{
    addr,
    bans::{
        aggregate::{self, Decision, MAX_PREFIX_BAN},
        Scope,
    },
    kernel::clock,
    logs::jail::BanRequest,
};
use ipnet::IpNet;
use std::time::Duration;

/// The announcer's cause for prefix bans (`Announcer::exported` keeps them home).
pub(super) const CAUSE: &str = "aggregate";

impl Daemon {
    /// `made`: bans jails made from their logs at `now_ms` (wall clock).
    pub(super) fn aggregate(&mut self, made: &[&BanRequest], now_ms: i64) {
        for r in made {
            let Some(tracker) = self
                .jails
                .iter_mut()
                .find(|j| j.name == r.jail)
                .and_then(|j| j.aggregate.as_mut())
            else {
                continue;
            };
            let decision =
                tracker.member_banned(r.net, r.host, now_ms, &self.never_ban, &self.bans);
            match decision {
                Some(Decision::Ban {
                    prefix,
                    end,
                    reason,
                    ..
                }) => {
                    let now = clock::mono_now_ns();
                    let longest = match end {
                        Some(end) if end <= now => continue,
                        Some(end) => Duration::from_nanos(end - now),
                        None => MAX_PREFIX_BAN,
                    };
                    // Never permanent, never longer than the jail's own
                    // bantime or a day (see `MAX_PREFIX_BAN`).
                    let jail_bantime = self
                        .jails
                        .iter()
                        .find(|j| j.name == r.jail)
                        .and_then(|j| j.config.bantime)
                        .unwrap_or(MAX_PREFIX_BAN);
                    let duration = Some(longest.min(jail_bantime).min(MAX_PREFIX_BAN));
                    let request = BanRequest {
                        net: prefix,
                        host: r.host,
                        jail: r.jail.clone(),
                        duration,
                        reason,
                        // The member's line that completed (or extended) it.
                        line: r.line.clone(),
                        // Protected ports only, whatever the member's scope
                        // or all-ports mode: members are evidence of
                        // themselves, a prefix is an inference from them.
                        scope: Scope::PortsOnly,
                    };
                    self.enforce(request, CAUSE);
                }
                Some(Decision::Refused {
                    prefix,
                    members,
                    protected,
                    why,
                }) => tracing::warn!(
                    "[{}] not aggregating {members} banned members into {}: it would cover {} ({why}), \
                     which is never banned; the members keep their own bans",
                    r.jail,
                    addr::display(&prefix),
                    addr::display(&protected)
                ),
                None => {}
            }
        }
    }
}

impl Daemon {
    /// After the configuration is applied (a reload, or a start after the
    /// file changed): lifts this box's prefix bans that their jail would
    /// not make now (its `aggregate_after` off or raised, its width
    /// changed, the jail gone). Members keep their own bans; a prefix the
    /// new settings make is made again from fresh members. Prefix bans are
    /// this box's inference, never exported: nothing to tell the fleet.
    pub(super) fn lift_unmade_prefixes(&mut self) {
        let stale: Vec<(IpNet, String)> = self
            .bans
            .iter()
            // Cheap tests first: a box may hold a million bans.
            .filter(|(_, b)| b.scope == Scope::PortsOnly)
            .filter_map(|(net, b)| {
                let members = aggregate::members(b.reason)?;
                let settings = self
                    .jails
                    .iter()
                    .find(|j| j.name == b.jail)
                    .and_then(|j| j.aggregate.as_ref())
                    .map(aggregate::Tracker::settings);
                (!aggregate::would_make(settings.as_ref(), net, members))
                    .then(|| (*net, b.jail.to_owned()))
            })
            .collect();
        for (net, jail) in stale {
            match self.bans.unban(net) {
                Ok(_) => {
                    tracing::info!(
                        "[{jail}] lifted the prefix ban of {}: the jail's configuration no longer \
                         aggregates it (aggregate_after, aggregate_v4, aggregate_v6)",
                        addr::display(&net)
                    );
                    self.announce.unban(net, &jail, "reconfigured");
                    self.dirty = true;
                }
                Err(e) => tracing::warn!("cannot lift {}: {e:#}", addr::display(&net)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The daemon's packet jails are the ones configuration refuses to
    /// aggregate.
    #[test]
    fn packet_jails_are_known_to_aggregation() {
        use crate::bans::aggregate::PACKET_JAILS;
        assert!(PACKET_JAILS.contains(&super::super::FLOOD_JAIL));
        assert!(PACKET_JAILS.contains(&super::super::SCANNER_JAIL));
    }
}
