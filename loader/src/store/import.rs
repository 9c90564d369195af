//! Taking in the state files of a sipguard from before the database, once:
//! the state file in every form it had (the binary snapshot, forms 3 and 2,
//! or the JSON before it), its change logs, its positions file and the
//! offline journal. They are read as the daemon read them (a change log
//! laid over its snapshot, the journal's changes last), written in one
//! transaction, then renamed with a `.imported` suffix: kept for the
//! operator, never read again.
//!
//! A state file or a change log is the whole state (a log extends a
//! snapshot, or nothing), and replaces what the database held: after a
//! downgrade and an upgrade, they are newer than the database. A positions
//! file or a journal alone is laid over the database.
use super::{
    batch::{self, Batch},
    legacy::{changes, journal, state},
    offline, schema,
};
use anyhow::{bail, Context as _, Result};
use rusqlite::Connection;
use std::{
    fs,
    path::{Path, PathBuf},
};

/// What an import took in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub bans: usize,
    pub counts: usize,
    /// Lines of the change logs replayed.
    pub changes: usize,
    /// The journal's changes applied.
    pub journaled: usize,
    /// The files renamed `*.imported`.
    pub files: Vec<PathBuf>,
}

/// The older files of `state_file`, in the order they are read.
pub fn legacy_files(state_file: &Path) -> [PathBuf; 5] {
    [
        state_file.to_owned(),
        state::positions_path(state_file),
        changes::older_path(state_file),
        changes::path(state_file),
        journal::path(state_file),
    ]
}

/// `path` with `.imported` after its name.
pub fn imported_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".imported");
    PathBuf::from(name)
}

/// Imports the older files of `state_file` into `conn`, if there are any.
pub fn import(conn: &Connection, state_file: &Path) -> Result<Option<Imported>> {
    let files: Vec<PathBuf> = legacy_files(state_file)
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    // The journal's lock, held until it is renamed: no CLI of the journal's
    // time is halfway through a line while it is read. (A CLI of that time
    // still waiting for the lock would append to the renamed file; the CLI
    // and the daemon are one binary, so none outlives an upgrade's start.)
    let journal = journal::path(state_file)
        .exists()
        .then(|| journal::lock(state_file))
        .transpose()?;
    let journaled = match &journal {
        Some(j) => j.changes()?,
        None => Vec::new(),
    };
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<Imported> {
        let whole = [0, 2, 3]
            .iter()
            .any(|&i| legacy_files(state_file)[i].exists());
        let mut imported = if whole {
            import_whole(conn, state_file, false)?
        } else {
            import_positions(conn, state_file)?;
            Imported::default()
        };
        for change in &journaled {
            // A change the daemon would have skipped (a network it cannot
            // read) is skipped here too.
            if let Err(e) = offline::apply(conn, change) {
                tracing::warn!("journal: skipping {change:?}: {e:#}");
            }
        }
        imported.journaled = journaled.len();
        schema::set_meta(conn, "imported_at", chrono::Utc::now().timestamp_millis())?;
        Ok(imported)
    })();
    let mut imported = schema::finish(conn, result)
        .with_context(|| format!("cannot import the state files of {}", state_file.display()))?;
    // Committed: the files go aside. A crash before they all have imports
    // them again at the next start (nothing ran on the database meanwhile,
    // and the import replaces what it wrote the first time).
    for path in files {
        // A damaged state file was moved aside already (`*.corrupt-PID`).
        if !path.exists() {
            continue;
        }
        let aside = imported_path(&path);
        fs::rename(&path, &aside)
            .with_context(|| format!("cannot move {} aside", path.display()))?;
        imported.files.push(aside);
    }
    if let Some(dir) = state_file.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    drop(journal);
    tracing::info!(
        "state: imported {} ban(s), {} count(s), {} logged change(s) and {} journaled change(s) from the older state files (renamed *.imported)",
        imported.bans,
        imported.counts,
        imported.changes,
        imported.journaled
    );
    Ok(Some(imported))
}

/// The state file with its change logs laid over it, as the daemon read
/// them at start, streamed into the database.
/// `read_only` (`sipguard export`): a damaged state file is an error, and
/// stays where it is.
pub(super) fn import_whole(
    conn: &Connection,
    state_file: &Path,
    read_only: bool,
) -> Result<Imported> {
    let mut opened = match read_only {
        true => state::open_with_positions_read_only(state_file)?,
        false => state::open_with_positions(state_file)?,
    };
    let mut header = std::mem::take(&mut opened.state);
    let (changes, mut over) = changes::read(state_file, &mut header)?;
    batch::apply(
        conn,
        &Batch {
            replace: true,
            positions: header
                .positions
                .iter()
                .map(|(path, p)| (path.clone(), Some(*p)))
                .collect(),
            cursors: header
                .cursors
                .iter()
                .map(|(f, c)| (f.clone(), Some(c.clone())))
                .collect(),
            ..Default::default()
        },
    )?;
    if let Some(allowed) = &header.allowed {
        batch::set_allowlist(conn, allowed, None)?;
    }
    // The boot the state was written on, before the bans: theirs (the
    // logs voided the deadlines of an earlier boot already).
    // A state of no known boot: a boot of its own ("", which no restore
    // takes for its own), so no deadline of it is taken for this boot's.
    batch::set_clock(
        conn,
        &batch::Clock {
            boot_id: header.boot_id.clone().unwrap_or_default(),
            saved_at: header.saved_at.unwrap_or(0),
        },
    )?;
    let mut imported = Imported {
        changes,
        ..Default::default()
    };
    let opened = std::cell::RefCell::new(opened);
    let counts = over.counts(std::iter::from_fn(|| opened.borrow_mut().next_count()));
    for b in over.bans(std::iter::from_fn(|| opened.borrow_mut().next_ban())) {
        batch::put_ban(conn, &b)?;
        imported.bans += 1;
    }
    for count in counts {
        batch::put_count(conn, &count)?;
        imported.counts += 1;
    }
    if read_only && opened.borrow().damaged {
        bail!("the state {} is damaged part way", state_file.display());
    }
    match header.saved_at {
        Some(at) => schema::set_meta(conn, "saved_at", at)?,
        None => {
            conn.execute("DELETE FROM meta WHERE key = 'saved_at'", [])?;
        }
    }
    Ok(imported)
}

/// A positions file alone, laid over the database's positions.
fn import_positions(conn: &Connection, state_file: &Path) -> Result<()> {
    let file = state::positions_path(state_file);
    if !file.exists() {
        return Ok(());
    }
    let bytes = fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    match serde_json::from_slice::<std::collections::BTreeMap<String, state::Position>>(&bytes) {
        Ok(positions) => {
            for (path, p) in &positions {
                batch::put_position(conn, path, p)?;
            }
        }
        Err(e) => tracing::warn!(
            "ignoring unreadable read positions {} ({e})",
            file.display()
        ),
    }
    Ok(())
}

#[cfg(test)]
#[path = "import_tests.rs"]
mod tests;
