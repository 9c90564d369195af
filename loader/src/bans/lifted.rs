//! What the operator lifted from other origins, remembered so that a resync
//! does not undo it. `sipguard unban` lifts every origin's ban of a network
//! on this box; an engine's next full list (CrowdSec after any failure,
//! the Redis fleet's snapshot after a reconnect) would hand the very same
//! bans in again. A ban an origin hands in again that ends no later than
//! the one lifted is the same decision and stays lifted; one that ends
//! later is new evidence and is enforced.
use ipnet::IpNet;
use std::collections::{HashMap, VecDeque};

/// Lifted bans remembered at most; the oldest are forgotten first.
const MAX_LIFTED: usize = 65_536;
/// How much later a re-sent ban may end and still be the one lifted: an
/// engine sends time left, measured when it answered.
const SLACK_NS: u64 = 5_000_000_000;

#[derive(Default)]
pub struct Lifted {
    /// (network, origin) → the lifted ban's end (`u64::MAX`: permanent).
    ends: HashMap<(IpNet, Box<str>), u64>,
    order: VecDeque<(IpNet, Box<str>)>,
}

impl Lifted {
    /// `origin`'s ban of `net`, ending at `end_ns` (0: permanent), was lifted.
    pub fn record(&mut self, net: IpNet, origin: &str, end_ns: u64) {
        let end = if end_ns == 0 { u64::MAX } else { end_ns };
        let key = (net, Box::from(origin));
        if self.ends.insert(key.clone(), end).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_LIFTED {
            if let Some(old) = self.order.pop_front() {
                self.ends.remove(&old);
            }
        }
    }

    /// Whether `origin`'s ban of `net` ending at `end_ns` (0: permanent) is
    /// one the operator lifted.
    pub fn holds(&self, net: &IpNet, origin: &str, end_ns: u64) -> bool {
        let Some(&lifted) = self.ends.get(&(*net, Box::from(origin))) else {
            return false;
        };
        if end_ns == 0 {
            return lifted == u64::MAX;
        }
        end_ns <= lifted.saturating_add(SLACK_NS)
    }

    /// Forgets what has ended by `now_ns` (nothing to hold back any more).
    pub fn forget_ended(&mut self, now_ns: u64) {
        let before = self.ends.len();
        self.ends.retain(|_, end| *end > now_ns);
        if self.ends.len() != before {
            let ends = &self.ends;
            self.order.retain(|k| ends.contains_key(k));
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_ban_stays_lifted_and_a_later_one_passes() {
        let net: IpNet = "192.0.2.7/32".parse().unwrap();
        let mut l = Lifted::default();
        l.record(net, "crowdsec", 100_000_000_000);
        l.record(net, "redis:b", 0);
        // The same decision, re-sent a little later: still lifted.
        assert!(l.holds(&net, "crowdsec", 100_000_000_000 + SLACK_NS));
        assert!(l.holds(&net, "crowdsec", 50));
        // Ending later: new evidence.
        assert!(!l.holds(&net, "crowdsec", 100_000_000_000 + SLACK_NS + 1));
        assert!(!l.holds(&net, "crowdsec", 0), "permanent outlasts it");
        assert!(l.holds(&net, "redis:b", 0) && l.holds(&net, "redis:b", 7));
        assert!(!l.holds(&net, "apiban", 1), "another origin");
        l.forget_ended(100_000_000_001);
        assert!(!l.holds(&net, "crowdsec", 50));
        assert!(l.holds(&net, "redis:b", 0));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = Lifted::default();
        for i in 0..(MAX_LIFTED as u32 + 10) {
            l.record(
                IpNet::from(ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(i))),
                "crowdsec",
                0,
            );
        }
        assert_eq!(l.len(), MAX_LIFTED);
        let first = IpNet::from(ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(0u32)));
        assert!(!l.holds(&first, "crowdsec", 0), "the oldest forgotten");
    }
}
