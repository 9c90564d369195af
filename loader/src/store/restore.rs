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
use std::{
    cell::RefCell,
    collections::{HashSet, VecDeque},
    sync::Arc,
};

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
        // Not through a mapping of the file: every page read would count in
        // the daemon's peak resident memory (the whole file, 230 MiB at a
        // million bans, past the 200 MiB the daemon may take), and reading
        // through SQLite's cache measured as fast.
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
        let mut bans = Bans {
            restore: self,
            after: 0,
            page: VecDeque::new(),
            names: Vec::new(),
            origins: HashSet::new(),
            last_origin: None,
            done: false,
        };
        if let Err(e) = bans.read_names() {
            bans.done = true;
            self.failed(e);
        }
        bans
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
        }
    }
}

/// The bans as `Restore::bans` hands them out.
pub struct Bans<'r, 'a> {
    restore: &'r Restore<'a>,
    /// The last rowid handed out.
    after: i64,
    page: VecDeque<SavedBan>,
    /// Jails and reasons by id, each allocated once: a million bans share
    /// a handful (as the ban manager's `Names` keeps them).
    names: Vec<Option<Arc<str>>>,
    /// Origins, as names.
    origins: HashSet<Arc<str>>,
    /// The last origin handed out.
    last_origin: Option<Arc<str>>,
    done: bool,
}

impl Bans<'_, '_> {
    fn read_names(&mut self) -> Result<()> {
        let mut stmt = self.restore.conn.prepare("SELECT id, name FROM names")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id = usize::try_from(r.get::<_, i64>(0)?)?;
            if self.names.len() <= id {
                self.names.resize(id + 1, None);
            }
            self.names[id] = Some(Arc::from(r.get_ref(1)?.as_str()?));
        }
        Ok(())
    }

    fn name(&self, id: i64) -> Result<Arc<str>> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.names.get(i)?.clone())
            .ok_or_else(|| anyhow::anyhow!("a ban refers to name {id}, not in `names`"))
    }

    fn fill(&mut self) -> Result<()> {
        let mut stmt = self.restore.conn.prepare_cached(
            "SELECT rowid, net, origin, jail, scope, banned_at, expires_at,
                    CASE WHEN boot = ?4 THEN expires_mono END, reason,
                    count, CASE WHEN rowid >= ?3 THEN line END
             FROM bans WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let r = self.restore;
        let mut rows = stmt.query([self.after, PAGE, r.lines_from, r.boot_seq])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            n += 1;
            self.after = r.get(0)?;
            let origin = r.get_ref(2)?.as_str()?;
            let origin = match origin {
                "" => None,
                // Mostly the same as the row before's: compared first,
                // hashed only when it differs.
                text => Some(match self.last_origin.as_ref().filter(|o| &***o == text) {
                    Some(o) => o.clone(),
                    None => {
                        let o = match self.origins.get(text) {
                            Some(o) => o.clone(),
                            None => {
                                let o: Arc<str> = Arc::from(text);
                                self.origins.insert(o.clone());
                                o
                            }
                        };
                        self.last_origin = Some(o.clone());
                        o
                    }
                }),
            };
            let (all_ports, ports_only) = schema::scope_of_code(r.get(4)?);
            let line = match r.get_ref(10)? {
                rusqlite::types::ValueRef::Null => String::new(),
                text => text.as_str()?.to_owned(),
            };
            self.page.push_back(SavedBan {
                net: r.get_ref(1)?.as_str()?.to_owned(),
                jail: self.name(r.get(3)?)?,
                banned_at: r.get(5)?,
                expires_at: r.get(6)?,
                expires_mono: r.get::<_, Option<i64>>(7)?.map(|m| m as u64),
                reason: self.name(r.get(8)?)?,
                line,
                all_ports,
                ports_only,
                origin,
                count: r.get(9)?,
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
