//! What the daemon keeps across restarts (and reboots, which lose the pinned
//! maps): bans with their metadata, ban counts for `bantime_increment`, and
//! read positions in the logs. Written atomically: a temporary file, fsync,
//! rename, so a daemon killed mid-write leaves the old state or the new one,
//! never half of each.
use super::snapshot;
use anyhow::{Context as _, Result};
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

pub use crate::store::records::{Position, SavedBan, State, VERSION};

/// Loads the whole state. A missing file is an empty state. An unreadable
/// one is moved aside (never deleted) and the daemon starts from the
/// kernel's maps, which still hold every ban.
pub fn load(path: &Path) -> Result<State> {
    let mut opened = open(path)?;
    let mut bans = Vec::new();
    while let Some(b) = opened.next_ban() {
        bans.push(b);
    }
    while let Some(count) = opened.next_count() {
        opened.state.set_count(count);
    }
    let mut state = opened.state;
    if opened.damaged {
        // Nothing of a damaged state is taken, as before streaming.
        return Ok(empty());
    }
    state.bans = bans;
    Ok(state)
}

fn empty() -> State {
    State {
        version: VERSION,
        ..Default::default()
    }
}

/// A state file being read: everything but the bans and ban counts in
/// `state`, those one at a time (`next_ban`, then `next_count`), so a
/// million bans go into their table as they are read. The daemon reads it
/// on the restoring thread itself: its bans' memory is allocated and freed
/// by one thread (glibc frees another thread's blocks slowly), and a reader
/// thread gained nothing on two cores busy with the maps.
pub struct Opened {
    pub state: State,
    source: Source,
    /// Counts read with the header (JSON, form 2), handed out first.
    header_counts: std::vec::IntoIter<snapshot::Count>,
    path: PathBuf,
    /// The file's length.
    len: u64,
    /// The file turned out damaged part way (moved aside; what came
    /// before the damage was handed out).
    pub damaged: bool,
    /// Opened by `open_read_only`: a damaged file stays where it is.
    read_only: bool,
}

enum Source {
    /// The JSON form, read whole (written by sipguard before the binary
    /// form), or no file.
    Whole(std::vec::IntoIter<SavedBan>),
    Stream(snapshot::Stream<std::io::BufReader<fs::File>>),
}

/// Opens the state at `path` (see `Opened`).
pub fn open(path: &Path) -> Result<Opened> {
    open_as(path, false)
}

/// `open` for a reader that is not the daemon (`sipguard export`): a
/// damaged state is an error, never moved aside (a daemon may be putting a
/// good one in its place meanwhile).
pub fn open_read_only(path: &Path) -> Result<Opened> {
    open_as(path, true)
}

