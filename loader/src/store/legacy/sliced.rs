//! A snapshot written by a thread of its own from slices the daemon's loop
//! hands it, while the loop goes on banning. It replaces a forked child
//! (Redis's BGSAVE), which could inherit for ever a lock another thread of
//! the daemon held at the fork, and once did.
//!
//! The loop owns the tables and never stops for the whole of them: it walks
//! them a slice at a time between its other work (`bans::sliced`), and
//! this thread does what needs no tables: sorting the networks the walk
//! found, writing the records, the file's counts, the sync and the rename.
//! A slice is answered once written, so at most a few are in memory.
//!
//! What the file holds is "fuzzy", as a database's checkpoint is: each
//! network as it was when its slice was taken, not all at one instant. The
//! change log makes it exact: the snapshot covers the log up to its start
//! (which becomes the older log), and every change after the start is in
//! the new log, which a restore lays over the snapshot. A network that
//! changed meanwhile is in the new log with what it became, whatever the
//! snapshot caught of it.
use super::snapshot::{self, Strings};
use crate::store::records::State;
use anyhow::{anyhow, bail, Context as _, Result};
use ipnet::IpNet;
use std::{
    fs::{self, File},
    io::{BufWriter, Seek as _, Write as _},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// What the loop hands over, in this order: every `Keys`, one `Sort`,
/// the `Bans`, the `Counts`, `Finish`.
pub enum Part {
    /// Networks found by the walk (some twice: a network moved while the
    /// walk went on); sorted and made unique at `Sort`.
    Keys(Vec<IpNet>),
    Sort,
    /// Ban records (`snapshot::encode_ban`), and how many.
    Bans(Vec<u8>, u64),
    /// Count records (`snapshot::encode_count`), and how many.
    Counts(Vec<u8>, u64),
    /// Every part is in: sync, wait for the change log to hold every
    /// change made since the start (its answer: whether it wrote them
    /// all), then put the file in place.
    Finish(mpsc::Receiver<bool>),
}

/// What the thread says back; `id` is the snapshot's (a stopped one's late
/// words are told apart from the next one's).
#[derive(Debug)]
pub enum Event {
    /// A part other than `Sort` is written (or taken).
    Took { id: u64 },
    /// The networks, sorted, each once.
    Sorted { id: u64, keys: Vec<IpNet> },
    /// The snapshot is in place (how long it took), or failed.
    Done {
        id: u64,
        result: Result<Duration, String>,
    },
}

pub struct Writer {
    tx: Option<mpsc::Sender<Part>>,
    thread: Option<JoinHandle<()>>,
    /// Set when the loop no longer wants this snapshot: checked right
    /// before the rename, so one stuck on a stalled disk and let go never
    /// lands later over a newer state.
    cancelled: Arc<AtomicBool>,
}

impl Writer {
    /// Starts writing the state file `path` (its temporary file until
    /// `Finish`): `header` is everything but the bans and counts, `strings`
    /// every name the bans may carry. `tell` hears the thread's events.
    pub fn start(
        id: u64,
        path: PathBuf,
        header: State,
        strings: Strings,
        tell: impl Fn(Event) + Send + 'static,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let theirs = cancelled.clone();
        let thread = std::thread::Builder::new()
            .name("sipguard-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                let result = write_file(id, &path, &theirs, |out| {
                    write(id, out, &header, &strings, &rx, &tell)
                });
                // Stopped by the loop (it no longer wants this one): no word.
                if stopped(&result) {
                    return;
                }
                tell(Event::Done {
                    id,
                    result: result
                        .map(|()| started.elapsed())
                        .map_err(|e| format!("{e:#}")),
                });
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            cancelled,
        })
    }

    /// Hands a part over; an error once the thread has ended (it said why
    /// in its `Done`).
    pub fn send(&self, part: Part) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(part).ok())
            .ok_or_else(|| anyhow!("the snapshot's writer is gone"))
    }

    /// Stops the thread and waits for it: the file it was writing is never
    /// put in place.
    pub fn stop(self) {
        // What `Drop` does: cancel, close the channel, join.
        drop(self);
    }

    /// Stops the thread without waiting for it (stuck in a write to a
    /// stalled disk, it would hold the loop up as long): its file is never
    /// put in place, and the thread ends whenever the disk lets it.
    pub fn abandon(mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.tx = None;
        self.thread = None;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `path` through `write` into a temporary file of this snapshot's
/// own, syncs it, and renames it into place unless `cancelled`; removes
/// it on any error (a partial file would hold the space a retry needs).
fn write_file(
    id: u64,
    path: &Path,
    cancelled: &AtomicBool,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<mpsc::Receiver<bool>>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.snapshot-{id}.tmp"));
    let result = (|| -> Result<()> {
        let file = super::state::new_private_file(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let log_written = write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        // The change log holds every change since the start, or this
        // snapshot would drop what it skipped (a ban changed meanwhile).
        if !log_written.recv().unwrap_or(false) {
            bail!("the change log could not be written: the snapshot is not put in place");
        }
        if cancelled.load(Ordering::SeqCst) {
            bail!(STOPPED);
        }
        fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

const STOPPED: &str = "the snapshot was stopped";

fn stopped(result: &Result<()>) -> bool {
    result
        .as_ref()
        .is_err_and(|e| e.root_cause().to_string() == STOPPED)
}

/// Writes what the loop hands over; the change log's answer, once every
/// part is in.
fn write(
    id: u64,
    out: &mut BufWriter<File>,
    header: &State,
    strings: &Strings,
    rx: &mpsc::Receiver<Part>,
    tell: &impl Fn(Event),
) -> Result<mpsc::Receiver<bool>> {
    snapshot::write_head(out, header, strings)?;
    // The numbers of bans and counts are known at the end: written then,
    // over these.
    let bans_at = out.stream_position()?;
    out.write_all(&0u64.to_le_bytes())?;
    let (mut bans, mut counts, mut counts_at) = (0u64, 0u64, None);
    let mut keys = Vec::new();
    let log_written = loop {
        let Ok(part) = rx.recv() else {
            bail!(STOPPED);
        };
        match part {
            Part::Keys(mut more) => keys.append(&mut more),
            Part::Sort => {
                keys.sort_unstable();
                keys.dedup();
                keys.shrink_to_fit();
                tell(Event::Sorted {
                    id,
                    keys: std::mem::take(&mut keys),
                });
                continue;
            }
            Part::Bans(records, n) => {
                if counts_at.is_some() {
                    bail!("bans after counts");
                }
                out.write_all(&records)?;
                bans += n;
            }
            Part::Counts(records, n) => {
                if counts_at.is_none() {
                    counts_at = Some(out.stream_position()?);
                    out.write_all(&0u64.to_le_bytes())?;
                }
                out.write_all(&records)?;
                counts += n;
            }
            Part::Finish(log_written) => break log_written,
        }
        tell(Event::Took { id });
    };
    let counts_at = match counts_at {
        Some(at) => at,
        None => {
            let at = out.stream_position()?;
            out.write_all(&0u64.to_le_bytes())?;
            at
        }
    };
    out.write_all(snapshot::END)?;
    out.flush()?;
    let file = out.get_ref();
    file.write_all_at(&bans.to_le_bytes(), bans_at)?;
    file.write_all_at(&counts.to_le_bytes(), counts_at)?;
    Ok(log_written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{legacy::state, records::SavedBan};

    fn ban(net: &str, origin: Option<&str>) -> SavedBan {
        SavedBan {
            net: net.into(),
            jail: origin.unwrap_or("fs").into(),
            banned_at: 1_000,
            expires_at: Some(2_000),
            expires_mono: None,
            reason: "3 failures".into(),
            line: format!("failure from {net}"),
            all_ports: false,
            ports_only: origin.is_some(),
            origin: origin.map(Into::into),
            count: u32::from(origin.is_none()),
        }
    }

    /// The change log's answer: `ok`, at once.
    fn logged(ok: bool) -> mpsc::Receiver<bool> {
        let (tx, rx) = mpsc::channel();
        tx.send(ok).unwrap();
        rx
    }

    /// Everything the thread says, in order.
    fn start(
        dir: &std::path::Path,
        header: &State,
        strings: Strings,
    ) -> (Writer, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        let w = Writer::start(
            7,
            dir.join("state.json"),
            header.clone(),
            strings,
            move |e| {
                let _ = tx.send(e);
            },
        )
        .unwrap();
        (w, rx)
    }

    /// Parts written as the loop hands them make the state file a
    /// snapshot written whole would be, bans and counts numbered at the end.
    #[test]
    fn the_parts_make_the_snapshot_a_whole_write_makes() {
        let dir = tempfile::tempdir().unwrap();
        let bans = vec![
            ban("192.0.2.1/32", None),
            ban("192.0.2.1/32", Some("crowdsec")),
            ban("2001:db8::/64", None),
        ];
        let mut header = State {
            version: crate::store::records::VERSION,
            cursors: [("apiban".to_string(), "42".to_string())].into(),
            ..Default::default()
        };
        let strings = Strings::new(["fs", "3 failures", "crowdsec", "unused"].into_iter());
        let (w, events) = start(dir.path(), &header, strings.clone());
        let keys: Vec<IpNet> = ["2001:db8::/64", "192.0.2.1/32", "192.0.2.1/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        w.send(Part::Keys(keys)).unwrap();
        assert!(matches!(events.recv().unwrap(), Event::Took { id: 7 }));
        w.send(Part::Sort).unwrap();
        match events.recv().unwrap() {
            Event::Sorted { id: 7, keys } => assert_eq!(
                keys,
                [
                    "192.0.2.1/32".parse::<IpNet>().unwrap(),
                    "2001:db8::/64".parse().unwrap()
                ]
            ),
            e => panic!("{e:?}"),
        }
        for pair in bans.chunks(2) {
            let mut buf = Vec::new();
            for b in pair {
                assert!(snapshot::encode_ban(&mut buf, b, &strings).unwrap());
            }
            w.send(Part::Bans(buf, pair.len() as u64)).unwrap();
        }
        let mut buf = Vec::new();
        snapshot::encode_count(&mut buf, &("198.51.100.7/32".into(), 2, 500)).unwrap();
        w.send(Part::Counts(buf, 1)).unwrap();
        w.send(Part::Finish(logged(true))).unwrap();
        let mut took = 0;
        let done = loop {
            match events.recv().unwrap() {
                Event::Took { .. } => took += 1,
                Event::Done { id: 7, result } => break result,
                e => panic!("{e:?}"),
            }
        };
        assert_eq!(took, 3);
        done.unwrap();
        w.stop();
        let read = state::load(&dir.path().join("state.json")).unwrap();
        assert_eq!(read.bans, bans);
        assert_eq!(read.cursors, header.cursors);
        header.bans = bans;
        header.set_count(("198.51.100.7/32".into(), 2, 500));
        assert_eq!(
            read.counts().collect::<Vec<_>>(),
            header.counts().collect::<Vec<_>>()
        );
    }

    /// A state file already in place, to be left alone: its folder, path
    /// and what it holds.
    fn saved_before() -> (tempfile::TempDir, std::path::PathBuf, State) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let before = State {
            version: crate::store::records::VERSION,
            bans: vec![ban("203.0.113.9/32", None)],
            ..Default::default()
        };
        state::save(&path, &before).unwrap();
        (dir, path, before)
    }

    /// A snapshot stopped half way leaves the state file as it was, and
    /// says nothing after its stop.
    #[test]
    fn a_stopped_snapshot_leaves_the_state_file_alone() {
        let (dir, path, before) = saved_before();
        let strings = Strings::new(["fs", "3 failures"].into_iter());
        let (w, events) = start(dir.path(), &State::default(), strings.clone());
        let mut buf = Vec::new();
        snapshot::encode_ban(&mut buf, &ban("192.0.2.1/32", None), &strings).unwrap();
        w.send(Part::Bans(buf, 1)).unwrap();
        assert!(matches!(events.recv().unwrap(), Event::Took { .. }));
        w.stop();
        assert!(events.recv().is_err(), "no word after the stop");
        assert_eq!(state::load(&path).unwrap().bans, before.bans);
    }

    /// A change log that could not be written keeps the snapshot out of
    /// place (it would drop what the log was to hold), and leaves no
    /// partial file behind.
    #[test]
    fn a_snapshot_whose_change_log_failed_is_not_put_in_place() {
        let (dir, path, before) = saved_before();
        let (w, events) = start(dir.path(), &State::default(), Strings::default());
        w.send(Part::Finish(logged(false))).unwrap();
        match events.recv().unwrap() {
            Event::Done { result, .. } => {
                let e = result.unwrap_err();
                assert!(e.contains("change log"), "{e}");
            }
            e => panic!("{e:?}"),
        }
        w.stop();
        assert_eq!(state::load(&path).unwrap().bans, before.bans);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    /// A name missing from the table is refused, not written as a wrong
    /// index: the loop skips that ban (it changed since the start, so the
    /// new change log has it).
    #[test]
    fn a_ban_whose_names_are_not_in_the_table_is_not_encoded() {
        let strings = Strings::new(["fs"].into_iter());
        let mut buf = Vec::new();
        assert!(!snapshot::encode_ban(&mut buf, &ban("192.0.2.1/32", None), &strings).unwrap());
        assert!(buf.is_empty());
    }
}
