//! Prefix aggregation (`aggregate_after`): when `N` distinct members of one
//! prefix (a /24, an IPv6 /48 or /64) are banned by a log jail within its
//! `findtime`, the prefix is banned too, for as long as the longest member
//! ban still runs (a permanent member makes it permanent).
//!
//! What counts as a member: this box's own ban of an address (or of the
//! jail's IPv6 /`ipv6_prefix`) made by the jail from its log. Nothing else:
//! bans from the fleet, CrowdSec or APIBAN travel as they were made, never
//! widened here; the operator's bans are his; and packet-evidence jails
//! (`PACKET_JAILS`) cannot aggregate at all, since a forger chooses the
//! source address of a packet and so could choose a prefix to ban.
//!
//! A prefix is vetted against the never-ban set like any ban: one that
//! would cover a protected address is not made (the members keep their own
//! bans), and that is said once per prefix, not once per member.
//!
//! Memory: a prefix waiting for its `N`th member remembers at most `N`
//! members (network and when it was banned); at most `MAX_PREFIXES`
//! prefixes and `MAX_MEMBERS` members are held per jail (the least recently
//! touched prefix goes first), and a prefix untouched for `findtime` is
//! forgotten. Once a prefix is banned nothing is held for it here: its ban
//! (jail, end, and the member count in its reason) is the manager's, so it
//! survives restarts, and a later member ban that ends after it extends it.
use crate::bans::{
    later,
    never_ban::{NeverBan, Vetted, Why},
    BanManager,
};
use ipnet::IpNet;
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

/// Jails whose evidence is a packet (its source address, which anyone can
/// forge): they can never aggregate. The daemon's packet jails must be
/// here (checked by a test in `daemon`).
pub const PACKET_JAILS: [&str; 3] = ["sip-flood", "sip-scanner", "sip-invalid"];

/// Why a packet-evidence jail cannot aggregate (config errors say it).
pub const PACKET_WHY: &str = "a packet-evidence jail cannot aggregate: its evidence is a packet's \
     source address, which a forger chooses, so he could choose the prefix to be banned (a \
     victim's /24); only log jails, whose evidence this box's own server wrote, aggregate";

/// The filters whose lines may aggregate: FreeSWITCH writes them only for
/// a request that answered a digest challenge with a wrong response, which
/// one forged packet cannot do without a nonce (a forger with his own
/// nonce still can: see the README's threat model; hence ports only and
/// the cap on a prefix's time).
pub const AGGREGATING_FILTERS: [&str; 1] = ["freeswitch"];

/// Why another filter cannot aggregate (config errors say it).
pub const FILTER_WHY: &str = "key `aggregate_after` needs `filter = \"freeswitch\"`: its lines \
     are written only after a digest challenge was answered; other filters (freeswitch-challenge, \
     kamailio's pike lines, asterisk's unknown-endpoint lines, a custom failregex) count lines \
     that one unauthenticated packet earns, whose source a forger chooses, so he could choose \
     the prefix to be banned";

/// The longest a prefix ban lasts (and no longer than the jail's own
/// `bantime`): its evidence is a few members, not the prefix's own
/// failures, and a forger with a nonce of his own can earn members; fresh
/// members make it again.
pub const MAX_PREFIX_BAN: Duration = Duration::from_secs(24 * 3600);

/// Most members `aggregate_after` may ask for: a /24 holds 256 addresses,
/// and each prefix waiting for its last member remembers up to this many.
pub const MAX_AFTER: u32 = 256;

/// The widest prefixes aggregated to.
pub const MIN_V4: u8 = 16;
pub const MIN_V6: u8 = 32;

/// Most prefixes and members remembered per jail (~10 MiB at worst).
pub const MAX_PREFIXES: usize = 65_536;
pub const MAX_MEMBERS: usize = 262_144;

/// A jail's aggregation settings, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Distinct members that make the prefix ban.
    pub after: u32,
    /// Prefix lengths aggregated to.
    pub v4: u8,
    pub v6: u8,
    pub findtime_ms: i64,
}

