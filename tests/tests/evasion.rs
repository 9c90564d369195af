//! Packet shapes an attacker chooses to slip past the checks, in the kernel
//! through BPF_PROG_TEST_RUN: fragments and atomic fragments against the rate
//! limiter, TCP segments against the per-source budget, bans hidden behind a
//! more specific entry, reports lost to a full ring buffer, and a scanner
//! window pushed past 1 KiB by IPv6 extension headers.
use anyhow::Result;
use common::{
    counter, rate_key_v4, Config, BAN_ALL_PORTS, BAN_PORTS_ONLY, CONFIG_ALL_PORTS,
    CONFIG_REPORT_SCANNERS, CONFIG_SCANNERS, EVENT_SCANNER,
};
use ipnet::IpNet;
use sipguard::{kernel::clock, kernel::maps};
use sipguard_tests::{kernel::TestProgram, packet::*};
use std::time::Duration;

const PASS: u32 = 2;
const DROP: u32 = 1;
// One packet per second and a burst of five: a source gets six packets
// through, however long the test takes between them.
const RATE: u32 = 1;
const BURST: u32 = 5;
const LET_THROUGH: usize = BURST as usize + 1;

const SRC: [u8; 4] = [192, 0, 2, 10];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

fn net(s: &str) -> IpNet {
    sipguard::addr::parse_net(s).unwrap()
}

fn limited(flags: u32) -> Result<TestProgram> {
    let mut t = TestProgram::load()?;
    let mut cfg = Config::default().with_rate(RATE, BURST);
    cfg.flags = flags;
    t.maps.set_config(cfg)?;
    Ok(t)
}

/// Runs `frame` `n` times; returns how many passed and how far each
/// counter moved.
fn run_n(t: &mut TestProgram, frame: &[u8], n: usize) -> Result<(usize, Vec<u64>)> {
    let before = t.counters()?;
    let mut passed = 0;
    for _ in 0..n {
        if t.run(frame)? == PASS {
            passed += 1;
        }
    }
    let after = t.counters()?;
    let moved = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.packets - b.packets)
        .collect();
    Ok((passed, moved))
}

fn v4(frag: u16, l4: &[u8]) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(SRC, UDP, 0, frag, l4))
}

fn v6(next: u8, rest: &[u8]) -> Vec<u8> {
    frame(&[], ETH_P_IPV6, &ipv6(SRC6, next, rest))
}

/// An IPv6 atomic fragment (offset 0, no more fragments) is an ordinary
/// packet to Linux: it meets the limiter and the scanner like one.
#[test]
fn ipv6_atomic_fragments_meet_the_limiter_and_the_scanner() -> Result<()> {
    let mut t = limited(CONFIG_SCANNERS)?;
    let atomic = v6(FRAGMENT, &v6_frag(UDP, 0, false, &udp(5060)));
    let (passed, moved) = run_n(&mut t, &atomic, 50)?;
    assert_eq!(passed, LET_THROUGH, "held to the source's budget");
    assert_eq!(moved[counter::DROP_RATE_LIMITED as usize], 44);
    // Not a fragment: a ports-only ban on another port lets it through.
    let body = sip_options("User-Agent: friendly-scanner", 0);
    let other = [0x20, 0x01, 0x0d, 0xb8, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8];
    let scan = frame(
        &[],
        ETH_P_IPV6,
        &ipv6(
            other,
            FRAGMENT,
            &v6_frag(UDP, 0, false, &udp_with(5060, &body)),
        ),
    );
    let (passed, moved) = run_n(&mut t, &scan, 1)?;
    assert_eq!(
        (passed, moved[counter::DROP_SCANNER as usize]),
        (0, 1),
        "the scanner reads an atomic fragment's payload"
    );
    Ok(())
}

