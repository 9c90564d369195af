//! The decisions in force, by network: each decision's end, so that a
//! deletion lifts only its own and the longest of the rest stays. Held for
//! a community list of a million: a network's one decision inline, its
//! scenario by index (~80 bytes a network; a map of maps of Strings took
//! ~350), the distinct scenarios bounded.
use super::{mark, stream::List, stream::Record, Settings};
use crate::{
    bans::{
        names::{Name, Names},
        Scope,
    },
    fleet::RemoteDecision,
    net_table::NetTable,
};
use anyhow::{bail, Result};
use ipnet::IpNet;
use smallvec::SmallVec;
use std::{collections::HashSet, time::Instant};

/// Distinct scenario texts held; beyond, a decision's reason is generic.
const MAX_SCENARIOS: usize = 4096;
/// Refusals described per answer (the rest are only counted).
const REFUSALS_SHOWN: usize = 10;
/// Decisions held for one network. CrowdSec has a few per network (one per
/// scenario that fired); a LAPI sending thousands for one network would
/// otherwise grow its list and make every add a longer walk.
const MAX_IDS_PER_NET: usize = 16;

#[derive(Default)]
pub struct Book {
    by_net: NetTable<SmallVec<[Held; 1]>>,
    scenarios: Names,
    scenario_count: usize,
}

/// One decision in force.
#[derive(Clone, Copy, Debug)]
struct Held {
    id: i64,
    /// `None`: no end.
    end: Option<Instant>,
    scenario: Name,
    /// Packet evidence exported by a sipguard box: never widened.
    ports_only: bool,
}

/// What one answer changed.
#[derive(Debug, Default)]
pub struct Pass {
    pub touched: HashSet<IpNet>,
    /// The first few refusals, described.
    pub refused: Vec<String>,
    pub refused_count: usize,
    /// This box's own exported decisions, skipped.
    pub own: usize,
    /// New networks refused because the book holds `max_decisions` already.
    pub over_book: usize,
}

impl Book {
    /// Applies one decision of a stream.
    pub fn apply(&mut self, s: &Settings, list: List, d: &Record, now: Instant, pass: &mut Pass) {
        let m = mark::parse(&d.scenario);
        // This box's own export coming back: it holds its own ban, with
        // its own scope and end; taking it again could only widen it.
        if m.is_some_and(|m| s.machine_id.as_deref() == Some(m.machine)) {
            pass.own += 1;
            return;
        }
        let changed = match list {
            List::Deleted => self.delete(d),
            List::New => self.add(s, d, m.is_some_and(|m| m.ports_only), now, pass),
        };
        if let Some(net) = changed {
            pass.touched.insert(net);
        }
    }

    /// A deletion lifts only its own decision; the network, if it had it.
    fn delete(&mut self, d: &Record) -> Option<IpNet> {
        let net = decision_net(d).ok()?;
        let ids = self.by_net.get_mut(&net)?;
        let before = ids.len();
        ids.retain(|h| h.id != d.id);
        let changed = ids.len() != before;
        if ids.is_empty() {
            self.by_net.remove(&net);
        }
        changed.then_some(net)
    }

    fn add(
        &mut self,
        s: &Settings,
        d: &Record,
        ports_only: bool,
        now: Instant,
        pass: &mut Pass,
    ) -> Option<IpNet> {
        if !s.types.iter().any(|t| t.eq_ignore_ascii_case(&d.kind)) {
            return None;
        }
        let net = match decision_net(d) {
            Ok(net) => net,
            Err(e) => {
                pass.refused_count += 1;
                if pass.refused.len() < REFUSALS_SHOWN {
                    pass.refused.push(format!(
                        "decision {} ({}): {e:#}",
                        d.id,
                        crate::text::escape(&d.value)
                    ));
                }
                return None;
            }
        };
        // Already over, or unreadable: nothing to enforce.
        let left = crate::fleet::go_duration(&d.duration)?;
        let held = Held {
            id: d.id,
            end: now.checked_add(left),
            scenario: self.scenario(&d.scenario),
            ports_only,
        };
        // The book is bounded by what an answer may bring: decisions pulled
        // again and again (never deleted, never ended) cannot grow it past that.
        let full = self.by_net.len() >= s.max_decisions;
        match self.by_net.get_mut(&net) {
            Some(ids) => {
                if let Some(i) = ids.iter().position(|h| h.id == d.id) {
                    ids[i] = held;
                } else if ids.len() < MAX_IDS_PER_NET {
                    ids.push(held);
                } else {
                    // Full: the new one replaces the one ending first, when
                    // it outlasts it (the network's longest is what counts).
                    let first = ids.iter_mut().min_by_key(|h| end_key(h.end, now))?;
                    if end_key(held.end, now) <= end_key(first.end, now) {
                        return None;
                    }
                    *first = held;
                }
            }
            None if full => {
                pass.over_book += 1;
                return None;
            }
            None => {
                self.by_net.insert(net, SmallVec::from_buf([held]));
            }
        }
        Some(net)
    }

