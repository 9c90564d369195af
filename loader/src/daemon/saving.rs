//! When the state is written: the tick's changes to the change log, a
//! snapshot once the log outgrows the table, read positions, everything at
//! stop.
use super::{boot::release_freed_memory, Daemon};
use crate::{
    bans::changes,
    bans::state::{self, Position, State},
    kernel::clock,
    store::legacy::sliced::Event,
};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Ban changes reach the state's change log within a tick (one line per
/// changed network, see `changes`); read positions, in their own small
/// file, at most this often (a crash re-reads at most this much log, and
/// lines older than findtime are never counted). Everything is written at exit. A ban made since the last
/// write is in the kernel map already, which a restart adopts (only a crash
/// followed by a reboot within a second loses one).
pub(super) const POSITIONS_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// Networks logged per tick (and per read of the logs that banned) at
/// most: a long remote list is logged over several turns, none of them
/// holding the loop up for long.
pub(super) const CHANGES_PER_TICK: usize = 10_000;

/// Change-log lines beyond the table's size before a snapshot replaces the
/// log (so a small table is not rewritten at every change either).
const CHANGELOG_MARGIN: usize = 50_000;

/// A snapshot written in the background that takes longer than this is
/// stopped and tried again (a million bans take about a second; a disk
/// that stalls for ever must not keep the change log growing for ever).
const SNAPSHOT_TIME_LIMIT: Duration = Duration::from_secs(600);

impl Daemon {
    pub(super) fn current_positions(&self) -> BTreeMap<String, Position> {
        let mut positions = self.positions.clone();
        for jail in &self.jails {
            positions.extend(jail.positions());
        }
        positions
    }

    /// Read positions alone, into their own small file.
    pub(super) fn save_positions(&mut self) {
        let positions = self.current_positions();
        match state::save_positions(&self.config.state_file, &positions) {
            Ok(()) => {
                self.last_positions_save = Instant::now();
                self.saved_positions = positions;
            }
            Err(e) => tracing::error!("saving read positions failed: {e:#}"),
        }
    }