impl Settings {
    /// The settings of a jail's `aggregate_after`, `aggregate_v4` and
    /// `aggregate_v6` (none: the jail does not aggregate), or what is
    /// wrong with them. `ipv6_prefix` is what the jail bans IPv6 offenders
    /// as: the prefix must be wider than a member.
    pub fn of(
        after: Option<u32>,
        v4: Option<u8>,
        v6: Option<u8>,
        ipv6_prefix: u8,
        findtime: Duration,
    ) -> Result<Option<Self>, String> {
        let Some(after) = after else {
            if v4.is_some() || v6.is_some() {
                return Err(
                    "keys `aggregate_v4` and `aggregate_v6` need `aggregate_after` \
                            (aggregation is off without it)"
                        .into(),
                );
            }
            return Ok(None);
        };
        if !(2..=MAX_AFTER).contains(&after) {
            return Err(format!(
                "key `aggregate_after` must be 2 to {MAX_AFTER}, not {after} (1 would make every \
                 ban a prefix ban; a /24 holds 256 addresses)"
            ));
        }
        // No wider than the fleet takes a range (/16, /32): a few members
        // must not cut off a whole provider. A /32 is one address.
        let v4 = v4.unwrap_or(24);
        if !(MIN_V4..=31).contains(&v4) {
            return Err(format!(
                "key `aggregate_v4` must be {MIN_V4} to 31, not {v4} (wider would cut off a whole \
                 provider on a few members' evidence; /32 is a single address)"
            ));
        }
        // IPv6 members are the jail's /`ipv6_prefix` (default /64, one
        // subscriber): the default prefix holds 256 of them, as a v4 /24
        // holds 256 addresses (a /56 for /64 members); /64 when the jail
        // bans narrower.
        let v6 = v6.unwrap_or(if ipv6_prefix > 64 {
            64
        } else {
            ipv6_prefix.saturating_sub(8)
        });
        if !(MIN_V6..=127).contains(&v6) || v6 >= ipv6_prefix {
            return Err(format!(
                "key `aggregate_v6` must be {MIN_V6} to {}, not {v6}: wider than the jail's IPv6 \
                 bans (`ipv6_prefix` = {ipv6_prefix}, which are the members) and no wider than a \
                 /{MIN_V6}",
                ipv6_prefix.saturating_sub(1).max(MIN_V6),
            ));
        }
        // A prefix with room for fewer members than `after` never bans.
        for (family, len, member) in [("v4", v4, 32u8), ("v6", v6, ipv6_prefix)] {
            let room = 1u64 << u32::from(member - len).min(32);
            if room < u64::from(after) {
                return Err(format!(
                    "key `aggregate_{family}`: a /{len} holds only {room} member(s) of /{member}: \
                     `aggregate_after` = {after} could never be reached"
                ));
            }
        }
        Ok(Some(Self {
            after,
            v4,
            v6,
            findtime_ms: i64::try_from(findtime.as_millis()).unwrap_or(i64::MAX),
        }))
    }

    /// The prefix `member` aggregates into; none when the member is no
    /// narrower (nothing to aggregate).
    pub fn prefix_of(&self, member: &IpNet) -> Option<IpNet> {
        let len = match member {
            IpNet::V4(_) => self.v4,
            IpNet::V6(_) => self.v6,
        };
        (member.prefix_len() > len).then(|| {
            IpNet::new(member.addr(), len)
                .expect("length checked against the family")
                .trunc()
        })
    }
}

/// The reason of a prefix ban: it says how many members made it, and is
/// how a prefix ban of this jail is told from any other ban (see `members`).
pub fn reason(members: usize, findtime_ms: i64) -> String {
    let findtime = Duration::from_millis(u64::try_from(findtime_ms).unwrap_or(0));
    format!(
        "aggregated from {members} members (distinct bans of this jail within {})",
        humantime::format_duration(findtime)
    )
}