    /// Forgets decisions that have ended: their bans ended on their own, and
    /// the room they held is free for the next answer.
    pub fn prune(&mut self, now: Instant) {
        self.by_net.retain(|_, ids| {
            ids.retain(|h| h.end.is_none_or(|e| e > now));
            !ids.is_empty()
        });
    }

    /// A scenario's index; a generic one once `MAX_SCENARIOS` are held, so
    /// that a LAPI naming every decision differently costs nothing more.
    fn scenario(&mut self, text: &str) -> Name {
        if let Some(n) = self.scenarios.find(text) {
            return n;
        }
        if self.scenario_count >= MAX_SCENARIOS {
            return self.scenarios.id("");
        }
        self.scenario_count += 1;
        self.scenarios.id(text)
    }

    /// The longest decision in force for `net`, with its own scope: a
    /// sipguard box's packet-evidence export stays ports-only here.
    pub fn effective(&self, net: &IpNet, all_ports: bool, now: Instant) -> Option<RemoteDecision> {
        let ids = self.by_net.get(net)?;
        let h = ids.iter().max_by_key(|h| end_key(h.end, now))?;
        Some(RemoteDecision {
            net: *net,
            left: h.end.map(|e| e.saturating_duration_since(now)),
            reason: match &**self.scenarios.text(h.scenario) {
                "" => "a CrowdSec decision".to_owned(),
                scenario => crate::text::escape(scenario).into_owned(),
            },
            scope: if h.ports_only {
                Scope::PortsOnly
            } else if all_ports {
                Scope::AllPorts
            } else {
                Scope::Ports
            },
        })
    }

    pub fn nets(&self) -> HashSet<IpNet> {
        self.by_net.iter().map(|(net, _)| *net).collect()
    }

    /// How many networks have a decision in force.
    pub fn networks(&self) -> usize {
        self.by_net.len()
    }

    pub fn clear(&mut self) {
        *self = Book::default();
    }
}

/// How long a decision has left, for ordering (`None`: no end, the longest).
fn end_key(end: Option<Instant>, now: Instant) -> u128 {
    end.map_or(u128::MAX, |e| e.saturating_duration_since(now).as_nanos())
}

