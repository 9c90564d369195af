//! Trusted sources and overload shedding in the kernel, through
//! BPF_PROG_TEST_RUN: a trusted source gets its own (higher) budget and is
//! still limited over it; overload holds untrusted sources to the overload
//! budget without escalating them while trusted sources keep theirs; an
//! expired trust entry is ignored; a ban still drops a trusted source.
use anyhow::Result;
use common::{counter, rate_key_v4, rate_key_v6, Config, TrustConfig, TrustEntry, TRUST_OPERATOR};
use sipguard::{addr::parse_net, kernel::clock, kernel::maps, kernel::trust::TrustMaps};
use sipguard_tests::{kernel::TestProgram, packet::*};

const PASS: u32 = 2;
const DROP: u32 = 1;
// Slow rates: a test preempted for a moment gets no token back between
// its packets. Normal: 1/s, burst 5 (5 s of credit); trusted: 2/s, burst
// 20 (10 s); overload: 1/s, burst 2 (2 s).
const RATE: u32 = 1;
const BURST: u32 = 5;
const TRUSTED: (u32, u32) = (2, 20);
const UNTRUSTED: (u32, u32) = (1, 2);

const PHONE: [u8; 4] = [192, 0, 2, 10];
const STRANGER: [u8; 4] = [192, 0, 2, 11];
const V6PHONE: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xa];

struct Setup {
    t: TestProgram,
    trust: TrustMaps,
}

fn setup(escalate_secs: u32) -> Result<Setup> {
    let mut t = TestProgram::load()?;
    let mut cfg = Config::default().with_rate(RATE, BURST);
    cfg.escalate_secs = escalate_secs;
    cfg.escalate_window_secs = 60;
    t.maps.set_config(cfg)?;
    let mut trust = TrustMaps::open(t.pin())?;
    trust.set_config(TrustConfig::new(TRUSTED, UNTRUSTED))?;
    Ok(Setup { t, trust })
}

fn trust(s: &mut Setup, key: [u8; 16], expires_at_ns: u64) -> Result<()> {
    s.trust.trust(
        key,
        TrustEntry {
            expires_at_ns,
            trusted_at_ns: clock::mono_now_ns(),
            origin: TRUST_OPERATOR,
            _pad: 0,
        },
    )
}

/// Sends `frame` `n` times; returns how many passed.
fn passed(t: &mut TestProgram, frame: &[u8], n: usize) -> Result<usize> {
    let mut ok = 0;
    for _ in 0..n {
        if t.run(frame)? == PASS {
            ok += 1;
        }
    }
    Ok(ok)
}

fn moved(before: &[common::Counter], after: &[common::Counter], i: u32) -> u64 {
    after[i as usize].packets - before[i as usize].packets
}

#[test]
fn a_trusted_source_gets_its_own_budget_and_is_limited_over_it() -> Result<()> {
    let mut s = setup(0)?;
    trust(&mut s, rate_key_v4(PHONE), 0)?;
    let before = s.t.counters()?;
    // The normal budget (1 + 5), then from 6 s ahead up to 10 s ahead at
    // 0.5 s a packet (9 more): 15 of 50.
    assert_eq!(passed(&mut s.t, &udp4(PHONE, 5060), 50)?, 15);
    let after = s.t.counters()?;
    assert_eq!(moved(&before, &after, counter::PASS_NOT_BANNED), 6);
    assert_eq!(moved(&before, &after, counter::PASS_TRUSTED), 9);
    assert_eq!(moved(&before, &after, counter::DROP_RATE_LIMITED), 35);
    // An untrusted source keeps the normal budget.
    assert_eq!(passed(&mut s.t, &udp4(STRANGER, 5060), 50)?, 6);
    // IPv6: trust is keyed like the limiter keys sources, by /64.
    trust(&mut s, rate_key_v6(V6PHONE), 0)?;
    let mut other_in_64 = V6PHONE;
    other_in_64[15] = 0xb;
    assert_eq!(passed(&mut s.t, &udp6(other_in_64, 5060), 50)?, 15);
    Ok(())
}

