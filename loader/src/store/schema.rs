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
pub const VERSION: i64 = 2;

/// How long a connection waits for another's write lock (the CLI's offline
/// change against a starting daemon, or the other way round) before it
/// gives up: long enough for any one transaction of theirs.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
-- Jails, reasons: a million bans share a handful, each kept once here and
-- referred to by its id (`bans_readable` shows them as text).
CREATE TABLE IF NOT EXISTS names (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);

-- Every ban in force: this box's own (origin '') and other origins' (a
-- network can have one of each), as the ban manager restores them. A
-- rowid table with its key beside it: a restore reads the table in rowid
-- order (the order bans were saved in, its pages one after the other),
-- the writer finds a ban by its key.
CREATE TABLE IF NOT EXISTS bans (
    net          TEXT    NOT NULL,            -- CIDR: 203.0.113.5/32
    origin       TEXT    NOT NULL DEFAULT '', -- '' this box; crowdsec, apiban, redis:NODE
    jail         INTEGER NOT NULL,            -- names.id
    scope        INTEGER NOT NULL DEFAULT 0   -- 0 ports, 1 ports-only, 2 all-ports
                 CHECK (scope IN (0, 1, 2)),
    banned_at    INTEGER NOT NULL,            -- Unix ms
    expires_at   INTEGER,                     -- Unix ms; NULL: permanent
    expires_mono INTEGER,                     -- CLOCK_MONOTONIC ns, of boot `boot`
    boot         INTEGER NOT NULL DEFAULT 0,  -- meta.boot_seq when written
    reason       INTEGER NOT NULL,            -- names.id
    count        INTEGER NOT NULL DEFAULT 0,  -- the network's bans so far (this box's)
    line         TEXT    NOT NULL DEFAULT ''  -- the matched log line (last: a restore
                                              -- that skips it reads no further)
);
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
       (SELECT name FROM names WHERE id = bans.jail) AS jail,
       CASE scope WHEN 1 THEN 'ports-only' WHEN 2 THEN 'all-ports'
            ELSE 'ports' END AS scope,
       datetime(banned_at / 1000, 'unixepoch') AS banned_utc,
       CASE WHEN expires_at IS NULL THEN 'never'
            ELSE datetime(expires_at / 1000, 'unixepoch') END AS expires_utc,
       (SELECT name FROM names WHERE id = bans.reason) AS reason,
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
    // 16 KiB pages (a new database's; one made before keeps its own): a
    // batch of 10 000 bans and as many lifted took the writer a fifth less
    // time than with 4 KiB ones (fewer pages to find, split and log per
    // row), and the file is 2% smaller.
    conn.pragma_update(None, "page_size", 16_384i64)?;
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

/// Makes the schema (idempotent), brings one of an earlier version up to
/// this one, or refuses one of a later version.
fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<()> {
        let has_meta: bool = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        let found: Option<i64> = match has_meta {
            true => conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'schema_version'",
                    [],
                    |r| r.get(0),
                )
                .optional()?,
            false => None,
        };
        match found {
            Some(v) if v > VERSION => bail!(
                "the database is of schema {v}, written by a later sipguard (this one knows {VERSION})"
            ),
            Some(1) => {
                conn.execute_batch(FROM_1_BEFORE)?;
                conn.execute_batch(SCHEMA)?;
                conn.execute_batch(FROM_1_AFTER)?;
            }
            _ => conn.execute_batch(SCHEMA)?,
        }
        if found != Some(VERSION) {
            set_meta(conn, "schema_version", VERSION)?;
        }
        Ok(())
    })();
    finish(conn, result)
}

/// Schema 1 kept jails, reasons and scopes as text: its table is set
/// aside, and copied into the new one.
const FROM_1_BEFORE: &str = "
DROP VIEW IF EXISTS bans_readable;
DROP INDEX IF EXISTS bans_key;
ALTER TABLE bans RENAME TO bans_1;
";
const FROM_1_AFTER: &str = "
INSERT OR IGNORE INTO names (name) SELECT jail FROM bans_1 UNION SELECT reason FROM bans_1;
INSERT INTO bans (rowid, net, origin, jail, scope, banned_at, expires_at,
                  expires_mono, boot, reason, count, line)
SELECT rowid, net, origin, (SELECT id FROM names WHERE name = jail),
       CASE scope WHEN 'ports-only' THEN 1 WHEN 'all-ports' THEN 2 ELSE 0 END,
       banned_at, expires_at, expires_mono, boot,
       (SELECT id FROM names WHERE name = reason), count, line
FROM bans_1 ORDER BY rowid;
DROP TABLE bans_1;
";

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

/// A scope as `bans_readable` spells it.
pub fn scope_text(all_ports: bool, ports_only: bool) -> &'static str {
    match (all_ports, ports_only) {
        (true, _) => "all-ports",
        (false, true) => "ports-only",
        (false, false) => "ports",
    }
}

/// `(all_ports, ports_only)` of a scope as `bans_readable` spells it.
pub fn scope_flags(text: &str) -> (bool, bool) {
    match text {
        "all-ports" => (true, false),
        "ports-only" => (false, true),
        _ => (false, false),
    }
}

/// A scope as the `bans` table keeps it.
pub(crate) fn scope_code(all_ports: bool, ports_only: bool) -> i64 {
    match (all_ports, ports_only) {
        (true, _) => 2,
        (false, true) => 1,
        (false, false) => 0,
    }
}

/// `(all_ports, ports_only)` of a scope as the `bans` table keeps it.
pub(crate) fn scope_of_code(code: i64) -> (bool, bool) {
    match code {
        2 => (true, false),
        1 => (false, true),
        _ => (false, false),
    }
}

/// The id of `name` in `names`, added when missing.
pub(crate) fn name_id(conn: &Connection, name: &str) -> Result<i64> {
    if let Some(id) = conn
        .prepare_cached("SELECT id FROM names WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
    {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO names (name) VALUES (?1)")?
        .execute([name])?;
    Ok(conn.last_insert_rowid())
}
