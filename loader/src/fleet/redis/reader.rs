//! Reads the other members' bans: the snapshot (every ban in force), then
//! the stream of changes. Nothing from Redis is trusted: each entry is
//! verified (`entry::verify`) and checked here against replays, this box's
//! own name and the number of nodes; what fails is counted and dropped.
use super::entry::{self, Entry, Op, Reject};
use super::scripts::{self, Member, Scripts, StreamEntry};
use super::{connect, count, set_scripts_refused, unix_ms, Settings};
use crate::fleet::{deliver, Inbound, InboundTx, RemoteDecision};
use anyhow::{bail, Result};
use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::mpsc,
    time::Duration,
};

/// Snapshot members read at once, and the most pages read.
const PAGE: usize = 1000;
const MAX_PAGES: usize = 2000;
/// Distinct nodes whose bans are taken.
pub const MAX_NODES: usize = 256;
/// A stream entry older than this (by its signed publish time) is a replay;
/// one from further in the future than `SKEW` too.
const WINDOW_MS: i64 = 10 * 60 * 1000;
const SKEW_MS: i64 = 60 * 1000;
/// MACs remembered against exact replays within the window; past that
/// many within 10 minutes, entries are refused rather than a MAC forgotten
/// early.
const SEEN_MAX: usize = 100_000;
/// Unbans remembered (node, network, signed time), against the lifted
/// ban's old signed entry put back.
const LIFTED_MAX: usize = 100_000;

pub struct Reader {
    s: Settings,
    tx: InboundTx,
    seen: Seen,
    nodes: HashSet<String>,
    lifted: Lifted,
    refusal_logged: bool,
    /// The last stream entry read, across connections.
    last_id: Option<String>,
}

impl Reader {
    pub fn new(s: Settings, tx: InboundTx) -> Self {
        Self {
            s,
            tx,
            seen: Seen::default(),
            nodes: HashSet::new(),
            lifted: Lifted::default(),
            refusal_logged: false,
            last_id: None,
        }
    }

    /// One connection's life: snapshot, then the stream until `stop` or an
    /// error (the supervisor runs it again, from a new snapshot). Every
    /// read is a bounded script (`scripts`); the stream is polled.
    pub fn run(&mut self, stop: &mpsc::Receiver<()>) -> Result<()> {
        if self.tx.is_closed() {
            return Ok(());
        }
        let events = self.s.key_name("events");
        let (mut con, sc, newest) = self.open(&events)?;
        let last_id = resume_from(self.last_id.as_deref(), newest, unix_ms());
        self.snapshot(&mut con, &sc)?;
        self.follow(&mut con, &sc, &events, last_id, stop)
    }

    /// A connection with the scripts loaded, and the stream's last entry
    /// before the snapshot (to follow from there). A server that refuses
    /// scripts is remembered for `status`.
    fn open(&self, events: &str) -> Result<(redis::Connection, Scripts, String)> {
        // A script over a large entry keeps a busy Redis a while: the wait
        // is for a dead server, not a slow one.
        let mut con = connect(&self.s, Duration::from_secs(15))?;
        let started =
            Scripts::load(&mut con).and_then(|sc| Ok((sc.last_id(&mut con, events)?, sc)));
        match started {
            Ok((newest, sc)) => {
                set_scripts_refused(None);
                Ok((con, sc, newest))
            }
            Err(e) => {
                if e.downcast_ref::<scripts::Refused>().is_some() {
                    set_scripts_refused(Some(e.to_string()));
                }
                Err(e)
            }
        }
    }

    /// The stream after `last_id`, polled, until `stop` or the daemon goes.
    fn follow(
        &mut self,
        con: &mut redis::Connection,
        sc: &Scripts,
        events: &str,
        mut last_id: String,
        stop: &mpsc::Receiver<()>,
    ) -> Result<()> {
        let stopped = |wait| {
            matches!(
                stop.recv_timeout(wait),
                Err(mpsc::RecvTimeoutError::Disconnected) | Ok(())
            )
        };
        loop {
            if stopped(Duration::ZERO) || self.tx.is_closed() {
                return Ok(());
            }
            let got = sc.read_stream(con, events, &last_id)?;
            let full = got.len() >= scripts::XRANGE_COUNT;
            let mut bans = Vec::new();
            for (id, e) in got {
                last_id.clone_from(&id);
                self.last_id = Some(id);
                match e {
                    StreamEntry::Fields(fields) => self.on_event(&fields, events, &mut bans)?,
                    StreamEntry::Oversized => count(Reject::Oversized),
                }
            }
            self.send_bans(bans)?;
            // More waiting: read on at once.
            if !full && stopped(scripts::POLL) {
                return Ok(());
            }
        }
    }

