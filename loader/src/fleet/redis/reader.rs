//! Reads the other members' bans: the snapshot (every ban in force), then
//! the stream of changes. Nothing from Redis is trusted: each entry is
//! verified (`entry::verify`) and checked here against replays, this box's
//! own name and the number of nodes; what fails is counted and dropped.
use super::entry::{self, Entry, Op, Reject};
use super::{connect, count, unix_ms, Settings};
use crate::fleet::{deliver, Inbound, InboundTx, RemoteDecision};
use anyhow::{bail, Result};
use redis::Value;
use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::mpsc,
    time::Duration,
};

/// Stream entries read at once.
const XREAD_COUNT: usize = 100;
/// Snapshot members read at once, and the most pages read.
const PAGE: usize = 1000;
const MAX_PAGES: usize = 2000;
/// Distinct nodes whose bans are taken.
pub const MAX_NODES: usize = 256;
/// A stream entry older than this (by its signed publish time) is a replay;
/// one from further in the future than `SKEW` too.
const WINDOW_MS: i64 = 10 * 60 * 1000;
const SKEW_MS: i64 = 60 * 1000;
/// MACs remembered against exact replays within the window.
const SEEN_MAX: usize = 100_000;
/// Longest stream ID (`ms-seq`, two u64).
const MAX_ID: usize = 41;

pub struct Reader {
    s: Settings,
    tx: InboundTx,
    seen: Seen,
    nodes: HashSet<String>,
    refusal_logged: bool,
}

impl Reader {
    pub fn new(s: Settings, tx: InboundTx) -> Self {
        Self {
            s,
            tx,
            seen: Seen::default(),
            nodes: HashSet::new(),
            refusal_logged: false,
        }
    }