/// First fragments carry the ports: they are limited on protected ports and
/// left alone on others. Fragments without ports are charged to their
/// source's budget.
#[test]
fn fragments_are_charged_to_their_source() -> Result<()> {
    let mut t = limited(0)?;
    let first4 = v4(MORE_FRAGMENTS, &udp(5060));
    assert_eq!(
        run_n(&mut t, &first4, 50)?.0,
        LET_THROUGH,
        "IPv4 first fragments"
    );
    // The same source's fragments without ports share its (spent) budget.
    let later4 = v4(185, &[0u8; 64]);
    let (passed, moved) = run_n(&mut t, &later4, 20)?;
    assert_eq!(
        (passed, moved[counter::DROP_RATE_LIMITED as usize]),
        (0, 20)
    );

    let mut t = limited(0)?;
    assert_eq!(
        run_n(&mut t, &later4, 50)?.0,
        LET_THROUGH,
        "IPv4 later fragments"
    );
    // A first fragment to an unprotected port is not limited.
    assert_eq!(run_n(&mut t, &v4(MORE_FRAGMENTS, &udp(53)), 20)?.0, 20);

    let mut t = limited(0)?;
    let first6 = v6(FRAGMENT, &v6_frag(UDP, 0, true, &udp(5060)));
    assert_eq!(
        run_n(&mut t, &first6, 50)?.0,
        LET_THROUGH,
        "IPv6 first fragments"
    );
    let mut t = limited(0)?;
    let later6 = v6(FRAGMENT, &v6_frag(UDP, 181, false, &[0u8; 64]));
    assert_eq!(
        run_n(&mut t, &later6, 50)?.0,
        LET_THROUGH,
        "IPv6 later fragments"
    );
    // A first fragment too short for the UDP header (the rest follows in the
    // next fragment): ports unknown, charged, never "malformed, pass".
    let mut t = limited(0)?;
    let tiny4 = v4(MORE_FRAGMENTS, &[0x13, 0xc4, 0x13]);
    assert_eq!(
        run_n(&mut t, &tiny4, 50)?.0,
        LET_THROUGH,
        "IPv4 tiny first fragments"
    );
    let mut t = limited(0)?;
    let tiny6 = v6(FRAGMENT, &v6_frag(UDP, 0, true, &[0x13, 0xc4]));
    assert_eq!(
        run_n(&mut t, &tiny6, 50)?.0,
        LET_THROUGH,
        "IPv6 tiny first fragments"
    );
    // A first fragment whose extension chain continues in the next fragment.
    let mut t = limited(0)?;
    let split = v6(FRAGMENT, &v6_frag(DSTOPTS, 0, true, &[UDP]));
    assert_eq!(
        run_n(&mut t, &split, 50)?.0,
        LET_THROUGH,
        "IPv6 split chain"
    );
    // Allow-listed sources are never limited, fragments included.
    t.maps.allow(net("2001:db8:7::/48"))?;
    let (passed, moved) = run_n(&mut t, &later6, 10)?;
    assert_eq!(
        (passed, moved[counter::PASS_RATE_ALLOWLISTED as usize]),
        (10, 10)
    );
    Ok(())
}

/// A large INVITE over UDP, fragmented in two, from a source within its
/// rate (the defaults): every fragment passes, also repeated.
#[test]
fn a_legitimate_fragmented_invite_passes() -> Result<()> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config::default().with_rate(500, 2000))?;
    let mut invite =
        b"INVITE sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060\r\n".to_vec();
    invite.extend(std::iter::repeat_n(b'a', 2400)); // SDP with many codecs, certificates...
    let udp_dgram = udp_with(5060, &invite);
    let (head, tail) = udp_dgram.split_at(1480);
    for (src_frame, what) in [
        ([v4(MORE_FRAGMENTS, head), v4(185, tail)], "IPv4"),
        (
            [
                v6(FRAGMENT, &v6_frag(UDP, 0, true, head)),
                v6(FRAGMENT, &v6_frag(UDP, 185, false, tail)),
            ],
            "IPv6",
        ),
    ] {
        for _ in 0..20 {
            for f in &src_frame {
                assert_eq!(t.run(f)?, PASS, "{what} INVITE fragment");
            }
        }
    }
    assert_eq!(
        t.counters()?[counter::DROP_RATE_LIMITED as usize].packets,
        0
    );
    Ok(())
}

/// What a forger can send is charged (UDP, SYN); segments of a TCP
/// connection, whose source proved itself in the handshake, are not.
#[test]
fn tcp_segments_are_not_charged_but_syns_are() -> Result<()> {
    let mut t = limited(0)?;
    for flags in [TCP_ACK, TCP_ACK | TCP_PSH, TCP_SYN | TCP_ACK] {
        let seg = frame(
            &[],
            ETH_P_IP,
            &ipv4(SRC, TCP, 0, 0, &tcp_with_flags(5060, flags)),
        );
        assert_eq!(run_n(&mut t, &seg, 100)?.0, 100, "flags {flags:#x}");
    }
    let syn = frame(
        &[],
        ETH_P_IP,
        &ipv4(SRC, TCP, 0, 0, &tcp_with_flags(5060, TCP_SYN)),
    );
    assert_eq!(run_n(&mut t, &syn, 50)?.0, LET_THROUGH, "SYNs are charged");
    let syn6 = v6(TCP, &tcp_with_flags(7443, TCP_SYN));
    assert_eq!(
        run_n(&mut t, &syn6, 50)?.0,
        LET_THROUGH,
        "IPv6 SYNs are charged"
    );
    // A banned source's segments are all dropped, connected or not.
    let now = clock::mono_now_ns();
    t.maps.ban(net("192.0.2.10"), 0, 0, now)?;
    let ack = frame(
        &[],
        ETH_P_IP,
        &ipv4(SRC, TCP, 0, 0, &tcp_with_flags(5060, TCP_ACK)),
    );
    let (passed, moved) = run_n(&mut t, &ack, 10)?;
    assert_eq!((passed, moved[counter::DROP_BANNED as usize]), (0, 10));
    Ok(())
}