/// Whether a jail aggregating with `settings` (`None`: not at all) would
/// make the prefix ban of `prefix` that `members` members made: of its
/// width, and with enough members. A prefix ban it would not make is lifted
/// when the jail's configuration changes (`aggregate_after` turned off or
/// raised, another width).
pub fn would_make(settings: Option<&Settings>, prefix: &IpNet, members: usize) -> bool {
    settings.is_some_and(|s| {
        let len = match prefix {
            IpNet::V4(_) => s.v4,
            IpNet::V6(_) => s.v6,
        };
        prefix.prefix_len() == len && members >= s.after as usize
    })
}

/// The member count in a prefix ban's reason; none: not a prefix ban.
pub fn members(reason: &str) -> Option<usize> {
    let rest = reason.strip_prefix("aggregated from ")?;
    let digits = rest.split(' ').next()?;
    rest[digits.len()..]
        .starts_with(" members")
        .then(|| digits.parse().ok())
        .flatten()
}

/// This box's own bans, as the tracker reads them.
pub trait OwnBans {
    /// The ban of exactly `net` made here (not remote): its jail, end
    /// (`CLOCK_MONOTONIC` ns; `None` is permanent) and reason.
    fn own_ban(&self, net: &IpNet) -> Option<(&str, Option<u64>, &str)>;
}

impl OwnBans for BanManager {
    fn own_ban(&self, net: &IpNet) -> Option<(&str, Option<u64>, &str)> {
        self.get(net).map(|b| (b.jail, b.expires_at_ns, b.reason))
    }
}

/// What a member ban leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ban `prefix` until `end` (`None`: permanently); it may be banned
    /// already, and then this extends it.
    Ban {
        prefix: IpNet,
        end: Option<u64>,
        members: usize,
        reason: String,
    },
    /// The prefix would cover `protected`: not made (said once per prefix).
    Refused {
        prefix: IpNet,
        members: usize,
        protected: IpNet,
        why: Why,
    },
}

/// A prefix being watched.
struct Entry {
    /// Its place in `Tracker::order` (the latest one is current).
    seq: u64,
    last_ms: i64,
    state: State,
}

enum State {
    /// Members banned so far (network, when, ms), at most `after`.
    Pending(Vec<(IpNet, i64)>),
    /// Vetting refused it (and said so): nothing more is said or counted
    /// until it has been quiet for `findtime`.
    Refused,
}

/// One jail's prefixes on their way to a ban.
pub struct Tracker {
    jail: String,
    settings: Settings,
    prefixes: HashMap<IpNet, Entry>,
    /// Prefixes from least to most recently touched, with the sequence
    /// number that tells a current place from a stale one.
    order: VecDeque<(IpNet, u64)>,
    next_seq: u64,
    /// Members remembered, all prefixes together.
    members: usize,
    max_prefixes: usize,
    max_members: usize,
}

impl Tracker {
    pub fn new(jail: &str, settings: Settings) -> Self {
        Self::with_limits(jail, settings, MAX_PREFIXES, MAX_MEMBERS)
    }

    fn with_limits(
        jail: &str,
        settings: Settings,
        max_prefixes: usize,
        max_members: usize,
    ) -> Self {
        Self {
            jail: jail.to_owned(),
            settings,
            prefixes: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            members: 0,
            max_prefixes: max_prefixes.max(1),
            max_members: max_members.max(settings.after as usize),
        }
    }

    /// The settings it aggregates with.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Prefixes and members remembered now.
    pub fn len(&self) -> (usize, usize) {
        (self.prefixes.len(), self.members)
    }

