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
use rusqlite::{Connection, OpenFlags};
use std::{
    cell::RefCell,
    collections::HashSet,
    sync::{mpsc, Arc},
    thread::JoinHandle,
};

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

    /// The bans, in the order they were first saved. Read on a thread of
    /// their own, through a connection of its own (in the read transaction
    /// this one's lock keeps still), a chunk ahead of the caller: the rows
    /// are decoded while the caller puts the bans before them in place.
    pub fn bans(&self) -> Bans<'_, 'a> {
        let (lines_from, boot_seq) = (self.lines_from, self.boot_seq);
        Bans {
            restore: self,
            rows: self.background(move |conn, emit| read_bans(conn, lines_from, boot_seq, emit)),
        }
    }

    /// The ban counts (read as `bans` are).
    pub fn counts(&self) -> Counts<'_, 'a> {
        Counts {
            restore: self,
            rows: self.background(read_counts),
        }
    }

    fn background<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection, &mut Chunks<T>) -> Result<()> + Send + 'static,
    ) -> Background<T> {
        match Background::start(self.conn, read) {
            Ok(b) => b,
            Err(e) => {
                self.failed(e);
                Background::none()
            }
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
    rows: Background<SavedBan>,
}

impl Iterator for Bans<'_, '_> {
    type Item = SavedBan;

    fn next(&mut self) -> Option<SavedBan> {
        self.rows.next(self.restore)
    }
}

/// The ban counts as `Restore::counts` hands them out.
pub struct Counts<'r, 'a> {
    restore: &'r Restore<'a>,
    rows: Background<Count>,
}

impl Iterator for Counts<'_, '_> {
    type Item = Count;

    fn next(&mut self) -> Option<Count> {
        self.rows.next(self.restore)
    }
}

/// Rows read on a thread, handed over in chunks.
struct Background<T> {
    chunks: Option<mpsc::Receiver<Result<Vec<T>>>>,
    chunk: std::vec::IntoIter<T>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Background<T> {
    fn start(
        conn: &Connection,
        read: impl FnOnce(&Connection, &mut Chunks<T>) -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        let path = conn
            .path()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the database has no file to read it from"))?
            .to_owned();
        // A few chunks ahead at most: a few MB, however many rows.
        let (tx, rx) = mpsc::sync_channel(4);
        let thread = std::thread::Builder::new()
            .name("sipguard-restore".into())
            .spawn(move || {
                let mut chunks = Chunks {
                    tx,
                    chunk: Vec::with_capacity(CHUNK),
                };
                let result = (|| -> Result<()> {
                    let conn = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    conn.busy_timeout(schema::BUSY_TIMEOUT)?;
                    // One read transaction: every row of one state.
                    conn.execute_batch("BEGIN")?;
                    read(&conn, &mut chunks)?;
                    conn.execute_batch("COMMIT")?;
                    Ok(())
                })();
                match result {
                    Ok(()) => {
                        let last = std::mem::take(&mut chunks.chunk);
                        let _ = chunks.tx.send(Ok(last));
                    }
                    // The caller is gone: nothing to say.
                    Err(e) if e.is::<Gone>() => {}
                    Err(e) => {
                        let _ = chunks.tx.send(Err(e));
                    }
                }
            })?;
        Ok(Self {
            chunks: Some(rx),
            chunk: Vec::new().into_iter(),
            thread: Some(thread),
        })
    }

    fn none() -> Self {
        Self {
            chunks: None,
            chunk: Vec::new().into_iter(),
            thread: None,
        }
    }

    fn next(&mut self, restore: &Restore<'_>) -> Option<T> {
        loop {
            if let Some(row) = self.chunk.next() {
                return Some(row);
            }
            match self.chunks.as_ref()?.recv() {
                Ok(Ok(chunk)) => self.chunk = chunk.into_iter(),
                Ok(Err(e)) => {
                    self.chunks = None;
                    restore.failed(e);
                    return None;
                }
                // Done.
                Err(_) => {
                    self.chunks = None;
                    return None;
                }
            }
        }
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        // The reader stops at its next chunk, and ends its read.
        self.chunks = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Rows per chunk handed over.
const CHUNK: usize = 4096;

/// Where a reader puts its rows.
struct Chunks<T> {
    tx: mpsc::SyncSender<Result<Vec<T>>>,
    chunk: Vec<T>,
}

/// The caller stopped reading (dropped the iterator).
#[derive(Debug)]
struct Gone;

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the restore stopped reading")
    }
}

impl std::error::Error for Gone {}

impl<T> Chunks<T> {
    fn push(&mut self, row: T) -> Result<()> {
        self.chunk.push(row);
        if self.chunk.len() == CHUNK {
            let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
            self.tx.send(Ok(full)).map_err(|_| Gone)?;
        }
        Ok(())
    }
}

/// Every ban, in rowid order, with its line from rowid `lines_from` on and
/// its monotonic deadline if written in boot `boot_seq`.
fn read_bans(
    conn: &Connection,
    lines_from: i64,
    boot_seq: i64,
    out: &mut Chunks<SavedBan>,
) -> Result<()> {
    // Jails and reasons by id, each allocated once: a million bans share a
    // handful (as the ban manager's `Names` keeps them).
    let mut names: Vec<Option<Arc<str>>> = Vec::new();
    let mut stmt = conn.prepare("SELECT id, name FROM names")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id = usize::try_from(r.get::<_, i64>(0)?)?;
        anyhow::ensure!(id < 1 << 20, "a name's id is out of range: {id}");
        if names.len() <= id {
            names.resize(id + 1, None);
        }
        names[id] = Some(Arc::from(r.get_ref(1)?.as_str()?));
    }
    let name = |id: i64| -> Result<Arc<str>> {
        usize::try_from(id)
            .ok()
            .and_then(|i| names.get(i)?.clone())
            .ok_or_else(|| anyhow::anyhow!("a ban refers to name {id}, not in `names`"))
    };
    // Origins, as names; mostly the same as the row before's: compared
    // first, hashed only when it differs.
    let mut origins: HashSet<Arc<str>> = HashSet::new();
    let mut last_origin: Option<Arc<str>> = None;
    let mut stmt = conn.prepare(
        "SELECT net, origin, jail, scope, banned_at, expires_at,
                CASE WHEN boot = ?2 THEN expires_mono END, reason,
                count, CASE WHEN rowid >= ?1 THEN line END
         FROM bans ORDER BY rowid",
    )?;
    let mut rows = stmt.query([lines_from, boot_seq])?;
    while let Some(r) = rows.next()? {
        let origin = match r.get_ref(1)?.as_str()? {
            "" => None,
            text => Some(match last_origin.as_ref().filter(|o| &***o == text) {
                Some(o) => o.clone(),
                None => {
                    let o = match origins.get(text) {
                        Some(o) => o.clone(),
                        None => {
                            let o: Arc<str> = Arc::from(text);
                            origins.insert(o.clone());
                            o
                        }
                    };
                    last_origin = Some(o.clone());
                    o
                }
            }),
        };
        let (all_ports, ports_only) = schema::scope_of_code(r.get(3)?);
        let line = match r.get_ref(9)? {
            rusqlite::types::ValueRef::Null => String::new(),
            text => text.as_str()?.to_owned(),
        };
        out.push(SavedBan {
            net: r.get_ref(0)?.as_str()?.to_owned(),
            jail: name(r.get(2)?)?,
            banned_at: r.get(4)?,
            expires_at: r.get(5)?,
            expires_mono: r.get::<_, Option<i64>>(6)?.map(|m| m as u64),
            reason: name(r.get(7)?)?,
            line,
            all_ports,
            ports_only,
            origin,
            count: r.get(8)?,
        })?;
    }
    Ok(())
}

fn read_counts(conn: &Connection, out: &mut Chunks<Count>) -> Result<()> {
    let mut stmt = conn.prepare("SELECT net, bans, last_ban_at FROM offenders ORDER BY net")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        out.push((r.get(0)?, r.get(1)?, r.get(2)?))?;
    }
    Ok(())
}
