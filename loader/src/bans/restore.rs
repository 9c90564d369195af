//! Taking up the saved bans at start, and making the kernel hold them: the
//! saved bans as they are read (`take_saved`), then against what the
//! pinned maps held (`settle_kernel`), the kernel's own bans nobody saved
//! (`adopt_unsaved`), and the ban counts (`take_counts`).
use super::{names, snapshot, BanInfo, BanManager, Scope};
use crate::{
    bans::lines::LineRef,
    kernel::clock::{self, Clock as _},
    kernel::maps::BanWriter,
    store::records::{SavedBan, State},
};
use anyhow::Result;
use foldhash::HashSet as FastSet;
use ipnet::IpNet;

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
    // A merge of the sorted runs `KernelMaps::banned_nets` gives: the
    // stable sort finds runs and merges them, in linear time.
    nets.sort();
    nets.dedup();
    let seen = vec![false; nets.len()];
    Pinned {
        nets,
        seen,
        cursor: 0,
    }
}

impl Pinned {
    pub(super) fn is_empty(&self) -> bool {
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

    pub(super) fn contains(&mut self, net: &IpNet) -> bool {
        self.find(net).is_some()
    }

    /// Marks `net` as named by the state; true when it is pinned.
    pub(super) fn mark(&mut self, net: &IpNet) -> bool {
        match self.find(net) {
            Some(i) => {
                self.seen[i] = true;
                true
            }
            None => false,
        }
    }

    /// The pinned networks the state did not name.
    pub(super) fn unmarked(self) -> impl Iterator<Item = IpNet> {
        self.nets
            .into_iter()
            .zip(self.seen)
            .filter(|(_, seen)| !seen)
            .map(|(net, _)| net)
    }
}

/// What the pinned maps hold, as `restore_from` takes it.
pub enum InKernel {
    /// No ban at all (a start after a reboot): every saved ban is written
    /// to the kernel as it is read.
    Empty,
    /// Bans (a restart), being read meanwhile (see `pinned`): the state is
    /// read while they are, and the two compared once both are.
    Reading(Box<dyn FnOnce() -> Result<Pinned>>),
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

/// The saved bans as read: what waits for the kernel's bans to be read,
/// and what ended while no daemon ran.
struct Taken {
    /// Remote bans' kernel entries, written once the pinned maps are read.
    remote_entries: Vec<(IpNet, u64, u32, u64)>,
    ended: Vec<IpNet>,
}

impl BanManager {
    /// Takes up the saved bans and makes the kernel hold them.
    pub fn restore(&mut self, state: &State) -> Result<Restored> {
        let in_kernel = pinned(self.maps.banned_nets()?);
        let in_kernel = if in_kernel.is_empty() {
            InKernel::Empty
        } else {
            InKernel::Reading(Box::new(move || Ok(in_kernel)))
        };
        let counts = state.counts();
        let bans = (state.bans.len(), state.bans.iter().cloned());
        self.restore_from(state, bans, counts, in_kernel)
    }

    /// `restore` of a state being read: `header` is everything but its
    /// bans (about `n`) and counts, which come one at a time (the counts
    /// are taken once every ban is); `in_kernel`, the networks the maps
    /// held when the daemon started.
    pub fn restore_from(
        &mut self,
        header: &State,
        (n, bans): (usize, impl Iterator<Item = SavedBan>),
        counts: impl Iterator<Item = snapshot::Count>,
        in_kernel: InKernel,
    ) -> Result<Restored> {
        let clock = clock::Frozen::now();
        let mut report = Restored::default();
        self.bans.reserve(n);
        // New bans go to the kernel while the loop goes on (see `BanWriter`).
        let mut writer = self.maps.writer(n)?;
        // Empty maps: each ban is written as it is read. Otherwise the
        // maps' bans are still being read: the kernel's part of each saved
        // ban waits (as remote bans' records do, or in the table) until
        // they are.
        let (stream, in_kernel) = match in_kernel {
            InKernel::Empty => (true, None),
            InKernel::Reading(read) => (false, Some(read)),
        };
        let taken = self.take_saved(
            header,
            bans,
            &clock,
            stream.then_some(&mut writer),
            &mut report,
        );
        // Marked: what is left unmarked is in the maps only.
        let mut in_kernel = match in_kernel {
            Some(read) => read()?,
            None => pinned(Vec::new()),
        };
        self.settle_kernel(stream, writer, &mut in_kernel, taken, &mut report)?;
        self.adopt_unsaved(in_kernel, clock.mono_ns(), &mut report)?;
        self.take_counts(counts, (clock.mono_ns(), clock.wall_ms()));
        Ok(report)
    }

