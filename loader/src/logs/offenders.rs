//! Counting failures per source (fail2ban's failmanager): a source is due for
//! a ban when `maxretry` failures fall within `findtime`.
//!
//! Memory is bounded: at most `capacity` sources are tracked, each with at
//! most `maxretry` timestamps; past that the least recently seen source is
//! forgotten. An attacker spraying spoofed sources can only push out other
//! sources that are failing slowly, never grow memory.
use crate::net_table::NetTable;
use ipnet::IpNet;
use std::collections::VecDeque;

pub struct Offenders {
    /// The sources, each linked into a list from least to most recently
    /// failed (by slot: a slot never moves while its source is tracked).
    table: NetTable<Source>,
    oldest: u32,
    newest: u32,
    capacity: usize,
    maxretry: usize,
    findtime_ms: i64,
}

/// No slot.
const NIL: u32 = u32::MAX;

/// One source: its failure times, and its place in the recency list. Held
/// in place in the table, without an allocation of its own while it has
/// at most three failures (a million one-off sources of a scan campaign:
/// ~80 MiB, where a map of deques took ~170).
struct Source {
    times: Times,
    prev: u32,
    next: u32,
}

/// Failure times (ms), oldest first.
enum Times {
    Few { len: u8, at: [i64; 3] },
    Many(VecDeque<i64>),
}

impl Times {
    fn push(&mut self, t: i64) {
        match self {
            Times::Few { len, at } if usize::from(*len) < at.len() => {
                at[usize::from(*len)] = t;
                *len += 1;
            }
            Times::Few { len, at } => {
                let mut many: VecDeque<i64> = at[..usize::from(*len)].iter().copied().collect();
                many.push_back(t);
                *self = Times::Many(many);
            }
            Times::Many(many) => many.push_back(t),
        }
    }

