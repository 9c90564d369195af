//! Bans that came from beyond this box: CrowdSec's decisions, the other
//! nodes of a Redis fleet, the APIBAN feed. Each origin keeps its own record
//! of a network, beside the box's own ban of it (a jail's, the operator's,
//! the flood limiter's), so one origin's expiry or deletion never lifts
//! what another still wants: the kernel holds the latest end and the widest
//! scope of whatever is left.
//!
//! Each origin, and all of them together, hold only what `caps` allows; what
//! they hold is kept counted as bans change (`Tally`), so that a status or
//! a scrape costs the number of origins, not the number of bans.
use super::{
    caps::{Caps, OriginStatus, Over, Refused, Tally},
    names::{Name, Names},
    Scope,
};
use crate::net_table::NetTable;
use ipnet::IpNet;
use smallvec::SmallVec;
use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

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

/// Origins whose live ban counters get a label of their own (the first
/// seen); the others are counted as `caps::OTHER`.
const LABELLED_ORIGINS: usize = 20;

/// Every origin's bans, by network.
#[derive(Default)]
pub struct RemoteBans {
    by_net: NetTable<Records>,
    names: Names,
    caps: Caps,
    /// What each origin holds (by its name; gone once it holds nothing, so
    /// a name let go by `prune_names` is never in here).
    tallies: HashMap<Name, Tally>,
    /// What all origins hold, each network once.
    all: Tally,
    refused: Refused,
    labelled: HashSet<String>,
    /// What the operator lifted (see `lifted`).
    lifted: super::lifted::Lifted,
}

