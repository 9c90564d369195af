//! Room for bans from elsewhere (`[fleet]`): anyone who can write to a
//! shared engine (a Redis other apps use, a CrowdSec LAPI) can hand in a
//! list. Each origin, and all of them together, may hold only so many bans
//! and so much address space, no ban wider than a /16 (IPv4) or a /32
//! (IPv6), so that a feed can neither fill the kernel maps (log-driven and
//! manual bans always keep room) nor ban the Internet.
//!
//! Address space is counted in addresses for IPv4 and in /64s for IPv6 (a
//! narrower IPv6 ban counts as one /64: the unit a host gets).
use ipnet::IpNet;
use std::{
    collections::HashMap,
    fmt,
    time::{Duration, Instant},
};

/// How much one origin, or all together, may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub bans: u64,
    pub ipv4_addresses: u64,
    pub ipv6_64s: u64,
}

/// The caps on remote bans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// The widest prefix a remote ban may have, per family.
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    pub per_origin: Limits,
    /// All remote origins together (each network counted once).
    pub all: Limits,
}

/// A /16's addresses, and a /32's /64s.
const V4_16: u64 = 1 << 16;
const V6_32: u64 = 1 << 32;

impl Default for Caps {
    /// A CrowdSec community list (tens of thousands of addresses) fits in
    /// one origin; all origins together take at most half of the kernel
    /// map, the other half is left to this box's own bans.
    fn default() -> Self {
        Self {
            min_prefix_v4: 16,
            min_prefix_v6: 32,
            per_origin: Limits {
                bans: 200_000,
                ipv4_addresses: 8 * V4_16,
                ipv6_64s: V6_32,
            },
            all: Limits {
                bans: u64::from(common::MAX_BANS) / 2,
                ipv4_addresses: 64 * V4_16,
                ipv6_64s: 16 * V6_32,
            },
        }
    }
}

/// Why a remote ban was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// In the never-ban set (checked by the daemon, counted here).
    NeverBan,
    /// Wider than the widest prefix allowed.
    Width,
    /// The origin holds its most bans.
    Bans,
    /// The origin holds its most address space.
    Space,
    /// All remote origins together hold their most bans.
    AllBans,
    /// All remote origins together hold their most address space.
    AllSpace,
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Over::NeverBan => "in the never-ban set",
            Over::Width => "wider than the widest prefix allowed",
            Over::Bans => "over the origin's cap on bans",
            Over::Space => "over the origin's cap on address space",
            Over::AllBans => "over the cap on all remote bans",
            Over::AllSpace => "over the cap on all remote address space",
        })
    }
}

/// Origins with series of their own in the metrics, and entries of their
/// own in `status`; the rest are summed as `OTHER`.
pub const METRIC_ORIGINS: usize = 20;
pub const STATUS_ORIGINS: usize = 100;

/// 0 for IPv4, 1 for IPv6.
pub fn family(net: &IpNet) -> usize {
    usize::from(!net.addr().is_ipv4())
}

/// `net`'s address space: addresses (IPv4), /64s (IPv6).
pub fn space(net: &IpNet) -> u64 {
    let bits = match net {
        IpNet::V4(n) => 32 - u32::from(n.prefix_len()),
        IpNet::V6(n) => 64 - u32::from(n.prefix_len().min(64)),
    };
    1u64.checked_shl(bits).unwrap_or(u64::MAX)
}

/// Bans and address space held, per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub bans: [u64; 2],
    pub space: [u64; 2],
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Self) {
        for f in 0..2 {
            self.bans[f] += o.bans[f];
            self.space[f] = self.space[f].saturating_add(o.space[f]);
        }
    }
}

/// An origin as `status` shows it: what it holds, what it was refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginStatus {
    pub held: Tally,
    pub never_ban: u64,
    pub over_cap: u64,
}

impl OriginStatus {
    pub fn weight(&self) -> u64 {
        self.held.total() + self.never_ban + self.over_cap
    }
}

impl std::ops::AddAssign for OriginStatus {
    fn add_assign(&mut self, o: Self) {
        self.held += o.held;
        self.never_ban += o.never_ban;
        self.over_cap += o.over_cap;
    }
}

impl Tally {
    pub fn add(&mut self, net: &IpNet) {
        let f = family(net);
        self.bans[f] += 1;
        self.space[f] = self.space[f].saturating_add(space(net));
    }

    pub fn sub(&mut self, net: &IpNet) {
        let f = family(net);
        self.bans[f] = self.bans[f].saturating_sub(1);
        self.space[f] = self.space[f].saturating_sub(space(net));
    }

