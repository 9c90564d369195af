//! The tracker's tests: threshold, window, distinct members, bounded
//! memory, expiry, never-ban vetting, extension; and the settings' checks.
use super::*;
use crate::bans::never_ban::Why;

const JAIL: &str = "freeswitch";
const MIN: i64 = 60_000;
const HOUR_NS: u64 = 3_600_000_000_000;

fn n(s: &str) -> IpNet {
    crate::addr::parse_net(s).unwrap()
}

/// This box's own bans, as a table (the real manager needs kernel maps;
/// the end-to-end test `aggregate` drives it).
#[derive(Default)]
struct Bans(HashMap<IpNet, (String, Option<u64>, String)>);

impl Bans {
    fn ban(&mut self, net: &str, jail: &str, end: Option<u64>) -> IpNet {
        let net = n(net);
        self.0
            .insert(net, (jail.to_owned(), end, "3 failures within 1m".into()));
        net
    }
}

impl OwnBans for Bans {
    fn own_ban(&self, net: &IpNet) -> Option<(&str, Option<u64>, &str)> {
        self.0
            .get(net)
            .map(|(j, e, r)| (j.as_str(), *e, r.as_str()))
    }
}

fn settings(after: u32) -> Settings {
    Settings::of(Some(after), None, None, 64, Duration::from_secs(60))
        .unwrap()
        .unwrap()
}

fn nothing_protected() -> NeverBan {
    NeverBan::from_nets(vec![])
}

/// Bans `addr` in `bans` (ending at `end`) and tells the tracker.
fn member(
    t: &mut Tracker,
    bans: &mut Bans,
    addr: &str,
    end: Option<u64>,
    now_ms: i64,
    never_ban: &NeverBan,
) -> Option<Decision> {
    let net = bans.ban(addr, JAIL, end);
    t.member_banned(net, net.addr(), now_ms, never_ban, bans)
}

#[test]
fn the_nth_distinct_member_bans_the_prefix_for_the_longest_member_ban() {
    let (mut t, mut b, nb) = (
        Tracker::new(JAIL, settings(3)),
        Bans::default(),
        nothing_protected(),
    );
    assert_eq!(
        member(&mut t, &mut b, "198.51.100.7", Some(5 * HOUR_NS), 0, &nb),
        None
    );
    // Another /24 does not count for this one.
    assert_eq!(
        member(&mut t, &mut b, "198.51.101.7", Some(HOUR_NS), 1, &nb),
        None
    );
    assert_eq!(
        member(&mut t, &mut b, "198.51.100.8", Some(HOUR_NS), 2, &nb),
        None
    );
    assert_eq!(t.len(), (2, 3));
    let d = member(&mut t, &mut b, "198.51.100.9", Some(2 * HOUR_NS), 3, &nb);
    assert_eq!(
        d,
        Some(Decision::Ban {
            prefix: n("198.51.100.0/24"),
            end: Some(5 * HOUR_NS),
            members: 3,
            reason: "aggregated from 3 members (distinct bans of this jail within 1m)".into(),
        })
    );
    assert_eq!(t.len(), (1, 1), "the banned prefix is no longer held here");
}

#[test]
fn a_permanent_member_makes_a_permanent_prefix() {
    let (mut t, mut b, nb) = (
        Tracker::new(JAIL, settings(2)),
        Bans::default(),
        nothing_protected(),
    );
    member(&mut t, &mut b, "203.0.113.1", None, 0, &nb);
    let d = member(&mut t, &mut b, "203.0.113.2", Some(HOUR_NS), 1, &nb);
    assert!(matches!(d, Some(Decision::Ban { end: None, .. })), "{d:?}");
}

