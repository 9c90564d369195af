//! The XDP rate limiter in the kernel, through BPF_PROG_TEST_RUN: burst
//! behaviour, IPv4 and IPv6 /64 sources, the allowlist, unprotected ports,
//! runtime changes, and escalation through the ring buffer.
use anyhow::Result;
use common::{counter, rate_key_v4, rate_key_v6, Config, SKETCH_ADMIT};
use sipguard::{addr::parse_net, kernel::clock, kernel::maps};
use sipguard_tests::{kernel::TestProgram, packet::*};

const PASS: u32 = 2;
const DROP: u32 = 1;
// One packet per second: even a test preempted for a long moment on a busy
// machine gets no token back between its packets.
const RATE: u32 = 1;
const BURST: u32 = 5;

const SRC: [u8; 4] = [192, 0, 2, 10];
const OTHER: [u8; 4] = [192, 0, 2, 11];
const V6A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xa];
const V6B: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0xff, 0xff, 0, 0, 0, 0, 0, 0xb,
]; // same /64
const V6C: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0xc]; // other /64

fn limited(escalate_secs: u32) -> Result<TestProgram> {
    let mut t = TestProgram::load()?;
    let mut cfg = Config::default().with_rate(RATE, BURST);
    cfg.escalate_secs = escalate_secs;
    cfg.escalate_window_secs = 60;
    t.maps.set_config(cfg)?;
    Ok(t)
}

#[test]
fn a_source_gets_its_burst_then_is_limited() -> Result<()> {
    let mut t = limited(0)?;
    let before = t.counters()?;
    assert_eq!(
        t.passed(&udp4(SRC, 5060), 50)?,
        BURST as usize + 1,
        "burst + the packet that opens it"
    );
    let after = t.counters()?;
    let moved = |i: u32| after[i as usize].packets - before[i as usize].packets;
    assert_eq!(moved(counter::PASS_NOT_BANNED), 6);
    assert_eq!(moved(counter::DROP_RATE_LIMITED), 44);
    // TCP to a protected port shares the same budget; other sources have their own.
    assert_eq!(t.run(&tcp4(SRC, 7443))?, DROP);
    assert_eq!(t.passed(&udp4(OTHER, 5060), 10)?, 6);
    // Unprotected ports are never limited.
    assert_eq!(t.passed(&udp4(SRC, 53), 20)?, 20);
    let state = t.maps.rate_states()?;
    let st = state
        .iter()
        .find(|(n, _, _)| *n == parse_net("192.0.2.10").unwrap())
        .map(|(_, _, limited)| *limited)
        .unwrap();
    assert_eq!(st, 45, "counted per CPU, summed");
    Ok(())
}

#[test]
fn ipv6_sources_share_a_budget_per_64() -> Result<()> {
    let mut t = limited(0)?;
    assert_eq!(t.passed(&udp6(V6A, 5060), 3)?, 3);
    assert_eq!(
        t.passed(&udp6(V6B, 5060), 10)?,
        3,
        "the rest of the /64's burst"
    );
    assert_eq!(t.passed(&udp6(V6A, 5060), 5)?, 0);
    assert_eq!(
        t.passed(&udp6(V6C, 5060), 10)?,
        6,
        "another /64 is another source"
    );
    assert!(t
        .maps
        .rate_states()?
        .iter()
        .any(|(n, _, _)| *n == parse_net("2001:db8:1:2::/64").unwrap()));
    Ok(())
}

#[test]
fn allow_listed_sources_are_never_limited() -> Result<()> {
    let mut t = limited(0)?;
    t.maps.allow(parse_net("192.0.2.0/28")?)?;
    let before = t.counters()?;
    assert_eq!(t.passed(&udp4(SRC, 5060), 50)?, 50);
    let after = t.counters()?;
    let moved = |i: u32| after[i as usize].packets - before[i as usize].packets;
    assert_eq!(
        (
            moved(counter::PASS_NOT_BANNED),
            moved(counter::PASS_RATE_ALLOWLISTED)
        ),
        (6, 44)
    );
    Ok(())
}

#[test]
fn rate_changes_take_effect_without_reloading() -> Result<()> {
    let mut t = limited(0)?;
    assert_eq!(t.passed(&udp4(SRC, 5060), 20)?, 6);
    // Off: nothing is limited.
    t.maps.set_config(Config::default())?;
    assert_eq!(t.passed(&udp4(SRC, 5060), 100)?, 100);
    // A generous limit: a new source passes a big burst.
    t.maps.set_config(Config::default().with_rate(1000, 500))?;
    assert_eq!(t.passed(&udp4(OTHER, 5060), 400)?, 400);
    Ok(())
}