/// A decision's network: `Ip` is one address, `Range` a prefix; nothing
/// wider than sipguard ever bans.
fn decision_net(d: &Record) -> Result<IpNet> {
    match d.scope.to_ascii_lowercase().as_str() {
        "ip" => {
            let net = crate::addr::parse_net(&d.value)?;
            if net.prefix_len() != net.max_prefix_len() {
                bail!("an Ip decision holds a range");
            }
            Ok(net)
        }
        "range" => crate::addr::parse_ban_net(&d.value),
        other => bail!("scope {:?} is not enforced", crate::text::escape(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::crowdsec::tests::settings;
    use std::time::Duration;

    fn d(id: i64, value: &str, scope: &str, duration: &str) -> Record {
        Record {
            id,
            origin: "cscli".into(),
            kind: "ban".into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "manual 'ban' from 'x'".into(),
        }
    }

    fn run(book: &mut Book, s: &Settings, list: List, ds: &[Record], now: Instant) -> Pass {
        let mut pass = Pass::default();
        for x in ds {
            book.apply(s, list, x, now, &mut pass);
        }
        pass
    }

    #[test]
    fn the_longest_decision_wins_and_deletions_lift_their_own() {
        let s = settings();
        let now = Instant::now();
        let mut book = Book::default();
        let new = [
            d(1, "192.0.2.7", "Ip", "1h"),
            d(2, "192.0.2.7", "Ip", "3h59m57.5s"),
            d(3, "2001:db8::/64", "Range", "59m58.9807811s"),
            d(4, "0.0.0.0/0", "Range", "1h"),
            d(5, "192.0.2.0/24", "Ip", "1h"),
            d(6, "not an address", "Ip", "1h"),
            d(7, "example.com", "Country", "1h"),
            d(8, "192.0.2.9", "Ip", "-5m"),
        ];
        let pass = run(&mut book, &s, List::New, &new, now);
        assert_eq!(pass.refused_count, 4, "{pass:?}");
        assert_eq!(pass.touched.len(), 2);
        let left = |book: &Book, net: &str| {
            book.effective(&net.parse().unwrap(), true, now)
                .and_then(|d| d.left)
        };
        assert_eq!(left(&book, "192.0.2.7/32").unwrap().as_secs(), 14_397);
        // Deleting the longer one leaves the other.
        run(
            &mut book,
            &s,
            List::Deleted,
            &[d(2, "192.0.2.7", "Ip", "-1s")],
            now,
        );
        assert_eq!(left(&book, "192.0.2.7/32").unwrap().as_secs(), 3_600);
        let pass = run(
            &mut book,
            &s,
            List::Deleted,
            &[d(1, "192.0.2.7", "Ip", "0")],
            now,
        );
        assert_eq!(pass.touched.len(), 1);
        assert!(left(&book, "192.0.2.7/32").is_none());
        assert_eq!(book.nets().len(), 1);
    }

    #[test]
    fn sipguard_exports_stay_ports_only_and_own_ones_are_skipped() {
        let mut s = settings();
        s.machine_id = Some("box-a".into());
        let now = Instant::now();
        let mut book = Book::default();
        let mut other = d(1, "192.0.2.1", "Ip", "10m");
        other.scenario = mark::scenario("sip-flood", "box-b", Scope::PortsOnly);
        let mut own = d(2, "192.0.2.2", "Ip", "10m");
        own.scenario = mark::scenario("sip-flood", "box-a", Scope::PortsOnly);
        let mut log = d(3, "192.0.2.3", "Ip", "1h");
        log.scenario = mark::scenario("freeswitch", "box-b", Scope::Ports);
        let pass = run(&mut book, &s, List::New, &[other, own.clone(), log], now);
        assert_eq!((pass.own, pass.touched.len()), (1, 2));
        let scope = |book: &Book, net: &str| {
            book.effective(&net.parse().unwrap(), true, now)
                .map(|d| d.scope)
        };
        assert_eq!(scope(&book, "192.0.2.1/32"), Some(Scope::PortsOnly));
        assert_eq!(scope(&book, "192.0.2.3/32"), Some(Scope::AllPorts));
        assert_eq!(scope(&book, "192.0.2.2/32"), None);
        // Without machine credentials nothing is "own".
        s.machine_id = None;
        let pass = run(&mut book, &s, List::New, &[own], now);
        assert_eq!(pass.own, 0);
        assert_eq!(scope(&book, "192.0.2.2/32"), Some(Scope::PortsOnly));
    }

    #[test]
    fn the_book_and_each_network_are_bounded_and_ended_decisions_forgotten() {
        let mut s = settings();
        s.max_decisions = 100;
        let now = Instant::now();
        let mut book = Book::default();
        // One network, thousands of ids: at most MAX_IDS_PER_NET held, the
        // longest kept.
        let many: Vec<Record> = (0..5000)
            .map(|i| d(i, "192.0.2.1", "Ip", &format!("{}s", 60 + i)))
            .collect();
        run(&mut book, &s, List::New, &many, now);
        let ids = book.by_net.get(&"192.0.2.1/32".parse().unwrap()).unwrap();
        assert_eq!(ids.len(), MAX_IDS_PER_NET);
        let left = book
            .effective(&"192.0.2.1/32".parse().unwrap(), false, now)
            .unwrap()
            .left
            .unwrap();
        assert_eq!(left.as_secs(), 60 + 4999);
        // New networks past max_decisions are refused and counted, pass
        // after pass: the book never grows past the cap.
        for round in 0..3u32 {
            let nets: Vec<Record> = (0..200u32)
                .map(|i| {
                    let a = std::net::Ipv4Addr::from(0x0a00_0000 + round * 1000 + i);
                    d(i64::from(i), &a.to_string(), "Ip", "1h")
                })
                .collect();
            let pass = run(&mut book, &s, List::New, &nets, now);
            assert!(pass.over_book >= 100, "{pass:?}");
            assert_eq!(book.networks(), 100);
        }
        // Ended decisions are forgotten, and their room is free again.
        let short: Vec<Record> = (0..5)
            .map(|i| d(9000 + i, "198.51.100.1", "Ip", "1s"))
            .collect();
        book.prune(now);
        assert_eq!(book.networks(), 100);
        book.prune(now + std::time::Duration::from_secs(7200));
        assert_eq!(book.networks(), 0);
        let pass = run(&mut book, &s, List::New, &short, now);
        assert_eq!((pass.over_book, book.networks()), (0, 1));
    }

    #[test]
    fn distinct_scenarios_are_bounded() {
        let s = settings();
        let now = Instant::now();
        let mut book = Book::default();
        for i in 0..(MAX_SCENARIOS as u32 + 100) {
            let mut x = d(
                i64::from(i),
                &std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(),
                "Ip",
                "1h",
            );
            x.scenario = format!("scenario {i}");
            run(&mut book, &s, List::New, &[x], now);
        }
        assert_eq!(book.scenario_count, MAX_SCENARIOS);
        let last = book
            .effective(&"10.0.16.99/32".parse().unwrap(), false, now)
            .unwrap();
        assert_eq!(last.reason, "a CrowdSec decision");
        assert!(last.left.unwrap() <= Duration::from_secs(3600));
    }
}