    pub fn total(&self) -> u64 {
        self.bans[0] + self.bans[1]
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Whether one more ban of `net` stays within `limits`: `Err(true)`
    /// over the count, `Err(false)` over the address space.
    fn fits(&self, net: &IpNet, limits: &Limits) -> Result<(), bool> {
        if self.total() >= limits.bans {
            return Err(true);
        }
        let f = family(net);
        let max = [limits.ipv4_addresses, limits.ipv6_64s][f];
        if self.space[f].saturating_add(space(net)) > max {
            return Err(false);
        }
        Ok(())
    }
}

impl Caps {
    /// Whether `net` is no wider than a remote ban may be.
    pub fn narrow_enough(&self, net: &IpNet) -> Result<(), Over> {
        let widest = [self.min_prefix_v4, self.min_prefix_v6][family(net)];
        if net.prefix_len() < widest {
            return Err(Over::Width);
        }
        Ok(())
    }

    /// Whether a new ban of `net` by an origin holding `origin`, while all
    /// origins hold `all`, is allowed. `net_is_new`: no origin bans `net`
    /// yet (it takes no new room overall otherwise).
    pub fn admit(
        &self,
        net: &IpNet,
        origin: &Tally,
        all: &Tally,
        net_is_new: bool,
    ) -> Result<(), Over> {
        self.narrow_enough(net)?;
        origin
            .fits(net, &self.per_origin)
            .map_err(|count| if count { Over::Bans } else { Over::Space })?;
        if net_is_new {
            all.fits(net, &self.all)
                .map_err(|count| if count { Over::AllBans } else { Over::AllSpace })?;
        }
        Ok(())
    }
}

/// How often an origin's refusals are told in the log, at most.
const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Origins whose refusals are counted under their own name; the rest (a
/// shared Redis can name thousands of nodes) under `OTHER`.
pub const TRACKED_ORIGINS: usize = 64;
/// Where refusals and labels of origins beyond the bound go.
pub const OTHER: &str = "other";

/// Refusals of one origin.
#[derive(Clone, Debug, Default)]
pub struct Refusals {
    /// Never-ban refusals, and every other refusal (caps), since start.
    pub never_ban: u64,
    pub over_cap: u64,
    unlogged: u64,
    logged: Option<Instant>,
}

/// Refused remote bans, by origin (bounded), each told in the log at most
/// once a minute with how many since its last line.
#[derive(Debug, Default)]
pub struct Refused {
    by_origin: HashMap<String, Refusals>,
}

impl Refused {
    /// Counts a refusal of `net` from `origin` for `why`; logs it unless
    /// the origin's last line is under a minute old.
    pub fn count(&mut self, origin: &str, net: &IpNet, why: Over, detail: &str, now: Instant) {
        let key = if self.by_origin.contains_key(origin) || self.by_origin.len() < TRACKED_ORIGINS {
            origin
        } else {
            OTHER
        };
        let r = self.by_origin.entry(key.to_owned()).or_default();
        match why {
            Over::NeverBan => r.never_ban += 1,
            _ => r.over_cap += 1,
        }
        r.unlogged += 1;
        if r.logged
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            "[{}] refused to ban {}: {why}{detail}; {} refused since the last notice (told at most once a minute)",
            crate::text::escape(crate::text::bounded(key, 128)),
            crate::addr::display(net),
            r.unlogged
        );
        r.unlogged = 0;
        r.logged = Some(now);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Refusals)> {
        self.by_origin.iter().map(|(o, r)| (o.as_str(), r))
    }

    pub fn get(&self, origin: &str) -> Option<&Refusals> {
        self.by_origin.get(origin)
    }
}

/// The `n` largest of `items` by weight under their own name, the rest
/// summed under `OTHER` (metric labels and status keys from remote data
/// stay bounded). O(items log items), items being origins, not bans.
pub fn top<T: Copy + Default + std::ops::AddAssign>(
    mut items: Vec<(&str, T)>,
    n: usize,
    weight: impl Fn(&T) -> u64,
) -> Vec<(String, T)> {
    items.sort_by(|a, b| weight(&b.1).cmp(&weight(&a.1)).then(a.0.cmp(b.0)));
    let mut out: Vec<(String, T)> = Vec::with_capacity(n + 1);
    let mut other: Option<T> = None;
    for (i, (name, t)) in items.into_iter().enumerate() {
        if i < n && name != OTHER {
            out.push((name.to_owned(), t));
        } else {
            *other.get_or_insert_with(T::default) += t;
        }
    }
    if let Some(t) = other {
        out.push((OTHER.to_owned(), t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        crate::addr::parse_net(s).unwrap()
    }

    fn caps(bans: u64, v4: u64, all_bans: u64, all_v4: u64) -> Caps {
        Caps {
            per_origin: Limits {
                bans,
                ipv4_addresses: v4,
                ipv6_64s: 1 << 20,
            },
            all: Limits {
                bans: all_bans,
                ipv4_addresses: all_v4,
                ipv6_64s: 1 << 30,
            },
            ..Caps::default()
        }
    }

    #[test]
    fn space_is_addresses_for_ipv4_and_64s_for_ipv6() {
        assert_eq!(space(&n("192.0.2.1")), 1);
        assert_eq!(space(&n("10.0.0.0/16")), 65_536);
        assert_eq!(space(&n("0.0.0.0/0")), 1 << 32);
        assert_eq!(space(&n("2001:db8::1")), 1);
        assert_eq!(space(&n("2001:db8::/64")), 1);
        assert_eq!(space(&n("2001:db8::/48")), 65_536);
        assert_eq!(space(&n("::/0")), u64::MAX);
    }

    #[test]
    fn too_wide_is_refused_whatever_the_room() {
        let c = Caps::default();
        let none = Tally::default();
        assert_eq!(
            c.admit(&n("10.0.0.0/8"), &none, &none, true),
            Err(Over::Width)
        );
        assert_eq!(
            c.admit(&n("10.0.0.0/15"), &none, &none, true),
            Err(Over::Width)
        );
        assert_eq!(c.admit(&n("10.0.0.0/16"), &none, &none, true), Ok(()));
        assert_eq!(
            c.admit(&n("2001:db8::/31"), &none, &none, true),
            Err(Over::Width)
        );
        assert_eq!(c.admit(&n("2001:db8::/32"), &none, &none, true), Ok(()));
    }

    #[test]
    fn count_and_space_caps_per_origin_and_overall() {
        let c = caps(3, 1000, 5, 1 << 20);
        let mut origin = Tally::default();
        let all = Tally::default();
        for i in 0..3 {
            let net = n(&format!("192.0.2.{i}"));
            assert_eq!(c.admit(&net, &origin, &all, true), Ok(()));
            origin.add(&net);
        }
        assert_eq!(
            c.admit(&n("192.0.2.9"), &origin, &all, true),
            Err(Over::Bans)
        );
        // Space: three /24s (768) fit, a fourth not (1000 addresses).
        let c = caps(10, 1000, 5, 1 << 20);
        let mut origin = Tally::default();
        origin.add(&n("198.51.100.0/24"));
        origin.add(&n("198.51.101.0/24"));
        origin.add(&n("198.51.102.0/24"));
        assert_eq!(
            c.admit(&n("198.51.103.0/24"), &origin, &all, true),
            Err(Over::Space)
        );
        assert_eq!(c.admit(&n("198.51.103.1"), &origin, &all, true), Ok(()));
        // IPv6 space is its own.
        assert_eq!(c.admit(&n("2001:db8::/48"), &origin, &all, true), Ok(()));
        // Overall: full of bans, a new network is refused, one another
        // origin already bans is not (it takes no new room).
        let mut all = Tally::default();
        for i in 0..5 {
            all.add(&n(&format!("203.0.113.{i}")));
        }
        let fresh = Tally::default();
        assert_eq!(
            c.admit(&n("203.0.113.9"), &fresh, &all, true),
            Err(Over::AllBans)
        );
        assert_eq!(c.admit(&n("203.0.113.1"), &fresh, &all, false), Ok(()));
        let c = caps(10, 1 << 20, 10, 300);
        let mut all = Tally::default();
        all.add(&n("203.0.113.0/24"));
        assert_eq!(
            c.admit(&n("198.51.100.0/25"), &fresh, &all, true),
            Err(Over::AllSpace)
        );
    }

    #[test]
    fn refusals_are_counted_per_origin_up_to_a_bound() {
        let mut r = Refused::default();
        let now = Instant::now();
        let net = n("10.0.0.0/8");
        for i in 0..TRACKED_ORIGINS + 50 {
            r.count(&format!("redis:n{i}"), &net, Over::Width, "", now);
        }
        r.count("redis:n0", &net, Over::NeverBan, "", now);
        assert_eq!(r.iter().count(), TRACKED_ORIGINS + 1);
        assert_eq!(r.get(OTHER).unwrap().over_cap, 50);
        let first = r.get("redis:n0").unwrap();
        assert_eq!((first.over_cap, first.never_ban), (1, 1));
        // One line at once, then quiet for a minute, counting.
        assert_eq!(first.unlogged, 1, "the second refusal waits");
        r.count(
            "redis:n1",
            &net,
            Over::Bans,
            "",
            now + Duration::from_secs(1),
        );
        assert_eq!(r.get("redis:n1").unwrap().unlogged, 1);
        r.count(
            "redis:n1",
            &net,
            Over::Bans,
            "",
            now + Duration::from_secs(61),
        );
        assert_eq!(r.get("redis:n1").unwrap().unlogged, 0);
    }

    #[test]
    fn top_keeps_the_largest_and_sums_the_rest() {
        let items = vec![("a", 5u64), ("b", 50), ("c", 1), ("d", 7), (OTHER, 2)];
        let t = top(items, 2, |n| *n);
        assert_eq!(
            t,
            [
                ("b".to_owned(), 50),
                ("d".to_owned(), 7),
                (OTHER.to_owned(), 8)
            ]
        );
        assert!(top(vec![("a", 1u64)], 2, |n| *n).len() == 1);
    }
}