    /// Everything of the state but its bans and counts.
    pub(super) fn snapshot_header(&self) -> State {
        State {
            version: state::VERSION,
            cursors: self.cursors.clone(),
            allowed: Some(
                self.operator_allowed
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A snapshot written while the loop goes on: the loop hands the
    /// tables over a slice at a time, a thread writes them (see
    /// `bans::sliced`); written here, on the loop, when the thread cannot
    /// be started.
    pub(super) fn start_snapshot(&mut self) {
        // The log holds every change up to now (the writer thread writes
        // it in order), and the snapshot covers exactly that log: it
        // becomes the older log, and later changes start a new one.
        // Changes not logged yet need not be: the snapshot takes each
        // network as it is when its slice is taken, and every change still
        // unlogged is logged before it goes in place (`finish_snapshot`).
        if self.changelog.rotate().is_err() {
            return self.save_bans();
        }
        let header = self.snapshot_header();
        self.snapshot_id += 1;
        let tell = self.snapshot_tell.clone();
        match self.bans.start_sliced(
            self.snapshot_id,
            self.config.state_file.clone(),
            &header,
            move |event| {
                let _ = tell.send(event);
            },
        ) {
            Ok(writing) => {
                self.snapshot = Some(writing);
                self.snapshot_due = false;
            }
            Err(e) => {
                tracing::warn!("{e:#}: writing the state on the loop instead");
                self.save_bans();
            }
        }
    }

    /// One of the snapshot writer's events: the next slices go out, or the
    /// snapshot is done.
    pub(super) fn on_snapshot(&mut self, event: Event) {
        let Some(writing) = &mut self.snapshot else {
            return;
        };
        let done = match writing.on_event(event, &self.bans) {
            Ok(None) if writing.ready_to_finish() => match self.finish_snapshot() {
                Ok(()) => return,
                Err(e) => Err(format!("{e:#}")),
            },
            Ok(None) => return,
            Ok(Some(done)) => done,
            Err(e) => Err(format!("{e:#}")),
        };
        let writing = self.snapshot.take().expect("a snapshot being written");
        match done {
            Ok(took) => {
                tracing::info!(
                    "state written in the background in {} ms ({} slices on the loop, the longest {:.1} ms)",
                    took.as_millis(),
                    writing.slices,
                    writing.longest.as_secs_f64() * 1e3
                );
                if let Err(e) = self.changelog.drop_older() {
                    tracing::error!("removing the older change log failed: {e:#}");
                }
            }
            Err(e) => {
                // Both logs stay: what they hold is safe, the next tick tries again.
                tracing::error!("saving state failed: {e}");
                self.snapshot_due = true;
                self.dirty = true;
            }
        }
        writing.stop();
    }

    /// Every slice is written: the change log gets every change made since
    /// the snapshot began (bans it skipped or caught half way among them),
    /// and the file goes in place once the log says they are written.
    fn finish_snapshot(&mut self) -> anyhow::Result<()> {
        // A slice of changes at a time, each handed to the writer thread,
        // which serializes and frees it: the records wait in its queue
        // until then (about the size of their JSON, which waited there
        // before the writer serialized).
        while self.bans.has_changes() {
            if !self.append_changes(CHANGES_PER_TICK) {
                anyhow::bail!("the change log could not take the changes made meanwhile");
            }
        }
        let log_written = self.changelog.barrier();
        self.snapshot
            .as_mut()
            .expect("a snapshot being written")
            .finish(log_written)
    }

    /// A snapshot that outlived its time limit (a stalled disk) is let go
    /// (never waited for: that would stall the loop as long), and tried again.
    pub(super) fn check_snapshot(&mut self) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|w| w.started.elapsed() > SNAPSHOT_TIME_LIMIT)
        {
            tracing::error!(
                "saving state failed: the snapshot took over {} s; trying again",
                SNAPSHOT_TIME_LIMIT.as_secs()
            );
            if let Some(w) = self.snapshot.take() {
                w.abandon();
            }
            self.snapshot_due = true;
            self.dirty = true;
        }
    }

    /// Bans and ban counts, written on the loop (at stop, or when no child
    /// can be made); read positions go to their own file.
    pub(super) fn save_bans(&mut self) {
        // A snapshot being written in the background is of an older table.
        if let Some(writing) = self.snapshot.take() {
            writing.stop();
        }
        // The log first holds every change up to now, written: a crash
        // between the snapshot and the log's removal then replays lines
        // that say what the snapshot says.
        self.append_changes(usize::MAX);
        self.changelog.flush();
        let header = self.snapshot_header();
        let bans = &mut self.bans;
        match state::write_atomically(&self.config.state_file, |out| {
            bans.write_snapshot(out, &header)
        }) {
            Ok(()) => {
                // The log took every change above: none is left to write.
                self.dirty = false;
                self.snapshot_due = false;
                if let Err(e) = self.changelog.clear() {
                    tracing::error!("emptying the change log failed: {e:#}");
                }
            }
            Err(e) => {
                tracing::error!("saving state failed: {e:#}");
                self.snapshot_due = true;
            }
        }
        // The sorted index and the records made for writing are gone: give
        // their memory back.
        release_freed_memory();
    }

    /// The tick's ban changes, appended to the change log: the cost of
    /// what changed, not of the table. Once the log is as long as the table
    /// (plus a margin), a snapshot replaces both.
    pub(super) fn log_changes(&mut self) {
        if self.changelog.take_failure() {
            self.snapshot_due = true;
        }
        if self.snapshot_wanted() {
            return self.start_snapshot();
        }
        // While the writer has a turn's worth left to write (a slow disk),
        // changes wait in the ban manager, which holds each network once:
        // handed over, they would wait as records, as many as a burst made
        // (about 400 bytes a ban).
        if self.changelog.waiting() >= CHANGES_PER_TICK {
            return;
        }
        if self.append_changes(CHANGES_PER_TICK) && !self.bans.has_changes() {
            self.dirty = false;
        }
    }

    /// A snapshot is due (the last one failed, or the log outgrew the
    /// table) and none is being written: while one is, changes go on into
    /// the new log.
    pub(super) fn snapshot_wanted(&self) -> bool {
        self.snapshot.is_none()
            && (self.snapshot_due || self.changelog.lines > CHANGELOG_MARGIN + self.bans.records())
    }

    /// Hands what changed to the change log's writer; false (and a
    /// snapshot due) when it cannot take them.
    pub(super) fn append_changes(&mut self, limit: usize) -> bool {
        let clock = clock::System;
        let mut lines = vec![changes::Change::Clock {
            boot_id: crate::kernel::clock::Clock::boot_id(&clock),
            saved_at: crate::kernel::clock::Clock::wall_ms(&clock),
        }];
        lines.extend(self.bans.take_changes(limit));
        lines.push(changes::Change::Meta {
            allowed: self
                .operator_allowed
                .iter()
                .map(|n| n.to_string())
                .collect(),
            cursors: self.cursors.clone(),
        });
        match self.changelog.append(lines) {
            Ok(()) => true,
            Err(e) => {
                // What was taken is not in the log: a snapshot next.
                tracing::error!(
                    "appending to the change log failed: {e:#}; writing a snapshot next"
                );
                self.snapshot_due = true;
                false
            }
        }
    }

    /// Everything, at exit.
    pub(super) fn save(&mut self) {
        self.save_bans();
        // The log's removal done before the process ends.
        self.changelog.flush();
        self.save_positions();
    }
}
