//! What the XDP program makes of a UDP payload's first line, in the kernel
//! through BPF_PROG_TEST_RUN: requests by method class, responses,
//! keepalives (CRLF, STUN), and invalid payloads; the invalid-message budget
//! (dropped over it, escalated through the ring buffer), and what is never
//! charged to it.
//!
//! A payload's class is read from the verdicts: with every budget at one
//! packet a second and no burst, a source's second packet of a class is
//! dropped under that class's counter; responses and keepalives never are.
use anyhow::Result;
use common::{
    counter, method, rate_key_v4, Config, SipBudget, SipLimits, EVENT_INVALID, SIP_INVALID_ON,
    SIP_METHODS_ON,
};
use sipguard::{addr::parse_net, kernel::maps};
use sipguard_tests::{kernel::TestProgram, packet::*};

const PASS: u32 = 2;
const DROP: u32 = 1;

/// What the program made of a payload.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Request(u32),
    Invalid,
    /// Never charged: a response, a keepalive, or not judged.
    Free,
}

fn load(limits: SipLimits, escalate_secs: u32) -> Result<TestProgram> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config {
        escalate_secs,
        escalate_window_secs: 60,
        ..Config::default()
    })?;
    t.maps.set_sip_limits(limits)?;
    Ok(t)
}

/// The invalid-message budget alone, at `rate`/s with `burst`.
fn invalid_only(rate: u32, burst: u32) -> SipLimits {
    SipLimits {
        flags: SIP_INVALID_ON,
        invalid: SipBudget::new(rate, burst),
        ..SipLimits::default()
    }
}

/// Every budget at `rate`/s with `burst`.
fn all_budgets(rate: u32, burst: u32) -> SipLimits {
    SipLimits {
        flags: SIP_INVALID_ON | SIP_METHODS_ON,
        invalid: SipBudget::new(rate, burst),
        methods: [SipBudget::new(rate, burst); method::CLASSES],
        ..SipLimits::default()
    }
}

fn udp4_body(src: [u8; 4], body: &[u8]) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(src, UDP, 0, 0, &udp_with(5060, body)))
}

struct Classifier {
    t: TestProgram,
    next: u32,
}

impl Classifier {
    fn new() -> Result<Self> {
        Ok(Self {
            t: load(all_budgets(1, 0), 0)?,
            next: 1,
        })
    }

    /// A source never used before (each payload starts with a full budget).
    fn fresh(&mut self) -> [u8; 4] {
        self.next += 1;
        let [_, a, b, c] = self.next.to_be_bytes();
        [10, a, b, c]
    }

    fn of_frame(&mut self, frame: impl Fn([u8; 4]) -> Vec<u8>) -> Result<Got> {
        let f = frame(self.fresh());
        assert_eq!(self.t.run(&f)?, PASS, "a source's first packet conforms");
        let before = self.t.counters()?;
        let action = self.t.run(&f)?;
        let after = self.t.counters()?;
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| after[i].packets != before[i].packets)
            .collect();
        assert_eq!(moved.len(), 1, "one verdict per packet");
        let got = match moved[0] as u32 {
            counter::DROP_INVALID => Got::Invalid,
            c if (counter::DROP_METHOD..counter::DROP_METHOD + method::CLASSES as u32)
                .contains(&c) =>
            {
                Got::Request(c - counter::DROP_METHOD)
            }
            counter::PASS_NOT_BANNED => Got::Free,
            other => panic!("unexpected verdict {other}"),
        };
        assert_eq!(action, if got == Got::Free { PASS } else { DROP });
        Ok(got)
    }

    fn of(&mut self, body: &[u8]) -> Result<Got> {
        self.of_frame(|src| udp4_body(src, body))
    }
}

fn request(line: &str) -> Vec<u8> {
    format!("{line} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\nCall-ID: 1\r\nCSeq: 1 X\r\nContent-Length: 0\r\n\r\n")
        .into_bytes()
}

fn stun(len: u16, cookie: [u8; 4]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&cookie);
    m.extend_from_slice(&[7; 12]); // transaction id
    m.extend(std::iter::repeat_n(0u8, usize::from(len)));
    m
}
const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

