//! Everything sipguard keeps on disk.
//!
//! The daemon's state is `legacy`'s files: a binary snapshot, a change log
//! laid over it, the offline journal, read positions. A SQLite database
//! (`schema`) was built to replace them and measured against the issue's
//! gate (BENCHMARKS.md, "The state store"); it missed the start-up and
//! sustained-rate rows, so the daemon keeps the files, and the database is
//! what `sipguard export` writes for an operator to read with `sqlite3`
//! (`export`, through `import`'s reading of the files).
//!
//! A layer under the daemon and the CLI, above `kernel`: it knows records
//! (`records`), never the ban manager's tables, so `bans` can use it and
//! it uses nothing of `bans`.
//!
//! The database's own path, as measured (`cargo xtask bench scale-store`)
//! and tested (`tests/tests/store_*.rs`): `Store::open` (takes in older
//! state files once, see `import`), `Store::restore`, `Store::writer` (a
//! tick's `Batch` per transaction on a thread of its own), `offline` (the
//! CLI's changes, `BEGIN IMMEDIATE`).
pub mod batch;
pub mod export;
pub mod import;
pub mod legacy;
pub mod offline;
pub mod records;
pub mod restore;
pub mod schema;
pub mod writer;

pub use batch::{Batch, Clock};
pub use records::{Count, Position, SavedBan, State};
pub use restore::Restore;
pub use writer::{Progress, Writer};

use anyhow::Result;
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// The database of the state file `state_file` (`state.json` → `state.db`;
/// a state file already named `*.db` → `*.store.db`, never itself: the
/// import would take the database for an older state file).
pub fn db_path(state_file: &Path) -> PathBuf {
    let db = state_file.with_extension("db");
    if db == state_file {
        return state_file.with_extension("store.db");
    }
    db
}

/// An open database, on the caller's thread.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    imported: Option<import::Imported>,
}

impl Store {
    /// Opens (or makes) the database of `state_file`, and takes in the
    /// older state files found beside it (see `import`).
    pub fn open(state_file: &Path) -> Result<Self> {
        let mut store = Self::open_db(&db_path(state_file))?;
        store.imported = import::import(&store.conn, state_file)?;
        Ok(store)
    }

    /// Opens (or makes) the database at `path`, importing nothing.
    pub fn open_db(path: &Path) -> Result<Self> {
        Ok(Self {
            conn: schema::open(path)?,
            path: path.to_owned(),
            imported: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `open` took in from older state files, if it found any.
    pub fn imported(&self) -> Option<&import::Imported> {
        self.imported.as_ref()
    }

    /// Starts reading the whole state (see `restore`). The database's
    /// write lock is held until `Restore::finish`.
    pub fn restore(&mut self) -> Result<Restore<'_>> {
        Restore::begin(&self.conn)
    }

    /// Writes `batch` here, in one transaction, and waits for it.
    pub fn write(&mut self, batch: &Batch) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        schema::finish(&self.conn, batch::apply(&self.conn, batch))
    }

    /// Hands the database to a writer thread of its own.
    pub fn writer(self) -> Result<Writer> {
        Writer::start(self.conn)
    }

    /// SQLite's own check of the file: "ok", or what is wrong.
    pub fn integrity_check(&self) -> Result<String> {
        let problems: Vec<String> = self
            .conn
            .prepare("PRAGMA integrity_check")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(problems.join("\n"))
    }

    /// The connection, for reading (tests, `sipguard list` later).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn into_connection(self) -> Connection {
        self.conn
    }
}

#[cfg(test)]
mod tests;
