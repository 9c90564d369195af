//! What changed in a tick, as the writer takes it: applied in one
//! transaction, so the database holds every change of a batch or none.
use super::{
    legacy::changes::Change,
    records::{Count, Position, SavedBan},
    schema,
};
use anyhow::Result;
use rusqlite::{params, Connection};
use std::collections::BTreeMap;

/// The boot and wall time a batch was made at (the `Clock` of the change
/// log): a batch of a later boot voids the monotonic deadlines saved
/// before it (their wall-time ends stand).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clock {
    pub boot_id: String,
    /// Unix ms.
    pub saved_at: i64,
}

/// One tick's changes. Applied in this order: `replace`, `clock`, `nets`,
/// `bans`, `unbans`, `counts`, `positions`, `cursors`, `allowed`.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// The batch is the whole state: every ban, count, position, cursor
    /// and allowlist entry not in it goes, and without `allowed` the
    /// allowlist is as never saved (a restart after a failed batch, an
    /// import).
    pub replace: bool,
    pub clock: Option<Clock>,
    /// Every ban a network has now (none: unbanned), whatever its origin:
    /// what `BanManager::take_changes` hands out.
    pub nets: Vec<(String, Vec<SavedBan>)>,
    /// Bans added or changed, by network and origin.
    pub bans: Vec<SavedBan>,
    /// Bans gone, by network and origin (`None`: this box's own).
    pub unbans: Vec<(String, Option<String>)>,
    /// Ban counts; a count of 0 forgets the network.
    pub counts: Vec<Count>,
    /// Read positions by log path; `None` forgets the log.
    pub positions: Vec<(String, Option<Position>)>,
    /// Feed cursors; `None` forgets the feed.
    pub cursors: Vec<(String, Option<String>)>,
    /// The operator's whole allowlist, when it changed (small).
    pub allowed: Option<Vec<String>>,
}

impl Batch {
    /// The change log's lines (`BanManager::take_changes` and the daemon's
    /// `Clock` and `Meta`) as a batch.
    pub fn from_changes(changes: impl IntoIterator<Item = Change>) -> Self {
        let mut batch = Batch::default();
        for change in changes {
            match change {
                Change::Net { net, bans } => batch.nets.push((net, bans)),
                Change::Count { net, n, at } => batch.counts.push((net, n, at)),
                Change::Meta { allowed, cursors } => {
                    batch.allowed = Some(allowed);
                    batch
                        .cursors
                        .extend(cursors.into_iter().map(|(f, c)| (f, Some(c))));
                }
                Change::Clock { boot_id, saved_at } => {
                    batch.clock = Some(Clock { boot_id, saved_at })
                }
            }
        }
        batch
    }

    /// The read positions that differ from `before` (the last ones
    /// handed over), those gone included: the daemon keeps the positions
    /// it last saved and hands over only what moved.
    pub fn positions_since(
        &mut self,
        before: &BTreeMap<String, Position>,
        now: &BTreeMap<String, Position>,
    ) {
        self.positions.extend(changed(before, now));
    }

    /// The feed cursors that differ from `before`, as `positions_since`.
    pub fn cursors_since(
        &mut self,
        before: &BTreeMap<String, String>,
        now: &BTreeMap<String, String>,
    ) {
        self.cursors.extend(changed(before, now));
    }

    /// How many rows the batch writes, about (for the writer's figures).
    pub fn len(&self) -> usize {
        self.nets.iter().map(|(_, b)| b.len().max(1)).sum::<usize>()
            + self.bans.len()
            + self.unbans.len()
            + self.counts.len()
            + self.positions.len()
            + self.cursors.len()
            + self.allowed.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        !self.replace && self.clock.is_none() && self.len() == 0 && self.allowed.is_none()
    }
}