#[test]
fn every_method_has_its_class() -> Result<()> {
    let mut c = Classifier::new()?;
    for (m, class) in [
        ("REGISTER", method::REGISTER),
        ("INVITE", method::INVITE),
        ("OPTIONS", method::OPTIONS),
        ("SUBSCRIBE", method::SUBSCRIBE),
    ] {
        assert_eq!(
            c.of(&request(&format!("{m} sip:100@example.com")))?,
            Got::Request(class),
            "{m}"
        );
    }
    for m in [
        "ACK",
        "BYE",
        "CANCEL",
        "INFO",
        "MESSAGE",
        "NOTIFY",
        "PRACK",
        "PUBLISH",
        "REFER",
        "UPDATE",
        "X",
        "EXTENSIONXX",
    ] {
        assert_eq!(
            c.of(&request(&format!("{m} sip:100@example.com")))?,
            Got::Request(method::OTHER),
            "{m}"
        );
    }
    // Near misses of the four named methods are "other".
    for m in ["REGISTERS", "INVITES", "OPTION", "SUBSCRIBES", "SUBSCRIBA"] {
        assert_eq!(
            c.of(&request(&format!("{m} sip:x")))?,
            Got::Request(method::OTHER),
            "{m}"
        );
    }
    // Every scheme, in any case.
    for uri in [
        "sips:100@example.com",
        "tel:+15551234",
        "SIP:100@x",
        "Sips:a@b",
        "urn:service:sos",
        "TEL:1",
    ] {
        assert_eq!(
            c.of(&request(&format!("INVITE {uri}")))?,
            Got::Request(method::INVITE),
            "{uri}"
        );
    }
    // The longest method whose scheme fits in the 16 bytes read.
    assert_eq!(
        c.of(&request("ABCDEFGHIJK sip:x"))?,
        Got::Request(method::OTHER)
    );
    assert_eq!(
        c.of(&request("ABCDEFGHIJ sips:x"))?,
        Got::Request(method::OTHER)
    );
    Ok(())
}

