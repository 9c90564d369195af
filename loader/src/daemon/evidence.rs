//! This box's own evidence: its logs, and the sources the XDP program
//! reports for flooding or for a scanner's User-Agent.
use super::{Daemon, FLOOD_JAIL, INVALID_JAIL, SCANNER_JAIL};
use crate::{
    addr,
    bans::{now_ms, Order, Scope},
    logs::jail::BanRequest,
};
use std::time::Instant;

impl Daemon {
    /// Reads the logs and bans what they call for; true when a log has
    /// more to read than one poll takes (the loop comes back at once).
    pub(super) fn poll_logs(&mut self) -> bool {
        let read_at = Instant::now();
        let now = now_ms();
        let mut requests = Vec::new();
        for jail in &mut self.jails {
            let bans = &self.bans;
            requests.extend(jail.poll(
                &self.never_ban,
                &|n| bans.is_banned(n),
                &|n| bans.ban_count(n),
                now,
            ));
        }
        // Vetted against the never-ban set by their jails, at the failure;
        // made together (see `BanManager::ban_all`), then told one by one.
        let orders: Vec<Order> = requests
            .iter()
            .map(|r| Order {
                net: r.net,
                jail: &r.jail,
                duration: r.duration,
                reason: &r.reason,
                line: &r.line,
                scope: r.scope,
            })
            .collect();
        let made = self.bans.ban_all(&orders);
        drop(orders);
        let mut banned = 0;
        let aggregating = self.jails.iter().any(|j| j.aggregate.is_some());
        let mut members = Vec::new();
        for (r, made) in requests.iter().zip(made) {
            if self.enforced(r, "log", made) {
                banned += 1;
                self.announce.metrics.ban_latency(read_at.elapsed());
                // Proven by the log: no longer a ban on packet evidence.
                self.packet_bans.forget(&r.net);
                if aggregating {
                    members.push(r);
                }
            }
        }
        self.aggregate(&members, now);
        // A burst is logged as it is read, not a tick's worth a second (a
        // million bans would take minutes to be saved, and a snapshot's
        // finish would have them all to write at once).
        if banned > 0 {
            self.log_changes();
        }
        self.jails.iter().any(|j| j.behind())
    }

    /// A source the XDP program reported: for flooding, for a scanner's
    /// User-Agent, or for invalid messages. Its packets are dropped in XDP whatever happens here; a
    /// ban on this evidence (a source address anyone can forge) is vetted
    /// against the never-ban set, within the jail's budget, scoped to the
    /// protected ports, and never takes the room of other bans.
    pub(super) fn on_flood(&mut self, event: &common::FloodEvent) {
        let flood = &self.config.flood;
        let (jail, bantime, reason, cause) = if event.kind == common::EVENT_SCANNER {
            if !flood.scanner_bans {
                return;
            }
            (
                SCANNER_JAIL,
                flood.scanner_bantime,
                "a SIP scanner's User-Agent".to_owned(),
                "scanner",
            )
        } else if event.kind == common::EVENT_INVALID {
            if !flood.invalid_bans {
                return;
            }
            (
                INVALID_JAIL,
                flood.invalid_bantime,
                format!(
                    "over {} invalid messages/s (neither SIP nor a keepalive) during {} s",
                    flood.invalid_rate, event.over_secs
                ),
                "invalid",
            )
        } else {
            (
                FLOOD_JAIL,
                flood.bantime,
                format!(
                    "over {} packets/s during {} s ({} packets dropped by the limiter)",
                    flood.rate,
                    event.over_secs,
                    // Summed over CPUs; the event carries its CPU's alone.
                    self.bans
                        .maps()
                        .limited(&event.key)
                        .unwrap_or(event.limited)
                        .max(event.limited)
                ),
                "flood",
            )
        };
        let request = BanRequest {
            net: crate::kernel::maps::rate_key_net(&event.key),
            host: crate::kernel::maps::event_source(event).addr(),
            jail: jail.to_owned(),
            duration: bantime,
            reason,
            line: String::new(),
            scope: Scope::PortsOnly,
        };
        let Some(request) = self.vet(request) else {
            return;
        };
        if self.bans.is_banned(&request.net) || !self.packet_bans.admit(jail, Instant::now()) {
            return;
        }
        if let Some(oldest) = self.packet_bans.make_room() {
            let jail_of_oldest = self.bans.jail_of(&oldest);
            match self.bans.unban(oldest) {
                Ok(_) => {
                    tracing::info!(
                        "lifted the oldest packet ban, {}, to make room ({} packet bans at most)",
                        addr::display(&oldest),
                        self.config.flood.max_packet_bans
                    );
                    self.announce.unban(
                        oldest,
                        jail_of_oldest.as_deref().unwrap_or(jail),
                        "evicted",
                    );
                }
                Err(e) => tracing::warn!("cannot lift {}: {e:#}", addr::display(&oldest)),
            }
            self.dirty = true;
        }
        let net = request.net;
        if self.enforce(request, cause) {
            self.packet_bans.record(net);
        }
    }
}