    fn as_slices(&self) -> (&[i64], &[i64]) {
        match self {
            Times::Few { len, at } => (&at[..usize::from(*len)], &[]),
            Times::Many(many) => many.as_slices(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        let (a, b) = self.as_slices();
        a.iter().chain(b).copied()
    }

    fn len(&self) -> usize {
        match self {
            Times::Few { len, .. } => usize::from(*len),
            Times::Many(many) => many.len(),
        }
    }

    fn last(&self) -> Option<i64> {
        let (a, b) = self.as_slices();
        b.last().or(a.last()).copied()
    }

    /// Keeps the times `keep` accepts, and at most the newest `max`; in
    /// place (it runs for every failure line).
    fn retain(&mut self, keep: impl Fn(i64) -> bool, max: usize) {
        match self {
            Times::Few { len, at } => {
                let mut n = 0;
                for i in 0..usize::from(*len) {
                    if keep(at[i]) {
                        at[n] = at[i];
                        n += 1;
                    }
                }
                let over = n.saturating_sub(max);
                at.copy_within(over..n, 0);
                *len = (n - over) as u8;
            }
            Times::Many(many) => {
                many.retain(|&t| keep(t));
                while many.len() > max {
                    many.pop_front();
                }
            }
        }
    }
}

impl Offenders {
    pub fn new(maxretry: u32, findtime_ms: i64, capacity: usize) -> Self {
        Self {
            table: NetTable::default(),
            oldest: NIL,
            newest: NIL,
            capacity: capacity.max(1),
            maxretry: maxretry.max(1) as usize,
            findtime_ms,
        }
    }

    /// Records a failure of `net` at `t_ms`. Returns true when this failure
    /// makes `maxretry` within `findtime`: the source is then forgotten here
    /// (its ban takes over).
    pub fn record(&mut self, net: IpNet, t_ms: i64) -> bool {
        let slot = match self.table.slot_of(&net) {
            Some(slot) => {
                self.unlink(slot);
                slot
            }
            None => {
                if self.table.len() >= self.capacity {
                    // Full: the least recently failed source makes room.
                    let oldest = self.table.at(self.oldest).0;
                    self.forget(&oldest);
                }
                let source = Source {
                    times: Times::Few { len: 0, at: [0; 3] },
                    prev: NIL,
                    next: NIL,
                };
                self.table.insert(net, source).0
            }
        };
        self.link_newest(slot);
        let (maxretry, findtime_ms) = (self.maxretry, self.findtime_ms);
        let times = &mut self.table.at_mut(slot).1.times;
        times.push(t_ms);
        // Lines may come slightly out of order across files: keep the window
        // relative to the newest failure.
        let newest = times.iter().max().unwrap_or(t_ms);
        times.retain(|t| t > newest - findtime_ms, maxretry);
        if times.len() >= maxretry {
            self.forget(&net);
            return true;
        }
        false
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let s = &self.table.at(slot).1;
            (s.prev, s.next)
        };
        match prev {
            NIL => self.oldest = next,
            p => self.table.at_mut(p).1.next = next,
        }
        match next {
            NIL => self.newest = prev,
            n => self.table.at_mut(n).1.prev = prev,
        }
    }

    fn link_newest(&mut self, slot: u32) {
        let newest = self.newest;
        {
            let s = &mut self.table.at_mut(slot).1;
            s.prev = newest;
            s.next = NIL;
        }
        match newest {
            NIL => self.oldest = slot,
            n => self.table.at_mut(n).1.next = slot,
        }
        self.newest = slot;
    }

    /// Sources with at least one failure within `findtime` of `now_ms`.
    pub fn currently_failed(&self, now_ms: i64) -> usize {
        self.table
            .iter()
            .filter(|(_, s)| {
                s.times
                    .last()
                    .is_some_and(|last| last > now_ms - self.findtime_ms)
            })
            .count()
    }

    /// Drops sources whose failures are all older than `findtime`.
    pub fn prune(&mut self, now_ms: i64) {
        // Least recently failed first: stop at the first source still within
        // findtime, so a tick costs what it removes, not the whole table.
        // (A line stamped out of order may leave a stale source a little
        // longer; counting looks at the times themselves.)
        while self.oldest != NIL {
            let (net, source) = self.table.at(self.oldest);
            if source
                .times
                .last()
                .is_some_and(|last| last > now_ms - self.findtime_ms)
            {
                break;
            }
            let net = *net;
            self.forget(&net);
        }
    }

    pub fn forget(&mut self, net: &IpNet) {
        if let Some(slot) = self.table.slot_of(net) {
            self.unlink(slot);
            self.table.remove(net);
        }
    }

    pub fn tracked(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        crate::addr::parse_net(s).unwrap()
    }

    #[test]
    fn bans_at_maxretry_within_findtime_only() {
        let mut o = Offenders::new(3, 60_000, 100);
        assert!(!o.record(n("192.0.2.1"), 0));
        assert!(!o.record(n("192.0.2.1"), 30_000));
        assert!(o.record(n("192.0.2.1"), 59_000), "third within a minute");
        assert_eq!(o.tracked(), 0, "handed over to the ban");
        // Spread out: never three within 60 s.
        for i in 0..10 {
            assert!(!o.record(n("192.0.2.2"), i * 31_000));
        }
    }

    #[test]
    fn sources_are_counted_separately() {
        let mut o = Offenders::new(2, 60_000, 100);
        assert!(!o.record(n("192.0.2.1"), 0));
        assert!(!o.record(n("192.0.2.2"), 0));
        assert!(o.record(n("192.0.2.1"), 1));
    }

    #[test]
    fn memory_is_bounded_by_capacity() {
        let mut o = Offenders::new(5, 60_000, 1000);
        for i in 0..100_000u32 {
            o.record(
                IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                    0x0a00_0000 + i,
                ))),
                0,
            );
        }
        assert_eq!(o.tracked(), 1000);
    }

    #[test]
    fn currently_failed_and_prune() {
        let mut o = Offenders::new(5, 60_000, 100);
        o.record(n("192.0.2.1"), 0);
        o.record(n("192.0.2.2"), 50_000);
        assert_eq!(o.currently_failed(70_000), 1);
        o.prune(70_000);
        assert_eq!(o.tracked(), 1);
    }

    #[test]
    fn a_source_failing_again_is_the_last_to_make_room() {
        let mut o = Offenders::new(5, 60_000, 2);
        o.record(n("192.0.2.1"), 0);
        o.record(n("192.0.2.2"), 1);
        o.record(n("192.0.2.1"), 2);
        // Full: the least recently failed (.2) goes, not .1.
        o.record(n("192.0.2.3"), 3);
        assert_eq!(o.tracked(), 2);
        assert!(!o.record(n("192.0.2.1"), 4));
        assert!(!o.record(n("192.0.2.1"), 5));
        assert!(o.record(n("192.0.2.1"), 6), ".1 kept all its failures");
    }

    #[test]
    fn many_failures_within_findtime_and_out_of_order() {
        let mut o = Offenders::new(6, 60_000, 10);
        for t in [10_000, 5_000, 20_000, 1_000, 30_000] {
            assert!(!o.record(n("192.0.2.9"), t));
        }
        // 70 s: the failures at 1, 5 and 10 s fall out of the window.
        assert!(!o.record(n("192.0.2.9"), 70_000));
        assert!(!o.record(n("192.0.2.9"), 71_000));
        assert!(!o.record(n("192.0.2.9"), 72_000));
        assert!(o.record(n("192.0.2.9"), 73_000), "20, 30, 70, 71, 72, 73 s");
    }
}