fn open_as(path: &Path, read_only: bool) -> Result<Opened> {
    let mut len = 0;
    let opened = |mut state: State, source: Option<Source>, len: u64| {
        let bans = std::mem::take(&mut state.bans);
        let counts: Vec<snapshot::Count> = state.counts().collect();
        state.ban_counts.clear();
        state.ban_counted_at.clear();
        Opened {
            state,
            source: source.unwrap_or(Source::Whole(bans.into_iter())),
            header_counts: counts.into_iter(),
            path: path.to_owned(),
            len,
            damaged: false,
            read_only,
        }
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(opened(empty(), None, 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read state {}", path.display())),
    };
    if let Ok(m) = file.metadata() {
        len = m.len();
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let binary = {
        use std::io::BufRead as _;
        let head = reader
            .fill_buf()
            .with_context(|| format!("cannot read state {}", path.display()))?;
        head.starts_with(&snapshot::MAGIC[..10])
    };
    let parsed = if binary {
        snapshot::open(reader)
            .map(|(state, stream)| opened(state, Some(Source::Stream(stream)), len))
    } else {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut bytes)
            .with_context(|| format!("cannot read state {}", path.display()))?;
        serde_json::from_slice::<State>(&bytes)
            .map(|state| opened(state, None, len))
            .map_err(anyhow::Error::from)
    };
    match parsed {
        Ok(o) => Ok(o),
        Err(e) if read_only => {
            Err(e.context(format!("the state {} is unreadable", path.display())))
        }
        Err(e) => {
            let mut o = opened(empty(), None, 0);
            o.damaged = true;
            o.move_aside(&e)?;
            Ok(o)
        }
    }
}

/// `open`, with the read positions of the positions file when it can be
/// read (see `load_with_positions`).
pub fn open_with_positions(path: &Path) -> Result<Opened> {
    let mut opened = open(path)?;
    newer_positions(path, &mut opened.state)?;
    Ok(opened)
}

/// `open_read_only`, with the read positions.
pub fn open_with_positions_read_only(path: &Path) -> Result<Opened> {
    let mut opened = open_read_only(path)?;
    newer_positions(path, &mut opened.state)?;
    Ok(opened)
}

impl Opened {
    /// How many bans are still to come (as the file says).
    pub fn bans_left(&self) -> usize {
        match &self.source {
            Source::Whole(bans) => bans.len(),
            // A damaged count is not believed past what the file can hold
            // (a ban takes at least 27 bytes).
            Source::Stream(stream) => stream.bans_left().min(self.len as usize / 27),
        }
    }

    /// The next saved ban; none at the end, or at damage (logged, the
    /// file moved aside).
    pub fn next_ban(&mut self) -> Option<SavedBan> {
        let result = match &mut self.source {
            Source::Whole(bans) => return bans.next(),
            Source::Stream(stream) => stream.next_ban(),
        };
        self.or_damaged(result)
    }

    /// The next ban count, once the bans are read.
    pub fn next_count(&mut self) -> Option<snapshot::Count> {
        if let Some(c) = self.header_counts.next() {
            return Some(c);
        }
        let result = match &mut self.source {
            Source::Whole(_) => return None,
            Source::Stream(stream) => stream.next_count(),
        };
        self.or_damaged(result)
    }

    fn or_damaged<T>(&mut self, result: Result<Option<T>>) -> Option<T> {
        match result {
            Ok(next) => next,
            Err(e) => {
                self.damaged = true;
                self.source = Source::Whole(Vec::new().into_iter());
                if self.read_only {
                    tracing::error!("state {} is unreadable: {e:#}", self.path.display());
                } else if let Err(e) = self.move_aside(&e) {
                    tracing::error!("{e:#}");
                }
                None
            }
        }
    }

    fn move_aside(&self, e: &anyhow::Error) -> Result<()> {
        let path = &self.path;
        let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), std::process::id()));
        fs::rename(path, &aside)
            .with_context(|| format!("cannot move aside {}", path.display()))?;
        tracing::error!(
            "state {} is unreadable ({e:#}); moved it to {} and starting from the bans in the kernel and those read before the damage",
            path.display(),
            aside.display()
        );
        Ok(())
    }
}

/// Writes the state in its binary form (see `snapshot`).
pub fn save(path: &Path, state: &State) -> Result<()> {
    write_atomically(path, |out| super::snapshot::write(out, state))
}

/// Writes into `path` through `write`: a temporary file, fsync, rename.
/// Streamed through a buffer: a million bans are never held twice.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let f = new_private_file(&tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        let written = write(&mut out)
            .and_then(|()| Ok(out.flush()?))
            .and_then(|()| Ok(out.into_inner().map_err(|e| e.into_error())?.sync_all()?));
        if let Err(e) = written {
            // A partial file would hold the disk space the next try needs.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    // Make the rename itself durable.
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A new temporary file at `tmp` (one left by a crash is replaced), mode
/// 0600: the state holds SIP usernames (the matched lines).
pub(super) fn new_private_file(tmp: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = fs::remove_file(tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))
}

/// Read positions also live in a small file of their own beside the state
/// (`state.json` → `state.positions.json`): they change with every log line,
/// and rewriting a state of a million bans every few seconds for them alone
/// would cost a second of work and 150 MB of writes each time.
pub fn positions_path(state: &Path) -> PathBuf {
    state.with_extension("positions.json")
}

/// Writes the positions file, atomically like the state.
pub fn save_positions(state: &Path, positions: &BTreeMap<String, Position>) -> Result<()> {
    write_atomically(&positions_path(state), |out| {
        Ok(serde_json::to_writer(out, positions)?)
    })
}

