//! Publishes this box's ban changes: each batch is one MULTI/EXEC (ZADD of
//! `NODE|NET`, HSET of its signed entry, a ban or an unban's tombstone, XADD
//! of the signed change), so a member never sees half a change and a replacement is
//! O(log N). What cannot be sent while Redis is away waits, up to a bound.
use super::entry::{clean_jail, Entry, Op};
use super::scripts::{self, Scripts};
use super::{connect, unix_ms, Settings};
use crate::bans::Scope;
use crate::fleet::Outbound;
use anyhow::Result;
use std::{
    collections::VecDeque,
    sync::mpsc,
    time::{Duration, Instant},
};

/// Stream entries kept (approximately).
const STREAM_MAXLEN: u64 = 100_000;
/// Changes waiting while Redis is away.
const PENDING_MAX: usize = 100_000;
/// Changes sent in one transaction.
const BATCH: usize = 500;
/// Ended bans removed at once, and rounds of that per trim.
const TRIM_PAGE: usize = 1000;
const TRIM_ROUNDS: usize = 10;
/// How long an unban's tombstone stays at least (longer when the ban it
/// lifts would have: see `add`).
const TOMBSTONE_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

pub struct Writer {
    s: Settings,
    con: Option<redis::Connection>,
    /// Loaded on `con`, when first needed.
    scripts: Option<Scripts>,
    pending: VecDeque<Outbound>,
    last_trim: Instant,
    trim_refused_logged: bool,
}

impl Writer {
    pub fn new(s: Settings) -> Self {
        Self {
            s,
            con: None,
            scripts: None,
            pending: VecDeque::new(),
            last_trim: Instant::now(),
            trim_refused_logged: false,
        }
    }

    /// Until the daemon's outlet goes; an error (Redis away) returns, and
    /// the supervisor runs it again (the queue is kept).
    pub fn run(&mut self, out: &mpsc::Receiver<Outbound>) -> Result<()> {
        loop {
            let wait = if self.pending.is_empty() {
                Duration::from_secs(60)
            } else {
                Duration::from_millis(50)
            };
            match out.recv_timeout(wait) {
                Ok(o) => self.queue(o),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            while let Ok(o) = out.try_recv() {
                self.queue(o);
            }
            if self.con.is_none() {
                self.con = Some(connect(&self.s, Duration::from_secs(10))?);
                self.scripts = None;
            }
            let result = self.flush().and_then(|()| self.trim());
            if result.is_err() {
                self.con = None;
            }
            result?;
        }
    }

    fn queue(&mut self, o: Outbound) {
        if self.pending.len() >= PENDING_MAX {
            self.pending.pop_front();
        }
        self.pending.push_back(o);
    }

    fn flush(&mut self) -> Result<()> {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(BATCH);
            let mut p = redis::pipe();
            p.atomic();
            for o in self.pending.iter().take(n) {
                self.add(&mut p, o);
            }
            let con = self.con.as_mut().expect("connected");
            p.query::<()>(con)?;
            self.pending.drain(..n);
        }
        Ok(())
    }

    /// One change's commands.
    fn add(&self, p: &mut redis::Pipeline, o: &Outbound) {
        let s = &self.s;
        let (bans, entries, events) = (
            s.key_name("bans"),
            s.key_name("entries"),
            s.key_name("events"),
        );
        let now = unix_ms();
        let (e, end) = match o {
            Outbound::Ban {
                net,
                jail,
                left,
                scope,
                ..
            } => {
                let end = left.map(|d| {
                    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
                });
                let e = Entry {
                    op: Op::Ban,
                    node: s.node.clone(),
                    net: *net,
                    scope: *scope,
                    end_ms: end,
                    ts_ms: now,
                    jail: clean_jail(jail),
                };
                (e, end)
            }
            Outbound::Unban { net, fleet } => {
                let e = Entry {
                    op: if *fleet { Op::FleetUnban } else { Op::Unban },
                    node: s.node.clone(),
                    net: *net,
                    scope: Scope::Ports,
                    end_ms: None,
                    ts_ms: now,
                    jail: "-".into(),
                };
                (e, None)
            }
        };
        let member = format!("{}|{}", e.node, e.net);
        if e.op == Op::Ban {
            let score = end.map_or("+inf".to_owned(), |e| e.to_string());
            let (text, mac) = e.sign(&s.key, &entries);
            p.cmd("ZADD").arg(&bans).arg(score).arg(&member).ignore();
            p.cmd("HSET")
                .arg(&entries)
                .arg(&member)
                .arg(format!("{text}\n{mac}"))
                .ignore();
        } else {
            // The entry becomes a signed tombstone instead of going: a
            // member that missed the stream learns of the unban from the
            // snapshot, and nobody can lift a ban by deleting its entry
            // (absence lifts nothing) or bring it back by putting the old
            // signed entry in again (the tombstone is newer). It is kept as
            // long as the ban would have lasted, at least `TOMBSTONE_KEEP`
            // (GT: a later end is never shortened).
            // A tombstone says this node's ban is lifted, never more: a
            // fleet unban travels on the stream alone.
            let keep = now.saturating_add(TOMBSTONE_KEEP_MS).to_string();
            let tombstone = Entry {
                op: Op::Unban,
                ..e.clone()
            };
            let (text, mac) = tombstone.sign(&s.key, &entries);
            p.cmd("ZADD")
                .arg(&bans)
                .arg("GT")
                .arg(&keep)
                .arg(&member)
                .ignore();
            p.cmd("HSET")
                .arg(&entries)
                .arg(&member)
                .arg(format!("{text}\n{mac}"))
                .ignore();
        }
        let (text, mac) = e.sign(&s.key, &events);
        p.cmd("XADD")
            .arg(&events)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAXLEN)
            .arg("*")
            .arg("e")
            .arg(text)
            .arg("m")
            .arg(mac)
            .ignore();
    }

    /// One page of ended bans removed, on the server: the members
    /// (anyone's, of any size) are never read here.
    fn trim_with(&mut self, bans: &str, entries: &str) -> Result<usize> {
        let con = self.con.as_mut().expect("connected");
        if self.scripts.is_none() {
            self.scripts = Some(Scripts::load(con)?);
        }
        let sc = self.scripts.as_ref().expect("loaded");
        sc.trim(con, (bans, entries), unix_ms(), TRIM_PAGE)
    }

    /// Every minute: ended bans (of any node: a node that left stays in the
    /// set otherwise) leave the set and their entries the hash.
    fn trim(&mut self) -> Result<()> {
        if self.last_trim.elapsed() < Duration::from_secs(60) {
            return Ok(());
        }
        self.last_trim = Instant::now();
        let (bans, entries) = (self.s.key_name("bans"), self.s.key_name("entries"));
        for _ in 0..TRIM_ROUNDS {
            let removed = match self.trim_with(&bans, &entries) {
                Ok(n) => n,
                Err(e) if e.downcast_ref::<scripts::Refused>().is_some() => {
                    // Publishing goes on; ended bans stay (their ends
                    // are in their entries: members drop them anyway).
                    if !self.trim_refused_logged {
                        self.trim_refused_logged = true;
                        tracing::warn!("Redis fleet: ended bans are not trimmed: {e}");
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if removed < TRIM_PAGE {
                break;
            }
        }
        Ok(())
    }
}
