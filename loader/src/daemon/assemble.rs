//! The daemon assembled from what the start restored: the saved state
//! with its change log and the operator's offline changes laid over it,
//! the bans in the maps, the allowlist, and everything the loop keeps.
use super::{announce::Announcer, Daemon};
use crate::{
    bans::changes::{self, ChangeLog},
    bans::journal,
    bans::never_ban::{NeverBan, Sources},
    bans::packet_bans::PacketBans,
    bans::state,
    bans::BanManager,
    config::Config,
    fleet::{self, InboundTx},
    kernel::maps::KernelMaps,
    ops::notify::Notifier,
};
use anyhow::Result;
use ipnet::IpNet;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Instant,
};

impl Daemon {
    /// `opened`: the state, read as its bans are restored; `pinned`: the
    /// networks the pinned maps held, being read meanwhile.
    pub(super) fn start(
        config: Config,
        maps: KernelMaps,
        mut opened: state::Opened,
        pinned: crate::bans::InKernel,
        fleet_tx: InboundTx,
    ) -> Result<Self> {
        let mut saved = std::mem::take(&mut opened.state);
        // What changed after the last snapshot, laid over the snapshot's
        // bans as they are read.
        let (replayed, mut over) = changes::read(&config.state_file, &mut saved)?;
        if replayed > 0 {
            tracing::info!("state: {replayed} change(s) replayed from the change log");
        }
        // Changes the operator made while no daemon ran are applied to the
        // saved state before it is restored, so none of them is undone.
        let mut journal = journal::lock(&config.state_file)?;
        let changes = journal.changes()?;
        if !changes.is_empty() {
            tracing::info!(
                "applying {} change(s) made with the CLI while the daemon was stopped",
                changes.len()
            );
            journal::apply_over(&mut saved, &mut over, &changes);
        }
        let operator_allowed = match &saved.allowed {
            Some(list) => list
                .iter()
                .filter_map(|n| crate::addr::parse_net(n).ok())
                .collect(),
            // A state from before the allowlist was kept: what the kernel
            // holds beyond the never-ban set is the operator's.
            None => {
                let protected = NeverBan::discover(
                    config.ignoreip.iter().map(|n| n.0),
                    [],
                    &Sources {
                        resolv_conf: &config.resolv_conf,
                        ..Sources::default()
                    },
                );
                let protected: BTreeSet<IpNet> = protected.nets().collect();
                maps.allowed()?
                    .into_iter()
                    .map(|a| a.net)
                    .filter(|n| !protected.contains(n))
                    .collect()
            }
        };
        let config_hooks = config.notify.hooks();
        let config_state_file = config.state_file.clone();
        let mut bans = BanManager::new(maps);
        let n = opened.bans_left();
        // One reader for both: the counts are taken once every ban is.
        let opened = std::cell::RefCell::new(opened);
        let counts = over.counts(std::iter::from_fn(|| opened.borrow_mut().next_count()));
        let saved_bans = over.bans(std::iter::from_fn(|| opened.borrow_mut().next_ban()));
        let r = bans.restore_from(&saved, (n, saved_bans), counts, pinned)?;
        let damaged = opened.borrow().damaged;
        tracing::info!(
            "bans restored: {} kept in the kernel, {} written again, {} adopted from the kernel, {} expired meanwhile",
            r.kept,
            r.reinstated,
            r.adopted,
            r.expired
        );
        if r.failed > 0 {
            tracing::error!(
                "{} saved ban(s) could not be written to the kernel (see above); the others are in force",
                r.failed
            );
        }
        let (snapshot_tell, snapshot_events) = tokio::sync::mpsc::unbounded_channel();
        let mut daemon = Self {
            packet_bans: PacketBans::new(
                config.flood.max_bans_per_minute,
                config.flood.max_packet_bans,
            ),
            config,
            jails: Vec::new(),
            jails_timezone: None,
            bans,
            never_ban: NeverBan::default(),
            last_never_ban: Instant::now(),
            last_count_prune: Instant::now(),
            refused: HashMap::new(),
            positions: saved.positions,
            operator_allowed,
            dirty: true,
            last_positions_save: Instant::now(),
            saved_positions: BTreeMap::new(),
            announce: Announcer::new(Notifier::start(&config_hooks)),
            fleet_plan: fleet::Plan::default(),
            fleet_tx,
            cursors: saved.cursors,
            feed_addrs: Vec::new(),
            changelog: ChangeLog::new(&config_state_file, replayed),
            snapshot_due: false,
            snapshot: None,
            snapshot_id: 0,
            snapshot_tell,
            snapshot_events: Some(snapshot_events),
            trust: super::trust::TrustState::new(),
        };
        daemon.apply_config(true)?;
        // What the journal changed, and what the restore found different
        // from the state (bans adopted from the kernel, bans ended), go to
        // the change log, not into a snapshot: a start costs the change, not
        // the table (a snapshot of a million bans is seconds). Once written,
        // the journal is emptied.
        for change in &changes {
            if let journal::Change::Ban { net, .. } | journal::Change::Unban { net } = change {
                if let Ok(net) = crate::addr::parse_net(net) {
                    daemon.bans.mark_changed(net);
                }
            }
        }
        let logged = daemon.append_changes(usize::MAX);
        daemon.changelog.flush();
        if logged && !daemon.changelog.take_failure() {
            journal.clear()?;
        } else {
            daemon.snapshot_due = true;
        }
        // A state damaged part way was moved aside: what was restored goes
        // into a new one.
        daemon.snapshot_due |= damaged;
        Ok(daemon)
    }
}