    /// Each saved ban into the tables (and, with `stream`, into the
    /// kernel's writer as it is read).
    fn take_saved(
        &mut self,
        header: &State,
        bans: impl Iterator<Item = SavedBan>,
        clock: &clock::Frozen,
        mut stream: Option<&mut BanWriter>,
        report: &mut Restored,
    ) -> Taken {
        let (now, wall) = (clock.mono_ns(), clock.wall_ms());
        let same_boot = header
            .boot_id
            .as_deref()
            .is_some_and(|b| !b.is_empty() && b == clock.boot_id());
        let mut taken = Taken {
            remote_entries: Vec::new(),
            ended: Vec::new(),
        };
        let mut names = names::Recent::default();
        for saved in bans {
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
                        saved_wall_ms: header.saved_at,
                    };
                    match clock::from_saved(end, same_boot, clock) {
                        Some(deadline) => Some(deadline),
                        None => {
                            report.expired += 1;
                            self.changed.bans(net);
                            taken.ended.push(net);
                            continue;
                        }
                    }
                }
            };
            let scope = Scope::from_saved(saved.all_ports, saved.ports_only);
            let banned_at_ns =
                now.saturating_sub((wall - saved.banned_at).max(0) as u64 * 1_000_000);
            let entry = (net, expires_at_ns.unwrap_or(0), scope.flags(), banned_at_ns);
            match stream.as_deref_mut() {
                Some(w) => w.push(entry.0, entry.1, entry.2, entry.3),
                None if saved.origin.is_some() => taken.remote_entries.push(entry),
                None => {}
            }
            if let Some(origin) = &saved.origin {
                self.remote
                    .set_parts(net, origin, expires_at_ns, scope, &saved.reason);
                continue;
            }
            let info = BanInfo {
                jail: names.id(&mut self.names, &saved.jail),
                banned_at_ns,
                end_ns: expires_at_ns.unwrap_or(0),
                reason: names.id(&mut self.names, &saved.reason),
                line: self.lines.push(&saved.line),
                count: saved.count,
                scope,
            };
            self.put(net, info);
        }
        taken
    }

    /// The saved bans against what the pinned maps held: kept, written
    /// again, or (ended meanwhile) lifted; networks of several origins
    /// written as what they add up to.
    fn settle_kernel(
        &mut self,
        stream: bool,
        mut writer: BanWriter,
        in_kernel: &mut Pinned,
        taken: Taken,
        report: &mut Restored,
    ) -> Result<()> {
        if stream {
            report.reinstated = self.bans.len();
        } else {
            for (net, info) in self.bans.iter() {
                if in_kernel.mark(net) {
                    report.kept += 1;
                } else {
                    writer.push(*net, info.end_ns, info.scope.flags(), info.banned_at_ns);
                    report.reinstated += 1;
                }
            }
        }
        for (net, end, flags, at) in taken.remote_entries {
            if !in_kernel.mark(&net) {
                writer.push(net, end, flags, at);
            }
        }
        let ended_in_kernel: Vec<IpNet> = taken
            .ended
            .into_iter()
            .filter(|net| in_kernel.contains(net))
            .collect();
        for (net, e) in writer.finish(&mut self.maps) {
            // One full or failing map write must not stop the daemon
            // from protecting with everything else.
            tracing::error!("restoring the ban of {net} failed: {e:#}");
            report.failed += 1;
            if self.take(&net).is_some() {
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
            .filter(|net| self.bans.contains_key(net) || self.remote.origins_of(net) > 1)
            .collect();
        for net in merged {
            if let Err(e) = self.sync_kernel(net) {
                tracing::error!("restoring the ban of {net} failed: {e:#}");
            }
        }
        for net in ended_in_kernel {
            self.maps.unban(net)?;
        }
        Ok(())
    }

    /// Kernel bans nobody saved (`sipguard ban` while no daemon ran, before
    /// it was saved): adopted as `manual`; ended ones lifted.
    fn adopt_unsaved(&mut self, in_kernel: Pinned, now: u64, report: &mut Restored) -> Result<()> {
        for net in in_kernel.unmarked() {
            if self.bans.contains_key(&net) || self.remote.origins_of(&net) > 0 {
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
            let info = BanInfo {
                jail: self.names.id("manual"),
                banned_at_ns: entry.banned_at_ns,
                end_ns: entry.expires_at_ns,
                reason: self
                    .names
                    .id("found in the kernel map (banned while the daemon was not running)"),
                line: LineRef::NONE,
                count: 0,
                scope: Scope::from_flags(entry.flags),
            };
            self.put(net, info);
            report.adopted += 1;
            self.changed.bans(net);
        }
        Ok(())
    }

    /// The ban counts: a banned network's into its ban, the others' kept
    /// with when their last ban began.
    fn take_counts(
        &mut self,
        counts: impl Iterator<Item = snapshot::Count>,
        (now, wall): (u64, i64),
    ) {
        for (text, n, at) in counts {
            let Ok(net) = crate::addr::parse_net(&text) else {
                continue;
            };
            if let Some(ban) = self.bans.get_mut(&net) {
                ban.count = n;
                continue;
            }
            // Unknown (an older state): as if banned just now.
            let ago_ms = if at == 0 {
                0
            } else {
                (wall - at).max(0) as u64
            };
            let at = now.saturating_sub(ago_ms.saturating_mul(1_000_000));
            self.counts.insert(net, (n, at));
        }
    }
}
