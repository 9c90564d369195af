//! What the daemon keeps across restarts (and reboots, which lose the pinned
//! maps): bans with their metadata, ban counts for `bantime_increment`, and
//! read positions in the logs. Written atomically: a temporary file, fsync,
//! rename, so a daemon killed mid-write leaves the old state or the new one,
//! never half of each.
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The boot that wrote the state: on the same boot, bans end at their
    /// monotonic deadlines (`expires_mono`); after a reboot, by wall time.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// When the state was written (Unix ms).
    #[serde(default)]
    pub saved_at: Option<i64>,
    pub bans: Vec<SavedBan>,
    /// The operator's allowlist (`sipguard allow`), restored after a reboot.
    /// `None` in a state written before sipguard kept it: the entries found
    /// in the kernel are then adopted.
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
    /// Bans so far per network, for `bantime_increment`.
    pub ban_counts: BTreeMap<String, u32>,
    /// When each network's last ban began (Unix ms), to forget old counts.
    #[serde(default)]
    pub ban_counted_at: BTreeMap<String, i64>,
    /// Read position per log path.
    pub positions: BTreeMap<String, Position>,
    /// Where each feed has read up to (APIBAN's last ID).
    #[serde(default)]
    pub cursors: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedBan {
    pub net: String,
    /// Shared by every ban of the jail (in memory; each is written once).
    pub jail: Arc<str>,
    /// Unix time in ms.
    pub banned_at: i64,
    /// Unix time in ms; none for permanent bans.
    pub expires_at: Option<i64>,
    /// The same end as a `CLOCK_MONOTONIC` deadline of the boot `boot_id`.
    #[serde(default)]
    pub expires_mono: Option<u64>,
    pub reason: Arc<str>,
    #[serde(default)]
    pub line: String,
    #[serde(default)]
    pub all_ports: bool,
    /// Only the protected ports, even in all-ports mode (packet evidence).
    #[serde(default)]
    pub ports_only: bool,
    /// A ban from elsewhere (`crowdsec`, `apiban`, `redis:NODE`); none for
    /// this box's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Arc<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

/// Loads the state. A missing file is an empty state. An unreadable one is
/// moved aside (never deleted) and the daemon starts from the kernel's maps,
/// which still hold every ban.
pub fn load(path: &Path) -> Result<State> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(State {
                version: VERSION,
                ..Default::default()
            })
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read state {}", path.display())),
    };
    let parsed = if bytes.starts_with(super::snapshot::MAGIC) {
        super::snapshot::read(&bytes)
    } else {
        // Written by sipguard before the binary form.
        serde_json::from_slice::<State>(&bytes).map_err(anyhow::Error::from)
    };
    match parsed {
        Ok(state) => Ok(state),
        Err(e) => {
            let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), std::process::id()));
            fs::rename(path, &aside)
                .with_context(|| format!("cannot move aside {}", path.display()))?;
            tracing::error!(
                "state {} is unreadable ({e:#}); moved it to {} and starting from the bans in the kernel",
                path.display(),
                aside.display()
            );
            Ok(State {
                version: VERSION,
                ..Default::default()
            })
        }
    }
}

/// Writes the state in its binary form (see `snapshot`).
pub fn save(path: &Path, state: &State) -> Result<()> {
    write_atomically(path, |out| super::snapshot::write(out, state))
}

/// Writes into `path` through `write`: a temporary file, fsync, rename.
/// Streamed through a buffer: a million bans are never held twice.
fn write_atomically(
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
        // 0600: the state holds SIP usernames (the matched lines).
        let f = {
            use std::os::unix::fs::OpenOptionsExt as _;
            let _ = fs::remove_file(&tmp);
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        write(&mut out)?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    // Make the rename itself durable.
    fs::File::open(dir)?.sync_all()?;
    Ok(())
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
    Ok(state)
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
