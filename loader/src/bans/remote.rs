//! Bans that came from beyond this box: CrowdSec's decisions, the other
//! nodes of a Redis fleet, the APIBAN feed. Each origin keeps its own record
//! of a network, beside the box's own ban of it (a jail's, the operator's,
//! the flood limiter's), so one origin's expiry or deletion never lifts
//! what another still wants: the kernel holds the latest end and the widest
//! scope of whatever is left.
use super::Scope;
use ipnet::IpNet;
use std::collections::HashSet;

/// One origin's ban of a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteBan {
    /// `crowdsec`, `apiban`, `redis:NODE`.
    pub origin: String,
    /// `CLOCK_MONOTONIC` deadline; `None` is permanent.
    pub expires_at_ns: Option<u64>,
    pub scope: Scope,
    /// The scenario, list or node that asked for it.
    pub reason: String,
}

/// Every origin's bans, by network.
#[derive(Debug, Default)]
pub struct RemoteBans {
    by_net: foldhash::HashMap<IpNet, Vec<RemoteBan>>,
}

impl RemoteBans {
    /// Sets `ban.origin`'s ban of `net`; true if anything changed.
    pub fn set(&mut self, net: IpNet, ban: RemoteBan) -> bool {
        let list = self.by_net.entry(net).or_default();
        match list.iter_mut().find(|b| b.origin == ban.origin) {
            Some(b) if *b == ban => false,
            Some(b) => {
                *b = ban;
                true
            }
            None => {
                list.push(ban);
                true
            }
        }
    }

    /// Removes `origin`'s ban of `net`; true if there was one.
    pub fn remove(&mut self, net: &IpNet, origin: &str) -> bool {
        let Some(list) = self.by_net.get_mut(net) else {
            return false;
        };
        let before = list.len();
        list.retain(|b| b.origin != origin);
        let removed = list.len() != before;
        if list.is_empty() {
            self.by_net.remove(net);
        }
        removed
    }

    /// Removes every origin's ban of `net`; returns the origins.
    pub fn remove_all(&mut self, net: &IpNet) -> Vec<String> {
        self.by_net
            .remove(net)
            .map(|l| l.into_iter().map(|b| b.origin).collect())
            .unwrap_or_default()
    }

    /// `origin`'s networks that `keep` does not hold, removed; returned.
    pub fn retain_origin(&mut self, origin: &str, keep: &HashSet<IpNet>) -> Vec<IpNet> {
        let gone: Vec<IpNet> = self
            .by_net
            .iter()
            .filter(|(net, list)| !keep.contains(net) && list.iter().any(|b| b.origin == origin))
            .map(|(net, _)| *net)
            .collect();
        for net in &gone {
            self.remove(net, origin);
        }
        gone
    }

    /// Bans that ended by `now_ns`, removed; returned with their origin.
    pub fn take_expired(&mut self, now_ns: u64) -> Vec<(IpNet, String)> {
        let mut out = Vec::new();
        self.by_net.retain(|net, list| {
            list.retain(|b| {
                let ended = b.expires_at_ns.is_some_and(|e| e <= now_ns);
                if ended {
                    out.push((*net, b.origin.clone()));
                }
                !ended
            });
            !list.is_empty()
        });
        out
    }

    pub fn get(&self, net: &IpNet) -> &[RemoteBan] {
        self.by_net.get(net).map_or(&[], Vec::as_slice)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &RemoteBan)> {
        self.by_net
            .iter()
            .flat_map(|(net, list)| list.iter().map(move |b| (net, b)))
    }

    pub fn nets(&self) -> impl Iterator<Item = &IpNet> {
        self.by_net.keys()
    }

    /// How many bans `origin` holds.
    pub fn count(&self, origin: &str) -> usize {
        self.iter().filter(|(_, b)| b.origin == origin).count()
    }

    /// The latest end and widest scope of every origin's ban of `net`.
    pub fn effective(&self, net: &IpNet) -> Option<(Option<u64>, Scope)> {
        let list = self.by_net.get(net)?;
        list.iter().fold(None, |acc, b| {
            Some(match acc {
                None => (b.expires_at_ns, b.scope),
                Some((end, scope)) => (super::later(end, b.expires_at_ns), scope.max(b.scope)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(origin: &str, end: Option<u64>) -> RemoteBan {
        RemoteBan {
            origin: origin.into(),
            expires_at_ns: end,
            scope: Scope::Ports,
            reason: String::new(),
        }
    }

    #[test]
    fn origins_keep_their_own_records() {
        let net: IpNet = "192.0.2.0/24".parse().unwrap();
        let mut r = RemoteBans::default();
        assert!(r.set(net, ban("crowdsec", Some(100))));
        assert!(!r.set(net, ban("crowdsec", Some(100))));
        assert!(r.set(net, ban("apiban", Some(50))));
        assert_eq!(r.effective(&net), Some((Some(100), Scope::Ports)));
        // One origin's end lifts only its own record.
        assert_eq!(r.take_expired(60), [(net, "apiban".to_owned())]);
        assert_eq!(r.effective(&net), Some((Some(100), Scope::Ports)));
        assert!(r.set(net, ban("redis:b", None)));
        assert_eq!(r.effective(&net), Some((None, Scope::Ports)));
        // A resync of one origin drops only its networks that are gone.
        let other: IpNet = "198.51.100.1/32".parse().unwrap();
        r.set(other, ban("crowdsec", None));
        let keep = HashSet::from([other]);
        assert_eq!(r.retain_origin("crowdsec", &keep), [net]);
        assert_eq!(r.get(&net).len(), 1);
        assert_eq!(r.count("crowdsec"), 1);
        assert_eq!(r.remove_all(&net), ["redis:b"]);
        assert!(r.effective(&net).is_none());
    }
}