    /// Every ban in force and every unban's tombstone, page by page. What
    /// is missing lifts nothing: anyone who can write to the Redis can
    /// delete, and an absence carries no signature. A member's ban ends at
    /// its signed end, or with its signed unban (stream or tombstone).
    fn snapshot(&mut self, con: &mut redis::Connection, sc: &Scripts) -> Result<()> {
        let (bans_key, entries_key) = (self.s.key_name("bans"), self.s.key_name("entries"));
        let now = unix_ms();
        let mut batch = Vec::new();
        let mut nodes: HashSet<String> = HashSet::new();
        self.nodes.clear();
        for page in 0..MAX_PAGES {
            let min = format!("({now}");
            let keys = (bans_key.as_str(), entries_key.as_str());
            let members = sc.snapshot_page(con, keys, &min, page * PAGE, PAGE)?;
            for m in &members {
                let Some(e) = self.snapshot_entry(m, &entries_key) else {
                    continue;
                };
                if e.op == Op::Unban {
                    self.send_bans(std::mem::take(&mut batch))?;
                    self.send(Inbound::Unbans {
                        origin: format!("redis:{}", e.node),
                        nets: vec![e.net],
                    })?;
                    continue;
                }
                let Some(left) = e.left(now) else { continue };
                nodes.insert(e.node.clone());
                batch.push((e.node.clone(), decision(&e, left)));
            }
            if members.len() < PAGE {
                break;
            }
        }
        let total = batch.len();
        self.send_bans(batch)?;
        tracing::info!(
            "Redis fleet: following {} as node {:?}, {total} ban(s) of {} other node(s) in force",
            crate::text::redact_url(&self.s.url),
            self.s.node,
            nodes.len()
        );
        Ok(())
    }

    /// A snapshot member (`NODE|NET`) and its signed entry: taken when the
    /// entry is a valid signed ban (or unban's tombstone) of that very node
    /// and network.
    fn snapshot_entry(&mut self, m: &Member, where_: &str) -> Option<Entry> {
        let (member, value) = match m {
            Member::Entry(member, value) => (member, value),
            Member::Missing => {
                count(Reject::Malformed);
                return None;
            }
            Member::Oversized => {
                count(Reject::Oversized);
                return None;
            }
        };
        let Some(split) = value.iter().rposition(|b| *b == b'\n') else {
            count(Reject::Malformed);
            return None;
        };
        let e = self.accept(&value[..split], &value[split + 1..], where_, false)?;
        if e.op == Op::FleetUnban || member.as_slice() != format!("{}|{}", e.node, e.net).as_bytes()
        {
            count(Reject::Mismatch);
            return None;
        }
        Some(e)
    }

    /// One stream entry (fields `e`: the text, `m`: its MAC).
    fn on_event(
        &mut self,
        fields: &[(Vec<u8>, Vec<u8>)],
        where_: &str,
        bans: &mut Vec<(String, RemoteDecision)>,
    ) -> Result<()> {
        let get = |k: &[u8]| {
            fields
                .iter()
                .find(|(f, _)| f.as_slice() == k)
                .map(|(_, v)| v.as_slice())
        };
        let Some(text) = get(b"e") else {
            count(Reject::Malformed);
            return Ok(());
        };
        let Some(e) = self.accept(text, get(b"m").unwrap_or(b""), where_, true) else {
            return Ok(());
        };
        match e.op {
            Op::Ban => {
                if let Some(left) = e.left(unix_ms()) {
                    bans.push((e.node.clone(), decision(&e, left)));
                }
            }
            Op::Unban => {
                self.send_bans(std::mem::take(bans))?;
                self.send(Inbound::Unbans {
                    origin: format!("redis:{}", e.node),
                    nets: vec![e.net],
                })?;
            }
            Op::FleetUnban if !self.s.accept_fleet_unban => {
                count(Reject::FleetUnbanRefused);
                if !self.refusal_logged {
                    self.refusal_logged = true;
                    tracing::warn!(
                        "Redis fleet: {} asked to unban {} on every box; refused (accept_fleet_unban = false), and so are the next ones",
                        e.node,
                        crate::addr::display(&e.net)
                    );
                }
            }
            Op::FleetUnban => {
                self.send_bans(std::mem::take(bans))?;
                self.send(Inbound::FleetUnban {
                    net: e.net,
                    node: e.node,
                })?;
            }
        }
        Ok(())
    }

