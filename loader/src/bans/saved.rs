//! The ban manager's tables as the state's records: the snapshot written
//! whole (at stop), the change log's lines of what changed, and a batch
//! that replaces what the database holds (`store::Batch::replace`).
use super::{changes, remote, snapshot, BanInfo, BanManager, Scope};
use crate::{
    kernel::clock::{self, Clock as _},
    store::records::{SavedBan, State},
    store::{Batch, Clock},
};
use anyhow::Result;
use ipnet::IpNet;

impl BanManager {
    /// Writes the state file's snapshot to `out`: `header`'s allowlist,
    /// cursors and positions with every ban and ban count, each end both as
    /// wall time and as this boot's monotonic deadline (see `clock`). The
    /// bans are written as they are walked, never copied all at once (a
    /// million would double the daemon's memory at every snapshot).
    pub fn write_snapshot(&mut self, out: &mut impl std::io::Write, header: &State) -> Result<()> {
        let clock = clock::System;
        let now = (clock.mono_ns(), clock.wall_ms());
        let header = State {
            boot_id: Some(clock.boot_id()),
            saved_at: Some(now.1),
            ..header.clone()
        };
        // Sorted by network: the next start finds them in the pinned maps
        // in one walk (see `Pinned`).
        let mut local: Vec<u32> = self.bans.slots().collect();
        local.sort_unstable_by_key(|&i| self.bans.at(i).0);
        let mut remote: Vec<(&IpNet, remote::Remote<'_>)> = self.remote.iter().collect();
        remote.sort_by_key(|(net, _)| **net);
        let n = local.len() + remote.len();
        let (mut local, mut remote) = (local.into_iter().peekable(), remote.into_iter().peekable());
        let bans = std::iter::from_fn(|| {
            let next_local = local.peek().map(|&i| self.bans.at(i).0);
            match (next_local, remote.peek()) {
                (Some(l), Some((r, _))) if **r < l => {
                    remote.next().map(|(net, b)| saved_remote(net, &b, now))
                }
                (Some(_), _) => local.next().map(|i| {
                    let (net, b) = self.bans.at(i);
                    self.saved_local(net, b, now)
                }),
                (None, _) => remote.next().map(|(net, b)| saved_remote(net, &b, now)),
            }
        });
        let strings = self.names.iter().chain(self.remote.names());
        // A banned network's count goes with its ban.
        let counts = self
            .counts
            .iter()
            .map(|(net, (n, at))| (net.to_string(), *n, counted_at(*at, now)));
        snapshot::write_parts(out, &header, strings, (n, bans), counts)
    }

    /// This box's ban of `net`, as the state file keeps it.
    pub(super) fn saved_local(&self, net: &IpNet, b: &BanInfo, now: (u64, i64)) -> SavedBan {
        let clock = clock::System;
        let end = b.expires_at_ns().map(|d| clock::to_saved(d, &clock));
        SavedBan {
            net: net.to_string(),
            jail: self.names.text(b.jail).clone(),
            banned_at: counted_at(b.banned_at_ns, now),
            expires_at: end.map(|e| e.wall_ms),
            expires_mono: end.and_then(|e| e.mono_ns),
            reason: self.names.text(b.reason).clone(),
            line: self.lines.get(b.line).to_owned(),
            all_ports: b.scope == Scope::AllPorts,
            ports_only: b.scope == Scope::PortsOnly,
            origin: None,
            count: b.count,
        }
    }

    /// What changed since the last call (or snapshot), for the change log:
    /// each network's bans as they are now, and its count; at most `limit`
    /// networks (a 100 000-decision list is logged over several ticks, each
    /// short). Whether more is left is `has_changes`.
    pub fn take_changes(&mut self, limit: usize) -> Vec<changes::Change> {
        let clock = clock::System;
        let now = (clock.mono_ns(), clock.wall_ms());
        let taken = self.changed.take(limit);
        let mut out = Vec::with_capacity(taken.len());
        // A network's count goes with its bans, in the same lines: a Net
        // line logged before its Count line (in an earlier batch) would,
        // after a crash between them, restore the count before (a count
        // entry sets the ban's). Each network is looked up once for both.
        let mut counts = Vec::new();
        for (net, what) in taken {
            let name = net.to_string();
            let ban = self.bans.get(&net);
            if what.count {
                // A banned network's count is in its ban.
                let (n, at) = match ban.map_or_else(
                    || self.counts.get(&net).copied().unwrap_or((0, 0)),
                    |b| (b.count, b.banned_at_ns),
                ) {
                    (0, _) => (0, 0),
                    (n, at) => (n, counted_at(at, now)),
                };
                counts.push(changes::Change::Count {
                    net: name.clone(),
                    n,
                    at,
                });
            }
            if what.bans {
                let bans = ban
                    .map(|b| self.saved_local(&net, b, now))
                    .into_iter()
                    .chain(self.remote.get(&net).map(|b| saved_remote(&net, &b, now)))
                    .collect();
                out.push(changes::Change::Net { net: name, bans });
            }
        }
        out.extend(counts);
        out
    }

    /// Every ban (this box's and other origins') and every ban count, as a
    /// `replace` batch stamped with this boot; the caller adds the
    /// allowlist, cursors and positions. Holds every ban as a record at
    /// once (about 200 bytes each): made only when the database must be
    /// made whole again, never per tick.
    pub fn whole_batch(&self) -> Batch {
        let clock = clock::System;
        let now = (clock.mono_ns(), clock.wall_ms());
        let bans = self
            .bans
            .iter()
            .map(|(net, b)| self.saved_local(net, b, now))
            .chain(
                self.remote
                    .iter()
                    .map(|(net, b)| saved_remote(net, &b, now)),
            )
            .collect();
        // A banned network's count goes with its ban.
        let counts = self
            .counts
            .iter()
            .map(|(net, (n, at))| (net.to_string(), *n, counted_at(*at, now)))
            .collect();
        Batch {
            replace: true,
            clock: Some(Clock {
                boot_id: clock.boot_id(),
                saved_at: now.1,
            }),
            bans,
            counts,
            ..Default::default()
        }
    }
}

/// When a count's last ban began, as wall time (Unix ms).
pub(super) fn counted_at(mono_ns: u64, (now_ns, now_wall): (u64, i64)) -> i64 {
    now_wall - (now_ns.saturating_sub(mono_ns) / 1_000_000) as i64
}

/// Another origin's ban of `net`, as the state file keeps it.
pub(super) fn saved_remote(net: &IpNet, b: &remote::Remote<'_>, now: (u64, i64)) -> SavedBan {
    let clock = clock::System;
    let end = b.expires_at_ns.map(|d| clock::to_saved(d, &clock));
    SavedBan {
        net: net.to_string(),
        jail: b.origin.into(),
        banned_at: now.1,
        expires_at: end.map(|e| e.wall_ms),
        expires_mono: end.and_then(|e| e.mono_ns),
        reason: b.reason.into(),
        line: String::new(),
        all_ports: b.scope == Scope::AllPorts,
        ports_only: b.scope == Scope::PortsOnly,
        origin: Some(b.origin.into()),
        count: 0,
    }
}
