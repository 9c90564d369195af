//! Per-method budgets in the kernel, through BPF_PROG_TEST_RUN: a method
//! over its source's budget is dropped under its class's counter while
//! another method of the same source passes; methods without a budget and
//! responses are never charged (no state is even made for them); sources
//! and classes are budgeted apart; IPv6 sources by /64.
use anyhow::Result;
use common::{counter, method, Config, SipBudget, SipLimits, SIP_METHODS_ON};
use sipguard_tests::{kernel::TestProgram, packet::*};

fn load(limits: SipLimits) -> Result<TestProgram> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config::default())?;
    t.maps.set_sip_limits(limits)?;
    Ok(t)
}

/// Budgets (rate 1/s, so that no token comes back during a test) for
/// the given classes and bursts.
fn budgets(of: &[(u32, u32)]) -> SipLimits {
    let mut l = SipLimits {
        flags: SIP_METHODS_ON,
        ..SipLimits::default()
    };
    for &(class, burst) in of {
        l.methods[class as usize] = SipBudget::new(1, burst);
    }
    l
}

fn sip4(src: [u8; 4], line: &str) -> Vec<u8> {
    let body =
        format!("{line}\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nCSeq: 1 X\r\nContent-Length: 0\r\n\r\n");
    frame(
        &[],
        ETH_P_IP,
        &ipv4(src, UDP, 0, 0, &udp_with(5060, body.as_bytes())),
    )
}

fn sip6(src: [u8; 16], line: &str) -> Vec<u8> {
    let body = format!("{line}\r\nContent-Length: 0\r\n\r\n");
    frame(
        &[],
        ETH_P_IPV6,
        &ipv6(src, UDP, &udp_with(5060, body.as_bytes())),
    )
}

const SRC: [u8; 4] = [192, 0, 2, 10];
const OPTIONS: &str = "OPTIONS sip:100@example.com SIP/2.0";
const REGISTER: &str = "REGISTER sip:example.com SIP/2.0";

fn moved(t: &TestProgram, before: &[common::Counter], i: u32) -> Result<u64> {
    Ok(t.counters()?[i as usize].packets - before[i as usize].packets)
}

#[test]
fn a_method_over_its_budget_is_dropped_while_another_passes() -> Result<()> {
    let mut t = load(budgets(&[(method::OPTIONS, 4), (method::REGISTER, 100)]))?;
    let before = t.counters()?;
    assert_eq!(
        t.passed(&sip4(SRC, OPTIONS), 30)?,
        5,
        "burst + the packet that opens it"
    );
    assert_eq!(moved(&t, &before, counter::DROP_OPTIONS)?, 25);
    // The same source's REGISTERs have their own budget.
    assert_eq!(t.passed(&sip4(SRC, REGISTER), 30)?, 30);
    // INVITE has no budget: never charged, however many.
    assert_eq!(
        t.passed(&sip4(SRC, "INVITE sip:100@example.com SIP/2.0"), 200)?,
        200
    );
    // Another source's OPTIONS have their own budget.
    assert_eq!(t.passed(&sip4([192, 0, 2, 11], OPTIONS), 30)?, 5);
    assert_eq!(moved(&t, &before, counter::DROP_OPTIONS)?, 50);
    for c in [
        counter::DROP_REGISTER,
        counter::DROP_INVITE,
        counter::DROP_SUBSCRIBE,
        counter::DROP_OTHER_METHOD,
        counter::DROP_INVALID,
    ] {
        assert_eq!(moved(&t, &before, c)?, 0, "counter {c}");
    }
    // State only for the charged (source, class) pairs: 2 sources x
    // OPTIONS, and REGISTER of the first.
    let states = t.maps.sip_rate_states()?;
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(states
        .iter()
        .all(|(k, _)| k.class == method::OPTIONS || k.class == method::REGISTER));
    Ok(())
}

#[test]
fn each_class_drops_under_its_own_counter() -> Result<()> {
    let all: Vec<(u32, u32)> = (0..method::CLASSES as u32).map(|c| (c, 1)).collect();
    let mut t = load(budgets(&all))?;
    for (line, drop) in [
        ("REGISTER sip:example.com SIP/2.0", counter::DROP_REGISTER),
        ("INVITE sip:1@example.com SIP/2.0", counter::DROP_INVITE),
        (OPTIONS, counter::DROP_OPTIONS),
        (
            "SUBSCRIBE sip:1@example.com SIP/2.0",
            counter::DROP_SUBSCRIBE,
        ),
        (
            "NOTIFY sip:1@example.com SIP/2.0",
            counter::DROP_OTHER_METHOD,
        ),
        ("BYE sip:1@example.com SIP/2.0", counter::DROP_OTHER_METHOD),
    ] {
        let before = t.counters()?;
        // "other" is one class: NOTIFY spent part of BYE's budget.
        let passed = t.passed(&sip4([198, 51, 100, 1], line), 10)?;
        assert!(passed <= 2, "{line}: {passed}");
        assert_eq!(moved(&t, &before, drop)? as usize, 10 - passed, "{line}");
    }
    Ok(())
}

