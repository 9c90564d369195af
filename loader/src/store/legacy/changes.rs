//! The state's change log (`state.changes` beside `state.json`): what the
//! bans became since the last full snapshot, one JSON line per network that
//! changed, appended once a tick and synced. Writing costs what changed, not
//! the table: a box holding a million bans (a CrowdSec list, say) that bans
//! one more source writes one line, not 150 MB. The snapshot is rewritten
//! (and the log emptied) only when the log has grown as large as the table,
//! and at stop; a start logs what it changed (the journal's changes, bans
//! adopted from the kernel or ended), so a log can span boots: `Clock`
//! lines say which boot the lines after them come from.
//!
//! A snapshot written in the background (see `background`) covers the log
//! as it was when it began: the log is then moved to `state.changes.old`
//! and the lines after go to a new `state.changes`. A start replays the old
//! log, then the new; the old one is removed once its snapshot is in place.
//!
//! Each line says what a network's bans *are* (not what happened to them),
//! so replaying a line twice, or lines the snapshot already holds, changes
//! nothing; a line torn by a crash mid-write is the last one, and skipped.
pub use super::overrides::Overrides;
use crate::store::records::{Count, SavedBan, State};
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, Write as _},
    path::{Path, PathBuf},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// Every ban of `net` now, whatever its origin (none: unbanned).
    Net { net: String, bans: Vec<SavedBan> },
    /// `net`'s ban count and when its last ban began (Unix ms); 0: forgotten.
    Count { net: String, n: u32, at: i64 },
    /// The operator's allowlist and the feeds' cursors, whole (both small).
    Meta {
        allowed: Vec<String>,
        cursors: BTreeMap<String, String>,
    },
    /// The boot and wall time the following lines were written at.
    Clock { boot_id: String, saved_at: i64 },
}

pub fn path(state: &Path) -> PathBuf {
    state.with_extension("changes")
}

/// The log a snapshot being written covers (see the module's text).
pub fn older_path(state: &Path) -> PathBuf {
    state.with_extension("changes.old")
}

/// The open log. Lines are serialized, written and synced by a writer
/// thread of the log's own, in order: a sync (tens of milliseconds on a
/// busy disk) never holds up the daemon's loop, nor does the JSON (a third
/// of what logging a change cost the loop in a burst).
pub struct ChangeLog {
    tx: std::sync::mpsc::Sender<Write>,
    /// Set by the writer when a write failed: a snapshot is due.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Lines handed over and not yet taken by the writer.
    waiting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Lines handed over since the log was last emptied.
    pub lines: usize,
}

enum Write {
    Lines(Vec<Change>),
    /// Empties both logs: a snapshot holds all of them.
    Clear,
    /// The log so far becomes the older log (added to it, if one is left
    /// from a snapshot that failed); the next lines start a new one.
    Rotate,
    /// Removes the older log: its snapshot is in place.
    DropOlder,
    /// Answered once everything before it is written: whether every write
    /// since the log was last rotated or cleared went well.
    Barrier(std::sync::mpsc::Sender<bool>),
}

impl ChangeLog {
    /// The log of `state` (what it holds was replayed by `replay`).
    pub fn new(state: &Path, lines: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Write>();
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let paths = (path(state), older_path(state));
        let (flag, left) = (failed.clone(), waiting.clone());
        std::thread::Builder::new()
            .name("sipguard-changes".into())
            .spawn(move || writer(&paths.0, &paths.1, &rx, &flag, &left))
            .expect("cannot start the change log's writer");
        Self {
            tx,
            failed,
            waiting,
            lines,
        }
    }

