//! Counting failures per source (fail2ban's failmanager): a source is due for
//! a ban when `maxretry` failures fall within `findtime`.
//!
//! Memory is bounded: at most `capacity` sources are tracked, each with at
//! most `maxretry` timestamps; past that the least recently seen source is
//! forgotten. An attacker spraying spoofed sources can only push out other
//! sources that are failing slowly, never grow memory.
use crate::net_table::NetTable;
use ipnet::IpNet;

pub struct Offenders {
    /// The sources, each linked into a list from least to most recently
    /// failed (by slot: a slot never moves while its source is tracked).
    table: NetTable<Source>,
    oldest: u32,
    newest: u32,
    /// The failure times of sources with more than `FEW`, or with times
    /// too far from `base` for 32 bits, by slot.
    many: foldhash::HashMap<u32, Vec<i64>>,
    /// What `Few` times count from (ms).
    base: i64,
    /// A source's times while a failure is counted (no allocation per line).
    scratch: Vec<i64>,
    capacity: usize,
    maxretry: usize,
    findtime_ms: i64,
}

/// No slot.
const NIL: u32 = u32::MAX;

/// Failure times held in place: enough for the default `maxretry` of 3
/// (a source holds at most `maxretry - 1`; the next one bans it).
const FEW: usize = 3;
/// `Times::len` of a source whose times are in `many`.
const MANY: u8 = u8::MAX;

/// One source: its failure times, and its place in the recency list: 24
/// bytes, 44 with its network in the table (a million one-off sources of a
/// scan campaign: ~55 MiB with the index; 64-bit times took 64 bytes).
struct Source {
    times: Times,
    prev: u32,
    next: u32,
}

const _: () = assert!(std::mem::size_of::<Option<(IpNet, Source)>>() == 44);

/// Failure times (oldest first) as ms after `Offenders::base`, or `MANY`.
#[derive(Clone, Copy)]
struct Times {
    len: u8,
    at: [i32; FEW],
}