/// What differs between two maps: the keys set anew, and those gone.
fn changed<'a, V: PartialEq + Clone>(
    before: &'a BTreeMap<String, V>,
    now: &'a BTreeMap<String, V>,
) -> impl Iterator<Item = (String, Option<V>)> + 'a {
    let set = now
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), Some(v.clone())));
    let gone = before
        .keys()
        .filter(|k| !now.contains_key(*k))
        .map(|k| (k.clone(), None));
    set.chain(gone)
}

/// Applies `batch` inside the caller's transaction.
pub fn apply(conn: &Connection, batch: &Batch) -> Result<()> {
    if batch.replace {
        conn.execute_batch(
            "DELETE FROM bans; DELETE FROM names;
             DELETE FROM offenders; DELETE FROM positions;
             DELETE FROM cursors; DELETE FROM allowlist;
             DELETE FROM meta WHERE key = 'allowlist_kept';",
        )?;
    }
    if let Some(clock) = &batch.clock {
        set_clock(conn, clock)?;
    }
    let mut put = PutBans::new(conn)?;
    if !batch.nets.is_empty() {
        let mut drop_net = conn.prepare_cached("DELETE FROM bans WHERE net = ?1")?;
        for (net, bans) in &batch.nets {
            drop_net.execute([net])?;
            for b in bans {
                put.put(b)?;
            }
        }
    }
    for b in &batch.bans {
        put.put(b)?;
    }
    if !batch.unbans.is_empty() {
        let mut unban = conn.prepare_cached("DELETE FROM bans WHERE net = ?1 AND origin = ?2")?;
        for (net, origin) in &batch.unbans {
            unban.execute(params![net, origin.as_deref().unwrap_or("")])?;
        }
    }
    for count in &batch.counts {
        put_count(conn, count)?;
    }
    for (path, at) in &batch.positions {
        match at {
            Some(p) => put_position(conn, path, p)?,
            None => {
                conn.prepare_cached("DELETE FROM positions WHERE path = ?1")?
                    .execute([path])?;
            }
        }
    }
    for (feed, cursor) in &batch.cursors {
        match cursor {
            Some(c) => put_cursor(conn, feed, c)?,
            None => {
                conn.prepare_cached("DELETE FROM cursors WHERE feed = ?1")?
                    .execute([feed])?;
            }
        }
    }
    if let Some(allowed) = &batch.allowed {
        let now = batch.clock.as_ref().map(|c| c.saved_at);
        set_allowlist(conn, allowed, now)?;
    }
    Ok(())
}

/// Records the boot and time of a write. A new boot is a new `boot_seq`:
/// the monotonic deadlines of the bans written before it no longer hold
/// (a restore reads them as none), and none is rewritten for it (a million
/// rows rewritten took the writer 1.4 s at the first tick of every boot).
pub fn set_clock(conn: &Connection, clock: &Clock) -> Result<()> {
    let before: Option<String> = schema::meta(conn, "boot_id")?;
    if before.as_deref() != Some(clock.boot_id.as_str()) {
        let seq: i64 = schema::meta(conn, "boot_seq")?.unwrap_or(0);
        schema::set_meta(conn, "boot_seq", seq + 1)?;
        schema::set_meta(conn, "boot_id", &clock.boot_id)?;
    }
    schema::set_meta(conn, "saved_at", clock.saved_at)
}

/// Adds or replaces the ban of `b.net` by `b.origin`.
pub fn put_ban(conn: &Connection, b: &SavedBan) -> Result<()> {
    PutBans::new(conn)?.put(b)
}

/// Bans written in one transaction: the boot they are written in, read
/// once, and the ids of the jails and reasons met, found once each (good
/// for this transaction only: a rolled back one takes its new names along).
struct PutBans<'c> {
    conn: &'c Connection,
    /// The upsert, found in the statement cache once per batch (its text
    /// is hashed at each `prepare_cached`).
    upsert: rusqlite::CachedStatement<'c>,
    boot: i64,
    /// A batch has a handful of names: looked through, newest first.
    names: Vec<(std::sync::Arc<str>, i64)>,
}

