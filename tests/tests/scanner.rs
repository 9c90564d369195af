//! Scanner signatures in the kernel, through BPF_PROG_TEST_RUN: a UDP SIP
//! request whose User-Agent starts with a scanner's name is dropped and its
//! source reported once; anything else (other agents, the name elsewhere, a
//! header split across datagrams or beyond the window, TCP, other ports,
//! allow-listed sources, the switch off) passes.
use anyhow::Result;
use common::{
    counter, rate_key_v4, Config, CONFIG_REPORT_SCANNERS, CONFIG_SCANNERS, EVENT_SCANNER,
};
use sipguard::{addr::parse_net, kernel::maps};
use sipguard_tests::{kernel::TestProgram, packet::*};

const PASS: u32 = 2;
const DROP: u32 = 1;
const SRC: [u8; 4] = [198, 51, 100, 9];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

fn scanning() -> Result<TestProgram> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config {
        flags: CONFIG_SCANNERS | CONFIG_REPORT_SCANNERS,
        ..Config::default()
    })?;
    Ok(t)
}

fn frame4(body: &[u8]) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(SRC, UDP, 0, 0, &udp_with(5060, body)))
}

fn verdict(t: &mut TestProgram, body: &[u8]) -> Result<(u32, Vec<u64>)> {
    let before = t.counters()?;
    let action = t.run(&frame4(body))?;
    let after = t.counters()?;
    Ok((
        action,
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.packets - b.packets)
            .collect(),
    ))
}

#[test]
fn scanner_user_agents_are_dropped_whatever_the_case_and_offset() -> Result<()> {
    let mut t = scanning()?;
    for ua in [
        "User-Agent: friendly-scanner",
        "user-agent: Friendly-Scanner",
        "USER-AGENT:sipvicious",
        "User-Agent:\tSIPCLI/v1.8",
        "User-Agent:  VaxSIPUserAgent/3.1",
        "User-Agent: pplsip",
        "User-Agent: sip-scan 1.0",
        "User-Agent: iWar",
        "User-Agent: SiVuS",
        "User-Agent: sundayddr",
    ] {
        for padding in [0, 100, 300] {
            let (action, moved) = verdict(&mut t, &sip_options(ua, padding))?;
            assert_eq!(action, DROP, "{ua:?} after {padding} bytes of padding");
            assert_eq!(moved[counter::DROP_SCANNER as usize], 1, "{ua:?}");
        }
    }
    // IPv6 too.
    let f = frame(
        &[],
        ETH_P_IPV6,
        &ipv6(
            SRC6,
            UDP,
            &udp_with(5060, &sip_options("User-Agent: friendly-scanner", 0)),
        ),
    );
    assert_eq!(t.run(&f)?, DROP);
    Ok(())
}

#[test]
fn everything_else_passes() -> Result<()> {
    let mut t = scanning()?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a phone",
            sip_options("User-Agent: Yealink SIP-T46S 66.86.0.15", 0),
        ),
        (
            "FreeSWITCH",
            sip_options("User-Agent: FreeSWITCH-mod_sofia/1.10.12", 0),
        ),
        (
            "sipsak, a diagnostic tool",
            sip_options("User-Agent: sipsak 0.9.8", 0),
        ),
        ("the name in another header", sip_options("", 0)), // To/From say "sipvicious"
        (
            "the name later in the value",
            sip_options("User-Agent: MyPhone (not a friendly-scanner)", 0),
        ),
        ("no User-Agent at all", sip_options("", 50)),
        (
            "beyond the 512-byte window",
            sip_options("User-Agent: friendly-scanner", 600),
        ),
        (
            "split across datagrams (first half)",
            b"OPTIONS sip:1@x SIP/2.0\r\nVia: x\r\nUser-Agent: friendly-sc".to_vec(),
        ),
        (
            "split across datagrams (second half)",
            b"anner\r\nCall-ID: 1\r\n\r\n".to_vec(),
        ),
        (
            "a header name that only starts alike",
            sip_options("User-Agentx: friendly-scanner", 0),
        ),
    ];
    for (name, body) in cases {
        let (action, moved) = verdict(&mut t, &body)?;
        assert_eq!(action, PASS, "{name}");
        assert_eq!(moved[counter::PASS_NOT_BANNED as usize], 1, "{name}");
    }
    let scanner = sip_options("User-Agent: friendly-scanner", 0);
    let tcp = frame(
        &[],
        ETH_P_IP,
        &ipv4(SRC, TCP, 0, 0, &[tcp(5060), scanner.clone()].concat()),
    );
    assert_eq!(t.run(&tcp)?, PASS, "TCP is not inspected");
    let other_port = frame(
        &[],
        ETH_P_IP,
        &ipv4(SRC, UDP, 0, 0, &udp_with(5070, &scanner)),
    );
    assert_eq!(
        t.run(&other_port)?,
        PASS,
        "unprotected ports are not inspected"
    );
    Ok(())
}

#[test]
fn allow_listed_and_switched_off() -> Result<()> {
    let mut t = scanning()?;
    let scanner = sip_options("User-Agent: friendly-scanner", 0);
    t.maps.allow(parse_net("198.51.100.0/24")?)?;
    let (action, moved) = verdict(&mut t, &scanner)?;
    assert_eq!(
        (action, moved[counter::PASS_SCANNER_ALLOWLISTED as usize]),
        (PASS, 1)
    );
    t.maps.disallow(parse_net("198.51.100.0/24")?)?;
    t.maps.set_config(Config::default())?;
    assert_eq!(verdict(&mut t, &scanner)?.0, PASS, "scanners = false");
    Ok(())
}

#[test]
fn a_scanner_is_reported_once() -> Result<()> {
    let mut t = scanning()?;
    let mut ring = maps::flood_events(t.pin())?;
    for _ in 0..5 {
        assert_eq!(
            verdict(&mut t, &sip_options("User-Agent: friendly-scanner", 0))?.0,
            DROP
        );
    }
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(maps::flood_event(&item).unwrap());
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].kind, events[0].key),
        (EVENT_SCANNER, rate_key_v4(SRC))
    );
    assert_eq!(
        maps::event_source(&events[0]),
        parse_net("198.51.100.9")?,
        "the event carries the packet's own address"
    );
    Ok(())
}

/// Drop-only (the default: `scanner_bans = false`): the packets are
/// dropped, nobody is reported, so a forged scanner packet bans no one.
#[test]
fn drop_only_reports_nobody() -> Result<()> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config {
        flags: CONFIG_SCANNERS,
        ..Config::default()
    })?;
    let mut ring = maps::flood_events(t.pin())?;
    let (action, moved) = verdict(&mut t, &sip_options("User-Agent: friendly-scanner", 0))?;
    assert_eq!((action, moved[counter::DROP_SCANNER as usize]), (DROP, 1));
    assert!(ring.next().is_none(), "no report");
    Ok(())
}