#[test]
fn expired_bans_are_still_rate_limited_and_bans_come_first() -> Result<()> {
    let mut t = limited(0)?;
    let now = clock::mono_now_ns();
    t.maps
        .ban(parse_net("192.0.2.10")?, now - 1_000_000_000, 0, now)?;
    let before = t.counters()?;
    assert_eq!(t.passed(&udp4(SRC, 5060), 10)?, 6);
    let after = t.counters()?;
    assert_eq!(
        after[counter::PASS_BAN_EXPIRED as usize].packets
            - before[counter::PASS_BAN_EXPIRED as usize].packets,
        6
    );
    // A banned source is dropped by its ban, not counted by the limiter.
    t.maps.ban(parse_net("192.0.2.11")?, 0, 0, now)?;
    let before = t.counters()?;
    assert_eq!(t.passed(&udp4(OTHER, 5060), 10)?, 0);
    let after = t.counters()?;
    assert_eq!(
        after[counter::DROP_BANNED as usize].packets
            - before[counter::DROP_BANNED as usize].packets,
        10
    );
    assert!(t
        .maps
        .rate_states()?
        .iter()
        .all(|(n, _, _)| *n != parse_net("192.0.2.11").unwrap()));
    Ok(())
}

#[test]
fn a_source_over_its_limit_is_reported_once() -> Result<()> {
    let mut t = limited(1)?;
    let mut ring = maps::flood_events(t.pin())?;
    assert_eq!(t.passed(&udp4(SRC, 5060), 30)?, 6);
    assert_eq!(t.passed(&udp6(V6A, 5060), 30)?, 6);
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(maps::flood_event(&item).expect("a whole event"));
    }
    assert_eq!(
        events.len(),
        2,
        "one report per source, not per packet: {events:?}"
    );
    assert_eq!(events[0].key, rate_key_v4(SRC));
    assert_eq!(events[0].over_secs, 1);
    assert!(events[0].limited >= 1);
    assert_eq!(events[1].key, rate_key_v6(V6A));
    assert_eq!(
        maps::rate_key_net(&events[1].key),
        parse_net("2001:db8:1:2::/64")?
    );
    // Never escalating when escalation is off.
    let mut t = limited(0)?;
    let mut ring = maps::flood_events(t.pin())?;
    assert_eq!(t.passed(&udp4(SRC, 5060), 30)?, 6);
    assert!(ring.next().is_none());
    Ok(())
}

/// With a burst large enough for leases (here 640: a CPU takes 10 tokens at
/// once), a source still gets exactly its burst + 1 on one CPU, plus what
/// the first stage let through before it had state (`SKETCH_ADMIT`, or
/// twice that across a window's edge), and on two CPUs at once at most one
/// lease and the first stage's packets per CPU more.
#[test]
fn leased_tokens_keep_the_budget_exact() -> Result<()> {
    use sipguard_tests::kernel::test_run_on;
    let mut t = TestProgram::load()?;
    let cfg = Config::default().with_rate(1, 640);
    assert_eq!(cfg.lease, 10);
    t.maps.set_config(cfg)?;
    let fd = t.prog_fd()?;
    let f = udp4(SRC, 5060);
    let passed = std::thread::spawn(move || -> Result<usize> {
        let mut n = 0;
        for _ in 0..1000 {
            if test_run_on(0, fd, &f, 1)?.0 == PASS {
                n += 1;
            }
        }
        Ok(n)
    })
    .join()
    .expect("run thread")?;
    let first = SKETCH_ADMIT as usize;
    assert!(
        (641 + first..=641 + 2 * first).contains(&passed),
        "burst + the packet that opens it + the first stage's: {passed}"
    );

    let f = udp4(OTHER, 5060);
    let cpus = std::thread::available_parallelism()?.get().min(4);
    let per_cpu: Vec<usize> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..cpus)
            .map(|cpu| {
                let f = f.clone();
                scope.spawn(move || -> Result<usize> {
                    let mut n = 0;
                    for _ in 0..1000 {
                        if test_run_on(cpu, fd, &f, 1)?.0 == PASS {
                            n += 1;
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("run thread"))
            .collect::<Result<_>>()
    })?;
    let total: usize = per_cpu.iter().sum();
    assert!(
        total <= 641 + cpus * (10 + 2 * first) && total >= 641 - cpus * 10,
        "{total} passed on {cpus} CPUs ({per_cpu:?})"
    );
    Ok(())
}

/// Two sources whose leases share a slot (a burst of 640 leases 10 tokens
/// at a time), sending in turn: a live lease is never overwritten, so
/// neither loses tokens to the other; each passes exactly its budget.
#[test]
fn sources_sharing_a_lease_slot_keep_their_budgets() -> Result<()> {
    let (a, b) = sipguard_tests::kernel::colliding_leases(None);
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config::default().with_rate(1, 640))?;
    let (fa, fb) = (udp4(a, 5060), udp4(b, 5060));
    let (mut pa, mut pb) = (0, 0);
    for _ in 0..1000 {
        pa += t.passed(&fa, 1)?;
        pb += t.passed(&fb, 1)?;
    }
    let most = 640 + 1 + SKETCH_ADMIT as usize;
    assert_eq!((pa, pb), (most, most), "{a:?} and {b:?}");
    Ok(())
}