#[test]
fn a_trusted_source_over_its_own_budget_is_limited_but_never_reported() -> Result<()> {
    let mut s = setup(1)?;
    let mut ring = maps::flood_events(s.t.pin())?;
    trust(&mut s, rate_key_v4(PHONE), 0)?;
    assert_eq!(passed(&mut s.t, &udp4(PHONE, 5060), 30)?, 15);
    // Packet evidence never bans a trusted source: a forger sending as a
    // registered phone would get it banned. (Log bans still do.)
    assert!(ring.next().is_none(), "a trusted source is not reported");
    // An untrusted one over its budget is, as before.
    assert_eq!(passed(&mut s.t, &udp4(STRANGER, 5060), 30)?, 6);
    let event = ring
        .next()
        .map(|e| maps::flood_event(&e).expect("a whole event"));
    assert_eq!(event.map(|e| e.key), Some(rate_key_v4(STRANGER)));
    Ok(())
}

#[test]
fn overload_sheds_untrusted_sources_and_trusted_keep_their_budget() -> Result<()> {
    let mut s = setup(1)?;
    let mut ring = maps::flood_events(s.t.pin())?;
    trust(&mut s, rate_key_v4(PHONE), 0)?;
    s.trust.set_overloaded(true)?;
    let before = s.t.counters()?;
    // Untrusted: the overload budget (1 + 2).
    assert_eq!(passed(&mut s.t, &udp4(STRANGER, 5060), 20)?, 3);
    let after = s.t.counters()?;
    assert_eq!(moved(&before, &after, counter::DROP_SHED), 17);
    assert_eq!(moved(&before, &after, counter::DROP_RATE_LIMITED), 0);
    assert!(
        ring.next().is_none(),
        "nothing is reported (banned) for being shed"
    );
    // Trusted: the overload budget first (3, to 3 s ahead), then the
    // trusted one from 3 s to 10 s ahead at 0.5 s a packet (15): 18.
    assert_eq!(passed(&mut s.t, &udp4(PHONE, 5060), 50)?, 18);
    // The sum over CPUs of packets through the limiter.
    assert_eq!(s.trust.sip_packets()?, 70);
    // Leaving overload restores the normal budget: a new source gets 6.
    s.trust.set_overloaded(false)?;
    assert_eq!(s.t.maps.config()?.flags & common::CONFIG_OVERLOADED, 0);
    assert_eq!(passed(&mut s.t, &udp4([192, 0, 2, 12], 5060), 20)?, 6);
    // Packets a lease served are counted too (when it was granted).
    assert_eq!(s.trust.sip_packets()?, 90);
    Ok(())
}

/// With bursts large enough for leases (a CPU takes 1/64 of a burst at
/// once): an untrusted source's normal-tier tokens leased before an
/// overload are not spent during it (it is held to the overload budget at
/// once), while a trusted source's tokens are leased at its own tier and
/// never give it more than that budget.
#[test]
fn leases_never_carry_a_tier_across_an_overload() -> Result<()> {
    let mut t = TestProgram::load()?;
    // Normal 1/s burst 640 (leases of 10), trusted 1/s burst 1280 (20),
    // overload 1/s burst 2; rates of 1/s: no token comes back in a test.
    let cfg = Config::default().with_rate(1, 640);
    t.maps.set_config(cfg)?;
    let mut maps = TrustMaps::open(t.pin())?;
    maps.set_config(TrustConfig::new((1, 1280), (1, 2)))?;
    let mut s = Setup { t, trust: maps };
    trust(&mut s, rate_key_v4(PHONE), 0)?;
    // A lease taken at the normal tier, then the overload.
    assert_eq!(passed(&mut s.t, &udp4(STRANGER, 5060), 5)?, 5);
    s.trust.set_overloaded(true)?;
    let before = s.t.counters()?;
    // The normal budget is spent up to 5 s ahead (burst 2 at 1/s is 2 s):
    // over the overload budget at once, lease or not.
    assert_eq!(passed(&mut s.t, &udp4(STRANGER, 5060), 20)?, 0);
    assert_eq!(moved(&before, &s.t.counters()?, counter::DROP_SHED), 20);
    // The trusted source: the overload budget (3), then its own tier up
    // to 1280 s ahead, leased 20 at a time: exactly its budget.
    let before = s.t.counters()?;
    let got = passed(&mut s.t, &udp4(PHONE, 5060), 2000)?;
    assert_eq!(got, 1281 + common::SKETCH_ADMIT as usize, "{got}");
    // Leased or not, the trusted tier's passes say so; the rest were the
    // first stage's and the overload budget's.
    let trusted = moved(&before, &s.t.counters()?, counter::PASS_TRUSTED) as usize;
    assert_eq!(trusted, got - 3 - common::SKETCH_ADMIT as usize);
    Ok(())
}

