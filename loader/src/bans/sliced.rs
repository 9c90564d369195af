//! The ban manager's tables written out a slice at a time, between the
//! loop's other work, to the snapshot's writer thread
//! (`store::legacy::sliced`, which says why the result is right although
//! the tables change meanwhile).
//!
//! Three walks, each a slice per step: the networks banned (gathered by
//! slot, sorted by the thread: a restore finds them in the pinned maps in
//! one walk), their bans in that order, then the counts by slot. No step
//! costs the loop more than a slice; none copies a table.
use super::{
    saved::{counted_at, saved_remote},
    BanManager,
};
use crate::{
    kernel::clock::{self, Clock as _},
    store::legacy::{
        sliced::{Event, Part, Writer},
        snapshot::{self, Strings},
    },
    store::records::State,
};
use anyhow::Result;
use ipnet::IpNet;
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// Slots looked at per step while the networks are gathered (a copy of
/// each network). The sizes keep a step within a few milliseconds on a
/// busy box (`bench scale`: 4 000 networks a step took up to 6.6 ms).
const SLOTS_PER_SLICE: u32 = 50_000;
/// Networks whose bans are written per step (the matched lines with them).
const NETS_PER_SLICE: usize = 2_000;
/// Counts per step.
const COUNTS_PER_SLICE: u32 = 25_000;
/// Slices handed over and not yet written, at most: the thread never
/// waits for the loop, and the loop never runs ahead of the disk.
const IN_FLIGHT: usize = 2;

/// A snapshot being written.
pub struct Sliced {
    id: u64,
    writer: Writer,
    strings: Strings,
    phase: Phase,
    in_flight: usize,
    pub started: Instant,
    /// Steps taken on the loop, and the longest.
    pub slices: u32,
    pub longest: Duration,
}

enum Phase {
    Gather {
        local: u32,
        remote: u32,
    },
    Sorting,
    Bans {
        keys: Vec<IpNet>,
        at: usize,
    },
    Counts {
        at: u32,
    },
    /// Every slice is handed over: `finish` next.
    Counted,
    Finishing,
}

impl BanManager {
    /// Starts a snapshot of the tables into the state file `path`, with
    /// `header` (everything but bans and counts). `tell` hears the
    /// writer's events, which go to `Sliced::on_event` on the loop.
    pub fn start_sliced(
        &self,
        id: u64,
        path: PathBuf,
        header: &State,
        tell: impl Fn(Event) + Send + 'static,
    ) -> Result<Sliced> {
        let clock = clock::System;
        let header = State {
            boot_id: Some(clock.boot_id()),
            saved_at: Some(clock.wall_ms()),
            ..header.clone()
        };
        // Every name a ban holds now: a ban with a name not in here changed
        // since, and the new change log has it.
        let strings = Strings::new(self.names.iter().chain(self.remote.names()));
        let writer = Writer::start(id, path, header, strings.clone(), tell)?;
        let mut sliced = Sliced {
            id,
            writer,
            strings,
            phase: Phase::Gather {
                local: 0,
                remote: 0,
            },
            in_flight: 0,
            started: Instant::now(),
            slices: 0,
            longest: Duration::ZERO,
        };
        sliced.pump(self)?;
        Ok(sliced)
    }
}

impl Sliced {
    /// Takes in one of the writer's events: the next slices go out, or the
    /// snapshot is done (`Some`, with how long it took or why it failed).
    /// An older snapshot's late events are ignored.
    pub fn on_event(
        &mut self,
        event: Event,
        bans: &BanManager,
    ) -> Result<Option<Result<Duration, String>>> {
        match event {
            Event::Took { id } if id == self.id => {
                self.in_flight -= 1;
                self.pump(bans)?;
            }
            Event::Sorted { id, keys } if id == self.id => {
                self.in_flight -= 1;
                self.phase = Phase::Bans { keys, at: 0 };
                self.pump(bans)?;
            }
            Event::Done { id, result } if id == self.id => return Ok(Some(result)),
            _ => {}
        }
        Ok(None)
    }