#[test]
fn the_same_address_banned_again_is_one_member() {
    let (mut t, mut b, nb) = (
        Tracker::new(JAIL, settings(3)),
        Bans::default(),
        nothing_protected(),
    );
    for i in 0..10 {
        assert_eq!(
            member(&mut t, &mut b, "198.51.100.7", Some(HOUR_NS), i, &nb),
            None
        );
    }
    assert_eq!(
        member(&mut t, &mut b, "198.51.100.8", Some(HOUR_NS), 11, &nb),
        None
    );
    assert_eq!(t.len(), (1, 2));
    assert!(member(&mut t, &mut b, "198.51.100.9", Some(HOUR_NS), 12, &nb).is_some());
}

#[test]
fn members_older_than_findtime_do_not_count() {
    let (mut t, mut b, nb) = (
        Tracker::new(JAIL, settings(3)),
        Bans::default(),
        nothing_protected(),
    );
    member(&mut t, &mut b, "198.51.100.1", Some(HOUR_NS), 0, &nb);
    member(&mut t, &mut b, "198.51.100.2", Some(HOUR_NS), 10_000, &nb);
    // The first is 61 s old now: two members, not three.
    assert_eq!(
        member(
            &mut t,
            &mut b,
            "198.51.100.3",
            Some(HOUR_NS),
            MIN + 1_000,
            &nb
        ),
        None
    );
    assert_eq!(t.len(), (1, 2));
    // The second is still within a minute of this one.
    assert!(member(
        &mut t,
        &mut b,
        "198.51.100.4",
        Some(HOUR_NS),
        MIN + 5_000,
        &nb
    )
    .is_some());
}

#[test]
fn members_whose_ban_was_lifted_or_another_jails_do_not_count() {
    let (mut t, mut b, nb) = (
        Tracker::new(JAIL, settings(3)),
        Bans::default(),
        nothing_protected(),
    );
    member(&mut t, &mut b, "198.51.100.1", Some(HOUR_NS), 0, &nb);
    member(&mut t, &mut b, "198.51.100.2", Some(HOUR_NS), 1, &nb);
    // The operator lifted the first; a ban of another jail is not a member.
    b.0.remove(&n("198.51.100.1"));
    let other = b.ban("198.51.100.5", "freeswitch-flood", Some(HOUR_NS));
    assert_eq!(t.member_banned(other, other.addr(), 2, &nb, &b), None);
    assert_eq!(
        member(&mut t, &mut b, "198.51.100.3", Some(HOUR_NS), 3, &nb),
        None
    );
    assert_eq!(t.len(), (1, 2));
    assert!(member(&mut t, &mut b, "198.51.100.4", Some(HOUR_NS), 4, &nb).is_some());
}

#[test]
fn a_prefix_over_a_protected_address_is_refused_once() {
    let nb = NeverBan::from_nets(vec![(n("198.51.100.200"), Why::Gateway)]);
    let (mut t, mut b) = (Tracker::new(JAIL, settings(2)), Bans::default());
    member(&mut t, &mut b, "198.51.100.1", Some(HOUR_NS), 0, &nb);
    let d = member(&mut t, &mut b, "198.51.100.2", Some(HOUR_NS), 1, &nb);
    assert_eq!(
        d,
        Some(Decision::Refused {
            prefix: n("198.51.100.0/24"),
            members: 2,
            protected: n("198.51.100.200"),
            why: Why::Gateway,
        })
    );
    // More members: nothing more said, nothing remembered.
    for i in 3..50 {
        let a = format!("198.51.100.{i}");
        assert_eq!(member(&mut t, &mut b, &a, Some(HOUR_NS), i, &nb), None);
    }
    assert_eq!(t.len(), (1, 0));
    // Quiet for findtime: forgotten, and a new round is vetted (and said) again.
    t.expire(50 + MIN);
    assert_eq!(t.len(), (0, 0));
    member(
        &mut t,
        &mut b,
        "198.51.100.60",
        Some(HOUR_NS),
        100 + MIN,
        &nb,
    );
    let d = member(
        &mut t,
        &mut b,
        "198.51.100.61",
        Some(HOUR_NS),
        101 + MIN,
        &nb,
    );
    assert!(matches!(d, Some(Decision::Refused { .. })), "{d:?}");
}