/// The most specific entry decides only while it drops the packet: an ended
/// or ports-only /32 does not hide a live or all-ports prefix around it.
#[test]
fn covering_bans_are_honoured() -> Result<()> {
    let mut t = TestProgram::load()?;
    let now = clock::mono_now_ns();
    let later = clock::deadline_ns(Duration::from_secs(3600));
    let ended = now - 1_000_000_000;
    let m = &mut t.maps;
    // An ended /32 inside a live /24.
    m.ban(net("198.51.100.7"), ended, 0, now)?;
    m.ban(net("198.51.100.0/24"), later, 0, now)?;
    // A ports-only /32 inside an all-ports /24.
    m.ban(net("203.0.113.9"), later, 0, now)?;
    m.ban(net("203.0.113.0/24"), later, BAN_ALL_PORTS, now)?;
    // Three ended levels inside a live /16: still within the walk.
    m.ban(net("10.9.8.7"), ended, 0, now)?;
    m.ban(net("10.9.8.0/24"), ended, 0, now)?;
    m.ban(net("10.9.0.0/20"), ended, 0, now)?;
    m.ban(net("10.9.0.0/16"), later, 0, now)?;
    // Ended everywhere: passes as expired.
    m.ban(net("192.0.2.50"), ended, 0, now)?;
    m.ban(net("192.0.2.0/24"), ended, 0, now)?;
    // IPv6: an ended /128 inside a live /64.
    m.ban(net("2001:db8:5::9"), ended, 0, now)?;
    m.ban(net("2001:db8:5::/64"), later, 0, now)?;
    let cases: [(&str, Vec<u8>, u32, u32); 7] = [
        (
            "ended /32 in a live /24",
            udp4([198, 51, 100, 7], 5060),
            DROP,
            counter::DROP_BANNED,
        ),
        (
            "ports-only /32 in an all-ports /24, other port",
            udp4([203, 0, 113, 9], 53),
            DROP,
            counter::DROP_BANNED,
        ),
        (
            "ports-only /32, protected port",
            udp4([203, 0, 113, 9], 5060),
            DROP,
            counter::DROP_BANNED,
        ),
        (
            "three ended levels in a live /16",
            udp4([10, 9, 8, 7], 5060),
            DROP,
            counter::DROP_BANNED,
        ),
        (
            "ended at every level",
            udp4([192, 0, 2, 50], 5060),
            PASS,
            counter::PASS_BAN_EXPIRED,
        ),
        (
            "ended /128 in a live /64",
            udp6(
                [0x20, 0x01, 0x0d, 0xb8, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
                5060,
            ),
            DROP,
            counter::DROP_BANNED,
        ),
        (
            "live /24, other port",
            udp4([198, 51, 100, 7], 53),
            PASS,
            counter::PASS_BANNED_OTHER_PORT,
        ),
    ];
    for (name, f, action, verdict) in cases {
        let (passed, moved) = run_n(&mut t, &f, 1)?;
        assert_eq!(passed, usize::from(action == PASS), "{name}");
        assert_eq!(moved[verdict as usize], 1, "{name}: {moved:?}");
    }
    // The entry that decided counts the drop.
    let bans = t.maps.bans()?;
    let packets = |n: &str| bans.iter().find(|b| b.net == net(n)).unwrap().stats.packets;
    assert_eq!(packets("198.51.100.0/24"), 1);
    assert_eq!(packets("198.51.100.7"), 0);
    assert_eq!(packets("203.0.113.0/24"), 1, "the other-port drop");
    assert_eq!(packets("203.0.113.9"), 1, "the protected-port drop");
    Ok(())
}

/// Global all-ports mode widens every ban except those scoped to the
/// protected ports (bans on packet evidence).
#[test]
fn ports_only_bans_stay_on_the_ports_in_all_ports_mode() -> Result<()> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config {
        flags: CONFIG_ALL_PORTS,
        ..Config::default()
    })?;
    let now = clock::mono_now_ns();
    t.maps.ban(net("192.0.2.20"), 0, 0, now)?;
    t.maps.ban(net("192.0.2.21"), 0, BAN_PORTS_ONLY, now)?;
    let (p, _) = run_n(&mut t, &udp4([192, 0, 2, 20], 53), 1)?;
    assert_eq!(p, 0, "a plain ban covers every port in all-ports mode");
    let (p, moved) = run_n(&mut t, &udp4([192, 0, 2, 21], 53), 1)?;
    assert_eq!((p, moved[counter::PASS_BANNED_OTHER_PORT as usize]), (1, 1));
    let (p, moved) = run_n(&mut t, &udp4([192, 0, 2, 21], 5060), 1)?;
    assert_eq!((p, moved[counter::DROP_BANNED as usize]), (0, 1));
    Ok(())
}