#[test]
fn responses_and_keepalives_are_never_charged() -> Result<()> {
    let mut c = Classifier::new()?;
    for body in [
        &b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nContent-Length: 0\r\n\r\n"[..],
        b"SIP/2.0 401 Unauthorized\r\n\r\n",
        b"\r\n",
        b"\r\n\r\n",
    ] {
        assert_eq!(
            c.of(body)?,
            Got::Free,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    // STUN binding requests (RFC 5389), bare and with a FINGERPRINT.
    assert_eq!(c.of(&stun(0, COOKIE))?, Got::Free);
    assert_eq!(c.of(&stun(8, COOKIE))?, Got::Free);
    // A response is not a request: none of a source's budgets is touched.
    let mut t = load(all_budgets(1, 0), 0)?;
    let ok = udp4_body([192, 0, 2, 7], b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\n\r\n");
    assert_eq!(t.passed(&ok, 50)?, 50);
    assert!(
        t.maps.sip_rate_states()?.is_empty(),
        "no state for responses"
    );
    Ok(())
}

#[test]
fn everything_else_is_invalid() -> Result<()> {
    let mut c = Classifier::new()?;
    for body in [
        &b""[..],
        b"options sip:100@example.com SIP/2.0\r\n\r\n", // lower-case method
        b"Options sip:100@example.com SIP/2.0\r\n\r\n",
        b"OPTIONS  sip:100@example.com SIP/2.0\r\n\r\n", // two spaces
        b"OPTIONS http://example.com/ SIP/2.0\r\n\r\n",
        b"OPTIONS sip 100@example.com SIP/2.0\r\n\r\n",
        b" OPTIONS sip:100@example.com SIP/2.0\r\n",
        b"ABCDEFGHIJKL sip:x SIP/2.0\r\n\r\n", // a 12-letter token
        b"OPT1ONS sip:100@example.com SIP/2.0\r\n\r\n",
        b"sip/2.0 200 OK\r\n\r\n",
        b"SIP/2.0200 OK\r\n\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"hello, this is not SIP at all",
        &[0u8; 64],
        &[0xffu8; 64],
        b"\r\n\r\n\r\n",
        b"\r\nx",
        b"\n\n",
        b"\r\n\r\nOPTIONS sip:x SIP/2.0\r\n\r\n",
        b"jaK\x00",
    ] {
        assert_eq!(
            c.of(body)?,
            Got::Invalid,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    // STUN with a bad cookie, the top bits set, or a length that does not match.
    assert_eq!(c.of(&stun(0, [0x21, 0x12, 0xa4, 0x43]))?, Got::Invalid);
    let mut high = stun(0, COOKIE);
    high[0] = 0x40;
    assert_eq!(c.of(&high)?, Got::Invalid);
    let mut long = stun(8, COOKIE);
    long.extend_from_slice(&[0; 4]);
    assert_eq!(c.of(&long)?, Got::Invalid);
    Ok(())
}

#[test]
fn a_payload_shorter_than_the_read_is_invalid_at_every_length() -> Result<()> {
    let mut c = Classifier::new()?;
    let options = request("OPTIONS sip:100@example.com");
    for n in 0..16 {
        assert_eq!(c.of(&options[..n])?, Got::Invalid, "{n} bytes");
    }
    for n in 16..=options.len() {
        assert_eq!(
            c.of(&options[..n])?,
            Got::Request(method::OPTIONS),
            "{n} bytes"
        );
    }
    let response = b"SIP/2.0 200 OK\r\n\r\n";
    for n in 0..16 {
        assert_eq!(c.of(&response[..n])?, Got::Invalid, "{n} bytes");
    }
    assert_eq!(c.of(&response[..16])?, Got::Free);
    Ok(())
}

#[test]
fn the_udp_length_decides_not_the_frame() -> Result<()> {
    let mut c = Classifier::new()?;
    // A short frame padded to Ethernet's 60 bytes: the keepalive is the
    // UDP length's 4 bytes, the zeros after it are padding.
    let padded = |body: &[u8]| {
        let body = body.to_vec();
        move |src: [u8; 4]| {
            let mut f = udp4_body(src, &body);
            f.resize(60, 0);
            f
        }
    };
    assert_eq!(c.of_frame(padded(b"\r\n\r\n"))?, Got::Free);
    assert_eq!(c.of_frame(padded(b"\r\n"))?, Got::Free);
    assert_eq!(c.of_frame(padded(b"junk"))?, Got::Invalid);
    // A frame holding less than its UDP header says: not judged.
    let cut = |src: [u8; 4]| truncated(udp4_body(src, &request("OPTIONS sip:x")), 14 + 20 + 8 + 10);
    assert_eq!(c.of_frame(cut)?, Got::Free);
    Ok(())
}

#[test]
fn vlan_and_ipv6_encapsulations() -> Result<()> {
    let mut c = Classifier::new()?;
    let options = request("OPTIONS sip:100@example.com");
    for tags in [&[ETH_P_8021Q][..], &[ETH_P_8021AD, ETH_P_8021Q]] {
        let vlan = |body: Vec<u8>| {
            move |src: [u8; 4]| {
                frame(
                    tags,
                    ETH_P_IP,
                    &ipv4(src, UDP, 0, 0, &udp_with(5060, &body)),
                )
            }
        };
        assert_eq!(
            c.of_frame(vlan(options.clone()))?,
            Got::Request(method::OPTIONS)
        );
        assert_eq!(
            c.of_frame(vlan(b"garbage garbage garbage".to_vec()))?,
            Got::Invalid
        );
        assert_eq!(c.of_frame(vlan(b"\r\n\r\n".to_vec()))?, Got::Free);
    }
    // IPv4 with options, IPv6, IPv6 with an extension header, VLAN + IPv6.
    let v6 = |src: [u8; 4]| {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[2..6].copy_from_slice(&src);
        a
    };
    let o = options.clone();
    assert_eq!(
        c.of_frame(|s| frame(&[], ETH_P_IP, &ipv4(s, UDP, 3, 0, &udp_with(5060, &o))))?,
        Got::Request(method::OPTIONS)
    );
    assert_eq!(
        c.of_frame(|s| frame(&[], ETH_P_IPV6, &ipv6(v6(s), UDP, &udp_with(5060, &o))))?,
        Got::Request(method::OPTIONS)
    );
    let reg = request("REGISTER sip:example.com");
    assert_eq!(
        c.of_frame(|s| frame(
            &[],
            ETH_P_IPV6,
            &ipv6(v6(s), DSTOPTS, &v6_ext(UDP, 0, &udp_with(5060, &reg)))
        ))?,
        Got::Request(method::REGISTER)
    );
    assert_eq!(
        c.of_frame(|s| frame(
            &[ETH_P_8021Q],
            ETH_P_IPV6,
            &ipv6(v6(s), UDP, &udp_with(5060, b"\x01\x02 not sip"))
        ))?,
        Got::Invalid
    );
    assert_eq!(
        c.of_frame(|s| frame(
            &[],
            ETH_P_IPV6,
            &ipv6(v6(s), UDP, &udp_with(5060, b"\r\n\r\n"))
        ))?,
        Got::Free
    );
    Ok(())
}

#[test]
fn invalid_over_its_rate_is_dropped_under_it_passed() -> Result<()> {
    let limits = invalid_only(1, 3);
    let mut t = load(limits, 0)?;
    let src = [192, 0, 2, 10];
    let junk = udp4_body(src, b"\x00\x01garbage that is not SIP");
    let before = t.counters()?;
    assert_eq!(t.passed(&junk, 20)?, 4, "burst + the packet that opens it");
    let after = t.counters()?;
    assert_eq!(
        after[counter::DROP_INVALID as usize].packets
            - before[counter::DROP_INVALID as usize].packets,
        16
    );
    // Valid SIP from the same source is never charged to it, nor dropped.
    assert_eq!(
        t.passed(&udp4_body(src, &request("OPTIONS sip:x")), 50)?,
        50
    );
    assert_eq!(t.passed(&udp4_body(src, b"\r\n\r\n"), 50)?, 50);
    // Another source has its own budget; a valid one never spends it.
    let other = [192, 0, 2, 11];
    assert_eq!(
        t.passed(&udp4_body(other, &request("INVITE sip:x")), 30)?,
        30
    );
    assert_eq!(t.passed(&udp4_body(other, b"junk junk junk junk"), 20)?, 4);
    // Unprotected ports, TCP, and the budget turned off: never judged.
    let to_53 = frame(
        &[],
        ETH_P_IP,
        &ipv4(src, UDP, 0, 0, &udp_with(53, b"junk junk junk junk")),
    );
    assert_eq!(t.passed(&to_53, 20)?, 20);
    assert_eq!(t.passed(&tcp4(src, 5060), 20)?, 20);
    t.maps.set_sip_limits(SipLimits::default())?;
    assert_eq!(t.passed(&junk, 20)?, 20);
    Ok(())
}

#[test]
fn an_allowlisted_source_over_a_budget_passes() -> Result<()> {
    let mut t = load(all_budgets(1, 0), 0)?;
    t.maps.allow(parse_net("192.0.2.0/28")?)?;
    let before = t.counters()?;
    assert_eq!(
        t.passed(&udp4_body([192, 0, 2, 3], b"junk junk junk junk"), 10)?,
        10
    );
    assert_eq!(
        t.passed(&udp4_body([192, 0, 2, 3], &request("OPTIONS sip:x")), 10)?,
        10
    );
    let after = t.counters()?;
    let moved = |i: u32| after[i as usize].packets - before[i as usize].packets;
    assert_eq!(moved(counter::PASS_RATE_ALLOWLISTED), 18);
    assert_eq!(
        moved(counter::DROP_INVALID) + moved(counter::DROP_OPTIONS),
        0
    );
    Ok(())
}

#[test]
fn sustained_invalid_messages_are_reported_once() -> Result<()> {
    let limits = invalid_only(1, 2);
    let mut t = load(limits, 1)?;
    let mut ring = maps::flood_events(t.pin())?;
    let src = [192, 0, 2, 20];
    assert_eq!(t.passed(&udp4_body(src, b"junk junk junk junk"), 30)?, 3);
    // A valid source is never reported.
    assert_eq!(
        t.passed(&udp4_body([192, 0, 2, 21], &request("OPTIONS sip:x")), 30)?,
        30
    );
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(maps::flood_event(&item).expect("a whole event"));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EVENT_INVALID);
    assert_eq!(events[0].key, rate_key_v4(src));
    assert_eq!(maps::event_source(&events[0]), parse_net("192.0.2.20")?);
    // Escalation off: dropped, never reported.
    let mut t = load(limits, 0)?;
    let mut ring = maps::flood_events(t.pin())?;
    assert_eq!(t.passed(&udp4_body(src, b"junk junk junk junk"), 30)?, 3);
    assert!(ring.next().is_none());
    Ok(())
}

/// A trusted source's garbage is dropped over the budget but never
/// reported: its address is known, and a forger sending garbage as it
/// would otherwise get a registered phone banned in `sip-invalid`.
#[test]
fn a_trusted_source_is_never_reported_for_invalid_messages() -> Result<()> {
    let limits = invalid_only(1, 2);
    let mut t = load(limits, 1)?;
    let mut ring = maps::flood_events(t.pin())?;
    let phone = [192, 0, 2, 30];
    t.trust(rate_key_v4(phone), common::TRUST_REGISTERED)?;
    assert_eq!(t.passed(&udp4_body(phone, b"junk junk junk junk"), 30)?, 3);
    assert!(ring.next().is_none(), "a trusted source is not reported");
    Ok(())
}