#[test]
fn a_later_member_extends_the_prefix_ban_and_others_bans_are_left_alone() {
    let (mut t, mut b, nb) = (
        Tracker::new(JAIL, settings(2)),
        Bans::default(),
        nothing_protected(),
    );
    let prefix = n("198.51.100.0/24");
    b.0.insert(prefix, (JAIL.into(), Some(2 * HOUR_NS), reason(2, MIN)));
    // Ends before the prefix: nothing to do.
    assert_eq!(
        member(&mut t, &mut b, "198.51.100.3", Some(HOUR_NS), 0, &nb),
        None
    );
    // Ends after: the prefix is extended, one member more.
    let d = member(&mut t, &mut b, "198.51.100.4", Some(3 * HOUR_NS), 1, &nb);
    assert_eq!(
        d,
        Some(Decision::Ban {
            prefix,
            end: Some(3 * HOUR_NS),
            members: 3,
            reason: reason(3, MIN),
        })
    );
    // A protected address that came into the prefix since: not extended.
    let gateway = NeverBan::from_nets(vec![(n("198.51.100.1"), Why::Gateway)]);
    let d = member(
        &mut t,
        &mut b,
        "198.51.100.7",
        Some(4 * HOUR_NS),
        1,
        &gateway,
    );
    assert!(
        matches!(d, Some(Decision::Refused { prefix: p, .. }) if p == prefix),
        "{d:?}"
    );
    // A permanent prefix is never extended.
    b.0.insert(prefix, (JAIL.into(), None, reason(2, MIN)));
    assert_eq!(member(&mut t, &mut b, "198.51.100.5", None, 2, &nb), None);
    // The operator's ban of the prefix (or another jail's) is not touched.
    b.0.insert(prefix, ("manual".into(), Some(1), "banned by hand".into()));
    assert_eq!(member(&mut t, &mut b, "198.51.100.6", None, 3, &nb), None);
    assert_eq!(t.len(), (0, 0), "nothing is tracked for a banned prefix");
}

#[test]
fn memory_is_bounded_in_prefixes_and_members_and_forgotten_after_findtime() {
    let nb = nothing_protected();
    let mut b = Bans::default();
    let mut t = Tracker::with_limits(JAIL, settings(3), 100, 150);
    for i in 0..10_000u32 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i * 256).to_string();
        assert_eq!(
            member(&mut t, &mut b, &a, Some(HOUR_NS), i64::from(i), &nb),
            None
        );
        assert!(t.len().0 <= 100, "{:?}", t.len());
    }
    // Two members each: the member bound holds too.
    for i in 0..10_000u32 {
        let a = std::net::Ipv4Addr::from(0x0b00_0000 + i * 256 + 1).to_string();
        let c = std::net::Ipv4Addr::from(0x0b00_0000 + i * 256 + 2).to_string();
        member(&mut t, &mut b, &a, Some(HOUR_NS), 10_000, &nb);
        member(&mut t, &mut b, &c, Some(HOUR_NS), 10_000, &nb);
        assert!(t.len().1 <= 150, "{:?}", t.len());
    }
    assert!(t.order.len() <= 2 * t.prefixes.len() + 1024 + 1);
    // The most recent prefixes are the ones kept.
    assert!(!t.prefixes.contains_key(&n("11.0.0.0/24")));
    let last = std::net::Ipv4Addr::from(0x0b00_0000u32 + 9_999 * 256);
    assert!(t
        .prefixes
        .contains_key(&IpNet::new(last.into(), 24).unwrap()));
    t.expire(10_000 + MIN + 1);
    assert_eq!(t.len(), (0, 0));
    assert!(t.order.is_empty());
}

