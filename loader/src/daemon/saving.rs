//! What the daemon hands the store: each tick's changes (bans, counts, the
//! allowlist, feed cursors, read positions that moved), as one batch the
//! store's writer commits in one transaction on its own thread. The loop
//! never waits for the disk, except at stop.
use super::Daemon;
use crate::{
    bans::state::Position,
    kernel::clock::{self, Clock as _},
    store::{legacy::changes::Change, Batch},
};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Read positions go with a tick's batch at most this often when nothing
/// else changed (a crash re-reads at most this much log, and lines older
/// than findtime are never counted).
pub(super) const POSITIONS_SAVE_INTERVAL: Duration = Duration::from_secs(5);
/// Networks handed over per tick at most: a long remote list is saved over
/// several ticks, none of them holding the loop up for long.
const CHANGES_PER_TICK: usize = 100_000;

impl Daemon {
    pub(super) fn current_positions(&self) -> BTreeMap<String, Position> {
        let mut positions = self.positions.clone();
        for jail in &self.jails {
            positions.extend(jail.positions());
        }
        positions
    }

    /// Once a tick: what changed, when anything did.
    pub(super) fn save_tick(&mut self, positions_due: bool) {
        if self.dirty || positions_due {
            self.save_changes(CHANGES_PER_TICK);
        }
    }

    /// Up to `limit` changed networks, the allowlist, the cursors that moved
    /// and the read positions that moved, as one batch for the writer.
    pub(super) fn save_changes(&mut self, limit: usize) {
        self.recover_lost();
        let clock = clock::System;
        let mut lines = vec![Change::Clock {
            boot_id: clock.boot_id(),
            saved_at: clock.wall_ms(),
        }];
        lines.extend(self.bans.take_changes(limit));
        let mut batch = Batch::from_changes(lines);
        batch.allowed = Some(self.allowed_list());
        batch.cursors_since(&self.saved_cursors, &self.cursors);
        let positions = self.current_positions();
        batch.positions_since(&self.saved_positions, &positions);
        let Some(store) = &mut self.store else {
            return;
        };
        match store.send(batch) {
            Ok(_) => {
                self.saved_cursors.clone_from(&self.cursors);
                self.saved_positions = positions;
                self.last_positions_save = Instant::now();
                if !self.bans.has_changes() {
                    self.dirty = false;
                }
            }
            Err(e) => {
                // The writer is gone: nothing can be saved from now on.
                tracing::error!("saving state failed: {e:#}");
            }
        }
        self.report_failure();
    }

    /// When the writer had to drop batches it could not write (the disk
    /// full for long), the whole state goes next, replacing the database's.
    fn recover_lost(&mut self) {
        if !self.store.as_ref().is_some_and(|s| s.progress().lost) {
            return;
        }
        tracing::warn!(
            "state: batches were lost while the disk refused them; writing the whole state again"
        );
        let mut batch = self.bans.whole_batch();
        batch.allowed = Some(self.allowed_list());
        batch.cursors = self
            .cursors
            .iter()
            .map(|(f, c)| (f.clone(), Some(c.clone())))
            .collect();
        batch.positions = self
            .current_positions()
            .into_iter()
            .map(|(p, at)| (p, Some(at)))
            .collect();
        if let Some(Err(e)) = self.store.as_mut().map(|s| s.send(batch)) {
            tracing::error!("saving state failed: {e:#}");
        }
    }

    /// A batch the writer could not commit (it tries again with the next
    /// one), told once per failure.
    fn report_failure(&mut self) {
        if let Some((seq, why)) = self.store.as_ref().and_then(|s| s.take_failure()) {
            tracing::error!("saving state failed (batch {seq}, tried again with the next): {why}");
        }
    }

    fn allowed_list(&self) -> Vec<String> {
        self.operator_allowed
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// Everything, at exit, and waited for; the database checkpointed (its
    /// log folded in), so the file alone holds the state.
    pub(super) fn save(&mut self) {
        self.save_changes(usize::MAX);
        if let Some(Err(e)) = self.store.take().map(|s| s.close()) {
            tracing::error!("saving state at stop failed: {e:#}");
        }
    }
}
