//! Reading the state back at start: everything but the bans and counts at
//! once (small), the bans and counts one at a time, as the ban manager
//! restores them (`BanManager::restore_from` takes them as iterators), so a
//! million bans are never held decoded beside the table they go into.
//!
//! The whole read is one `BEGIN IMMEDIATE` transaction: it waits for an
//! offline change the CLI is making (see `offline`), and none can start
//! until the daemon has read everything, so every change either is in what
//! the daemon read, or was asked of the daemon itself.
use super::{
    records::{Count, Position, SavedBan, State, VERSION},
    schema,
};
use anyhow::Result;
use rusqlite::Connection;
use std::{cell::RefCell, collections::HashSet, collections::VecDeque, sync::Arc};

/// Rows read per query: a query per page keeps no statement open across
/// the caller's work, and at this size its cost is lost in the rows'.
const PAGE: i64 = 4096;

/// The state being read (see `Store::restore`).
pub struct Restore<'a> {
    conn: &'a Connection,
    /// Everything but the bans and counts.
    pub header: State,
    /// How many bans there are.
    pub bans_len: usize,
    /// Bans from this rowid on are read with their line (see `keep_lines`).
    lines_from: i64,
    /// The last boot that wrote (`meta.boot_seq`): the monotonic deadlines
    /// of bans written in an earlier one are read as none.
    boot_seq: i64,
    /// The first error met while reading the bans or counts (the read
    /// stops there; `finish` returns it).
    error: RefCell<Option<anyhow::Error>>,
    open: bool,
}

impl<'a> Restore<'a> {
    pub(super) fn begin(conn: &'a Connection) -> Result<Self> {
        // Read through a mapping of the file, not copies into SQLite's
        // cache: the whole table is read once, and a tenth of the time went
        // to copying pages. Unmapped at `finish`: the pages mapped count in
        // the daemon's resident memory (as file pages the kernel can drop).
        conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut this = Restore {
            conn,
            header: State::default(),
            bans_len: 0,
            lines_from: 0,
            boot_seq: schema::meta(conn, "boot_seq")?.unwrap_or(0),
            error: RefCell::new(None),
            open: true,
        };
        this.header = this.read_header()?;
        this.bans_len =
            conn.query_row("SELECT count(*) FROM bans", [], |r| r.get::<_, i64>(0))? as usize;
        Ok(this)
    }

    fn read_header(&self) -> Result<State> {
        let conn = self.conn;
        let kept: Option<i64> = schema::meta(conn, "allowlist_kept")?;
        let allowed = match kept {
            Some(_) => Some(
                conn.prepare("SELECT net FROM allowlist ORDER BY net")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?,
            ),
            None => None,
        };
        let positions = conn
            .prepare("SELECT path, dev, ino, offset FROM positions")?
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Position {
                        dev: r.get::<_, i64>(1)? as u64,
                        ino: r.get::<_, i64>(2)? as u64,
                        offset: r.get::<_, i64>(3)? as u64,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let cursors = conn
            .prepare("SELECT feed, cursor FROM cursors")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(State {
            version: VERSION,
            boot_id: schema::meta(conn, "boot_id")?,
            saved_at: schema::meta(conn, "saved_at")?,
            bans: Vec::new(),
            allowed,
            ban_counts: Default::default(),
            ban_counted_at: Default::default(),
            positions,
            cursors,
        })
    }

    /// Reads the matched lines of the newest bans only, as many as fit in
    /// `budget` bytes (counted as `bans::lines` counts them: 32 bytes
    /// beyond the text); older bans come with an empty line. The ban
    /// manager keeps no more than that (the newest bans' lines, see
    /// `bans::lines`): the others would be read, copied and let go, a
    /// third of a restore's time at a million bans. The database keeps
    /// every line for the operator.
    pub fn keep_lines(&mut self, budget: usize) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT rowid, length(CAST(line AS BLOB)) FROM bans ORDER BY rowid DESC")?;
        let mut rows = stmt.query([])?;
        let (mut used, mut from) = (0usize, i64::MAX);
        while let Some(r) = rows.next()? {
            let len: i64 = r.get(1)?;
            if len > 0 {
                used += len as usize + 32;
                if used > budget {
                    break;
                }
            }
            from = r.get(0)?;
        }
        self.lines_from = from;
        Ok(())
    }

    /// The bans, in the order they were first saved.
    pub fn bans(&self) -> Bans<'_, 'a> {
        Bans {
            restore: self,
            after: 0,
            page: VecDeque::new(),
            names: HashSet::new(),
            last: Default::default(),
            done: false,
        }
    }