    /// Verifies an entry and checks it is not this box's, not a replay (for
    /// stream entries), and from one of at most `MAX_NODES` nodes.
    fn accept(&mut self, text: &[u8], mac: &[u8], where_: &str, stream: bool) -> Option<Entry> {
        let mut keys = vec![&self.s.key];
        keys.extend(self.s.previous_key.as_ref());
        let (e, mac) = match entry::verify(text, mac, &keys, where_) {
            Ok(ok) => ok,
            Err(r) => {
                let own = entry::claimed_node(text) == Some(self.s.node.as_str());
                count(if own { Reject::OwnName } else { r });
                return None;
            }
        };
        if e.node == self.s.node {
            return None; // this box's own entry, back from Redis
        }
        if stream {
            let now = unix_ms();
            if e.ts_ms < now - WINDOW_MS
                || e.ts_ms > now + SKEW_MS
                || !self.seen.first(mac, e.ts_ms, now)
            {
                count(Reject::Replay);
                return None;
            }
        }
        // A ban signed before this node's unban of it is its old entry,
        // put back: refused. An unban is remembered against that.
        match e.op {
            Op::Ban if !self.lifted.allows(&e) => {
                count(Reject::Replay);
                return None;
            }
            Op::Ban => {}
            Op::Unban | Op::FleetUnban => self.lifted.record(&e),
        }
        if !self.nodes.contains(&e.node) {
            if self.nodes.len() >= MAX_NODES {
                count(Reject::TooManyNodes);
                return None;
            }
            self.nodes.insert(e.node.clone());
        }
        Some(e)
    }

    fn send_bans(&self, bans: Vec<(String, RemoteDecision)>) -> Result<()> {
        let mut by_node: BTreeMap<String, Vec<RemoteDecision>> = BTreeMap::new();
        for (node, d) in bans {
            by_node.entry(node).or_default().push(d);
        }
        for (node, list) in by_node {
            if !deliver(&self.tx, &format!("redis:{node}"), list) {
                bail!("daemon gone");
            }
        }
        Ok(())
    }

    fn send(&self, msg: Inbound) -> Result<()> {
        self.tx
            .blocking_send(msg)
            .map_err(|_| anyhow::anyhow!("daemon gone"))
    }
}

fn decision(e: &Entry, left: Option<Duration>) -> RemoteDecision {
    RemoteDecision {
        net: e.net,
        left,
        reason: format!("banned by {} ({})", e.node, e.jail),
        scope: e.scope,
    }
}

