//! The first request of a TCP connection, in the kernel through
//! BPF_PROG_TEST_RUN: a connection's first data segment (its SYN's sequence
//! number plus one, on the same flow) is charged to its method's budget,
//! over IPv4 and IPv6, with TCP options and VLAN tags; later segments,
//! segments of a flow whose SYN was not seen, other flows of the same
//! source, responses and short segments are never read; a first request
//! held by its budget stays held when retransmitted.
use anyhow::Result;
use common::{counter, method, Config, SipBudget, SipLimits, SIP_INVALID_ON, SIP_METHODS_ON};
use sipguard_tests::{kernel::TestProgram, packet::*};

const SRC: [u8; 4] = [192, 0, 2, 20];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const OPTIONS: &str = "OPTIONS sip:100@example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n";
const INVITE: &str = "INVITE sip:100@example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n";
const PSH_ACK: u8 = TCP_PSH | TCP_ACK;

type Wrap = fn(Vec<u8>) -> Vec<u8>;

/// Method budgets of rate 1/s (no token comes back during a test) with
/// `burst` for OPTIONS and INVITE.
fn budgets(burst: u32) -> SipLimits {
    let mut l = SipLimits {
        flags: SIP_METHODS_ON,
        ..SipLimits::default()
    };
    l.methods[method::OPTIONS as usize] = SipBudget::new(1, burst);
    l.methods[method::INVITE as usize] = SipBudget::new(1, burst);
    l
}

fn load(burst: u32) -> Result<TestProgram> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config::default())?;
    t.maps.set_sip_limits(budgets(burst))?;
    Ok(t)
}

fn v4(segment: Vec<u8>) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(SRC, TCP, 0, 0, &segment))
}

fn v6(segment: Vec<u8>) -> Vec<u8> {
    frame(&[], ETH_P_IPV6, &ipv6(SRC6, TCP, &segment))
}

/// IPv4 with options behind a VLAN tag.
fn v4_vlan(segment: Vec<u8>) -> Vec<u8> {
    frame(&[ETH_P_8021Q], ETH_P_IP, &ipv4(SRC, TCP, 2, 0, &segment))
}

/// IPv6 behind a destination-options header.
fn v6_ext(segment: Vec<u8>) -> Vec<u8> {
    frame(
        &[],
        ETH_P_IPV6,
        &ipv6(
            SRC6,
            DSTOPTS,
            &v6_dstopts_with(TCP, &[1, 4, 0, 0, 0, 0], &segment),
        ),
    )
}

fn syn(sport: u16, seq: u32) -> Vec<u8> {
    tcp_segment(sport, 5060, TCP_SYN, seq, 0, b"")
}

fn data(sport: u16, seq: u32, text: &str) -> Vec<u8> {
    tcp_segment(sport, 5060, PSH_ACK, seq, 0, text.as_bytes())
}

fn moved(t: &TestProgram, before: &[common::Counter], i: u32) -> Result<u64> {
    Ok(t.counters()?[i as usize].packets - before[i as usize].packets)
}

/// Opens connection `sport` (its SYN) and sends its first request once:
/// true if it passed.
fn first_request(t: &mut TestProgram, wrap: Wrap, sport: u16) -> Result<bool> {
    let seq = 1000 * u32::from(sport);
    assert_eq!(
        t.passed(&wrap(syn(sport, seq)), 1)?,
        1,
        "a SYN is not judged here"
    );
    Ok(t.passed(&wrap(data(sport, seq + 1, OPTIONS)), 1)? == 1)
}

#[test]
fn each_connections_first_request_is_charged_to_its_method() -> Result<()> {
    for wrap in [v4 as Wrap, v6, v4_vlan, v6_ext] {
        let mut t = load(3)?;
        let before = t.counters()?;
        // Burst 3: the first four connections' OPTIONS pass, then none.
        let passed: Vec<bool> = (0..8)
            .map(|i| first_request(&mut t, wrap, 40_000 + i))
            .collect::<Result<_>>()?;
        assert_eq!(passed, [true, true, true, true, false, false, false, false]);
        assert_eq!(moved(&t, &before, counter::DROP_OPTIONS)?, 4);
        // INVITE is budgeted apart.
        let seq = 7;
        t.passed(&wrap(syn(41_000, seq)), 1)?;
        assert_eq!(t.passed(&wrap(data(41_000, seq + 1, INVITE)), 1)?, 1);
    }
    Ok(())
}

#[test]
fn a_held_first_request_stays_held_when_retransmitted() -> Result<()> {
    let mut t = load(1)?;
    assert!(first_request(&mut t, v4, 40_001)?);
    assert!(first_request(&mut t, v4, 40_002)?);
    // The budget is spent: this connection's first request is held, and
    // so is each retransmission of it.
    assert!(!first_request(&mut t, v4, 40_003)?);
    let again = v4(data(40_003, 1000 * 40_003 + 1, OPTIONS));
    assert_eq!(t.passed(&again, 5)?, 0);
    // An allow-listed source passes, counted as such.
    t.maps.allow(sipguard::addr::parse_net("192.0.2.0/24")?)?;
    let before = t.counters()?;
    assert_eq!(t.passed(&again, 5)?, 5);
    assert_eq!(moved(&t, &before, counter::PASS_RATE_ALLOWLISTED)?, 5);
    Ok(())
}

