//! The ban manager (fail2ban's banmanager): every ban, whoever made it, with
//! its jail, reason and matched line, written to the kernel map at once and
//! kept across restarts.
//!
//! Restart rule: what the kernel map already holds stays untouched. A ban is
//! only written when it is missing (after a reboot wiped the pinned maps), so
//! a restart never unbans everything and bans it again.
//!
//! Time: every deadline here is the kernel's own (`CLOCK_MONOTONIC`, see
//! `clock`), so the daemon and the program always agree on when a ban ends.
pub mod aggregate;
mod burst;
pub mod caps;
mod changed;
pub mod lifted;
pub mod lines;
pub mod names;
pub mod never_ban;
pub mod packet_bans;
pub mod remote;
mod restore;
mod saved;
pub mod sliced;
pub mod tally;
// The state files, now the store's (`store::legacy`), by their old names
// until the daemon reads and writes the database instead.
pub use crate::store::legacy::{changes, journal, snapshot, state, torn};
pub use burst::Order;
pub use restore::{pinned, InKernel, Pinned, Restored};

use crate::{
    bans::lines::{LineRef, LineStore},
    bans::names::{Name, Names},
    bans::remote::{RemoteBan, RemoteBans},
    kernel::clock,
    kernel::maps::KernelMaps,
};
use anyhow::Result;
use common::{BAN_ALL_PORTS, BAN_PORTS_ONLY};
use ipnet::IpNet;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

/// Which of the source's packets a ban drops, narrowest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Only packets to the protected ports, even in all-ports mode: bans on
    /// packet evidence, which a forged source address can earn.
    PortsOnly,
    /// The protected ports, or every port in global all-ports mode.
    #[default]
    Ports,
    /// Every packet (fail2ban's `iptables-allports`).
    AllPorts,
}

impl Scope {
    pub fn flags(self) -> u32 {
        match self {
            Scope::PortsOnly => BAN_PORTS_ONLY,
            Scope::Ports => 0,
            Scope::AllPorts => BAN_ALL_PORTS,
        }
    }

    pub fn from_flags(flags: u32) -> Self {
        if flags & BAN_ALL_PORTS != 0 {
            Scope::AllPorts
        } else if flags & BAN_PORTS_ONLY != 0 {
            Scope::PortsOnly
        } else {
            Scope::Ports
        }
    }

    fn from_saved(all_ports: bool, ports_only: bool) -> Self {
        match (all_ports, ports_only) {
            (true, _) => Scope::AllPorts,
            (false, true) => Scope::PortsOnly,
            (false, false) => Scope::Ports,
        }
    }
}

/// This box's ban of a network, as held for a million of them (40 bytes):
/// names and the matched line by index.
#[derive(Clone, Debug)]
struct BanInfo {
    /// `CLOCK_MONOTONIC` ns.
    banned_at_ns: u64,
    /// `CLOCK_MONOTONIC` deadline, as in the kernel map; 0 is permanent.
    end_ns: u64,
    line: LineRef,
    jail: Name,
    reason: Name,
    /// Bans of the network so far, this one included (`bantime_increment`;
    /// the networks not banned now keep theirs in `counts`).
    count: u32,
    scope: Scope,
}

const _: () = assert!(std::mem::size_of::<BanInfo>() == 40);

impl BanInfo {
    fn expires_at_ns(&self) -> Option<u64> {
        (self.end_ns != 0).then_some(self.end_ns)
    }
}

/// A ban of this box's, to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban<'a> {
    pub jail: &'a str,
    /// `CLOCK_MONOTONIC` ns.
    pub banned_at_ns: u64,
    /// `CLOCK_MONOTONIC` deadline, as in the kernel map; `None` is permanent.
    pub expires_at_ns: Option<u64>,
    pub reason: &'a str,
    /// The matched log line; "" if none, or let go (see `lines`).
    pub line: &'a str,
    pub scope: Scope,
}