    /// One connection's life: snapshot, then the stream until `stop` or an
    /// error (the supervisor runs it again, from a new snapshot).
    pub fn run(&mut self, stop: &mpsc::Receiver<()>) -> Result<()> {
        if self.tx.is_closed() {
            return Ok(());
        }
        let mut con = connect(&self.s, Duration::from_secs(5))?;
        let events = self.s.key_name("events");
        // The stream's last entry before the snapshot: follow from there.
        let last: Value = redis::cmd("XREVRANGE")
            .arg(&events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut con)?;
        let mut last_id = match items(&last).first() {
            Some(e) => stream_id(items(e).first())?,
            None => "0-0".to_owned(),
        };
        self.snapshot(&mut con)?;
        loop {
            if matches!(
                stop.try_recv(),
                Err(mpsc::TryRecvError::Disconnected) | Ok(())
            ) || self.tx.is_closed()
            {
                return Ok(());
            }
            let reply: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(XREAD_COUNT)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&events)
                .arg(&last_id)
                .query(&mut con)?;
            let mut bans = Vec::new();
            for stream in items(&reply).iter().take(1) {
                for e in items(stream).get(1).map(items).unwrap_or(&[]) {
                    last_id = stream_id(items(e).first())?;
                    let fields = items(e).get(1).map(items).unwrap_or(&[]);
                    self.on_event(fields, &events, &mut bans)?;
                }
            }
            self.send_bans(std::mem::take(&mut bans))?;
        }
    }

    /// Every ban in force, page by page; then each node's list is complete
    /// (what a node no longer bans goes).
    fn snapshot(&mut self, con: &mut redis::Connection) -> Result<()> {
        let (bans_key, entries_key) = (self.s.key_name("bans"), self.s.key_name("entries"));
        let now = unix_ms();
        let mut batch = Vec::new();
        let mut seen: BTreeMap<String, HashSet<ipnet::IpNet>> = BTreeMap::new();
        self.nodes.clear();
        for page in 0..MAX_PAGES {
            let members: Value = redis::cmd("ZRANGEBYSCORE")
                .arg(&bans_key)
                .arg(format!("({now}"))
                .arg("+inf")
                .arg("LIMIT")
                .arg(page * PAGE)
                .arg(PAGE)
                .query(con)?;
            let got = items(&members).len();
            if got == 0 {
                break;
            }
            let members: Vec<&[u8]> = items(&members).iter().filter_map(bytes).collect();
            if members.is_empty() {
                break; // not an answer a Redis gives
            }
            let values: Value = redis::cmd("HMGET")
                .arg(&entries_key)
                .arg(&members)
                .query(con)?;
            for (m, v) in members.iter().zip(items(&values)) {
                let Some(e) = self.snapshot_entry(m, v, &entries_key) else {
                    continue;
                };
                let Some(left) = e.left(now) else { continue };
                seen.entry(e.node.clone()).or_default().insert(e.net);
                batch.push((e.node.clone(), decision(&e, left)));
            }
            if got < PAGE {
                break;
            }
        }
        let total = batch.len();
        self.send_bans(batch)?;
        for (node, nets) in &seen {
            self.send(Inbound::Complete {
                origin: format!("redis:{node}"),
                nets: nets.clone(),
            })?;
        }
        // Nodes with nothing in force any more.
        self.send(Inbound::OnlyOrigins {
            prefix: "redis:".into(),
            keep: seen.keys().map(|n| format!("redis:{n}")).collect(),
        })?;
        tracing::info!(
            "Redis fleet: following {} as node {:?}, {total} ban(s) of {} other node(s) in force",
            crate::text::redact_url(&self.s.url),
            self.s.node,
            seen.len()
        );
        Ok(())
    }

    /// A snapshot member (`NODE|NET`) and its signed entry: taken when the
    /// entry is a valid signed ban of that very node and network.
    fn snapshot_entry(&mut self, member: &[u8], value: &Value, where_: &str) -> Option<Entry> {
        let Some(value) = bytes(value) else {
            count(Reject::Malformed);
            return None;
        };
        let Some(split) = value.iter().rposition(|b| *b == b'\n') else {
            count(Reject::Malformed);
            return None;
        };
        let e = self.accept(&value[..split], &value[split + 1..], where_, false)?;
        if e.op != Op::Ban || member != format!("{}|{}", e.node, e.net).as_bytes() {
            count(Reject::Mismatch);
            return None;
        }
        Some(e)
    }

    /// One stream entry (fields `e`: the text, `m`: its MAC).
    fn on_event(
        &mut self,
        fields: &[Value],
        where_: &str,
        bans: &mut Vec<(String, RemoteDecision)>,
    ) -> Result<()> {
        let get = |k: &[u8]| {
            fields
                .chunks(2)
                .find(|p| bytes(&p[0]) == Some(k))
                .and_then(|p| p.get(1))
                .and_then(bytes)
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
            if e.ts_ms < now - WINDOW_MS || e.ts_ms > now + SKEW_MS || !self.seen.first(mac, now) {
                count(Reject::Replay);
                return None;
            }
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

/// The MACs of the stream entries seen within the window.
#[derive(Default)]
struct Seen {
    order: VecDeque<(i64, [u8; 32])>,
    set: HashSet<[u8; 32]>,
}

impl Seen {
    /// True the first time `mac` is seen (within the window).
    fn first(&mut self, mac: [u8; 32], now: i64) -> bool {
        while let Some((ts, m)) = self.order.front() {
            if *ts >= now - WINDOW_MS && self.order.len() < SEEN_MAX {
                break;
            }
            self.set.remove(m);
            self.order.pop_front();
        }
        if !self.set.insert(mac) {
            return false;
        }
        self.order.push_back((now, mac));
        true
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A stream ID as Redis gives it (`ms-seq`); anything else is an answer
/// that no Redis gives: the connection is dropped.
fn stream_id(v: Option<&Value>) -> Result<String> {
    let id = v.and_then(bytes).unwrap_or(b"");
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id.iter().all(|b| b.is_ascii_digit() || *b == b'-')
        && id.iter().filter(|b| **b == b'-').count() == 1;
    if !ok {
        bail!("not a stream entry ID in the answer");
    }
    Ok(String::from_utf8_lossy(id).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_seen_once_within_the_window() {
        let mut s = Seen::default();
        let now = 1_000_000_000;
        assert!(s.first([1; 32], now));
        assert!(!s.first([1; 32], now + 1000));
        assert!(s.first([2; 32], now + 1000));
        // Past the window, memory goes (the timestamp check refuses it then).
        assert!(s.first([1; 32], now + WINDOW_MS + 1));
    }

    #[test]
    fn stream_ids_from_a_hostile_answer_are_refused() {
        assert_eq!(
            stream_id(Some(&Value::BulkString(b"1700000000000-3".to_vec()))).unwrap(),
            "1700000000000-3"
        );
        for bad in [&b"\xff\xfe"[..], b"", b"1-2-3", b"abc", &[b'1'; 60]] {
            assert!(stream_id(Some(&Value::BulkString(bad.to_vec()))).is_err());
        }
        assert!(stream_id(Some(&Value::Int(3))).is_err());
        assert!(stream_id(None).is_err());
    }
}