    /// The jail has just banned `member` (offender `host`) from its log,
    /// at `now_ms`: what follows for the member's prefix, if anything.
    pub fn member_banned(
        &mut self,
        member: IpNet,
        host: IpAddr,
        now_ms: i64,
        never_ban: &NeverBan,
        bans: &dyn OwnBans,
    ) -> Option<Decision> {
        let prefix = self.settings.prefix_of(&member)?;
        let (jail, member_end, _) = bans.own_ban(&member)?;
        if jail != self.jail {
            return None;
        }
        if let Some((jail, prefix_end, said)) = bans.own_ban(&prefix) {
            // Banned already: by this jail's aggregation, which a member
            // ending later extends; by anyone else, not this jail's to touch.
            let members = members(said).filter(|_| jail == self.jail)?;
            if later(prefix_end, member_end) == prefix_end {
                return None;
            }
            // Vetted again: a protected address may have come into it since
            // (a new trunk, an `allow`); then it only runs out.
            if let Vetted::Narrowed { protected, why, .. } | Vetted::Refused { protected, why } =
                never_ban.vet(prefix, host)
            {
                return Some(Decision::Refused {
                    prefix,
                    members,
                    protected,
                    why,
                });
            }
            let members = members.saturating_add(1);
            return Some(Decision::Ban {
                prefix,
                end: member_end,
                members,
                reason: reason(members, self.settings.findtime_ms),
            });
        }
        self.expire(now_ms);
        self.touch(prefix, now_ms);
        let cutoff = now_ms.saturating_sub(self.settings.findtime_ms);
        let after = self.settings.after as usize;
        let entry = self.prefixes.get_mut(&prefix).expect("just touched");
        let State::Pending(list) = &mut entry.state else {
            return None;
        };
        let before = list.len();
        list.retain(|(_, at)| *at >= cutoff);
        match list.iter_mut().find(|(n, _)| *n == member) {
            Some(seen) => seen.1 = now_ms,
            None => list.push((member, now_ms)),
        }
        if list.len() >= after {
            // Members since unbanned or ended no longer count.
            list.retain(|(n, _)| bans.own_ban(n).is_some_and(|(j, _, _)| j == self.jail));
        }
        self.members = self.members + list.len() - before;
        if list.len() < after {
            self.evict_over_limits();
            return None;
        }
        let count = list.len();
        let end = list
            .iter()
            .filter_map(|(n, _)| bans.own_ban(n))
            .map(|(_, end, _)| end)
            .reduce(later)
            .expect("at least `after` members");
        self.members -= count;
        match never_ban.vet(prefix, host) {
            Vetted::Ban(_) => {
                self.prefixes.remove(&prefix);
                Some(Decision::Ban {
                    prefix,
                    end,
                    members: count,
                    reason: reason(count, self.settings.findtime_ms),
                })
            }
            Vetted::Narrowed { protected, why, .. } | Vetted::Refused { protected, why } => {
                entry.state = State::Refused;
                Some(Decision::Refused {
                    prefix,
                    members: count,
                    protected,
                    why,
                })
            }
        }
    }

    /// Forgets the prefixes untouched for `findtime` before `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.settings.findtime_ms);
        while let Some(&(net, seq)) = self.order.front() {
            match self.prefixes.get(&net) {
                Some(e) if e.seq == seq && e.last_ms >= cutoff => break,
                Some(e) if e.seq == seq => self.remove(&net),
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// Makes `prefix` the most recently touched (adding it if new).
    fn touch(&mut self, prefix: IpNet, now_ms: i64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.prefixes
            .entry(prefix)
            .and_modify(|e| {
                e.seq = seq;
                e.last_ms = now_ms;
            })
            .or_insert(Entry {
                seq,
                last_ms: now_ms,
                state: State::Pending(Vec::new()),
            });
        self.order.push_back((prefix, seq));
        // Stale places are dropped when they reach the front; keep the
        // queue from growing past twice the live set.
        if self.order.len() > 2 * self.prefixes.len() + 1024 {
            let prefixes = &self.prefixes;
            self.order
                .retain(|(n, s)| prefixes.get(n).is_some_and(|e| e.seq == *s));
        }
    }

    /// Over a limit, the least recently touched prefixes go (never the
    /// last one left, the one just touched).
    fn evict_over_limits(&mut self) {
        while (self.prefixes.len() > self.max_prefixes || self.members > self.max_members)
            && self.prefixes.len() > 1
        {
            let Some((net, seq)) = self.order.pop_front() else {
                return;
            };
            if self.prefixes.get(&net).is_some_and(|e| e.seq == seq) {
                self.remove(&net);
            }
        }
    }

    fn remove(&mut self, net: &IpNet) {
        if let Some(Entry {
            state: State::Pending(list),
            ..
        }) = self.prefixes.remove(net)
        {
            self.members -= list.len();
        }
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