    /// The ban counts.
    pub fn counts(&self) -> Counts<'_, 'a> {
        Counts {
            restore: self,
            after: String::new(),
            page: VecDeque::new(),
            done: false,
        }
    }

    /// Ends the read (letting the CLI's offline changes in); the first
    /// error met by `bans` or `counts`, if any.
    pub fn finish(mut self) -> Result<()> {
        self.open = false;
        self.conn.execute_batch("COMMIT")?;
        self.conn.pragma_update(None, "mmap_size", 0)?;
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn failed(&self, e: anyhow::Error) {
        tracing::error!("store: reading the state failed: {e:#}");
        self.error.borrow_mut().get_or_insert(e);
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("COMMIT");
            let _ = self.conn.pragma_update(None, "mmap_size", 0);
        }
    }
}

/// The bans as `Restore::bans` hands them out.
pub struct Bans<'r, 'a> {
    restore: &'r Restore<'a>,
    /// The last rowid handed out.
    after: i64,
    page: VecDeque<SavedBan>,
    /// Jails, reasons and origins, each allocated once: a million bans
    /// share a handful (as the ban manager's `Names` keeps them).
    names: HashSet<Arc<str>>,
    /// The last jail, reason and origin handed out.
    last: [Option<Arc<str>>; 3],
    done: bool,
}

impl Bans<'_, '_> {
    fn fill(&mut self) -> Result<()> {
        let mut stmt = self.restore.conn.prepare_cached(
            "SELECT rowid, net, origin, jail, scope, banned_at, expires_at,
                    CASE WHEN boot = ?4 THEN expires_mono END,
                    reason, CASE WHEN rowid >= ?3 THEN line ELSE '' END, count
             FROM bans WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let r = self.restore;
        let mut rows = stmt.query([self.after, PAGE, r.lines_from, r.boot_seq])?;
        let (names, last) = (&mut self.names, &mut self.last);
        // Mostly the same as the row before's (bans come in runs of a jail):
        // compared first, hashed only when it differs.
        let mut name = |column: usize, text: &str| -> Arc<str> {
            if let Some(n) = last[column].as_ref().filter(|n| &***n == text) {
                return n.clone();
            }
            let n = match names.get(text) {
                Some(n) => n.clone(),
                None => {
                    let n: Arc<str> = Arc::from(text);
                    names.insert(n.clone());
                    n
                }
            };
            last[column] = Some(n.clone());
            n
        };
        let mut n = 0;
        while let Some(r) = rows.next()? {
            n += 1;
            self.after = r.get(0)?;
            let origin = r.get_ref(2)?.as_str()?;
            let origin = (!origin.is_empty()).then(|| name(2, origin));
            let (all_ports, ports_only) = schema::scope_flags(r.get_ref(4)?.as_str()?);
            self.page.push_back(SavedBan {
                net: r.get(1)?,
                jail: name(0, r.get_ref(3)?.as_str()?),
                banned_at: r.get(5)?,
                expires_at: r.get(6)?,
                expires_mono: r.get::<_, Option<i64>>(7)?.map(|m| m as u64),
                reason: name(1, r.get_ref(8)?.as_str()?),
                line: r.get(9)?,
                all_ports,
                ports_only,
                origin,
                count: r.get(10)?,
            });
        }
        self.done = n < PAGE;
        Ok(())
    }
}

impl Iterator for Bans<'_, '_> {
    type Item = SavedBan;

    fn next(&mut self) -> Option<SavedBan> {
        if self.page.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                self.restore.failed(e);
            }
        }
        self.page.pop_front()
    }
}

/// The ban counts as `Restore::counts` hands them out.
pub struct Counts<'r, 'a> {
    restore: &'r Restore<'a>,
    /// The last network handed out ("" before the first: every network's
    /// text sorts after it).
    after: String,
    page: VecDeque<Count>,
    done: bool,
}

impl Counts<'_, '_> {
    fn fill(&mut self) -> Result<()> {
        let mut stmt = self.restore.conn.prepare_cached(
            "SELECT net, bans, last_ban_at FROM offenders
             WHERE net > ?1 ORDER BY net LIMIT ?2",
        )?;
        let mut rows = stmt.query(rusqlite::params![self.after, PAGE])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            n += 1;
            self.page.push_back((r.get(0)?, r.get(1)?, r.get(2)?));
        }
        if let Some(last) = self.page.back() {
            self.after.clone_from(&last.0);
        }
        self.done = n < PAGE;
        Ok(())
    }
}

impl Iterator for Counts<'_, '_> {
    type Item = Count;

    fn next(&mut self) -> Option<Count> {
        if self.page.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                self.restore.failed(e);
            }
        }
        self.page.pop_front()
    }
}