#[test]
fn responses_and_garbage_are_never_charged_to_a_method() -> Result<()> {
    let all: Vec<(u32, u32)> = (0..method::CLASSES as u32).map(|c| (c, 1)).collect();
    let mut t = load(budgets(&all))?;
    // Invalid messages are their own budget's (off here): not a method's.
    for line in [
        "SIP/2.0 200 OK",
        "SIP/2.0 401 Unauthorized",
        "options sip:lower@case SIP/2.0",
        "garbage garbage garbage",
    ] {
        assert_eq!(t.passed(&sip4(SRC, line), 30)?, 30, "{line}");
    }
    assert_eq!(
        t.passed(
            &frame(
                &[],
                ETH_P_IP,
                &ipv4(SRC, UDP, 0, 0, &udp_with(5060, b"\r\n\r\n"))
            ),
            30
        )?,
        30
    );
    assert!(t.maps.sip_rate_states()?.is_empty());
    // A SYN is never charged (a first request is: see tcp_first.rs).
    assert_eq!(t.passed(&tcp4(SRC, 5060), 30)?, 30);
    // Unprotected ports are never read.
    let to_53 = frame(
        &[],
        ETH_P_IP,
        &ipv4(SRC, UDP, 0, 0, &udp_with(53, OPTIONS.as_bytes())),
    );
    assert_eq!(t.passed(&to_53, 30)?, 30);
    Ok(())
}

#[test]
fn ipv6_sources_share_a_method_budget_per_64() -> Result<()> {
    let mut t = load(budgets(&[(method::INVITE, 3)]))?;
    let a = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xa];
    let mut b = a;
    b[15] = 0xb;
    let mut c = a;
    c[7] = 3;
    let invite = "INVITE sip:1@example.com SIP/2.0";
    assert_eq!(t.passed(&sip6(a, invite), 2)?, 2);
    assert_eq!(
        t.passed(&sip6(b, invite), 10)?,
        2,
        "the rest of the /64's budget"
    );
    assert_eq!(t.passed(&sip6(c, invite), 10)?, 4, "another /64");
    Ok(())
}

#[test]
fn budgets_off_cost_nothing_and_allowlisted_sources_pass() -> Result<()> {
    let mut t = load(SipLimits::default())?;
    assert_eq!(t.passed(&sip4(SRC, OPTIONS), 50)?, 50);
    assert!(
        t.maps.sip_rate_states()?.is_empty(),
        "nothing read, nothing kept"
    );
    t.maps.set_sip_limits(budgets(&[(method::OPTIONS, 1)]))?;
    t.maps.allow(sipguard::addr::parse_net("192.0.2.0/24")?)?;
    let before = t.counters()?;
    assert_eq!(t.passed(&sip4(SRC, OPTIONS), 20)?, 20);
    assert_eq!(moved(&t, &before, counter::PASS_RATE_ALLOWLISTED)?, 18);
    Ok(())
}

/// A budget large enough for leases (a CPU takes 1/64 of the burst at
/// once, here 10 tokens, and spends them without touching the shared
/// state): on one CPU every token taken is spent; alternating between two
/// CPUs, never more pass than the budget holds, and at most the two
/// leases' tokens are left unspent.
#[test]
fn a_leased_budget_passes_its_burst_and_never_more() -> Result<()> {
    let mut l = SipLimits {
        flags: SIP_METHODS_ON,
        ..SipLimits::default()
    };
    // 1/s (no token comes back during the test), burst 640.
    l.methods[method::REGISTER as usize] = SipBudget::new(1, 640);
    // The budget, the packet that opens it, and what the first stage lets
    // through before the source has state.
    let most = 640 + 1 + common::SKETCH_ADMIT as usize;
    let mut t = load(l)?;
    assert_eq!(t.passed(&sip4(SRC, REGISTER), 1000)?, most);
    let cpus = std::thread::available_parallelism()?.get();
    if cpus < 2 {
        return Ok(());
    }
    let mut t = load(l)?;
    let fd = t.prog_fd()?;
    let frame = sip4([192, 0, 2, 12], REGISTER);
    let started = std::time::Instant::now();
    let mut passed = 0;
    for i in 0..1000 {
        let (action, _) = sipguard_tests::kernel::test_run_on(i % 2, fd, &frame, 1)?;
        passed += usize::from(action == 2);
    }
    // Each CPU's first stage admits its own few; a token comes back each
    // second the test takes (moving between CPUs is slow).
    let most = most + common::SKETCH_ADMIT as usize + started.elapsed().as_secs() as usize;
    assert!(
        (most - 2 * 10..=most).contains(&passed),
        "{passed} passed of a budget of {most} ({:?})",
        started.elapsed()
    );
    Ok(())
}

/// Two sources whose leases share a slot, sending in turn: neither loses
/// a token to the other (a live lease is never overwritten), each passes
/// exactly its budget.
#[test]
fn sources_sharing_a_lease_slot_keep_their_budgets() -> Result<()> {
    let (a, b) = sipguard_tests::kernel::colliding_leases(Some(0x3c ^ method::REGISTER as u8));
    let mut l = SipLimits {
        flags: SIP_METHODS_ON,
        ..SipLimits::default()
    };
    l.methods[method::REGISTER as usize] = SipBudget::new(1, 640);
    let mut t = load(l)?;
    let (fa, fb) = (sip4(a, REGISTER), sip4(b, REGISTER));
    let (mut pa, mut pb) = (0, 0);
    for _ in 0..1000 {
        pa += t.passed(&fa, 1)?;
        pb += t.passed(&fb, 1)?;
    }
    let most = 640 + 1 + common::SKETCH_ADMIT as usize;
    assert_eq!((pa, pb), (most, most), "{a:?} and {b:?}");
    Ok(())
}