pub struct BanManager {
    maps: KernelMaps,
    /// This box's own bans: jails, the operator, the packet limiter. Only
    /// `put` and `take` change it, which keep `by_jail` counted.
    bans: crate::net_table::NetTable<BanInfo>,
    by_jail: tally::ByJail,
    /// Bans from elsewhere (CrowdSec, the Redis fleet, APIBAN), by origin.
    remote: RemoteBans,
    /// Bans so far per network not banned now, and when the last one began
    /// (monotonic), for `bantime_increment`; forgotten `BAN_COUNT_MEMORY`
    /// after that. A banned network's count is in its ban.
    counts: crate::net_table::NetTable<(u32, u64)>,
    /// Bans made so far per jail (for `status`).
    pub total_by_jail: HashMap<String, u64>,
    /// Networks whose bans, or whose counts, changed since `take_changes`.
    changed: changed::Changed,
    names: Names,
    lines: LineStore,
}

/// Family labels, by `caps::family`.
pub const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

/// Wall-clock now, ms: for log lines, whose own times are wall times.
/// How long a network's ban count is remembered after its last ban began
/// (and only once no ban of it is in force): long enough for repeat
/// offenders to meet `bantime_increment`, bounded so the table does not grow
/// for ever under a long campaign of one-off sources.
pub const BAN_COUNT_MEMORY: Duration = Duration::from_secs(7 * 86_400);

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The later of two deadlines (`None`, permanent, is the latest).
pub(crate) fn later(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

impl BanManager {
    pub fn new(maps: KernelMaps) -> Self {
        Self {
            maps,
            bans: Default::default(),
            by_jail: Default::default(),
            remote: RemoteBans::default(),
            changed: changed::Changed::default(),
            names: Names::default(),
            lines: LineStore::new(crate::defaults::LINE_MEMORY),
            counts: Default::default(),
            total_by_jail: HashMap::new(),
        }
    }

    pub fn maps(&mut self) -> &mut KernelMaps {
        &mut self.maps
    }

    /// The maps, for reading.
    pub fn kernel(&self) -> &KernelMaps {
        &self.maps
    }

    fn write_kernel(&mut self, net: IpNet, info: &BanInfo) -> Result<()> {
        let (end, flags, at) = self.merged(net, info);
        self.maps.ban(net, end, flags, at)
    }

    /// The kernel's entry for this box's ban `info` of `net` (end, flags,
    /// start): another origin's ban of the same network gives it the later
    /// end and the wider scope of both.
    fn merged(&self, net: IpNet, info: &BanInfo) -> (u64, u32, u64) {
        match self.remote.effective(&net) {
            Some((end, scope)) => (
                later(info.expires_at_ns(), end).unwrap_or(0),
                info.scope.max(scope).flags(),
                info.banned_at_ns,
            ),
            None => (info.end_ns, info.scope.flags(), info.banned_at_ns),
        }
    }

    /// What the kernel should hold for `net` (see `merged`); none: no ban.
    fn kernel_entry(&self, net: &IpNet) -> Option<(u64, u32, u64)> {
        if let Some(info) = self.bans.get(net) {
            return Some(self.merged(*net, info));
        }
        let (end, scope) = self.remote.effective(net)?;
        Some((end.unwrap_or(0), scope.flags(), clock::mono_now_ns()))
    }

    /// Makes the kernel hold what is left of `net`'s bans, or none.
    fn sync_kernel(&mut self, net: IpNet) -> Result<()> {
        match self.kernel_entry(&net) {
            Some((end, flags, at)) => self.maps.ban(net, end, flags, at),
            None => self.maps.unban(net).map(|_| ()),
        }
    }

    /// Bans `net` for `duration` (`None`: permanently). A ban already in
    /// force is merged with the new one: the later end and the wider scope
    /// win, so a short ban never cuts a long or permanent one. Returns
    /// whether anything changed.
    pub fn ban(
        &mut self,
        net: IpNet,
        jail: &str,
        duration: Option<Duration>,
        reason: &str,
        line: &str,
        scope: Scope,
    ) -> Result<bool> {
        let Some(info) = self.prepare(net, jail, duration, reason, scope) else {
            return Ok(false);
        };
        self.write_kernel(net, &info)?;
        self.commit(net, info, jail, line);
        Ok(true)
    }

    /// The ban of `net` that `ban` makes (merged with the one in force);
    /// none when the one in force already lasts as long and drops as much.
    fn prepare(
        &mut self,
        net: IpNet,
        jail: &str,
        duration: Option<Duration>,
        reason: &str,
        scope: Scope,
    ) -> Option<BanInfo> {
        let now = clock::mono_now_ns();
        let mut expires_at_ns = duration.map(|d| now.saturating_add(duration_ns(d)));
        let mut scope = scope;
        let count = match self.bans.get(&net) {
            Some(current) => {
                let merged_end = later(current.expires_at_ns(), expires_at_ns);
                let merged_scope = current.scope.max(scope);
                if merged_end == current.expires_at_ns() && merged_scope == current.scope {
                    return None;
                }
                expires_at_ns = merged_end;
                scope = merged_scope;
                current.count
            }
            None => self.counts.get(&net).map_or(0, |c| c.0),
        };
        Some(BanInfo {
            jail: self.names.id(jail),
            banned_at_ns: now,
            end_ns: expires_at_ns.unwrap_or(0),
            reason: self.names.id(reason),
            line: LineRef::NONE,
            count: count + 1,
            scope,
        })
    }

    /// Puts a ban `prepare` made, now in the kernel, in the tables.
    fn commit(&mut self, net: IpNet, info: BanInfo, jail: &str, line: &str) {
        let info = BanInfo {
            line: self.lines.push(line),
            ..info
        };
        self.put(net, info);
        self.counts.remove(&net);
        self.changed.both(net);
        match self.total_by_jail.get_mut(jail) {
            Some(n) => *n += 1,
            None => {
                self.total_by_jail.insert(jail.to_owned(), 1);
            }
        }
    }

    /// Removes this box's ban of `net` from the table; its count stays,
    /// in `counts`, and is logged as such (the ban's line says no ban: a
    /// restart would otherwise forget the count until the next snapshot).
    fn remove_ban(&mut self, net: &IpNet) -> Option<BanInfo> {
        let info = self.take(net)?;
        if info.count > 0 {
            self.counts.insert(*net, (info.count, info.banned_at_ns));
            self.changed.count(*net);
        }
        Some(info)
    }

    /// Sets this box's ban of `net` in the table, counted in `by_jail`.
    fn put(&mut self, net: IpNet, info: BanInfo) {
        self.by_jail.add(info.jail, &net);
        if let (_, Some(old)) = self.bans.insert(net, info) {
            self.by_jail.sub(old.jail, &net);
        }
    }

    /// Takes this box's ban of `net` out of the table (and of `by_jail`).
    fn take(&mut self, net: &IpNet) -> Option<BanInfo> {
        let info = self.bans.remove(net)?;
        self.by_jail.sub(info.jail, net);
        Some(info)
    }

    /// This box's bans in force per jail and family (`ipv4`, `ipv6`), and
    /// every remote origin's (see `RemoteBans::tallies`): kept counted, so
    /// reading them costs jails and origins, not bans.
    pub fn counts_by_jail(&self) -> impl Iterator<Item = (&str, &'static str, u64)> {
        self.by_jail
            .iter()
            .map(|(jail, f, n)| (&**self.names.text(jail), FAMILIES[f], n))
    }

    /// Lifts this box's own ban of `net`; other origins' bans of it stay.
    pub fn unban(&mut self, net: IpNet) -> Result<bool> {
        self.changed.bans(net);
        if self.remote.origins_of(&net) > 0 {
            let had = self.remove_ban(&net).is_some();
            self.sync_kernel(net)?;
            return Ok(had);
        }
        let in_kernel = self.maps.unban(net)?;
        Ok(self.remove_ban(&net).is_some() || in_kernel)
    }

    /// The operator's unban: every origin's ban of `net` on this box.
    /// Returns whether there was any, and the remote origins lifted.
    pub fn unban_all(&mut self, net: IpNet) -> Result<(bool, Vec<String>)> {
        self.changed.bans(net);
        let origins = self.remote.remove_all(&net);
        let local = self.remove_ban(&net).is_some();
        let in_kernel = self.maps.unban(net)?;
        Ok((local || in_kernel || !origins.is_empty(), origins))
    }

    /// Sets one origin's ban of `net` (replacing its earlier one); true if
    /// anything changed.
    /// Refused by the caps (`[fleet]`): counted and logged there, and
    /// false.
    pub fn remote_ban(&mut self, net: IpNet, ban: RemoteBan) -> Result<bool> {
        let origin = ban.origin.clone();
        if self.remote.set(net, &ban) != Ok(true) {
            return Ok(false);
        }
        self.changed.bans(net);
        if let Err(e) = self.sync_kernel(net) {
            self.remote.remove(&net, &origin);
            return Err(e);
        }
        Ok(true)
    }

    /// Lifts one origin's ban of `net`; whatever else bans it stays.
    pub fn remote_unban(&mut self, net: IpNet, origin: &str) -> Result<bool> {
        if !self.remote.remove(&net, origin) {
            return Ok(false);
        }
        self.changed.bans(net);
        self.sync_kernel(net)?;
        Ok(true)
    }

    /// `origin`'s whole list (a full resynchronisation): its bans not in
    /// `keep` are lifted; returns them.
    pub fn remote_retain(&mut self, origin: &str, keep: &HashSet<IpNet>) -> Result<Vec<IpNet>> {
        let gone = self.remote.retain_origin(origin, keep);
        for net in &gone {
            self.changed.bans(*net);
            self.sync_kernel(*net)?;
        }
        Ok(gone)
    }

    /// Remote bans that ended, lifted (the kernel keeps what other origins
    /// still want); returned with their origin.
    pub fn sweep_remote(&mut self) -> Result<Vec<(IpNet, String)>> {
        let ended = self.remote.take_expired(clock::mono_now_ns());
        for (net, _) in &ended {
            self.changed.bans(*net);
            self.sync_kernel(*net)?;
        }
        Ok(ended)
    }

    pub fn remote(&self) -> &RemoteBans {
        &self.remote
    }

    /// For caps, refusals and labels (see `RemoteBans`).
    pub fn remote_mut(&mut self) -> &mut RemoteBans {
        &mut self.remote
    }

    /// Removes bans that have ended; returns them. Only the bans known here
    /// are looked at: walking a kernel trie of a million bans every second
    /// would keep the daemon busy (two system calls per entry). Every ban
    /// goes through this manager while the daemon runs; strays found in the
    /// kernel at start are adopted or, when expired, deleted by `restore`.
    pub fn sweep(&mut self) -> Result<Vec<(IpNet, Arc<str>)>> {
        let now = clock::mono_now_ns();
        let ended: Vec<IpNet> = self
            .bans
            .iter()
            .filter(|(_, b)| b.end_ns != 0 && b.end_ns <= now)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::new();
        for net in ended {
            if let Some(info) = self.remove_ban(&net) {
                out.push((net, self.names.text(info.jail).clone()));
            }
            self.changed.bans(net);
            self.sync_kernel(net)?;
        }
        Ok(out)
    }

    /// Forgets the ban counts of networks not banned now whose last ban
    /// began more than `memory` before `now_ns`; returns how many.
    pub fn prune_counts(&mut self, now_ns: u64, memory: Duration) -> usize {
        let before = self.counts.len();
        let bans = &self.bans;
        let memory = duration_ns(memory);
        let changed = &mut self.changed;
        self.counts.retain(|net, (_, at)| {
            let keep = bans.contains_key(net) || now_ns.saturating_sub(*at) < memory;
            if !keep {
                changed.count(*net);
            }
            keep
        });
        self.names
            .retain_used(self.bans.iter().flat_map(|(_, b)| [b.jail, b.reason]));
        self.remote.prune_names();
        before - self.counts.len()
    }

    pub fn get(&self, net: &IpNet) -> Option<Ban<'_>> {
        self.bans.get(net).map(|b| self.view(b))
    }

    fn view<'a>(&'a self, b: &BanInfo) -> Ban<'a> {
        Ban {
            jail: self.names.text(b.jail),
            banned_at_ns: b.banned_at_ns,
            expires_at_ns: b.expires_at_ns(),
            reason: self.names.text(b.reason),
            line: self.lines.get(b.line),
            scope: b.scope,
        }
    }

    /// The jail of the ban of exactly `net`.
    pub fn jail_of(&self, net: &IpNet) -> Option<String> {
        self.get(net).map(|b| b.jail.to_string())
    }

    /// Banned here, by this box or another origin.
    pub fn is_banned(&self, net: &IpNet) -> bool {
        self.bans.contains_key(net) || self.remote.origins_of(net) > 0
    }

    /// How many times `net` was banned before.
    pub fn ban_count(&self, net: &IpNet) -> u32 {
        self.count_of(net).0
    }

    /// `net`'s ban count, and when its last ban began (0, 0: none).
    fn count_of(&self, net: &IpNet) -> (u32, u64) {
        match self.bans.get(net) {
            Some(b) => (b.count, b.banned_at_ns),
            None => self.counts.get(net).copied().unwrap_or((0, 0)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, Ban<'_>)> {
        self.bans.iter().map(|(net, b)| (net, self.view(b)))
    }

    /// The bans of jail `jail` (`status JAIL` stays cheap on a box with a
    /// million bans of other jails).
    pub fn iter_jail(&self, jail: &str) -> impl Iterator<Item = (&IpNet, Ban<'_>)> {
        let id = self.names.find(jail);
        self.bans
            .iter()
            .filter(move |(_, b)| Some(b.jail) == id)
            .map(|(net, b)| (net, self.view(b)))
    }

    /// Networks banned, whatever the origin.
    pub fn len(&self) -> usize {
        self.bans.len()
            + self
                .remote
                .nets()
                .filter(|n| !self.bans.contains_key(n))
                .count()
    }

    /// Ban records held (a network banned here and elsewhere counts
    /// twice), without a walk: what a snapshot writes, about.
    pub fn records(&self) -> usize {
        self.bans.len() + self.remote.slots_used()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Has `net`'s bans logged with the next changes (they differ from
    /// what the state on disk says).
    pub fn mark_changed(&mut self, net: IpNet) {
        self.changed.bans(net);
    }

    /// Changes not yet taken by `take_changes`.
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        crate::addr::parse_net(s).unwrap()
    }

    /// Asked in order (a snapshot), then out of order (the change log's
    /// bans), then for networks not pinned: each pinned network is found,
    /// and what was never named is what is left.
    #[test]
    fn pinned_networks_are_found_in_and_out_of_order() {
        let mut p = pinned(vec![
            n("192.0.2.9"),
            n("2001:db8::1"),
            n("192.0.2.1"),
            n("10.0.0.0/8"),
            n("192.0.2.5"),
            n("192.0.2.1"),
        ]);
        assert!(p.mark(&n("10.0.0.0/8")));
        assert!(!p.mark(&n("192.0.2.0/24")));
        assert!(p.mark(&n("192.0.2.1")));
        assert!(p.mark(&n("192.0.2.1")), "twice in a row (two origins)");
        assert!(!p.mark(&n("192.0.2.2")));
        assert!(p.mark(&n("2001:db8::1")));
        // Out of order now.
        assert!(p.mark(&n("192.0.2.9")));
        assert!(!p.contains(&n("203.0.113.1")));
        assert!(p.contains(&n("192.0.2.5")));
        let left: Vec<IpNet> = p.unmarked().collect();
        assert_eq!(left, [n("192.0.2.5")]);
    }
}
