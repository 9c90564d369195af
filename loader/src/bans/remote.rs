//! Bans that came from beyond this box: CrowdSec's decisions, the other
//! nodes of a Redis fleet, the APIBAN feed. Each origin keeps its own record
//! of a network, beside the box's own ban of it (a jail's, the operator's,
//! the flood limiter's), so one origin's expiry or deletion never lifts
//! what another still wants: the kernel holds the latest end and the widest
//! scope of whatever is left.
use super::{
    names::{Name, Names},
    Scope,
};
use crate::net_table::NetTable;
use ipnet::IpNet;
use smallvec::SmallVec;
use std::collections::HashSet;

/// One origin's ban of a network, as an engine hands it in.
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

/// One origin's ban of a network, to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote<'a> {
    pub origin: &'a str,
    pub expires_at_ns: Option<u64>,
    pub scope: Scope,
    pub reason: &'a str,
}

/// A record as held for a million (a CrowdSec community list): origin and
/// reason by index, 24 bytes; a network's records inline while it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    origin: Name,
    reason: Name,
    /// 0: permanent.
    end_ns: u64,
    scope: Scope,
}

impl Record {
    fn expires_at_ns(&self) -> Option<u64> {
        (self.end_ns != 0).then_some(self.end_ns)
    }
}

type Records = SmallVec<[Record; 1]>;

/// Every origin's bans, by network.
#[derive(Default)]
pub struct RemoteBans {
    by_net: NetTable<Records>,
    names: Names,
}

impl RemoteBans {
    /// Sets `ban.origin`'s ban of `net`; true if anything changed.
    pub fn set(&mut self, net: IpNet, ban: &RemoteBan) -> bool {
        self.set_parts(net, &ban.origin, ban.expires_at_ns, ban.scope, &ban.reason)
    }

    /// `set`, from its parts.
    pub fn set_parts(
        &mut self,
        net: IpNet,
        origin: &str,
        expires_at_ns: Option<u64>,
        scope: Scope,
        reason: &str,
    ) -> bool {
        let new = Record {
            origin: self.names.id(origin),
            reason: self.names.id(reason),
            end_ns: expires_at_ns.unwrap_or(0),
            scope,
        };
        let Some(list) = self.by_net.get_mut(&net) else {
            self.by_net.insert(net, SmallVec::from_buf([new]));
            return true;
        };
        match list.iter_mut().find(|b| b.origin == new.origin) {
            Some(b) if *b == new => false,
            Some(b) => {
                *b = new;
                true
            }
            None => {
                list.push(new);
                true
            }
        }
    }

    /// Removes `origin`'s ban of `net`; true if there was one.
    pub fn remove(&mut self, net: &IpNet, origin: &str) -> bool {
        let Some(origin) = self.names.find(origin) else {
            return false;
        };
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
            .map(|l| {
                l.iter()
                    .map(|b| self.names.text(b.origin).to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `origin`'s networks that `keep` does not hold, removed; returned.
    pub fn retain_origin(&mut self, origin: &str, keep: &HashSet<IpNet>) -> Vec<IpNet> {
        let Some(id) = self.names.find(origin) else {
            return Vec::new();
        };
        let gone: Vec<IpNet> = self
            .by_net
            .iter()
            .filter(|(net, list)| !keep.contains(net) && list.iter().any(|b| b.origin == id))
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
        let names = &self.names;
        self.by_net.retain(|net, list| {
            list.retain(|b| {
                let ended = b.end_ns != 0 && b.end_ns <= now_ns;
                if ended {
                    out.push((*net, names.text(b.origin).to_string()));
                }
                !ended
            });
            !list.is_empty()
        });
        out
    }

    /// Lets go of the origins and reasons no ban holds any more.
    pub fn prune_names(&mut self) {
        let used = self
            .by_net
            .iter()
            .flat_map(|(_, l)| l.iter().flat_map(|b| [b.origin, b.reason]));
        self.names.retain_used(used);
    }

    fn view(&self, b: &Record) -> Remote<'_> {
        Remote {
            origin: self.names.text(b.origin),
            expires_at_ns: b.expires_at_ns(),
            scope: b.scope,
            reason: self.names.text(b.reason),
        }
    }

    /// Every origin's ban of `net`.
    pub fn get(&self, net: &IpNet) -> impl Iterator<Item = Remote<'_>> {
        self.by_net
            .get(net)
            .into_iter()
            .flatten()
            .map(|b| self.view(b))
    }

    /// How many origins ban `net`.
    pub fn origins_of(&self, net: &IpNet) -> usize {
        self.by_net.get(net).map_or(0, |l| l.len())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, Remote<'_>)> {
        self.by_net
            .iter()
            .flat_map(move |(net, list)| list.iter().map(move |b| (net, self.view(b))))
    }

    pub fn nets(&self) -> impl Iterator<Item = &IpNet> {
        self.by_net.iter().map(|(net, _)| net)
    }

    /// Every name a ban holds (for the state's string table).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter()
    }

    /// How many bans `origin` holds.
    pub fn count(&self, origin: &str) -> usize {
        let Some(id) = self.names.find(origin) else {
            return 0;
        };
        self.by_net
            .iter()
            .filter(|(_, l)| l.iter().any(|b| b.origin == id))
            .count()
    }

    /// The latest end and widest scope of every origin's ban of `net`.
    pub fn effective(&self, net: &IpNet) -> Option<(Option<u64>, Scope)> {
        let list = self.by_net.get(net)?;
        list.iter().fold(None, |acc, b| {
            Some(match acc {
                None => (b.expires_at_ns(), b.scope),
                Some((end, scope)) => (super::later(end, b.expires_at_ns()), scope.max(b.scope)),
            })
        })
    }
}

const _: () = assert!(std::mem::size_of::<Record>() == 24);

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
        assert!(r.set(net, &ban("crowdsec", Some(100))));
        assert!(!r.set(net, &ban("crowdsec", Some(100))));
        assert!(r.set(net, &ban("apiban", Some(50))));
        assert_eq!(r.effective(&net), Some((Some(100), Scope::Ports)));
        // One origin's end lifts only its own record.
        assert_eq!(r.take_expired(60), [(net, "apiban".to_owned())]);
        assert_eq!(r.effective(&net), Some((Some(100), Scope::Ports)));
        assert!(r.set(net, &ban("redis:b", None)));
        assert_eq!(r.effective(&net), Some((None, Scope::Ports)));
        // A resync of one origin drops only its networks that are gone.
        let other: IpNet = "198.51.100.1/32".parse().unwrap();
        r.set(other, &ban("crowdsec", None));
        let keep = HashSet::from([other]);
        assert_eq!(r.retain_origin("crowdsec", &keep), [net]);
        assert_eq!(r.origins_of(&net), 1);
        assert_eq!(r.count("crowdsec"), 1);
        assert_eq!(r.remove_all(&net), ["redis:b"]);
        assert!(r.effective(&net).is_none());
    }
}
