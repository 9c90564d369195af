//! What the feeds (CrowdSec, the Redis fleet, APIBAN) send: one function
//! per message.
use super::Daemon;
use crate::{
    addr,
    bans::{caps::Over, remote::RemoteBan},
    fleet::Inbound,
    kernel::clock,
};
use ipnet::IpNet;
use std::collections::BTreeSet;

impl Daemon {
    /// What an engine (CrowdSec, the Redis fleet, APIBAN) says. The
    /// never-ban set wins over every origin; each origin's record is its
    /// own, so its expiry or deletion leaves every other ban of the network.
    pub(super) fn on_fleet(&mut self, msg: Inbound) {
        match msg {
            Inbound::Bans { origin, bans } => {
                // Refusals (never-ban set, `[fleet]` caps) are counted and
                // logged once a minute per origin, not once per entry.
                let label = self.bans.remote_mut().label(&origin);
                for d in bans {
                    if let Some((protected, why)) = self.never_ban.covering(&d.net) {
                        let detail =
                            format!(" ({} is never banned: {why})", addr::display(&protected));
                        self.bans
                            .remote_mut()
                            .refuse(&origin, &d.net, Over::NeverBan, &detail);
                        continue;
                    }
                    let ban = RemoteBan {
                        origin: origin.clone(),
                        expires_at_ns: d.left.map(clock::deadline_ns),
                        scope: d.scope,
                        reason: d.reason,
                    };
                    match self.bans.remote_ban(d.net, ban) {
                        Ok(true) => {
                            self.dirty = true;
                            self.announce.remote_ban(&label, origin_kind(&origin));
                        }
                        Ok(false) => {}
                        Err(e) => tracing::error!(
                            "[{}] cannot ban {}: {e:#}",
                            crate::text::escape(&origin),
                            addr::display(&d.net)
                        ),
                    }
                }
            }
            Inbound::Unbans { origin, nets } => {
                for net in nets {
                    match self.bans.remote_unban(net, &origin) {
                        Ok(true) => {
                            self.dirty = true;
                            self.remote_unbanned(&origin, "deleted");
                        }
                        Ok(false) => {}
                        Err(e) => tracing::error!(
                            "[{}] cannot unban {}: {e:#}",
                            crate::text::escape(&origin),
                            addr::display(&net)
                        ),
                    }
                }
            }
            Inbound::Complete { origin, nets } => self.retain_origin(&origin, &nets),
            Inbound::OnlyOrigins { prefix, keep } => {
                let gone: BTreeSet<String> = self
                    .bans
                    .remote()
                    .iter()
                    .map(|(_, b)| b.origin.to_owned())
                    .filter(|o| o.starts_with(&prefix) && !keep.contains(o))
                    .collect();
                for origin in gone {
                    self.retain_origin(&origin, &Default::default());
                }
            }
            Inbound::FleetUnban { net, node } => match self.bans.unban_all(net) {
                Ok((true, _)) => {
                    tracing::info!(
                        "unbanned {} on every box, as the operator of {} asked",
                        addr::display(&net),
                        crate::text::escape(&node)
                    );
                    self.packet_bans.forget(&net);
                    for jail in &mut self.jails {
                        jail.offenders.forget(&net);
                    }
                    self.remote_unbanned(&format!("redis:{node}"), "fleet");
                    self.dirty = true;
                    // This box's own entry leaves the fleet's list too, or a
                    // member reconnecting would take the ban again.
                    self.announce.unban_everywhere(net, false);
                }
                Ok((false, _)) => {}
                Err(e) => tracing::error!("fleet unban of {}: {e:#}", addr::display(&net)),
            },
            Inbound::Cursor { feed, value } => {
                self.cursors.insert(feed, value);
                self.dirty = true;
            }
        }
    }

    /// `origin`'s complete list is `keep`: its other bans are lifted.
    pub(super) fn retain_origin(&mut self, origin: &str, keep: &std::collections::HashSet<IpNet>) {
        match self.bans.remote_retain(origin, keep) {
            Ok(gone) => {
                if !gone.is_empty() {
                    tracing::info!(
                        "[{}] {} ban(s) no longer in its list, lifted",
                        crate::text::escape(origin),
                        gone.len()
                    );
                    self.dirty = true;
                }
                for _ in &gone {
                    self.remote_unbanned(origin, "deleted");
                }
            }
            Err(e) => tracing::error!("[{}] resynchronising: {e:#}", crate::text::escape(origin)),
        }
    }

    /// A remote ban lifted, counted under its origin's bounded label (a
    /// shared Redis can name thousands of nodes).
    pub(super) fn remote_unbanned(&mut self, origin: &str, cause: &str) {
        let label = self.bans.remote_mut().label(origin);
        self.announce.remote_unban(&label, cause);
    }
}

/// The kind of an origin (`redis:box2` → `redis`), for metrics.
pub(super) fn origin_kind(origin: &str) -> &str {
    origin.split(':').next().unwrap_or(origin)
}