/// The flag holds only while the daemon renews it: a daemon stopped or
/// killed during an overload leaves nobody shed.
#[test]
fn an_overload_nobody_renews_lapses() -> Result<()> {
    let mut s = setup(1)?;
    s.trust.set_overloaded(true)?;
    let mut c = s.trust.config()?;
    c.overload_until_ns = 1; // long past
    s.trust.set_config(c)?;
    assert_ne!(s.t.maps.config()?.flags & common::CONFIG_OVERLOADED, 0);
    let before = s.t.counters()?;
    assert_eq!(
        passed(&mut s.t, &udp4(STRANGER, 5060), 20)?,
        6,
        "the normal budget"
    );
    let after = s.t.counters()?;
    assert_eq!(moved(&before, &after, counter::DROP_SHED), 0);
    // Renewed: in force again.
    s.trust.renew_overload(true)?;
    assert_eq!(passed(&mut s.t, &udp4([192, 0, 2, 13], 5060), 20)?, 3);
    Ok(())
}

#[test]
fn an_expired_trust_entry_is_ignored() -> Result<()> {
    let mut s = setup(0)?;
    let now = clock::mono_now_ns();
    trust(&mut s, rate_key_v4(PHONE), now - 1_000_000_000)?;
    let before = s.t.counters()?;
    assert_eq!(passed(&mut s.t, &udp4(PHONE, 5060), 30)?, 6);
    let after = s.t.counters()?;
    assert_eq!(moved(&before, &after, counter::PASS_TRUSTED), 0);
    // A live one (ending in an hour) counts.
    trust(&mut s, rate_key_v4(STRANGER), now + 3_600_000_000_000)?;
    assert_eq!(passed(&mut s.t, &udp4(STRANGER, 5060), 30)?, 15);
    Ok(())
}

#[test]
fn a_banned_trusted_source_is_dropped() -> Result<()> {
    let mut s = setup(0)?;
    trust(&mut s, rate_key_v4(PHONE), 0)?;
    let now = clock::mono_now_ns();
    s.t.maps.ban(parse_net("192.0.2.10")?, 0, 0, now)?;
    let before = s.t.counters()?;
    assert_eq!(s.t.run(&udp4(PHONE, 5060))?, DROP);
    let after = s.t.counters()?;
    assert_eq!(moved(&before, &after, counter::DROP_BANNED), 1);
    Ok(())
}

#[test]
fn trust_maps_list_and_remove_entries() -> Result<()> {
    let mut s = setup(0)?;
    trust(&mut s, rate_key_v4(PHONE), 0)?;
    trust(&mut s, rate_key_v6(V6PHONE), 0)?;
    let mut nets: Vec<_> = s
        .trust
        .entries()?
        .iter()
        .map(|(k, _)| sipguard::kernel::trust::trust_net(k))
        .collect();
    nets.sort();
    assert_eq!(
        nets,
        vec![parse_net("192.0.2.10")?, parse_net("2001:db8:1:2::/64")?]
    );
    assert!(s.trust.untrust(&rate_key_v4(PHONE))?);
    assert!(!s.trust.untrust(&rate_key_v4(PHONE))?);
    assert_eq!(s.trust.entries()?.len(), 1);
    Ok(())
}
