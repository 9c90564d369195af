//! Bans on packet evidence (a flood, a scanner's User-Agent): the source
//! address of a UDP packet is free to forge, so these bans are kept small
//! enough that a forger gains nothing worth having.
//!
//! * Budget: each packet jail may ban at most `max_bans_per_minute` sources
//!   (a token bucket refilled continuously). Over it the packets are still
//!   dropped by XDP and counted; the ban is skipped, and that is logged once
//!   a minute. A storm of forged sources cannot grow the blocklist faster.
//! * Room: all packet bans together hold at most `max_packet_bans` entries;
//!   at the cap the oldest one is lifted for the new one, so log-driven and
//!   manual bans always find room in the kernel map.
//! * Scope: they drop only packets to the protected ports, even in all-ports
//!   mode (`BAN_PORTS_ONLY`), and the daemon gives them short bantimes.
use ipnet::IpNet;
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

/// How often a jail over its budget says so.
const SKIP_LOG_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Budget {
    tokens: f64,
    refilled: Instant,
    /// Bans skipped since the last log line, and in all.
    unlogged: u64,
    skipped: u64,
    logged: Option<Instant>,
}

#[derive(Debug)]
pub struct PacketBans {
    per_minute: u32,
    max: usize,
    budgets: HashMap<String, Budget>,
    /// Packet bans in the order they were made, with the sequence number
    /// that tells a current entry from one that ended and came back.
    order: VecDeque<(IpNet, u64)>,
    live: HashMap<IpNet, u64>,
    next_seq: u64,
}

impl PacketBans {
    pub fn new(per_minute: u32, max: usize) -> Self {
        Self {
            per_minute,
            max: max.max(1),
            budgets: HashMap::new(),
            order: VecDeque::new(),
            live: HashMap::new(),
            next_seq: 0,
        }
    }

    /// New limits (reload); the bans already made stay.
    pub fn set_limits(&mut self, per_minute: u32, max: usize) {
        self.per_minute = per_minute;
        self.max = max.max(1);
    }

    /// Takes one ban from `jail`'s budget; false when it is spent (the ban
    /// is then skipped, counted, and logged at most once a minute).
    pub fn admit(&mut self, jail: &str, now: Instant) -> bool {
        let cap = f64::from(self.per_minute);
        let budget = self
            .budgets
            .entry(jail.to_owned())
            .or_insert_with(|| Budget {
                tokens: cap,
                refilled: now,
                unlogged: 0,
                skipped: 0,
                logged: None,
            });
        let elapsed = now.saturating_duration_since(budget.refilled).as_secs_f64();
        budget.tokens = (budget.tokens + elapsed * cap / 60.0).min(cap);
        budget.refilled = now;
        if budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            return true;
        }
        budget.skipped += 1;
        budget.unlogged += 1;
        if budget
            .logged
            .is_none_or(|t| now.saturating_duration_since(t) >= SKIP_LOG_INTERVAL)
        {
            tracing::warn!(
                "[{jail}] over its budget of {} bans a minute: {} ban(s) skipped since the last notice \
                 (their packets are still dropped; forged sources cannot fill the blocklist)",
                self.per_minute,
                budget.unlogged
            );
            budget.unlogged = 0;
            budget.logged = Some(now);
        }
        false
    }

    /// Bans `jail` skipped for its budget, since start.
    pub fn skipped(&self, jail: &str) -> u64 {
        self.budgets.get(jail).map_or(0, |b| b.skipped)
    }

    /// The packet ban to lift before one more can be made, when the cap is
    /// reached: the oldest still in force.
    pub fn make_room(&mut self) -> Option<IpNet> {
        if self.live.len() < self.max {
            return None;
        }
        while let Some((net, seq)) = self.order.pop_front() {
            if self.live.get(&net) == Some(&seq) {
                self.live.remove(&net);
                return Some(net);
            }
        }
        None
    }

    /// A packet ban of `net` was written.
    pub fn record(&mut self, net: IpNet) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.live.insert(net, seq);
        self.order.push_back((net, seq));
        // Entries of bans that ended meanwhile are dropped when they reach
        // the front; keep the queue from growing past twice the live set.
        if self.order.len() > 2 * self.live.len() + 1024 {
            let live = &self.live;
            self.order.retain(|(n, s)| live.get(n) == Some(s));
        }
    }

    /// `net` is no longer a packet ban (ended, unbanned, or replaced by a
    /// ban on other evidence).
    pub fn forget(&mut self, net: &IpNet) {
        self.live.remove(net);
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u32) -> IpNet {
        IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + i,
        )))
    }

    /// 5000 one-packet forged sources in ten seconds: at most the budget
    /// (plus what ten seconds refill) become bans; the rest are skipped.
    #[test]
    fn a_forged_storm_gets_at_most_the_budget() {
        let mut p = PacketBans::new(60, 65_536);
        let start = Instant::now();
        let mut admitted = 0;
        for i in 0..5000u32 {
            let now = start + Duration::from_millis(u64::from(i) * 2);
            if p.admit("sip-scanner", now) {
                admitted += 1;
                p.record(n(i));
            }
        }
        assert!((60..=71).contains(&admitted), "{admitted}");
        assert_eq!(p.skipped("sip-scanner"), 5000 - admitted);
        // Another jail has its own budget.
        assert!(p.admit("sip-flood", start));
        // A minute later the budget is back.
        let later = start + Duration::from_secs(80);
        assert!((0..60).all(|_| p.admit("sip-scanner", later)));
        assert!(!p.admit("sip-scanner", later));
    }

    #[test]
    fn the_oldest_packet_ban_makes_room() {
        let mut p = PacketBans::new(1000, 3);
        for i in 0..3 {
            assert_eq!(p.make_room(), None);
            p.record(n(i));
        }
        assert_eq!(p.make_room(), Some(n(0)));
        p.record(n(3));
        // One ended meanwhile: it is not lifted again, and frees its place.
        p.forget(&n(1));
        assert_eq!(p.make_room(), None);
        p.record(n(4));
        assert_eq!(p.make_room(), Some(n(2)));
        // A ban that ended and came back is the newest, not the oldest.
        p.record(n(5));
        p.forget(&n(3));
        p.record(n(3));
        assert_eq!(p.make_room(), Some(n(4)));
        assert_eq!(p.len(), 2);
    }
}