/// Where to follow the stream from: after the entry last read when the
/// connection was lost a moment ago (nothing published meanwhile is
/// missed), else after its newest entry (older ones are in the snapshot,
/// or past the replay window). Never past the newest: a new Redis numbers
/// from scratch.
fn resume_from(seen: Option<&str>, newest: String, now_ms: i64) -> String {
    let id = |id: &str| -> (u64, u64) {
        let (a, b) = id.split_once('-').unwrap_or((id, "0"));
        (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
    };
    let recent = u64::try_from(now_ms - WINDOW_MS).unwrap_or(0);
    match seen {
        Some(seen) if id(seen).0 >= recent && id(seen) <= id(&newest) => seen.to_owned(),
        _ => newest,
    }
}

/// The MACs of the stream entries seen within the window.
#[derive(Default)]
struct Seen {
    /// Each MAC with the time it may be forgotten: when its entry's own
    /// time (which may run up to `SKEW_MS` ahead) is out of the window too.
    order: std::collections::BinaryHeap<std::cmp::Reverse<(i64, [u8; 32])>>,
    set: HashSet<[u8; 32]>,
}

impl Seen {
    /// True the first time `mac` (signed at `ts`) is seen within the
    /// window; false too when `SEEN_MAX` MACs are still in their window.
    fn first(&mut self, mac: [u8; 32], ts: i64, now: i64) -> bool {
        while let Some(std::cmp::Reverse((forget_at, m))) = self.order.peek() {
            if *forget_at > now {
                break;
            }
            self.set.remove(m);
            self.order.pop();
        }
        if self.set.contains(&mac) || self.set.len() >= SEEN_MAX {
            return false;
        }
        self.set.insert(mac);
        self.order.push(std::cmp::Reverse((
            ts.max(now).saturating_add(WINDOW_MS),
            mac,
        )));
        true
    }
}

/// The latest signed unban per (node, network), bounded: the oldest is
/// forgotten first. By node, then network: a snapshot's every ban entry is
/// looked up without a key made for it.
#[derive(Default)]
struct Lifted {
    at: std::collections::HashMap<String, std::collections::HashMap<ipnet::IpNet, i64>>,
    order: VecDeque<(String, ipnet::IpNet)>,
}

impl Lifted {
    fn record(&mut self, e: &Entry) {
        let nets = self.at.entry(e.node.clone()).or_default();
        match nets.get_mut(&e.net) {
            Some(latest) => *latest = (*latest).max(e.ts_ms),
            None => {
                nets.insert(e.net, e.ts_ms);
                self.order.push_back((e.node.clone(), e.net));
            }
        }
        if self.order.len() > LIFTED_MAX {
            if let Some((node, net)) = self.order.pop_front() {
                if let Some(nets) = self.at.get_mut(&node) {
                    nets.remove(&net);
                    if nets.is_empty() {
                        self.at.remove(&node);
                    }
                }
            }
        }
    }

    /// Whether a ban entry is newer than the node's last unban of it.
    fn allows(&self, e: &Entry) -> bool {
        self.at
            .get(e.node.as_str())
            .and_then(|nets| nets.get(&e.net))
            .is_none_or(|&unbanned| e.ts_ms > unbanned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_resumes_after_the_last_entry_read_if_recent() {
        let now = 1_700_000_000_000;
        let newest = format!("{now}-0");
        // Nothing read yet: from the newest.
        assert_eq!(resume_from(None, newest.clone(), now), newest);
        // Read a moment ago: from there.
        let seen = format!("{}-3", now - 5000);
        assert_eq!(resume_from(Some(&seen), newest.clone(), now), seen);
        // Past the window, or past the newest (a new Redis): the newest.
        let old = format!("{}-0", now - WINDOW_MS - 1);
        assert_eq!(resume_from(Some(&old), newest.clone(), now), newest);
        assert_eq!(resume_from(Some(&seen), "0-0".into(), now), "0-0");
        assert_eq!(
            resume_from(Some(&format!("{now}-9")), newest.clone(), now),
            newest
        );
    }

    #[test]
    fn replays_are_seen_once_within_the_window() {
        let mut s = Seen::default();
        let now = 1_000_000_000;
        assert!(s.first([1; 32], now, now));
        assert!(!s.first([1; 32], now, now + 1000));
        assert!(s.first([2; 32], now, now + 1000));
        // Past the window, memory goes (the timestamp check refuses it then).
        assert!(s.first([1; 32], now, now + WINDOW_MS + 1));
        // Signed ahead of this clock: remembered until its own time is out
        // of the window, not only the arrival.
        let ahead = now + SKEW_MS;
        assert!(s.first([3; 32], ahead, now));
        assert!(!s.first([3; 32], ahead, now + WINDOW_MS + 1));
        assert!(s.first([3; 32], ahead, ahead + WINDOW_MS + 1));
    }

    #[test]
    fn a_full_memory_refuses_rather_than_forgets() {
        let mut s = Seen::default();
        let now = 1_000_000_000;
        for i in 0..SEEN_MAX as u32 {
            let mut mac = [0; 32];
            mac[..4].copy_from_slice(&i.to_le_bytes());
            assert!(s.first(mac, now, now));
        }
        assert!(!s.first([0xff; 32], now, now + 1));
        // An exact replay of the first is still refused as such.
        assert!(!s.first([0; 32], now, now + 1));
        // Once the window has passed, there is room again.
        assert!(s.first([0xff; 32], now, now + WINDOW_MS + 1));
    }

    #[test]
    fn a_lifted_bans_old_entry_is_refused_and_a_newer_one_taken() {
        let mut l = Lifted::default();
        let mut ban = crate::fleet::redis::entry::Entry {
            op: Op::Ban,
            node: "box9".into(),
            net: "192.0.2.1/32".parse().unwrap(),
            scope: crate::bans::Scope::Ports,
            end_ms: None,
            ts_ms: 1000,
            jail: "j".into(),
        };
        assert!(l.allows(&ban));
        let unban = Entry {
            op: Op::Unban,
            ts_ms: 2000,
            ..ban.clone()
        };
        l.record(&unban);
        assert!(!l.allows(&ban), "the old entry put back");
        ban.ts_ms = 3000;
        assert!(l.allows(&ban), "banned again since");
        let other = Entry {
            node: "box8".into(),
            ts_ms: 1000,
            ..ban.clone()
        };
        assert!(l.allows(&other), "another node's ban is its own");
    }
}
