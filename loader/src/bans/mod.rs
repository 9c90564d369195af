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
pub mod changes;
pub mod journal;
pub mod never_ban;
pub mod packet_bans;
pub mod remote;
pub mod snapshot;
pub mod state;

use crate::{
    bans::remote::{RemoteBan, RemoteBans},
    bans::state::{SavedBan, State},
    kernel::clock::{self, Clock as _},
    kernel::maps::KernelMaps,
};
use anyhow::Result;
use common::{BAN_ALL_PORTS, BAN_PORTS_ONLY};
// Tables of a million networks: a fast hasher (seeded per process).
use foldhash::{HashMap as FastMap, HashSet as FastSet};
use ipnet::IpNet;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanInfo {
    /// Shared by every ban of the jail (see `Names`).
    pub jail: Arc<str>,
    /// `CLOCK_MONOTONIC` ns.
    pub banned_at_ns: u64,
    /// `CLOCK_MONOTONIC` deadline, as in the kernel map; `None` is permanent.
    pub expires_at_ns: Option<u64>,
    /// Shared by every ban with the same reason.
    pub reason: Arc<str>,
    /// The matched log line (a boxed `str`: 8 bytes less than a `String`
    /// in each of a million bans).
    pub line: Box<str>,
    pub scope: Scope,
}

/// One copy of each jail name and ban reason, shared by the bans that
/// carry it: a million bans of a few jails hold a few strings, not two
/// million (memory). Names no ban holds any more are let go hourly.
#[derive(Debug, Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.0.get(s) {
            return found.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.0.insert(new.clone());
        new
    }

    fn prune(&mut self) {
        self.0.retain(|s| Arc::strong_count(s) > 1);
    }
}

/// The networks the pinned maps hold, each marked once the state names it.
/// Sorted, so that a restore walking the saved bans in the same order (a
/// snapshot is written sorted by network) finds each by moving a cursor,
/// not by a million random lookups in a table (a fifth of a restart's CPU).
pub struct Pinned {
    nets: Vec<IpNet>,
    seen: Vec<bool>,
    cursor: usize,
}

/// `nets` as `Pinned`, none marked.
pub fn pinned(mut nets: Vec<IpNet>) -> Pinned {
    nets.sort_unstable();
    nets.dedup();
    let seen = vec![false; nets.len()];
    Pinned {
        nets,
        seen,
        cursor: 0,
    }
}

impl Pinned {
    fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Where `net` is, if pinned: ahead of the cursor when asked in order,
    /// by a binary search otherwise (the change log's bans, after the
    /// snapshot's).
    fn find(&mut self, net: &IpNet) -> Option<usize> {
        let from = self.cursor;
        // In order: past everything before the cursor.
        if from < self.nets.len() && (from == 0 || self.nets[from - 1] < *net) {
            let mut i = from;
            while i < self.nets.len() && self.nets[i] < *net {
                i += 1;
            }
            self.cursor = i;
            return (i < self.nets.len() && self.nets[i] == *net).then_some(i);
        }
        self.nets.binary_search(net).ok()
    }

    fn contains(&mut self, net: &IpNet) -> bool {
        self.find(net).is_some()
    }

    /// Marks `net` as named by the state; true when it is pinned.
    fn mark(&mut self, net: &IpNet) -> bool {
        match self.find(net) {
            Some(i) => {
                self.seen[i] = true;
                true
            }
            None => false,
        }
    }

    /// The pinned networks the state did not name.
    fn unmarked(self) -> impl Iterator<Item = IpNet> {
        self.nets
            .into_iter()
            .zip(self.seen)
            .filter(|(_, seen)| !seen)
            .map(|(net, _)| net)
    }
}

/// What `restore` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Saved bans the kernel still had (left untouched).
    pub kept: usize,
    /// Saved bans missing from the kernel (after a reboot), written again.
    pub reinstated: usize,
    /// Kernel bans nobody had saved (e.g. `sipguard ban` while the daemon was
    /// stopped), now tracked as jail `manual`.
    pub adopted: usize,
    /// Saved bans that ran out while the daemon was down.
    pub expired: usize,
    /// Bans that could not be written to the kernel map (logged; the rest
    /// were restored).
    pub failed: usize,
}

