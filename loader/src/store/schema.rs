//! The database's tables, and how every connection to it is set up.
//!
//! Made to be read by an operator with `sqlite3`: networks are text in
//! CIDR form (`203.0.113.5/32`), times are Unix milliseconds, and the
//! `*_readable` views show them as UTC dates:
//!
//! ```text
//! sqlite3 /var/lib/sipguard/state.db 'SELECT * FROM bans_readable LIMIT 10'
//! ```
use anyhow::{bail, Context as _, Result};
use rusqlite::{Connection, OptionalExtension as _};
use std::{path::Path, time::Duration};

/// The schema's version, in `meta`; a database of a later one is refused
/// (an older sipguard must not write over what it does not know).
pub const VERSION: i64 = 1;

/// How long a connection waits for another's write lock (the CLI's offline
/// change against a starting daemon, or the other way round) before it
/// gives up: long enough for any one transaction of theirs.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
-- Every ban in force: this box's own (origin '') and other origins' (a
-- network can have one of each), as the ban manager restores them.
CREATE TABLE IF NOT EXISTS bans (
    net          TEXT    NOT NULL,            -- CIDR: 203.0.113.5/32
    origin       TEXT    NOT NULL DEFAULT '', -- '' this box; crowdsec, apiban, redis:NODE
    jail         TEXT    NOT NULL,
    scope        TEXT    NOT NULL DEFAULT 'ports'
                 CHECK (scope IN ('ports', 'ports-only', 'all-ports')),
    banned_at    INTEGER NOT NULL,            -- Unix ms
    expires_at   INTEGER,                     -- Unix ms; NULL: permanent
    expires_mono INTEGER,                     -- CLOCK_MONOTONIC ns, of boot `boot`
    boot         INTEGER NOT NULL DEFAULT 0,  -- meta.boot_seq when written
    reason       TEXT    NOT NULL DEFAULT '',
    line         TEXT    NOT NULL DEFAULT '', -- the matched log line
    count        INTEGER NOT NULL DEFAULT 0   -- the network's bans so far (this box's)
);
-- A rowid table with its key beside it: a restore reads the table in rowid
-- order (its pages one after the other), the writer finds a ban by its key.
CREATE UNIQUE INDEX IF NOT EXISTS bans_key ON bans (net, origin);

-- Ban counts of networks not banned now, for bantime_increment.
CREATE TABLE IF NOT EXISTS offenders (
    net         TEXT    PRIMARY KEY,
    bans        INTEGER NOT NULL,
    last_ban_at INTEGER NOT NULL              -- Unix ms; 0: not known
) WITHOUT ROWID;

-- Where each followed log was read up to.
CREATE TABLE IF NOT EXISTS positions (
    path   TEXT    PRIMARY KEY,
    dev    INTEGER NOT NULL,
    ino    INTEGER NOT NULL,
    offset INTEGER NOT NULL
) WITHOUT ROWID;

-- Where each feed has read up to (APIBAN's last id).
CREATE TABLE IF NOT EXISTS cursors (
    feed   TEXT PRIMARY KEY,
    cursor TEXT NOT NULL
) WITHOUT ROWID;

-- The operator's allowlist (sipguard allow).
CREATE TABLE IF NOT EXISTS allowlist (
    net      TEXT PRIMARY KEY,
    added_at INTEGER                          -- Unix ms; NULL: not known (imported)
) WITHOUT ROWID;

-- schema_version; boot_id and saved_at of the last write; boot_seq (one
-- more with each boot that wrote: a ban's expires_mono holds only while its
-- boot is the last one, and a new boot costs no rewrite); allowlist_kept
-- (absent: the allowlist was never saved, the kernel's is adopted);
-- imported_at (when older state files were last taken in).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;

CREATE VIEW IF NOT EXISTS bans_readable AS
SELECT net,
       NULLIF(origin, '') AS origin,
       jail,
       scope,
       datetime(banned_at / 1000, 'unixepoch') AS banned_utc,
       CASE WHEN expires_at IS NULL THEN 'never'
            ELSE datetime(expires_at / 1000, 'unixepoch') END AS expires_utc,
       reason,
       count,
       line
FROM bans;

CREATE VIEW IF NOT EXISTS offenders_readable AS
SELECT net, bans,
       CASE WHEN last_ban_at = 0 THEN NULL
            ELSE datetime(last_ban_at / 1000, 'unixepoch') END AS last_ban_utc
FROM offenders;
";

/// Opens the database at `path` (made, mode 0600, when missing: it holds
/// matched log lines, SIP usernames among them; SQLite gives its `-wal`
/// and `-shm` files the database's mode), set up as every connection here
/// is, with the schema in place.
pub fn open(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: a restore, an operator's `sqlite3` or `sipguard list` read while
    // the writer writes, and a commit appends to one file instead of
    // copying pages to a rollback journal first.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "{}: cannot use a write-ahead log (got {mode})",
            path.display()
        );
    }
    // NORMAL, not FULL: in WAL mode a commit is then written to the log but
    // not synced; the log is synced at each checkpoint. A killed daemon
    // (the crash that happens) loses nothing committed: the log is in the
    // page cache and read back. A power cut can lose the last commits
    // before the checkpoint, never leave the database damaged, and a
    // power cut also empties the kernel's maps: the bans lost are the
    // last seconds' of a box that reboots anyway. FULL would cost a sync
    // per tick (tens of ms on a busy disk) on the writer.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A batch of a million bans leaves a large log; it is cut back to this
    // after the next checkpoint rather than kept at its largest.
    conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
    // 16 MB of pages: the ban key's index stays in memory while a tick's
    // batch finds its rows (the default, 2 MB, rereads it from the file).
    conn.pragma_update(None, "cache_size", -16_000i64)?;
    migrate(&conn).with_context(|| format!("{}: cannot set up the schema", path.display()))?;
    Ok(conn)
}

/// Makes the schema (idempotent), or refuses one of a later version.
fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<()> {
        conn.execute_batch(SCHEMA)?;
        let found: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match found {
            None => set_meta(conn, "schema_version", VERSION)?,
            Some(v) if v > VERSION => bail!(
                "the database is of schema {v}, written by a later sipguard (this one knows {VERSION})"
            ),
            Some(_) => {}
        }
        Ok(())
    })();
    finish(conn, result)
}

/// Commits what `result` says went well, or rolls it all back.
pub fn finish<T>(conn: &Connection, result: Result<T>) -> Result<T> {
    match result {
        Ok(v) => {
            conn.execute_batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

pub fn set_meta(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(rusqlite::params![key, value])?;
    Ok(())
}

pub fn meta<T: rusqlite::types::FromSql>(conn: &Connection, key: &str) -> Result<Option<T>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// A scope as the `bans` table spells it.
pub fn scope_text(all_ports: bool, ports_only: bool) -> &'static str {
    match (all_ports, ports_only) {
        (true, _) => "all-ports",
        (false, true) => "ports-only",
        (false, false) => "ports",
    }
}

/// `(all_ports, ports_only)` of a scope as the `bans` table spells it.
pub fn scope_flags(text: &str) -> (bool, bool) {
    match text {
        "all-ports" => (true, false),
        "ports-only" => (false, true),
        _ => (false, false),
    }
}