/// A forger can spend a source's method budget (forged UDP requests, or a
/// forged SYN and its first segment): a trusted phone's new connections
/// are never held for it.
#[test]
fn a_trusted_sources_first_requests_are_never_held() -> Result<()> {
    let mut t = load(1)?;
    t.trust(common::rate_key_v4(SRC), common::TRUST_OPERATOR)?;
    let before = t.counters()?;
    let passed: Vec<bool> = (0..6)
        .map(|i| first_request(&mut t, v4, 40_100 + i))
        .collect::<Result<_>>()?;
    assert!(passed.iter().all(|p| *p), "{passed:?}");
    assert_eq!(moved(&t, &before, counter::DROP_OPTIONS)?, 0);
    assert_eq!(
        moved(&t, &before, counter::PASS_TRUSTED)?,
        4,
        "over the budget"
    );
    Ok(())
}

#[test]
fn later_segments_and_unseen_flows_are_never_read() -> Result<()> {
    let mut t = load(1)?;
    let before = t.counters()?;
    let seq = 5_000;
    t.passed(&v4(syn(40_010, seq)), 1)?;
    // Not the first byte of the stream: never read, however many.
    for off in [0u32, 2, 1_000] {
        assert_eq!(
            t.passed(&v4(data(40_010, seq + off, OPTIONS)), 20)?,
            20,
            "seq + {off}"
        );
    }
    // The right sequence number on another flow of the same source (other
    // source port, other destination port), and a flow whose SYN was never
    // seen (a forger's segment): not read either.
    assert_eq!(t.passed(&v4(data(40_011, seq + 1, OPTIONS)), 20)?, 20);
    let other_port = tcp_segment(40_010, 5080, PSH_ACK, seq + 1, 0, OPTIONS.as_bytes());
    assert_eq!(t.passed(&v4(other_port), 20)?, 20);
    assert_eq!(t.passed(&v4(data(40_012, 77, OPTIONS)), 20)?, 20);
    assert_eq!(moved(&t, &before, counter::DROP_OPTIONS)?, 0);
    assert!(t.maps.sip_rate_states()?.is_empty(), "nothing charged");
    // The first segment itself still is.
    assert_eq!(t.passed(&v4(data(40_010, seq + 1, OPTIONS)), 5)?, 2);
    Ok(())
}

#[test]
fn options_responses_and_short_segments_are_read_right() -> Result<()> {
    let mut t = load(1)?;
    // A SYN with FIN (or RST) opens no connection: nothing noted.
    t.passed(
        &v4(tcp_segment(40_025, 5060, TCP_SYN | 0x01, 50, 0, b"")),
        1,
    )?;
    assert_eq!(t.passed(&v4(data(40_025, 51, OPTIONS)), 5)?, 5);
    // Twelve bytes of TCP options before the request.
    let seq = 9_000;
    t.passed(&v4(tcp_segment(40_020, 5060, TCP_SYN, seq, 3, b"")), 1)?;
    let with_options = tcp_segment(40_020, 5060, PSH_ACK, seq + 1, 3, OPTIONS.as_bytes());
    assert_eq!(t.passed(&v4(with_options), 5)?, 2, "read after the options");
    // A response, a TLS record, and a segment shorter than a request line
    // as first segments: not requests, never charged nor invalid.
    let mut l = budgets(1);
    l.flags |= SIP_INVALID_ON;
    l.invalid = SipBudget::new(1, 1);
    t.maps.set_sip_limits(l)?;
    let before = t.counters()?;
    let tls = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0,
    ];
    for (i, payload) in [
        &b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
        &tls[..],
        b"OPTIONS sip:",
    ]
    .into_iter()
    .enumerate()
    {
        let sport = 40_030 + i as u16;
        t.passed(&v4(syn(sport, 1)), 1)?;
        let first = tcp_segment(sport, 5060, PSH_ACK, 2, 0, payload);
        assert_eq!(t.passed(&v4(first), 10)?, 10, "payload {i}");
    }
    assert_eq!(moved(&t, &before, counter::DROP_INVALID)?, 0);
    assert_eq!(moved(&t, &before, counter::DROP_OPTIONS)?, 0);
    Ok(())
}

#[test]
fn without_method_budgets_tcp_is_never_read() -> Result<()> {
    let mut t = load(1)?;
    // The invalid budget alone (the shipped default): TCP is not a
    // datagram, never judged invalid, never charged.
    let mut l = SipLimits {
        flags: SIP_INVALID_ON,
        ..SipLimits::default()
    };
    l.invalid = SipBudget::new(1, 1);
    t.maps.set_sip_limits(l)?;
    for sport in 40_040..40_050 {
        assert!(first_request(&mut t, v4, sport)?);
    }
    assert!(t.maps.sip_rate_states()?.is_empty());
    // Unprotected ports are never read.
    t.maps.set_sip_limits(budgets(1))?;
    for sport in 40_050..40_060 {
        t.passed(&v4(tcp_segment(sport, 80, TCP_SYN, 1, 0, b"")), 1)?;
        let first = tcp_segment(sport, 80, PSH_ACK, 2, 0, OPTIONS.as_bytes());
        assert_eq!(t.passed(&v4(first), 1)?, 1);
    }
    assert!(t.maps.sip_rate_states()?.is_empty());
    Ok(())
}