impl<'c> PutBans<'c> {
    fn new(conn: &'c Connection) -> Result<Self> {
        Ok(Self {
            conn,
            upsert: conn.prepare_cached(UPSERT)?,
            boot: schema::meta(conn, "boot_seq")?.unwrap_or(0),
            names: Vec::new(),
        })
    }

    fn name(&mut self, name: &std::sync::Arc<str>) -> Result<i64> {
        // The same `Arc` most of the time (a jail's bans share one).
        if let Some((_, id)) = self
            .names
            .iter()
            .rev()
            .find(|(n, _)| std::sync::Arc::ptr_eq(n, name) || n == name)
        {
            return Ok(*id);
        }
        let id = schema::name_id(self.conn, name)?;
        self.names.push((name.clone(), id));
        Ok(id)
    }

    fn put(&mut self, b: &SavedBan) -> Result<()> {
        let jail = self.name(&b.jail)?;
        let reason = self.name(&b.reason)?;
        self.upsert.execute(params![
            b.net,
            b.origin.as_deref().unwrap_or(""),
            jail,
            schema::scope_code(b.all_ports, b.ports_only),
            b.banned_at,
            b.expires_at,
            // A monotonic deadline fits in an i64 for 292 years of uptime.
            b.expires_mono.map(|m| m as i64),
            reason,
            b.count,
            self.boot,
            b.line,
        ])?;
        Ok(())
    }
}

const UPSERT: &str = "INSERT INTO bans (net, origin, jail, scope, banned_at, expires_at,
                                       expires_mono, reason, count, boot, line)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
     ON CONFLICT (net, origin) DO UPDATE SET
         jail = excluded.jail, scope = excluded.scope,
         banned_at = excluded.banned_at, expires_at = excluded.expires_at,
         expires_mono = excluded.expires_mono, reason = excluded.reason,
         count = excluded.count, boot = excluded.boot, line = excluded.line";

/// Sets a network's ban count; 0 forgets it.
pub fn put_count(conn: &Connection, (net, n, at): &Count) -> Result<()> {
    if *n == 0 {
        conn.prepare_cached("DELETE FROM offenders WHERE net = ?1")?
            .execute([net])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO offenders (net, bans, last_ban_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (net) DO UPDATE SET bans = excluded.bans,
                 last_ban_at = excluded.last_ban_at",
        )?
        .execute(params![net, n, at])?;
    }
    Ok(())
}

pub fn put_position(conn: &Connection, path: &str, p: &Position) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO positions (path, dev, ino, offset) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (path) DO UPDATE SET dev = excluded.dev, ino = excluded.ino,
             offset = excluded.offset",
    )?
    // Device and inode numbers are kept bit for bit (SQLite has no u64).
    .execute(params![path, p.dev as i64, p.ino as i64, p.offset as i64])?;
    Ok(())
}

pub fn put_cursor(conn: &Connection, feed: &str, cursor: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO cursors (feed, cursor) VALUES (?1, ?2)
         ON CONFLICT (feed) DO UPDATE SET cursor = excluded.cursor",
    )?
    .execute([feed, cursor])?;
    Ok(())
}

/// The operator's allowlist becomes `allowed`; entries already there keep
/// when they were added, new ones were added at `added_at`.
pub fn set_allowlist(conn: &Connection, allowed: &[String], added_at: Option<i64>) -> Result<()> {
    let mut keep = conn.prepare_cached("SELECT net FROM allowlist")?;
    let before: Vec<String> = keep
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for net in before.iter().filter(|n| !allowed.contains(n)) {
        conn.prepare_cached("DELETE FROM allowlist WHERE net = ?1")?
            .execute([net])?;
    }
    for net in allowed {
        allow(conn, net, added_at)?;
    }
    schema::set_meta(conn, "allowlist_kept", 1)
}

/// Adds `net` to the allowlist (when it is not there yet).
pub fn allow(conn: &Connection, net: &str, added_at: Option<i64>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO allowlist (net, added_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?
    .execute(params![net, added_at])?;
    Ok(())
}