impl RemoteBans {
    /// New caps (start, reload): bans already held stay; new ones meet them.
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
    }

    /// Sets `ban.origin`'s ban of `net` if the caps allow it; true if
    /// anything changed. A refusal is counted and logged (at most once a
    /// minute per origin), never an error: the rest of a batch goes on.
    pub fn set(&mut self, net: IpNet, ban: &RemoteBan) -> Result<bool, Over> {
        // The operator lifted this very ban: a resync does not undo that.
        if self
            .lifted
            .holds(&net, &ban.origin, ban.expires_at_ns.unwrap_or(0))
        {
            return Ok(false);
        }
        if let Err(why) = self.admit(&net, &ban.origin) {
            self.refuse(&ban.origin, &net, why, "");
            return Err(why);
        }
        Ok(self.set_parts(net, &ban.origin, ban.expires_at_ns, ban.scope, &ban.reason))
    }

    /// Whether `origin` may ban `net`: a replacement of its own ban of the
    /// same network takes no new room, so only its width is checked again.
    fn admit(&self, net: &IpNet, origin: &str) -> Result<(), Over> {
        let id = self.names.find(origin);
        let list = self.by_net.get(net);
        if let (Some(id), Some(list)) = (id, list) {
            if list.iter().any(|b| b.origin == id) {
                return self.caps.narrow_enough(net);
            }
        }
        let none = Tally::default();
        let held = id.and_then(|id| self.tallies.get(&id)).unwrap_or(&none);
        self.caps.admit(net, held, &self.all, list.is_none())
    }

    /// Counts (and logs, see `caps::Refused`) a refused ban of `net`.
    pub fn refuse(&mut self, origin: &str, net: &IpNet, why: Over, detail: &str) {
        self.refused.count(origin, net, why, detail, Instant::now());
    }

    /// Refusals so far, by origin (bounded).
    pub fn refused(&self) -> &Refused {
        &self.refused
    }

    /// What each origin holds now.
    pub fn tallies(&self) -> impl Iterator<Item = (&str, &Tally)> {
        self.tallies
            .iter()
            .map(|(id, t)| (&**self.names.text(*id), t))
    }

    /// What all origins hold together, each network once.
    pub fn all(&self) -> &Tally {
        &self.all
    }

    /// `origin` as a label of the live ban counters: its own for the first
    /// `LABELLED_ORIGINS` seen, `caps::OTHER` after (a shared Redis can
    /// name thousands of nodes).
    pub fn label(&mut self, origin: &str) -> String {
        if self.labelled.contains(origin) {
            return origin.to_owned();
        }
        if self.labelled.len() < LABELLED_ORIGINS && origin != super::caps::OTHER {
            self.labelled.insert(origin.to_owned());
            return origin.to_owned();
        }
        super::caps::OTHER.to_owned()
    }

    /// Every origin that holds bans or was refused any, the `n` largest
    /// by name and the rest as `caps::OTHER`: O(origins).
    pub fn summary(&self, n: usize) -> Vec<(String, OriginStatus)> {
        let mut by: HashMap<&str, OriginStatus> = HashMap::new();
        for (origin, t) in self.tallies() {
            by.entry(origin).or_default().held = *t;
        }
        for (origin, r) in self.refused.iter() {
            let s = by.entry(origin).or_default();
            s.never_ban += r.never_ban;
            s.over_cap += r.over_cap;
        }
        super::caps::top(by.into_iter().collect(), n, OriginStatus::weight)
    }

    fn held(&mut self, origin: Name) -> &mut Tally {
        self.tallies.entry(origin).or_default()
    }

    /// `origin`'s record of `net` is gone (the network's list is `empty`
    /// now or not).
    fn released(&mut self, net: &IpNet, origin: Name, empty: bool) {
        released(&mut self.tallies, &mut self.all, net, origin, empty);
    }

    /// `set`, from its parts, without the caps (a restore of what was
    /// admitted before).
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
            self.held(new.origin).add(&net);
            self.all.add(&net);
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
                self.held(new.origin).add(&net);
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
        let empty = list.is_empty();
        if empty {
            self.by_net.remove(net);
        }
        if removed {
            self.released(net, origin, empty);
        }
        removed
    }

    /// Removes every origin's ban of `net` (the operator's unban, a
    /// member's fleet unban); returns the origins. Each lifted ban is
    /// remembered, so that the same ban handed in again stays lifted.
    pub fn remove_all(&mut self, net: &IpNet) -> Vec<String> {
        let Some(list) = self.by_net.remove(net) else {
            return Vec::new();
        };
        for (i, b) in list.iter().enumerate() {
            self.released(net, b.origin, i + 1 == list.len());
            let origin = self.names.text(b.origin).to_string();
            self.lifted.record(*net, &origin, b.end_ns);
        }
        list.iter()
            .map(|b| self.names.text(b.origin).to_string())
            .collect()
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
        self.lifted.forget_ended(now_ns);
        let mut out = Vec::new();
        let Self {
            by_net,
            names,
            tallies,
            all,
            ..
        } = self;
        by_net.retain(|net, list| {
            let mut ended_origins: SmallVec<[Name; 1]> = SmallVec::new();
            list.retain(|b| {
                let ended = b.end_ns != 0 && b.end_ns <= now_ns;
                if ended {
                    out.push((*net, names.text(b.origin).to_string()));
                    ended_origins.push(b.origin);
                }
                !ended
            });
            let empty = list.is_empty();
            for (i, origin) in ended_origins.iter().enumerate() {
                released(
                    tallies,
                    all,
                    net,
                    *origin,
                    empty && i + 1 == ended_origins.len(),
                );
            }
            !empty
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

    /// Networks held (each once, whatever its origins), without a walk.
    pub fn slots_used(&self) -> usize {
        self.by_net.len()
    }

    /// One past the last slot of the networks' table: with `nets_in`, a
    /// walk over a table that changes between its steps (see `sliced`).
    pub fn slot_end(&self) -> u32 {
        self.by_net.slot_end()
    }

    /// The networks in the slots of `range`.
    pub fn nets_in(&self, range: std::ops::Range<u32>) -> impl Iterator<Item = &IpNet> {
        self.by_net.slots_in(range).map(|(net, _)| net)
    }

    /// Every name a ban holds (for the state's string table).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter()
    }

    /// How many bans `origin` holds.
    pub fn count(&self, origin: &str) -> usize {
        self.names
            .find(origin)
            .and_then(|id| self.tallies.get(&id))
            .map_or(0, |t| t.total() as usize)
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

/// `origin`'s record of `net` is gone; the network's last when `empty`.
fn released(
    tallies: &mut HashMap<Name, Tally>,
    all: &mut Tally,
    net: &IpNet,
    origin: Name,
    empty: bool,
) {
    if let Some(t) = tallies.get_mut(&origin) {
        t.sub(net);
        if t.is_empty() {
            tallies.remove(&origin);
        }
    }
    if empty {
        all.sub(net);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_does_not_undo_the_operators_unban() {
        let net: IpNet = "203.0.113.5/32".parse().unwrap();
        let ban = |end: u64| RemoteBan {
            origin: "crowdsec".into(),
            expires_at_ns: Some(end),
            scope: Scope::Ports,
            reason: "r".into(),
        };
        let mut r = RemoteBans::default();
        assert_eq!(r.set(net, &ban(1_000_000_000_000)), Ok(true));
        assert_eq!(r.remove_all(&net), ["crowdsec"]);
        // The full list again, the same decision in it: still lifted.
        assert_eq!(r.set(net, &ban(1_000_000_000_000)), Ok(false));
        assert_eq!(r.get(&net).count(), 0);
        // A new decision, ending later: enforced.
        assert_eq!(r.set(net, &ban(2_000_000_000_000)), Ok(true));
        assert_eq!(r.get(&net).count(), 1);
    }

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
        assert_eq!(r.set(net, &ban("crowdsec", Some(100))), Ok(true));
        assert_eq!(r.set(net, &ban("crowdsec", Some(100))), Ok(false));
        assert_eq!(r.set(net, &ban("apiban", Some(50))), Ok(true));
        assert_eq!(r.effective(&net), Some((Some(100), Scope::Ports)));
        // One origin's end lifts only its own record.
        assert_eq!(r.take_expired(60), [(net, "apiban".to_owned())]);
        assert_eq!(r.effective(&net), Some((Some(100), Scope::Ports)));
        assert_eq!(r.set(net, &ban("redis:b", None)), Ok(true));
        assert_eq!(r.effective(&net), Some((None, Scope::Ports)));
        // A resync of one origin drops only its networks that are gone.
        let other: IpNet = "198.51.100.1/32".parse().unwrap();
        r.set(other, &ban("crowdsec", None)).unwrap();
        let keep = HashSet::from([other]);
        assert_eq!(r.retain_origin("crowdsec", &keep), [net]);
        assert_eq!(r.origins_of(&net), 1);
        assert_eq!(r.count("crowdsec"), 1);
        assert_eq!(r.remove_all(&net), ["redis:b"]);
        assert!(r.effective(&net).is_none());
    }

    use crate::bans::caps::{Limits, Over};

    fn n(s: &str) -> IpNet {
        crate::addr::parse_net(s).unwrap()
    }

    fn small_caps() -> Caps {
        Caps {
            per_origin: Limits {
                bans: 3,
                ipv4_addresses: 600,
                ipv6_64s: 1 << 16,
            },
            all: Limits {
                bans: 5,
                ipv4_addresses: 1 << 20,
                ipv6_64s: 1 << 20,
            },
            ..Caps::default()
        }
    }

    #[test]
    fn an_origin_gets_no_more_than_its_caps() {
        let mut r = RemoteBans::default();
        r.set_caps(small_caps());
        assert_eq!(
            r.set(n("10.0.0.0/8"), &ban("apiban", None)),
            Err(Over::Width)
        );
        assert_eq!(
            r.set(n("2001:db8::/24"), &ban("apiban", None)),
            Err(Over::Width)
        );
        assert_eq!(r.set(n("192.0.2.0/24"), &ban("apiban", None)), Ok(true));
        assert_eq!(r.set(n("198.51.100.0/24"), &ban("apiban", None)), Ok(true));
        // 512 of 600 addresses: a third /24 is over, a single address not.
        assert_eq!(
            r.set(n("203.0.113.0/24"), &ban("apiban", None)),
            Err(Over::Space)
        );
        assert_eq!(r.set(n("203.0.113.1"), &ban("apiban", None)), Ok(true));
        assert_eq!(
            r.set(n("203.0.113.2"), &ban("apiban", None)),
            Err(Over::Bans)
        );
        // A replacement of its own ban takes no new room.
        assert_eq!(r.set(n("203.0.113.1"), &ban("apiban", Some(9))), Ok(true));
        assert_eq!(r.count("apiban"), 3);
        let refused = r.refused().get("apiban").unwrap();
        assert_eq!((refused.over_cap, refused.never_ban), (4, 0));
        // Lifting frees room; so does expiry.
        assert!(r.remove(&n("203.0.113.1"), "apiban"));
        assert_eq!(r.set(n("203.0.113.2"), &ban("apiban", Some(9))), Ok(true));
        assert_eq!(r.take_expired(10).len(), 1);
        assert_eq!(r.set(n("203.0.113.3"), &ban("apiban", None)), Ok(true));
    }

    #[test]
    fn all_origins_together_leave_room() {
        let mut r = RemoteBans::default();
        r.set_caps(small_caps());
        for i in 0..3 {
            r.set(n(&format!("192.0.2.{i}")), &ban("redis:a", None))
                .unwrap();
        }
        r.set(n("192.0.2.10"), &ban("redis:b", None)).unwrap();
        r.set(n("192.0.2.11"), &ban("redis:b", None)).unwrap();
        // Five networks held: a sixth is refused to any origin...
        assert_eq!(
            r.set(n("192.0.2.12"), &ban("redis:c", None)),
            Err(Over::AllBans)
        );
        // ... but a network already held takes no new room.
        assert_eq!(r.set(n("192.0.2.1"), &ban("redis:c", None)), Ok(true));
        assert_eq!(r.all().total(), 5);
        assert_eq!(r.refused().get("redis:c").unwrap().over_cap, 1);
        let summary = r.summary(2);
        let names: Vec<&str> = summary.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(names, ["redis:a", "redis:b", crate::bans::caps::OTHER]);
        let other = &summary[2].1;
        assert_eq!((other.held.total(), other.over_cap), (1, 1));
    }

    /// What a walk over every record finds: per origin, and overall.
    fn walked(r: &RemoteBans) -> (HashMap<String, Tally>, Tally) {
        let mut per = HashMap::<String, Tally>::new();
        let mut all = Tally::default();
        for (net, b) in r.iter() {
            per.entry(b.origin.to_owned()).or_default().add(net);
        }
        for net in r.nets() {
            all.add(net);
        }
        (per, all)
    }

    /// Thousands of random sets, removals, resyncs and expiries: the kept
    /// counts always equal a walk.
    #[test]
    fn kept_counts_equal_a_walk_after_random_operations() {
        let mut r = RemoteBans::default();
        r.set_caps(small_caps_large());
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let origins = ["crowdsec", "apiban", "redis:a", "redis:b"];
        for step in 0..20_000u64 {
            let x = next();
            let origin = origins[(x % 4) as usize];
            let net = match (x >> 8) % 3 {
                0 => n(&format!("192.0.2.{}", (x >> 16) % 40)),
                1 => n(&format!("10.{}.0.0/{}", (x >> 16) % 8, 16 + (x >> 24) % 9)),
                _ => n(&format!(
                    "2001:db8:{:x}::/{}",
                    (x >> 16) % 20,
                    32 + (x >> 24) % 97
                )),
            };
            match (x >> 40) % 6 {
                0..=2 => {
                    let end = ((x >> 48) % 3 != 0).then_some(step + (x >> 50) % 500);
                    let _ = r.set(net, &ban(origin, end));
                }
                3 => {
                    r.remove(&net, origin);
                }
                4 if (x >> 48) % 50 == 0 => {
                    r.remove_all(&net);
                }
                4 if (x >> 48) % 50 == 1 => {
                    let keep: HashSet<IpNet> = r.nets().take(5).copied().collect();
                    r.retain_origin(origin, &keep);
                }
                _ => {
                    r.take_expired(step);
                }
            }
            if step % 97 == 0 {
                r.prune_names();
            }
            let (per, all) = walked(&r);
            let kept: HashMap<String, Tally> =
                r.tallies().map(|(o, t)| (o.to_owned(), *t)).collect();
            assert_eq!(kept, per, "step {step}");
            assert_eq!(*r.all(), all, "step {step}");
        }
    }

    fn small_caps_large() -> Caps {
        Caps {
            per_origin: Limits {
                bans: 60,
                ipv4_addresses: 1 << 22,
                ipv6_64s: u64::MAX,
            },
            all: Limits {
                bans: 150,
                ipv4_addresses: 1 << 23,
                ipv6_64s: u64::MAX,
            },
            ..Caps::default()
        }
    }
}