/// A report the full ring buffer refused is counted and sent again with
/// the source's next offending packet; the source is not marked meanwhile.
#[test]
fn lost_reports_are_counted_and_sent_again() -> Result<()> {
    let mut t = limited(CONFIG_SCANNERS | CONFIG_REPORT_SCANNERS)?;
    let body = sip_options("User-Agent: friendly-scanner", 0);
    let from = |i: u32| {
        let a = (0x0a00_0000u32 + i).to_be_bytes();
        (
            a,
            frame(&[], ETH_P_IP, &ipv4(a, UDP, 0, 0, &udp_with(5060, &body))),
        )
    };
    // Far more reports than the 64 KiB ring holds, and nobody reading it.
    let sources = 2000;
    for i in 0..sources {
        assert_eq!(t.run(&from(i).1)?, DROP);
    }
    let lost = t.maps.lost_reports()?;
    assert!(lost > 0 && lost < u64::from(sources), "lost {lost}");
    let (last, frame_last) = from(sources - 1);
    let key = rate_key_v4(last);
    let unmarked = |t: &TestProgram| -> Result<bool> {
        Ok(t.maps
            .rate_states()?
            .iter()
            .any(|(n, s, _)| *n == maps::rate_key_net(&key) && s.reported == 0))
    };
    assert!(
        unmarked(&t)?,
        "a source whose report was lost stays unmarked"
    );
    // Drain the ring; the next packet of that source reports it.
    let mut ring = maps::flood_events(t.pin())?;
    let mut drained = 0;
    while ring.next().is_some() {
        drained += 1;
    }
    assert_eq!(
        drained + lost,
        u64::from(sources),
        "every source reported or counted lost"
    );
    assert_eq!(t.run(&frame_last)?, DROP);
    let event = maps::flood_event(&ring.next().expect("reported again")).unwrap();
    assert_eq!((event.key, event.kind), (key, EVENT_SCANNER));
    assert_eq!(maps::event_source(&event), net("10.0.7.207"));
    assert!(!unmarked(&t)?, "marked once reported");
    // And only once.
    assert_eq!(t.run(&frame_last)?, DROP);
    assert!(ring.next().is_none());
    Ok(())
}

/// IPv6 extension headers can push the UDP payload past 1 KiB: the scanner
/// reads the real payload there, never a wrapped offset into the headers.
#[test]
fn the_scanner_window_follows_long_extension_chains() -> Result<()> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config {
        flags: CONFIG_SCANNERS,
        ..Config::default()
    })?;
    // A 1 536-byte destination-options header: the UDP payload starts at
    // 14 + 40 + 1536 + 8 = 1598, which a 10-bit mask would wrap to 574.
    let option_bytes = 1534;
    let payload_offset = 14 + 40 + 1536 + 8;
    assert!(payload_offset > 1024);
    let scanner = sip_options("User-Agent: friendly-scanner", 0);
    let frame_scanner = v6(
        DSTOPTS,
        &v6_dstopts_with(UDP, &vec![0; option_bytes], &udp_with(5060, &scanner)),
    );
    let (passed, moved) = run_n(&mut t, &frame_scanner, 1)?;
    assert_eq!(
        (passed, moved[counter::DROP_SCANNER as usize]),
        (0, 1),
        "found beyond 1 KiB"
    );
    // A phone's OPTIONS behind the same chain, with a scanner's header line
    // planted in the option bytes exactly where a wrapped offset would look.
    let mut planted = vec![0u8; option_bytes];
    let wrapped = payload_offset & 0x3ff;
    let at = wrapped - (14 + 40 + 2);
    let text = b"\nUser-Agent: friendly-scanner\r\n\r\n";
    planted[at..at + text.len()].copy_from_slice(text);
    let phone = sip_options("User-Agent: Yealink SIP-T46S", 0);
    let frame_phone = v6(
        DSTOPTS,
        &v6_dstopts_with(UDP, &planted, &udp_with(5060, &phone)),
    );
    let (passed, moved) = run_n(&mut t, &frame_phone, 1)?;
    assert_eq!(
        (passed, moved[counter::PASS_NOT_BANNED as usize]),
        (1, 1),
        "no false drop"
    );
    Ok(())
}