impl Offenders {
    pub fn new(maxretry: u32, findtime_ms: i64, capacity: usize) -> Self {
        Self {
            table: NetTable::default(),
            oldest: NIL,
            newest: NIL,
            many: Default::default(),
            base: i64::MIN,
            scratch: Vec::new(),
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
                    times: Times {
                        len: 0,
                        at: [0; FEW],
                    },
                    prev: NIL,
                    next: NIL,
                };
                self.table.insert(net, source).0
            }
        };
        self.link_newest(slot);
        let mut times = std::mem::take(&mut self.scratch);
        times.clear();
        self.load(slot, &mut times);
        times.push(t_ms);
        // Lines may come slightly out of order across files: keep the window
        // relative to the newest failure.
        let newest = times.iter().copied().max().unwrap_or(t_ms);
        times.retain(|&t| t > newest - self.findtime_ms);
        let over = times.len().saturating_sub(self.maxretry);
        times.drain(..over);
        let banned = times.len() >= self.maxretry;
        if banned {
            self.forget(&net);
        } else {
            self.store(slot, &times);
        }
        self.scratch = times;
        banned
    }

    /// Appends the times of the source at `slot` to `out`.
    fn load(&self, slot: u32, out: &mut Vec<i64>) {
        let times = self.table.at(slot).1.times;
        if times.len == MANY {
            out.extend_from_slice(&self.many[&slot]);
        } else {
            let at = &times.at[..usize::from(times.len)];
            out.extend(at.iter().map(|&t| self.base + i64::from(t)));
        }
    }

    /// Sets the times of the source at `slot`.
    fn store(&mut self, slot: u32, times: &[i64]) {
        if self.base == i64::MIN {
            self.base = times[0];
        }
        // A daemon running for weeks moves its base along (rarely: every
        // ~12 days), so new sources keep fitting in place.
        if let Some(&newest) = times.iter().max() {
            if newest - self.base > i64::from(i32::MAX / 2) {
                self.rebase(newest);
            }
        }
        let mut at = [0i32; FEW];
        let fits = times.len() <= FEW
            && times
                .iter()
                .zip(&mut at)
                .all(|(&t, o)| i32::try_from(t - self.base).map(|v| *o = v).is_ok());
        let source = &mut self.table.at_mut(slot).1;
        if fits {
            source.times = Times {
                len: times.len() as u8,
                at,
            };
            self.many.remove(&slot);
        } else {
            source.times.len = MANY;
            self.many.insert(slot, times.to_vec());
        }
    }

    /// Counts `Few` times from `base` from now on; a source whose times no
    /// longer fit keeps them in `many`.
    fn rebase(&mut self, base: i64) {
        let old = std::mem::replace(&mut self.base, base);
        let slots: Vec<u32> = self.table.slots().collect();
        for slot in slots {
            let times = self.table.at(slot).1.times;
            if times.len == MANY {
                continue;
            }
            let abs: Vec<i64> = times.at[..usize::from(times.len)]
                .iter()
                .map(|&t| old + i64::from(t))
                .collect();
            let fits: Option<Vec<i32>> =
                abs.iter().map(|&t| i32::try_from(t - base).ok()).collect();
            let source = &mut self.table.at_mut(slot).1;
            match fits {
                Some(offsets) => source.times.at[..offsets.len()].copy_from_slice(&offsets),
                None => {
                    source.times.len = MANY;
                    self.many.insert(slot, abs);
                }
            }
        }
    }

    /// The newest-recorded failure time of the source at `slot`.
    fn last(&self, slot: u32) -> Option<i64> {
        let times = self.table.at(slot).1.times;
        match times.len {
            MANY => self.many[&slot].last().copied(),
            0 => None,
            n => Some(self.base + i64::from(times.at[usize::from(n) - 1])),
        }
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
            .slots()
            .filter(|&slot| {
                self.last(slot)
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
            if self
                .last(self.oldest)
                .is_some_and(|last| last > now_ms - self.findtime_ms)
            {
                break;
            }
            let net = self.table.at(self.oldest).0;
            self.forget(&net);
        }
    }

    pub fn forget(&mut self, net: &IpNet) {
        if let Some(slot) = self.table.slot_of(net) {
            self.unlink(slot);
            self.table.remove(net);
            self.many.remove(&slot);
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

    /// Weeks of failures (the base moves along), and times too far apart
    /// for 32 bits (kept aside): every count as with 64-bit times.
    #[test]
    fn weeks_of_failures_and_times_far_apart() {
        const DAY: i64 = 86_400_000;
        let mut o = Offenders::new(3, 600_000, 1000);
        for day in 0..100 {
            let t = day * DAY;
            assert!(!o.record(n("192.0.2.1"), t), "day {day}");
            assert!(!o.record(n("192.0.2.2"), t));
            assert!(!o.record(n("192.0.2.2"), t + 1));
            assert!(o.record(n("192.0.2.2"), t + 2), "day {day}");
        }
        assert!(o.base > 80 * DAY, "the base moved along");
        // A source first seen long ago, failing again within findtime of
        // a time a year later.
        let year = 365 * DAY;
        assert!(!o.record(n("192.0.2.3"), 0));
        assert!(!o.many.is_empty(), "too far from the base: kept aside");
        assert!(!o.record(n("192.0.2.3"), year));
        assert!(
            !o.record(n("192.0.2.3"), year + 1),
            "0 is out of the window"
        );
        assert!(o.record(n("192.0.2.3"), year + 2));
        assert!(!o.record(n("192.0.2.4"), year));
        assert_eq!(o.currently_failed(year), 1, "192.0.2.4");
        o.prune(year + DAY);
        assert_eq!(o.tracked(), 0);
        assert!(o.many.is_empty(), "nothing left aside");
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