    /// Every slice is handed over: the caller logs every change made
    /// since the start, then calls `finish`.
    pub fn ready_to_finish(&self) -> bool {
        matches!(self.phase, Phase::Counted)
    }

    /// Lets the writer put the file in place once `log_written` says the
    /// change log holds every change made since the start (a ban the walk
    /// skipped or caught half way is there).
    pub fn finish(&mut self, log_written: std::sync::mpsc::Receiver<bool>) -> Result<()> {
        self.phase = Phase::Finishing;
        self.writer.send(Part::Finish(log_written))
    }

    /// Stops the writer; the state file stays as it was.
    pub fn stop(self) {
        self.writer.stop();
    }

    /// Stops the writer without waiting for it (see `Writer::abandon`).
    pub fn abandon(self) {
        self.writer.abandon();
    }

    /// Hands slices over until `IN_FLIGHT` wait, or the thread has to
    /// answer first.
    fn pump(&mut self, bans: &BanManager) -> Result<()> {
        while self.in_flight < IN_FLIGHT {
            let started = Instant::now();
            let Some(part) = self.next_part(bans)? else {
                break;
            };
            self.writer.send(part)?;
            self.in_flight += 1;
            self.slices += 1;
            self.longest = self.longest.max(started.elapsed());
        }
        Ok(())
    }

    fn next_part(&mut self, bans: &BanManager) -> Result<Option<Part>> {
        Ok(Some(match &mut self.phase {
            Phase::Gather { local, remote } => {
                if *local < bans.bans.slot_end() {
                    let to = local.saturating_add(SLOTS_PER_SLICE);
                    let keys = bans.bans.slots_in(*local..to).map(|(n, _)| *n).collect();
                    *local = to;
                    Part::Keys(keys)
                } else if *remote < bans.remote.slot_end() {
                    let to = remote.saturating_add(SLOTS_PER_SLICE);
                    let keys = bans.remote.nets_in(*remote..to).copied().collect();
                    *remote = to;
                    Part::Keys(keys)
                } else {
                    self.phase = Phase::Sorting;
                    Part::Sort
                }
            }
            Phase::Sorting | Phase::Counted | Phase::Finishing => return Ok(None),
            Phase::Bans { keys, at } => {
                if *at >= keys.len() {
                    self.phase = Phase::Counts { at: 0 };
                    return self.next_part(bans);
                }
                let to = (*at + NETS_PER_SLICE).min(keys.len());
                let part = bans_of(&self.strings, &keys[*at..to], bans)?;
                *at = to;
                part
            }
            Phase::Counts { at } => {
                if *at >= bans.counts.slot_end() {
                    self.phase = Phase::Counted;
                    return Ok(None);
                }
                let to = at.saturating_add(COUNTS_PER_SLICE);
                let now = now();
                let (mut buf, mut n) = (Vec::new(), 0);
                for (net, (count, at_ns)) in bans.counts.slots_in(*at..to) {
                    let record = (net.to_string(), *count, counted_at(*at_ns, now));
                    snapshot::encode_count(&mut buf, &record)?;
                    n += 1;
                }
                *at = to;
                Part::Counts(buf, n)
            }
        }))
    }
}

/// The records of every ban of `nets` now (this box's first, then the
/// other origins', as a whole write has them).
fn bans_of(strings: &Strings, nets: &[IpNet], bans: &BanManager) -> Result<Part> {
    let now = now();
    let (mut buf, mut n) = (Vec::with_capacity(nets.len() * 192), 0);
    for net in nets {
        let local = bans.bans.get(net).map(|b| bans.saved_local(net, b, now));
        let remote = bans.remote.get(net).map(|r| saved_remote(net, &r, now));
        for saved in local.into_iter().chain(remote) {
            // False: a name added since the start, so a ban changed
            // since, which the new change log holds.
            if snapshot::encode_ban(&mut buf, &saved, strings)? {
                n += 1;
            }
        }
    }
    Ok(Part::Bans(buf, n))
}

fn now() -> (u64, i64) {
    let clock = clock::System;
    (clock.mono_ns(), clock.wall_ms())
}