    /// Hands `changes` to the writer (a vector is moved, a slice copied).
    pub fn append(&mut self, changes: impl Into<Vec<Change>>) -> Result<()> {
        let changes = changes.into();
        if changes.is_empty() {
            return Ok(());
        }
        let n = changes.len();
        self.waiting
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.send(Write::Lines(changes)) {
            // Nobody will take them: they must not hold the gate shut.
            self.waiting
                .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
        self.lines += n;
        Ok(())
    }

    /// Lines handed over that the writer has not taken yet (a slow disk).
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn send(&self, w: Write) -> Result<()> {
        self.tx
            .send(w)
            .map_err(|_| anyhow::anyhow!("the change log's writer is gone"))
    }

    /// Empties the log once what was handed over before is written: a
    /// snapshot now holds all of it.
    pub fn clear(&mut self) -> Result<()> {
        self.send(Write::Clear)?;
        self.lines = 0;
        Ok(())
    }

    /// The log so far is what a snapshot about to be written covers: it
    /// becomes the older log, and later lines go to a new one.
    pub fn rotate(&mut self) -> Result<()> {
        self.send(Write::Rotate)?;
        self.lines = 0;
        Ok(())
    }

    /// The snapshot covering the older log is in place: the older log goes.
    pub fn drop_older(&self) -> Result<()> {
        self.send(Write::DropOlder)
    }

    /// Waits until everything handed over is written and synced.
    pub fn flush(&self) {
        let _ = self.barrier().recv();
    }

    /// Answers, once everything handed over so far is written and synced,
    /// whether all of it was (a snapshot puts itself in place only then:
    /// the log must hold every change it may have missed).
    pub fn barrier(&self) -> std::sync::mpsc::Receiver<bool> {
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = self.tx.send(Write::Barrier(tx));
        rx
    }

    /// True once a write failed since the last call (a snapshot is due).
    pub fn take_failure(&self) -> bool {
        self.failed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

fn writer(
    path: &Path,
    older: &Path,
    rx: &std::sync::mpsc::Receiver<Write>,
    failed: &std::sync::atomic::AtomicBool,
    waiting: &std::sync::atomic::AtomicUsize,
) {
    let mut file: Option<fs::File> = None;
    // A write of this log failed since it was begun (rotated or cleared):
    // a snapshot's barrier answers from this, which `take_failure` does
    // not reset (a snapshot must not land over lines that were lost).
    let mut failed_since_rotate = false;
    // What the next turn takes, when gathering lines met something else.
    let mut next: Option<Write> = None;
    while let Some(w) = next.take().or_else(|| rx.recv().ok()) {
        let result = match w {
            Write::Lines(changes) => (|| -> Result<()> {
                if file.is_none() {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    file = Some(
                        fs::OpenOptions::new()
                            .create(true)
                            .read(true)
                            .append(true)
                            .mode(0o600)
                            .open(path)
                            .with_context(|| format!("cannot open {}", path.display()))?,
                    );
                    // A crash tore the last line: the next must not join it.
                    super::torn::cut_torn_tail(file.as_ref().expect("opened"), path)?;
                }
                let f = file.as_mut().expect("opened");
                // Every batch of lines waiting goes out with one sync (a
                // burst read in many small turns costs one sync, not one a
                // turn), each written as it is taken: what is held at once
                // is one batch, not all that waited.
                // Chained for at most UNSYNCED_FOR: a burst that keeps
                // handing batches over while each is written would
                // otherwise leave them all unsynced until it ends.
                let mut buf = Vec::new();
                let mut batch = Some(changes);
                let first = std::time::Instant::now();
                let written = (|| -> Result<()> {
                    while let Some(changes) = batch.take() {
                        waiting.fetch_sub(changes.len(), std::sync::atomic::Ordering::Relaxed);
                        buf.clear();
                        serialize(&changes, &mut buf)?;
                        drop(changes);
                        f.write_all(&buf)?;
                        if first.elapsed() >= UNSYNCED_FOR {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(Write::Lines(more)) => batch = Some(more),
                            Ok(other) => next = Some(other),
                            Err(_) => {}
                        }
                    }
                    Ok(f.sync_data()?)
                })();
                if written.is_err() {
                    // Reopened for the next lines, which cuts what this
                    // write left torn: a line glued to it would be lost.
                    file = None;
                }
                written
            })(),
            Write::Barrier(done) => {
                let _ = done.send(!failed_since_rotate);
                Ok(())
            }
            Write::Clear => {
                file = None;
                failed_since_rotate = false;
                remove(older).and_then(|()| remove(path))
            }
            Write::Rotate => {
                file = None;
                failed_since_rotate = false;
                rotate(path, older)
            }
            Write::DropOlder => remove(older),
        };
        if let Err(e) = result {
            tracing::error!("change log: {e:#}; writing a snapshot next");
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            failed_since_rotate = true;
        }
    }
}

/// `changes` as the log's lines, one JSON object each.
/// The longest the writer chains batches before it syncs them (see the
/// writer's loop): what a crash can lose of a burst already handed over.
const UNSYNCED_FOR: std::time::Duration = std::time::Duration::from_millis(200);

fn serialize(changes: &[Change], buf: &mut Vec<u8>) -> Result<()> {
    for c in changes {
        serde_json::to_writer(&mut *buf, c)?;
        buf.push(b'\n');
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("cannot remove {}", path.display())))
        }
        _ => Ok(()),
    }
}

