//! Many bans at once (the requests of a burst of log lines): made in
//! order, each as `ban` makes it, but the new single-address IPv4 bans
//! among them go to the kernel map a batch at a time (`batch::CHUNK` in one
//! system call) instead of one call each: the calls were half of a ban's
//! kernel time in a burst of a million.
use super::{BanInfo, BanManager, Scope};
use crate::kernel::batch::CHUNK;
use anyhow::Result;
use ipnet::IpNet;
use std::time::Duration;

/// One ban to make: what `BanManager::ban` takes.
pub struct Order<'a> {
    pub net: IpNet,
    pub jail: &'a str,
    pub duration: Option<Duration>,
    pub reason: &'a str,
    pub line: &'a str,
    pub scope: Scope,
}

/// New bans made, waiting to be written together.
type Pending<'o, 'a> = Vec<(&'o Order<'a>, BanInfo)>;

impl BanManager {
    /// Makes each of `orders`' bans in turn, as `ban` would; returns what
    /// `ban` returns for each, in order.
    pub fn ban_all(&mut self, orders: &[Order<'_>]) -> Vec<Result<bool>> {
        let mut out = Vec::with_capacity(orders.len());
        let mut pending = Vec::new();
        let mut seen = foldhash::HashSet::default();
        for o in orders {
            // A single IPv4 address no origin bans is in no kernel map:
            // every ban goes through this manager while the daemon runs,
            // and a start adopts what it finds there. Once in a batch: a
            // second ban of it merges with the first, made before it.
            let new_host = matches!(o.net, IpNet::V4(n) if n.prefix_len() == 32)
                && !self.is_banned(&o.net)
                && seen.insert(o.net);
            let made = match new_host {
                true => self.prepare(o.net, o.jail, o.duration, o.reason, o.scope),
                false => None,
            };
            match made {
                Some(info) => {
                    pending.push((o, info));
                    if pending.len() == CHUNK {
                        self.write_pending(&mut pending, &mut out);
                        seen.clear();
                    }
                }
                None => {
                    self.write_pending(&mut pending, &mut out);
                    seen.clear();
                    out.push(self.ban(o.net, o.jail, o.duration, o.reason, o.line, o.scope));
                }
            }
        }
        self.write_pending(&mut pending, &mut out);
        out
    }

    /// Writes the bans `pending` holds to the kernel, then to the tables.
    /// One batch: if the kernel stops before its end, the rest are written
    /// one by one, as `ban` writes each (which says why one fails: the map
    /// is full, say). Not batch after batch: with a full map every batch
    /// stops at its first entry, and retrying the rest each time cost the
    /// square of the batch (8192 rounds for 8192 bans).
    fn write_pending(&mut self, pending: &mut Pending<'_, '_>, out: &mut Vec<Result<bool>>) {
        let entries: Vec<_> = pending
            .iter()
            .map(|(o, info)| {
                let IpNet::V4(n) = o.net else {
                    unreachable!("only single IPv4 addresses wait")
                };
                (n.addr(), info.end_ns, info.scope.flags(), info.banned_at_ns)
            })
            .collect();
        let written = self.maps.ban_new_v4(&entries);
        for (o, info) in &pending[..written] {
            self.commit(o.net, info.clone(), o.jail, o.line);
            out.push(Ok(true));
        }
        for (o, info) in &pending[written..] {
            out.push(self.write_kernel(o.net, info).map(|()| {
                self.commit(o.net, info.clone(), o.jail, o.line);
                true
            }));
        }
        pending.clear();
    }
}