/// The state with its read positions: from the positions file when it can be
/// read (the daemon writes them only there), else those in the state itself
/// (written by sipguard before the positions had a file of their own).
pub fn load_with_positions(path: &Path) -> Result<State> {
    let mut state = load(path)?;
    newer_positions(path, &mut state)?;
    Ok(state)
}

fn newer_positions(path: &Path, state: &mut State) -> Result<()> {
    let file = positions_path(path);
    match fs::read(&file) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(positions) => state.positions = positions,
            Err(e) => tracing::warn!(
                "ignoring unreadable read positions {} ({e}); using those in the state",
                file.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_read_positions_come_from_their_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let at = |offset| Position {
            dev: 1,
            ino: 2,
            offset,
        };
        let mut st = State {
            version: VERSION,
            ..Default::default()
        };
        st.positions.insert("/var/log/fs.log".into(), at(10));
        save(&path, &st).unwrap();
        assert_eq!(load_with_positions(&path).unwrap(), st);
        // Positions saved alone, later: they win over the state's.
        let newer = BTreeMap::from([("/var/log/fs.log".to_owned(), at(99))]);
        save_positions(&path, &newer).unwrap();
        assert_eq!(load_with_positions(&path).unwrap().positions, newer);
        assert_eq!(load(&path).unwrap().positions["/var/log/fs.log"], at(10));
        // An unreadable positions file loses nothing else: the state's are used.
        fs::write(positions_path(&path), b"{half").unwrap();
        assert_eq!(load_with_positions(&path).unwrap(), st);
    }

    #[test]
    fn state_files_are_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save(&path, &State::default()).unwrap();
        save_positions(&path, &BTreeMap::new()).unwrap();
        for p in [path.clone(), positions_path(&path)] {
            let mode = fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
    }

    /// A state damaged part way, read as a stream: the bans before the
    /// damage are handed out, the rest is an error said once, and the file
    /// is moved aside (never deleted).
    #[test]
    fn a_stream_damaged_part_way_hands_out_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let ban = |i: u32| SavedBan {
            net: format!("192.0.2.{i}/32"),
            jail: "j".into(),
            banned_at: 1,
            expires_at: None,
            reason: "r".into(),
            line: "x".repeat(100),
            all_ports: false,
            ports_only: false,
            expires_mono: None,
            origin: None,
            count: i,
        };
        let s = State {
            version: VERSION,
            bans: (1..=3).map(ban).collect(),
            ..Default::default()
        };
        save(&path, &s).unwrap();
        let whole = fs::read(&path).unwrap();
        // Cut inside the third ban's line.
        fs::write(&path, &whole[..whole.len() - 80]).unwrap();
        let mut opened = open(&path).unwrap();
        assert_eq!(opened.bans_left(), 3);
        let got: Vec<SavedBan> = std::iter::from_fn(|| opened.next_ban()).collect();
        assert_eq!(got, [ban(1), ban(2)]);
        assert!(opened.damaged);
        assert!(opened.next_count().is_none());
        assert!(!path.exists(), "moved aside");
        assert!(fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("state.json.corrupt-")));
    }

    #[test]
    fn round_trip_and_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load(&path).unwrap().bans.len(), 0);
        let mut s = State {
            version: VERSION,
            ..Default::default()
        };
        s.bans.push(SavedBan {
            net: "192.0.2.1/32".into(),
            jail: "j".into(),
            banned_at: 1,
            expires_at: None,
            reason: "r".into(),
            line: "l".into(),
            all_ports: false,
            ports_only: false,
            expires_mono: None,
            origin: None,
            count: 0,
        });
        s.positions.insert(
            "/x".into(),
            Position {
                dev: 1,
                ino: 2,
                offset: 3,
            },
        );
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), s);
        // The JSON sipguard wrote before the binary form is still read.
        fs::write(&path, serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap(), s);
        // Half a binary file.
        save(&path, &s).unwrap();
        let whole = fs::read(&path).unwrap();
        fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        assert_eq!(load(&path).unwrap().bans.len(), 0);
        // Half a file (what a crash without atomic rename would leave).
        fs::write(&path, b"{\"version\":1,\"bans\":[{\"net\":").unwrap();
        assert_eq!(load(&path).unwrap().bans.len(), 0);
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert!(
            aside.iter().any(|n| n.starts_with("state.json.corrupt-")),
            "{aside:?}"
        );
    }
}