#[test]
fn ipv6_members_are_the_jails_networks() {
    let s = Settings::of(Some(2), None, None, 64, Duration::from_secs(60))
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.v4, s.v6),
        (24, 56),
        "a /64 member aggregates into its /56 (256 of them, as a /24 of addresses)"
    );
    assert_eq!(
        s.prefix_of(&n("2001:db8:1:2::/64")),
        Some(n("2001:db8:1::/56"))
    );
    assert_eq!(
        s.prefix_of(&n("10.0.0.0/24")),
        None,
        "no narrower than the prefix"
    );
    let s = Settings::of(Some(2), None, None, 128, Duration::from_secs(60))
        .unwrap()
        .unwrap();
    assert_eq!(s.v6, 64, "single addresses aggregate into their /64");
    let (mut t, mut b, nb) = (Tracker::new(JAIL, s), Bans::default(), nothing_protected());
    member(&mut t, &mut b, "2001:db8::1", Some(HOUR_NS), 0, &nb);
    let d = member(&mut t, &mut b, "2001:db8::2", Some(HOUR_NS), 1, &nb);
    assert!(
        matches!(d, Some(Decision::Ban { prefix, .. }) if prefix == n("2001:db8::/64")),
        "{d:?}"
    );
}

#[test]
fn settings_are_checked_with_reasons() {
    let of = |after, v4, v6, p| Settings::of(after, v4, v6, p, Duration::from_secs(60));
    assert_eq!(of(None, None, None, 64), Ok(None));
    let s = of(Some(3), Some(16), Some(40), 56).unwrap().unwrap();
    assert_eq!((s.after, s.v4, s.v6, s.findtime_ms), (3, 16, 40, MIN));
    for (bad, says) in [
        (of(None, Some(24), None, 64), "need `aggregate_after`"),
        (of(Some(1), None, None, 64), "2 to 256"),
        (of(Some(257), None, None, 64), "2 to 256"),
        (
            of(Some(3), Some(15), None, 64),
            "`aggregate_v4` must be 16 to 31",
        ),
        (
            of(Some(3), Some(32), None, 64),
            "`aggregate_v4` must be 16 to 31",
        ),
        (of(Some(3), None, Some(64), 64), "`ipv6_prefix` = 64"),
        (
            of(Some(3), None, Some(31), 128),
            "`aggregate_v6` must be 32 to 127",
        ),
        (of(Some(3), Some(31), None, 64), "a /31 holds only 2"),
        (of(Some(3), None, Some(63), 64), "a /63 holds only 2"),
        (
            of(Some(3), None, Some(48), 48),
            "`aggregate_v6` must be 32 to 47, not 48",
        ),
    ] {
        let e = bad.unwrap_err();
        assert!(e.contains(says), "{e} (wanted {says})");
    }
}

#[test]
fn the_reason_carries_the_member_count() {
    assert_eq!(members(&reason(7, MIN)), Some(7));
    assert_eq!(members("3 failures within 1m"), None);
    assert_eq!(members("aggregated from many members"), None);
    assert_eq!(members("aggregated from 3 memories"), None);
}

/// What a jail's (new) settings would make: its widths, enough members.
#[test]
fn would_make_follows_width_and_members() {
    let s = Settings::of(Some(3), None, None, 64, Duration::from_secs(60))
        .unwrap()
        .unwrap();
    let v4: IpNet = "198.51.100.0/24".parse().unwrap();
    let v6: IpNet = "2001:db8:6::/56".parse().unwrap();
    assert!(would_make(Some(&s), &v4, 3));
    assert!(would_make(Some(&s), &v6, 4));
    assert!(!would_make(Some(&s), &v4, 2), "fewer members than after");
    assert!(!would_make(None, &v4, 3), "aggregation off");
    let wider = Settings::of(Some(3), Some(20), Some(48), 64, Duration::from_secs(60))
        .unwrap()
        .unwrap();
    assert!(!would_make(Some(&wider), &v4, 3));
    assert!(!would_make(Some(&wider), &v6, 3));
    assert!(would_make(
        Some(&wider),
        &"198.48.0.0/20".parse().unwrap(),
        3
    ));
}