/// Makes the log at `path` the older log. An older log still there (its
/// snapshot failed) keeps its lines, and this log's follow them.
fn rotate(path: &Path, older: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // Neither may end in a torn line, or the lines after it join it.
    let this = fs::OpenOptions::new().read(true).append(true).open(path);
    super::torn::cut_torn_tail(
        &this.with_context(|| format!("cannot open {}", path.display()))?,
        path,
    )?;
    if older.exists() {
        let mut to = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(older)
            .with_context(|| format!("cannot open {}", older.display()))?;
        super::torn::cut_torn_tail(&to, older)?;
        let mut from =
            fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        std::io::copy(&mut from, &mut to)
            .with_context(|| format!("cannot add {} to {}", path.display(), older.display()))?;
        to.sync_data()?;
        return remove(path);
    }
    fs::rename(path, older)
        .with_context(|| format!("cannot move {} to {}", path.display(), older.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the logs of `state_path`, the older first: `header` (everything
/// of the state but its bans and counts) is updated in place; what they say
/// of bans and counts is returned, with the lines applied.
pub fn read(state_path: &Path, header: &mut State) -> Result<(usize, Overrides)> {
    let mut over = Overrides::default();
    let mut applied = 0;
    for log in [older_path(state_path), path(state_path)] {
        applied += read_one(&log, header, &mut over)?;
    }
    Ok((applied, over))
}

fn read_one(log: &Path, header: &mut State, over: &mut Overrides) -> Result<usize> {
    let file = match fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", log.display())),
    };
    let mut applied = 0;
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line?;
        let Ok(change) = serde_json::from_slice::<Change>(&line) else {
            // Torn by a crash mid-write: only ever the last line.
            tracing::warn!(
                "change log: skipping an unreadable line ({} bytes)",
                line.len()
            );
            continue;
        };
        applied += 1;
        match change {
            Change::Net { net, bans } => match crate::addr::parse_net(&net) {
                Ok(net) => {
                    over.nets.insert(net, bans);
                }
                Err(_) => tracing::warn!("change log: skipping unreadable network {net:?}"),
            },
            Change::Count { net, n, at } => {
                over.counts.insert(net, (n, at));
            }
            Change::Meta { allowed, cursors } => {
                header.allowed = Some(allowed);
                header.cursors = cursors;
            }
            Change::Clock { boot_id, saved_at } => {
                // Lines of a later boot: the monotonic deadlines of the
                // bans so far are of an earlier one, and mean nothing now
                // (their wall-time ends stand).
                if header.boot_id.as_deref() != Some(boot_id.as_str()) {
                    over.boot_over = true;
                    for b in over.nets.values_mut().flatten() {
                        b.expires_mono = None;
                    }
                }
                header.boot_id = Some(boot_id);
                header.saved_at = Some(saved_at);
            }
        }
    }
    Ok(applied)
}

/// Applies the log of `state_path` to a whole `state`; returns the lines
/// applied.
pub fn replay(state_path: &Path, state: &mut State) -> Result<usize> {
    let snapshot = std::mem::take(&mut state.bans);
    let (applied, mut over) = read(state_path, state)?;
    let counts: Vec<Count> = state.counts().collect();
    state.ban_counts.clear();
    state.ban_counted_at.clear();
    for count in over.counts(counts.into_iter()).collect::<Vec<_>>() {
        state.set_count(count);
    }
    state.bans = over.bans(snapshot.into_iter()).collect();
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(net: &str, jail: &str) -> SavedBan {
        SavedBan {
            net: net.into(),
            jail: jail.into(),
            banned_at: 1,
            expires_at: None,
            expires_mono: None,
            reason: "r".into(),
            line: String::new(),
            all_ports: false,
            ports_only: false,
            origin: None,
            count: 0,
        }
    }

    /// A write that failed is told to a snapshot's barrier even once the
    /// tick took the failure, until the log is begun anew.
    #[test]
    fn a_failed_write_is_told_to_the_barrier_until_the_log_is_begun_anew() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.json");
        // Lines cannot be written where a folder stands.
        fs::create_dir(path(&state_path)).unwrap();
        let mut log = ChangeLog::new(&state_path, 0);
        let line = |n| Change::Count {
            net: "192.0.2.1/32".into(),
            n,
            at: 0,
        };
        log.append(&[line(1)]).unwrap();
        assert!(!log.barrier().recv().unwrap());
        assert!(log.take_failure(), "the tick learns of it");
        assert!(
            !log.barrier().recv().unwrap(),
            "and so does a snapshot, still"
        );
        fs::remove_dir(path(&state_path)).unwrap();
        log.rotate().unwrap();
        log.append(&[line(2)]).unwrap();
        assert!(log.barrier().recv().unwrap());
        let mut st = State::default();
        replay(&state_path, &mut st).unwrap();
        assert_eq!(st.ban_counts.get("192.0.2.1/32"), Some(&2));
    }

    #[test]
    fn a_rotated_log_is_replayed_before_the_new_one_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.json");
        let net = |n: &str, jails: &[&str]| Change::Net {
            net: n.into(),
            bans: jails.iter().map(|j| ban(n, j)).collect(),
        };
        let nets = |st: &State| -> Vec<(String, String)> {
            let mut v: Vec<_> = st
                .bans
                .iter()
                .map(|b| (b.net.clone(), b.jail.to_string()))
                .collect();
            v.sort();
            v
        };
        let mut log = ChangeLog::new(&state_path, 0);
        log.append(&[net("192.0.2.1/32", &["a"]), net("192.0.2.2/32", &["a"])])
            .unwrap();
        // A background snapshot begins: what follows goes to a new log.
        log.rotate().unwrap();
        assert_eq!(log.lines, 0);
        log.append(&[net("192.0.2.1/32", &[]), net("192.0.2.3/32", &["b"])])
            .unwrap();
        log.flush();
        assert!(older_path(&state_path).exists() && path(&state_path).exists());
        // Before its snapshot is in place: the older log, then the new one.
        let mut st = State::default();
        assert_eq!(replay(&state_path, &mut st).unwrap(), 4);
        let want = [
            ("192.0.2.2/32".to_string(), "a".to_string()),
            ("192.0.2.3/32".to_string(), "b".to_string()),
        ];
        assert_eq!(nets(&st), want);
        // That snapshot failed; the next rotation keeps both logs' lines,
        // in order.
        log.append(&[net("192.0.2.4/32", &["c"])]).unwrap();
        log.rotate().unwrap();
        log.append(&[net("192.0.2.4/32", &[])]).unwrap();
        log.flush();
        let mut st = State::default();
        assert_eq!(replay(&state_path, &mut st).unwrap(), 6);
        assert_eq!(nets(&st), want);
        // The snapshot is in place: it holds the older log's bans, and the
        // new log's lines replay over it.
        let snapshot = State {
            bans: vec![
                ban("192.0.2.2/32", "a"),
                ban("192.0.2.3/32", "b"),
                ban("192.0.2.4/32", "c"),
            ],
            ..Default::default()
        };
        log.drop_older().unwrap();
        log.flush();
        assert!(!older_path(&state_path).exists());
        let mut st = snapshot.clone();
        assert_eq!(replay(&state_path, &mut st).unwrap(), 1);
        assert_eq!(nets(&st), want);
        // A snapshot written on the spot empties both.
        log.rotate().unwrap();
        log.append(&[net("192.0.2.5/32", &["d"])]).unwrap();
        log.clear().unwrap();
        log.flush();
        assert!(!older_path(&state_path).exists() && !path(&state_path).exists());
    }

    #[test]
    fn replays_onto_the_snapshot_idempotently_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.json");
        let snapshot = State {
            bans: vec![ban("192.0.2.1/32", "a"), ban("192.0.2.2/32", "b")],
            ..Default::default()
        };
        let mut log = ChangeLog::new(&state_path, 0);
        let changes = vec![
            Change::Clock {
                boot_id: "boot".into(),
                saved_at: 42,
            },
            Change::Net {
                net: "192.0.2.1/32".into(),
                bans: vec![],
            },
            Change::Net {
                net: "192.0.2.3/32".into(),
                bans: vec![ban("192.0.2.3/32", "c"), {
                    let mut b = ban("192.0.2.3/32", "crowdsec");
                    b.origin = Some("crowdsec".into());
                    b
                }],
            },
            Change::Count {
                net: "192.0.2.3/32".into(),
                n: 2,
                at: 7,
            },
            Change::Meta {
                allowed: vec!["10.0.0.0/8".into()],
                cursors: BTreeMap::from([("apiban".into(), "300".into())]),
            },
        ];
        log.append(changes.clone()).unwrap();
        assert_eq!(log.lines, 5);
        // Twice: the same result.
        log.append(changes.clone()).unwrap();
        log.flush();
        // A crash mid-write.
        fs::OpenOptions::new()
            .append(true)
            .open(path(&state_path))
            .unwrap()
            .write_all(b"{\"op\":\"net\",\"net\":\"192.0")
            .unwrap();
        let mut st = snapshot.clone();
        assert_eq!(replay(&state_path, &mut st).unwrap(), 10);
        st.bans
            .sort_by(|a, b| (&a.net, &a.jail).cmp(&(&b.net, &b.jail)));
        let nets: Vec<(&str, &str)> = st.bans.iter().map(|b| (b.net.as_str(), &*b.jail)).collect();
        assert_eq!(
            nets,
            [
                ("192.0.2.2/32", "b"),
                ("192.0.2.3/32", "c"),
                ("192.0.2.3/32", "crowdsec")
            ]
        );
        assert_eq!(st.ban_counts["192.0.2.3/32"], 2);
        assert_eq!(st.cursors["apiban"], "300");
        assert_eq!(
            (st.boot_id.as_deref(), st.saved_at),
            (Some("boot"), Some(42))
        );
        log.clear().unwrap();
        log.flush();
        let mut st = snapshot.clone();
        assert_eq!(replay(&state_path, &mut st).unwrap(), 0);
        assert_eq!(st, snapshot);
    }

    #[test]
    fn a_later_boot_voids_the_monotonic_deadlines_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.json");
        let mut old = ban("192.0.2.1/32", "a");
        old.expires_at = Some(5_000);
        old.expires_mono = Some(9_000_000_000);
        let snapshot = State {
            boot_id: Some("boot-1".into()),
            bans: vec![old],
            ..Default::default()
        };
        let mut same_boot = ban("192.0.2.2/32", "b");
        same_boot.expires_mono = Some(7);
        let mut log = ChangeLog::new(&state_path, 0);
        log.append(&[
            Change::Clock {
                boot_id: "boot-1".into(),
                saved_at: 1,
            },
            Change::Net {
                net: "192.0.2.2/32".into(),
                bans: vec![same_boot],
            },
        ])
        .unwrap();
        log.flush();
        let mut st = snapshot.clone();
        replay(&state_path, &mut st).unwrap();
        assert!(st.bans.iter().all(|b| b.expires_mono.is_some()), "{st:?}");
        // A start after a reboot logged a line: the deadlines of boot 1 go.
        log.append(&[Change::Clock {
            boot_id: "boot-2".into(),
            saved_at: 2,
        }])
        .unwrap();
        log.flush();
        let mut st = snapshot;
        replay(&state_path, &mut st).unwrap();
        assert_eq!(st.boot_id.as_deref(), Some("boot-2"));
        assert!(st.bans.iter().all(|b| b.expires_mono.is_none()), "{st:?}");
        assert_eq!(
            st.bans[0].expires_at,
            Some(5_000),
            "the wall-time end stands"
        );
    }
}