pub struct BanManager {
    maps: KernelMaps,
    /// This box's own bans: jails, the operator, the packet limiter.
    bans: crate::net_table::NetTable<BanInfo>,
    /// Bans from elsewhere (CrowdSec, the Redis fleet, APIBAN), by origin.
    remote: RemoteBans,
    /// Bans so far per network, and when the last one began (monotonic),
    /// for `bantime_increment`; forgotten `BAN_COUNT_MEMORY` after that.
    counts: FastMap<IpNet, (u32, u64)>,
    /// Bans made so far per jail (for `status`).
    pub total_by_jail: HashMap<String, u64>,
    /// Networks whose bans, and whose counts, changed since `take_changes`.
    changed: FastSet<IpNet>,
    counts_changed: FastSet<IpNet>,
    names: Names,
}

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
            remote: RemoteBans::default(),
            changed: FastSet::default(),
            counts_changed: FastSet::default(),
            names: Names::default(),
            counts: FastMap::default(),
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

    /// Takes up the saved bans and makes the kernel hold them.
    pub fn restore(&mut self, state: &State) -> Result<Restored> {
        let in_kernel = pinned(self.maps.banned_nets()?);
        self.restore_over(state, in_kernel)
    }

    /// `restore`, given the networks the maps held when the daemon started
    /// (read while the state was; see `pinned`).
    pub fn restore_over(&mut self, state: &State, mut in_kernel: Pinned) -> Result<Restored> {
        let clock = clock::Frozen::now();
        let (now, wall) = (clock.mono_ns(), clock.wall_ms());
        let same_boot = state
            .boot_id
            .as_deref()
            .is_some_and(|b| !b.is_empty() && b == clock.boot_id());
        let mut report = Restored::default();
        self.bans.reserve(state.bans.len());
        // New bans go to the kernel while the loop goes on (see `BanWriter`).
        let mut writer = self.maps.writer(state.bans.len())?;

        let mut ended_in_kernel = Vec::new();
        for saved in &state.bans {
            let Ok(net) = crate::addr::parse_net(&saved.net) else {
                tracing::warn!("state: skipping unreadable ban {:?}", saved.net);
                continue;
            };
            let expires_at_ns = match saved.expires_at {
                None => None,
                Some(wall_ms) => {
                    let end = clock::SavedEnd {
                        wall_ms,
                        mono_ns: saved.expires_mono,
                        saved_wall_ms: state.saved_at,
                    };
                    match clock::from_saved(end, same_boot, &clock) {
                        Some(deadline) => Some(deadline),
                        None => {
                            report.expired += 1;
                            self.changed.insert(net);
                            if in_kernel.contains(&net) {
                                ended_in_kernel.push(net);
                            }
                            continue;
                        }
                    }
                }
            };
            let info = BanInfo {
                jail: self.names.get(&saved.jail),
                banned_at_ns: now
                    .saturating_sub((wall - saved.banned_at).max(0) as u64 * 1_000_000),
                expires_at_ns,
                reason: self.names.get(&saved.reason),
                line: saved.line.as_str().into(),
                scope: Scope::from_saved(saved.all_ports, saved.ports_only),
            };
            // Marked: what is left unmarked is in the maps only.
            let in_kernel = !in_kernel.is_empty() && in_kernel.mark(&net);
            if !in_kernel {
                let end = info.expires_at_ns.unwrap_or(0);
                writer.push(net, end, info.scope.flags(), info.banned_at_ns);
            }
            if let Some(origin) = &saved.origin {
                self.remote.set(
                    net,
                    RemoteBan {
                        origin: origin.to_string(),
                        expires_at_ns: info.expires_at_ns,
                        scope: info.scope,
                        reason: info.reason.to_string(),
                    },
                );
                continue;
            }
            if in_kernel {
                report.kept += 1;
            } else {
                report.reinstated += 1;
            }
            self.bans.insert(net, info);
        }
        for (net, e) in writer.finish(&mut self.maps) {
            // One full or failing map write must not stop the daemon
            // from protecting with everything else.
            tracing::error!("restoring the ban of {net} failed: {e:#}");
            report.failed += 1;
            if self.bans.remove(&net).is_some() {
                report.reinstated -= 1;
            }
        }
        // A network with records of more than one origin was written once
        // per record, the last one standing: now what they add up to (the
        // latest end, the widest scope).
        let merged: FastSet<IpNet> = self
            .remote
            .iter()
            .map(|(net, _)| *net)
            .filter(|net| self.bans.contains_key(net) || self.remote.get(net).len() > 1)
            .collect();
        for net in merged {
            if let Err(e) = self.sync_kernel(net) {
                tracing::error!("restoring the ban of {net} failed: {e:#}");
            }
        }
        for net in ended_in_kernel {
            self.maps.unban(net)?;
        }
        for net in in_kernel.unmarked() {
            if self.bans.contains_key(&net) || !self.remote.get(&net).is_empty() {
                continue;
            }
            let Some(entry) = self.maps.ban_entry(net)? else {
                continue;
            };
            if entry.is_expired(now) {
                // Ended while no daemon ran; the program already ignores it.
                self.maps.unban(net)?;
                continue;
            }
            self.bans.insert(
                net,
                BanInfo {
                    jail: self.names.get("manual"),
                    banned_at_ns: entry.banned_at_ns,
                    expires_at_ns: (entry.expires_at_ns != 0).then_some(entry.expires_at_ns),
                    reason: self
                        .names
                        .get("found in the kernel map (banned while the daemon was not running)"),
                    line: "".into(),
                    scope: Scope::from_flags(entry.flags),
                },
            );
            report.adopted += 1;
            self.changed.insert(net);
        }
        for (text, n) in &state.ban_counts {
            if let Ok(net) = crate::addr::parse_net(text) {
                // Unknown (an older state): as if banned just now.
                let ago_ms = state
                    .ban_counted_at
                    .get(text)
                    .map_or(0, |at| (wall - at).max(0) as u64);
                let at = now.saturating_sub(ago_ms.saturating_mul(1_000_000));
                self.counts.insert(net, (*n, at));
            }
        }
        Ok(report)
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
                later(info.expires_at_ns, end).unwrap_or(0),
                info.scope.max(scope).flags(),
                info.banned_at_ns,
            ),
            None => (
                info.expires_at_ns.unwrap_or(0),
                info.scope.flags(),
                info.banned_at_ns,
            ),
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
        reason: String,
        line: String,
        scope: Scope,
    ) -> Result<bool> {
        let now = clock::mono_now_ns();
        let mut expires_at_ns = duration.map(|d| now.saturating_add(duration_ns(d)));
        let mut scope = scope;
        if let Some(current) = self.bans.get(&net) {
            let merged_end = later(current.expires_at_ns, expires_at_ns);
            let merged_scope = current.scope.max(scope);
            if merged_end == current.expires_at_ns && merged_scope == current.scope {
                return Ok(false);
            }
            expires_at_ns = merged_end;
            scope = merged_scope;
        }
        let info = BanInfo {
            jail: self.names.get(jail),
            banned_at_ns: now,
            expires_at_ns,
            reason: self.names.get(&reason),
            line: line.into_boxed_str(),
            scope,
        };
        self.write_kernel(net, &info)?;
        self.bans.insert(net, info);
        self.changed.insert(net);
        self.counts_changed.insert(net);
        let count = self.counts.entry(net).or_default();
        *count = (count.0 + 1, now);
        match self.total_by_jail.get_mut(jail) {
            Some(n) => *n += 1,
            None => {
                self.total_by_jail.insert(jail.to_owned(), 1);
            }
        }
        Ok(true)
    }

    /// Lifts this box's own ban of `net`; other origins' bans of it stay.
    pub fn unban(&mut self, net: IpNet) -> Result<bool> {
        self.changed.insert(net);
        if !self.remote.get(&net).is_empty() {
            let had = self.bans.remove(&net).is_some();
            self.sync_kernel(net)?;
            return Ok(had);
        }
        let in_kernel = self.maps.unban(net)?;
        Ok(self.bans.remove(&net).is_some() || in_kernel)
    }

    /// The operator's unban: every origin's ban of `net` on this box.
    /// Returns whether there was any, and the remote origins lifted.
    pub fn unban_all(&mut self, net: IpNet) -> Result<(bool, Vec<String>)> {
        self.changed.insert(net);
        let origins = self.remote.remove_all(&net);
        let local = self.bans.remove(&net).is_some();
        let in_kernel = self.maps.unban(net)?;
        Ok((local || in_kernel || !origins.is_empty(), origins))
    }

    /// Sets one origin's ban of `net` (replacing its earlier one); true if
    /// anything changed.
    pub fn remote_ban(&mut self, net: IpNet, ban: RemoteBan) -> Result<bool> {
        let origin = ban.origin.clone();
        if !self.remote.set(net, ban) {
            return Ok(false);
        }
        self.changed.insert(net);
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
        self.changed.insert(net);
        self.sync_kernel(net)?;
        Ok(true)
    }

    /// `origin`'s whole list (a full resynchronisation): its bans not in
    /// `keep` are lifted; returns them.
    pub fn remote_retain(&mut self, origin: &str, keep: &HashSet<IpNet>) -> Result<Vec<IpNet>> {
        let gone = self.remote.retain_origin(origin, keep);
        for net in &gone {
            self.changed.insert(*net);
            self.sync_kernel(*net)?;
        }
        Ok(gone)
    }

    /// Remote bans that ended, lifted (the kernel keeps what other origins
    /// still want); returned with their origin.
    pub fn sweep_remote(&mut self) -> Result<Vec<(IpNet, String)>> {
        let ended = self.remote.take_expired(clock::mono_now_ns());
        for (net, _) in &ended {
            self.changed.insert(*net);
            self.sync_kernel(*net)?;
        }
        Ok(ended)
    }

    pub fn remote(&self) -> &RemoteBans {
        &self.remote
    }

    /// Removes bans that have ended; returns them. Only the bans known here
    /// are looked at: walking a kernel trie of a million bans every second
    /// would keep the daemon busy (two system calls per entry). Every ban
    /// goes through this manager while the daemon runs; strays found in the
    /// kernel at start are adopted or, when expired, deleted by `restore`.
    pub fn sweep(&mut self) -> Result<Vec<(IpNet, BanInfo)>> {
        let now = clock::mono_now_ns();
        let ended: Vec<IpNet> = self
            .bans
            .iter()
            .filter(|(_, b)| b.expires_at_ns.is_some_and(|e| e <= now))
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::new();
        for net in ended {
            if let Some(info) = self.bans.remove(&net) {
                out.push((net, info));
            }
            self.changed.insert(net);
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
        let changed = &mut self.counts_changed;
        self.counts.retain(|net, (_, at)| {
            let keep = bans.contains_key(net) || now_ns.saturating_sub(*at) < memory;
            if !keep {
                changed.insert(*net);
            }
            keep
        });
        self.names.prune();
        before - self.counts.len()
    }

    pub fn get(&self, net: &IpNet) -> Option<&BanInfo> {
        self.bans.get(net)
    }

    /// The jail of the ban of exactly `net`.
    pub fn jail_of(&self, net: &IpNet) -> Option<String> {
        self.bans.get(net).map(|b| b.jail.to_string())
    }

    /// Banned here, by this box or another origin.
    pub fn is_banned(&self, net: &IpNet) -> bool {
        self.bans.contains_key(net) || !self.remote.get(net).is_empty()
    }

    /// How many times `net` was banned before.
    pub fn ban_count(&self, net: &IpNet) -> u32 {
        self.counts.get(net).map_or(0, |c| c.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &BanInfo)> {
        self.bans.iter()
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Has `net`'s bans logged with the next changes (they differ from
    /// what the state on disk says).
    pub fn mark_changed(&mut self, net: IpNet) {
        self.changed.insert(net);
    }

    /// Changes not yet taken by `take_changes`.
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty() || !self.counts_changed.is_empty()
    }

    /// The bans and ban counts, for the state file: each end both as wall
    /// time and as this boot's monotonic deadline (see `clock`).
    pub fn save_into(&mut self, state: &mut State) {
        let clock = clock::System;
        let now = (clock.mono_ns(), clock.wall_ms());
        state.boot_id = Some(clock.boot_id());
        state.saved_at = Some(now.1);
        // Sorted by network: the next start finds them in the pinned maps
        // in one walk (see `Pinned`).
        let mut bans: Vec<(IpNet, SavedBan)> = self
            .bans
            .iter()
            .map(|(net, b)| (*net, saved_local(net, b, now)))
            .chain(
                self.remote
                    .iter()
                    .map(|(net, b)| (*net, saved_remote(net, b, now))),
            )
            .collect();
        bans.sort_by_key(|(net, _)| *net);
        state.bans = bans.into_iter().map(|(_, b)| b).collect();
        state.ban_counts = self
            .counts
            .iter()
            .map(|(n, c)| (n.to_string(), c.0))
            .collect::<BTreeMap<_, _>>();
        state.ban_counted_at = self
            .counts
            .iter()
            .map(|(n, c)| (n.to_string(), counted_at(c.1, now)))
            .collect::<BTreeMap<_, _>>();
        // A snapshot holds every change.
        self.changed.clear();
        self.counts_changed.clear();
    }

    /// What changed since the last call (or snapshot), for the change log:
    /// each network's bans as they are now, and its count; at most `limit`
    /// networks (a 100 000-decision list is logged over several ticks, each
    /// short). Whether more is left is `has_changes`.
    pub fn take_changes(&mut self, limit: usize) -> Vec<changes::Change> {
        let clock = clock::System;
        let now = (clock.mono_ns(), clock.wall_ms());
        let nets: Vec<IpNet> = self.changed.iter().take(limit).copied().collect();
        for net in &nets {
            self.changed.remove(net);
        }
        let mut out = Vec::with_capacity(nets.len() + self.counts_changed.len());
        for net in nets {
            let bans = self
                .bans
                .get(&net)
                .map(|b| saved_local(&net, b, now))
                .into_iter()
                .chain(
                    self.remote
                        .get(&net)
                        .iter()
                        .map(|b| saved_remote(&net, b, now)),
                )
                .collect();
            out.push(changes::Change::Net {
                net: net.to_string(),
                bans,
            });
        }
        for net in std::mem::take(&mut self.counts_changed) {
            let (n, at) = self
                .counts
                .get(&net)
                .map_or((0, 0), |c| (c.0, counted_at(c.1, now)));
            out.push(changes::Change::Count {
                net: net.to_string(),
                n,
                at,
            });
        }
        out
    }
}

/// When a count's last ban began, as wall time (Unix ms).
fn counted_at(mono_ns: u64, (now_ns, now_wall): (u64, i64)) -> i64 {
    now_wall - (now_ns.saturating_sub(mono_ns) / 1_000_000) as i64
}

/// This box's ban of `net`, as the state file keeps it.
fn saved_local(net: &IpNet, b: &BanInfo, now: (u64, i64)) -> SavedBan {
    let clock = clock::System;
    let end = b.expires_at_ns.map(|d| clock::to_saved(d, &clock));
    SavedBan {
        net: net.to_string(),
        jail: b.jail.clone(),
        banned_at: counted_at(b.banned_at_ns, now),
        expires_at: end.map(|e| e.wall_ms),
        expires_mono: end.and_then(|e| e.mono_ns),
        reason: b.reason.clone(),
        line: b.line.to_string(),
        all_ports: b.scope == Scope::AllPorts,
        ports_only: b.scope == Scope::PortsOnly,
        origin: None,
    }
}

/// Another origin's ban of `net`, as the state file keeps it.
fn saved_remote(net: &IpNet, b: &RemoteBan, now: (u64, i64)) -> SavedBan {
    let clock = clock::System;
    let end = b.expires_at_ns.map(|d| clock::to_saved(d, &clock));
    SavedBan {
        net: net.to_string(),
        jail: b.origin.as_str().into(),
        banned_at: now.1,
        expires_at: end.map(|e| e.wall_ms),
        expires_mono: end.and_then(|e| e.mono_ns),
        reason: b.reason.as_str().into(),
        line: String::new(),
        all_ports: b.scope == Scope::AllPorts,
        ports_only: b.scope == Scope::PortsOnly,
        origin: Some(b.origin.as_str().into()),
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
