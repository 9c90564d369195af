//! `sipguard export PATH`: the saved state (bans, ban counts, read
//! positions, feed cursors, the operator's allowlist) as a SQLite database
//! of its own, to open with `sqlite3` the way fail2ban users open
//! `fail2ban.sqlite3` (the tables and `*_readable` views of `schema`).
//!
//! The daemon keeps its state in the state files (`legacy`: the SQLite
//! store did not meet the start-up and sustained-rate gate, see
//! BENCHMARKS.md); this reads them as a start does (the snapshot, its change
//! logs laid over it, the journal last), so it is at most a tick behind a
//! running daemon, and never writes to them.
//!
//! A running daemon may put a new snapshot in place, or move its change
//! log aside, while they are read: the files are looked at before and
//! after, and read again when one changed.
use super::{
    import,
    legacy::{changes, journal},
    offline, schema,
};
use anyhow::{bail, Context as _, Result};
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Tries at a read no snapshot or log rotation crossed.
const TRIES: usize = 5;

/// What went into the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    pub bans: usize,
    pub counts: usize,
    /// Change-log lines laid over the snapshot.
    pub changes: usize,
    /// Offline changes from the journal.
    pub journaled: usize,
}

/// Writes the state of `state_file` into a new database at `out` (an
/// existing file there is replaced once the new one is complete).
pub fn export(state_file: &Path, out: &Path) -> Result<Exported> {
    // A daemon that has not written a snapshot yet has its change log
    // alone: that is the whole state too.
    if !import::legacy_files(state_file).iter().any(|p| p.exists()) {
        bail!(
            "no saved state at {} (has a daemon run with this state file?)",
            state_file.display()
        );
    }
    // Never beside the state: a name there may be one the daemon writes
    // (a snapshot's temporary file, a log begun anew).
    if in_folder_of(out, state_file) {
        bail!(
            "{} is in sipguard's state folder: export to another folder",
            out.display()
        );
    }
    let tmp = temporary(out);
    let result = (|| {
        for _ in 0..TRIES {
            if let Some(exported) = try_export(state_file, &tmp)? {
                return Ok(exported);
            }
        }
        bail!("the state files kept changing while they were read ({TRIES} tries): try again")
    })();
    let exported = match result {
        Ok(e) => e,
        Err(e) => {
            remove_db(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(exported)
}

/// One read into a new database at `tmp`; none when the files changed
/// under it.
fn try_export(state_file: &Path, tmp: &Path) -> Result<Option<Exported>> {
    remove_db(tmp);
    let before = fingerprint(state_file);
    let conn = schema::open(tmp)?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<Exported> {
        let whole = import::import_whole(&conn, state_file, true)?;
        // The journal (changes made while no daemon ran), read as it is: a
        // line a CLI is writing is skipped.
        let journaled = journal::read_changes(state_file)?;
        for change in &journaled {
            if let Err(e) = offline::apply(&conn, change) {
                tracing::warn!("journal: skipping {change:?}: {e:#}");
            }
        }
        schema::set_meta(&conn, "exported_at", chrono::Utc::now().timestamp_millis())?;
        Ok(Exported {
            bans: whole.bans,
            counts: whole.counts,
            changes: whole.changes,
            journaled: journaled.len(),
        })
    })();
    if fingerprint(state_file) != before {
        let _ = conn.execute_batch("ROLLBACK");
        return Ok(None);
    }
    let exported = schema::finish(&conn, result)
        .with_context(|| format!("cannot read the state files of {}", state_file.display()))?;
    // One file to copy or open anywhere: the log folded in, and no
    // write-ahead log left beside it.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let _: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    drop(conn);
    Ok(Some(exported))
}

/// Which files the bans are in now (a new snapshot, a log moved aside or
/// begun anew are new files); appends to a log are not changes (a read of
/// part of them is the state a moment earlier). The read positions and the
/// journal are read whole, and replaced or appended whole: not in it.
fn fingerprint(state_file: &Path) -> Vec<Option<(u64, u64)>> {
    [
        state_file.to_owned(),
        changes::older_path(state_file),
        changes::path(state_file),
    ]
    .iter()
    .map(|p| fs::metadata(p).ok().map(|m| (m.dev(), m.ino())))
    .collect()
}

/// Whether `out` would be in the folder of `state_file`.
fn in_folder_of(out: &Path, state_file: &Path) -> bool {
    let folder = |p: &Path| -> Option<PathBuf> {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::canonicalize(parent).ok()
    };
    match (folder(out), folder(state_file)) {
        (Some(a), Some(b)) => a == b,
        // A folder that cannot be looked at: refused rather than guessed.
        _ => true,
    }
}

/// A new file beside `out`, renamed over it once complete.
fn temporary(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(name)
}

/// A database and its write-ahead log files.
fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = fs::remove_file(PathBuf::from(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        legacy::{changes, state},
        records::{SavedBan, State, VERSION},
    };

    fn ban(net: &str) -> SavedBan {
        SavedBan {
            net: net.into(),
            jail: "freeswitch".into(),
            banned_at: 1_764_000_000_000,
            expires_at: None,
            expires_mono: None,
            reason: "3 failures in 10m".into(),
            line: format!("SIP auth failure from ip {net}"),
            all_ports: false,
            ports_only: false,
            origin: None,
            count: 1,
        }
    }

    /// The snapshot with its change log laid over it, as a start reads
    /// them, in a database an operator reads with plain SQL; the state
    /// files are left as they were.
    #[test]
    fn the_state_files_become_a_database_to_read_with_sql() {
        let dir = tempfile::tempdir().unwrap();
        let state_file = dir.path().join("state.json");
        let saved = State {
            version: VERSION,
            bans: vec![ban("192.0.2.1/32"), ban("192.0.2.2/32")],
            ..Default::default()
        };
        state::save(&state_file, &saved).unwrap();
        // The log: .2 lifted, .3 banned since the snapshot.
        let log = [
            changes::Change::Net {
                net: "192.0.2.2/32".into(),
                bans: vec![],
            },
            changes::Change::Net {
                net: "192.0.2.3/32".into(),
                bans: vec![ban("192.0.2.3/32")],
            },
        ];
        let lines: String = log
            .iter()
            .map(|c| serde_json::to_string(c).unwrap() + "\n")
            .collect();
        fs::write(changes::path(&state_file), lines).unwrap();
        let before = fs::read(&state_file).unwrap();

        let elsewhere = tempfile::tempdir().unwrap();
        let out = elsewhere.path().join("bans.db");
        let exported = export(&state_file, &out).unwrap();
        assert_eq!((exported.bans, exported.changes), (2, 2));
        let conn = rusqlite::Connection::open(&out).unwrap();
        let mut nets: Vec<(String, String)> = conn
            .prepare("SELECT net, jail FROM bans_readable ORDER BY net")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        nets.sort();
        assert_eq!(
            nets,
            [
                ("192.0.2.1/32".to_string(), "freeswitch".to_string()),
                ("192.0.2.3/32".to_string(), "freeswitch".to_string())
            ]
        );
        // One self-contained file.
        assert!(!elsewhere.path().join("bans.db-wal").exists());
        assert_eq!(fs::read(&state_file).unwrap(), before);
        assert!(changes::path(&state_file).exists());
        assert!(!super::super::db_path(&state_file).exists());

        // Again, over the first: replaced whole.
        fs::write(changes::path(&state_file), "").unwrap();
        assert_eq!(export(&state_file, &out).unwrap().bans, 2);
    }

    /// No state, or a path beside the state (one of sipguard's own files,
    /// or a name it may write): a clear error, and nothing written.
    #[test]
    fn an_export_over_the_state_or_without_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state_file = dir.path().join("state.json");
        let elsewhere = tempfile::tempdir().unwrap();
        let err = export(&state_file, &elsewhere.path().join("x.db")).unwrap_err();
        assert!(format!("{err:#}").contains("no saved state"), "{err:#}");
        state::save(&state_file, &State::default()).unwrap();
        for out in [
            state_file.clone(),
            changes::path(&state_file),
            dir.path().join(".state.json.snapshot-1.tmp"),
        ] {
            let err = export(&state_file, &out).unwrap_err();
            assert!(format!("{err:#}").contains("state folder"), "{err:#}");
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the state file"
        );
    }

    /// A damaged state file is an error of the export's, and stays where
    /// it is: only the daemon moves it aside (a good one may be landing).
    #[test]
    fn a_damaged_state_is_refused_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let state_file = dir.path().join("state.json");
        let saved = State {
            version: VERSION,
            bans: (0..50).map(|i| ban(&format!("192.0.2.{i}/32"))).collect(),
            ..Default::default()
        };
        state::save(&state_file, &saved).unwrap();
        let bytes = fs::read(&state_file).unwrap();
        fs::write(&state_file, &bytes[..bytes.len() / 2]).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let out = elsewhere.path().join("bans.db");
        let err = export(&state_file, &out).unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
        assert_eq!(fs::read(&state_file).unwrap(), &bytes[..bytes.len() / 2]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }
}
