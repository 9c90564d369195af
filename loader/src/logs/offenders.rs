//! Counting failures per source (fail2ban's failmanager): a source is due for
//! a ban when `maxretry` failures fall within `findtime`.
//!
//! Memory is bounded: at most `capacity` sources are tracked, each with at
//! most `maxretry` timestamps; past that the least recently seen source is
//! forgotten. An attacker spraying spoofed sources can only push out other
//! sources that are failing slowly, never grow memory.
use ipnet::IpNet;
use lru::LruCache;
use std::{collections::VecDeque, num::NonZeroUsize};

pub struct Offenders {
    sources: LruCache<IpNet, VecDeque<i64>>,
    maxretry: usize,
    findtime_ms: i64,
}

impl Offenders {
    pub fn new(maxretry: u32, findtime_ms: i64, capacity: usize) -> Self {
        Self {
            sources: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("non-zero")),
            maxretry: maxretry.max(1) as usize,
            findtime_ms,
        }
    }

    /// Records a failure of `net` at `t_ms`. Returns true when this failure
    /// makes `maxretry` within `findtime`: the source is then forgotten here
    /// (its ban takes over).
    pub fn record(&mut self, net: IpNet, t_ms: i64) -> bool {
        let times = self.sources.get_or_insert_mut(net, VecDeque::new);
        times.push_back(t_ms);
        // Lines may come slightly out of order across files: keep the window
        // relative to the newest failure.
        let newest = times.iter().copied().max().unwrap_or(t_ms);
        times.retain(|&t| t > newest - self.findtime_ms);
        while times.len() > self.maxretry {
            times.pop_front();
        }
        if times.len() >= self.maxretry {
            self.sources.pop(&net);
            return true;
        }
        false
    }

    /// Sources with at least one failure within `findtime` of `now_ms`.
    pub fn currently_failed(&self, now_ms: i64) -> usize {
        self.sources
            .iter()
            .filter(|(_, t)| {
                t.back()
                    .is_some_and(|&last| last > now_ms - self.findtime_ms)
            })
            .count()
    }

    /// Drops sources whose failures are all older than `findtime`.
    pub fn prune(&mut self, now_ms: i64) {
        // Least recently failed first: stop at the first source still within
        // findtime, so a tick costs what it removes, not the whole table.
        // (A line stamped out of order may leave a stale source a little
        // longer; counting looks at the times themselves.)
        while let Some((_, t)) = self.sources.peek_lru() {
            if t.back()
                .is_some_and(|&last| last > now_ms - self.findtime_ms)
            {
                break;
            }
            self.sources.pop_lru();
        }
    }

    pub fn forget(&mut self, net: &IpNet) {
        self.sources.pop(net);
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
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
}
