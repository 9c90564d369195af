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
use sipguard_tests::{kernel::TestProgram, packet::*, rng::Rng};

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

// ---------------------------------------------------------------------------
// The scan's edges. The kernel searches the window 32 bytes a step, a word at
// a time, for a '\n' followed by 'u' or 'U'; every edge of that (a line at
// any byte of a word, across words and steps, at the window's end, the
// packet's end, behind other lines starting with U, in a body) is checked
// here against `model`, the scan's documented semantics written byte by
// byte, for every encapsulation that moves the payload.

const WINDOW: usize = 512;
// The program's own list: the model differs from the scan in how it
// reads, not in what it looks for.
const SCANNERS: [&[u8]; 9] = common::SCANNER_SIGNATURES;

/// What the scan decides for a UDP payload, byte by byte (see the comment
/// at the top of xdp-ebpf/src/scanner.rs): the first line (its '\n' in the
/// window, 33 bytes of payload from there on) that starts with
/// `User-Agent:`, among the first four lines starting with U, decides; its
/// value, after up to four spaces or tabs, starts with a signature; no
/// blank line comes before it. Case-folding is `b | 0x20`, as the kernel's.
fn model(p: &[u8]) -> bool {
    let fold = |b: u8| b | 0x20;
    let folded_eq = |at: usize, pattern: &[u8]| {
        p[at..at + pattern.len()]
            .iter()
            .zip(pattern)
            .all(|(&b, &c)| fold(b) == c)
    };
    let n = p.len();
    let mut budget = 4;
    let mut line = None;
    for x in 0..WINDOW {
        // A 32-byte step is searched when 33 bytes from its start are there.
        if x / 32 * 32 + 33 > n {
            break;
        }
        if p[x] != b'\n' || fold(p[x + 1]) != b'u' {
            continue;
        }
        if budget == 0 {
            return false;
        }
        budget -= 1;
        if x + 12 <= n && folded_eq(x + 1, b"user-agent:") {
            line = Some(x);
            break;
        }
    }
    let Some(x) = line else {
        return false;
    };
    let v = x + 12;
    if v + 21 > n {
        return false;
    }
    let mut s = v;
    while s < v + 4 && (p[s] == b' ' || p[s] == b'\t') {
        s += 1;
    }
    if !SCANNERS.iter().any(|sig| folded_eq(s, sig)) {
        return false;
    }
    !(0..x).any(|y| p[y] == b'\n' && (p[y + 1] == b'\r' || p[y + 1] == b'\n'))
}

/// The payload in every encapsulation the parser knows, each moving it to
/// another offset (and alignment) in the frame.
fn encapsulations(body: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let udp = udp_with(5060, body);
    vec![
        ("IPv4", frame(&[], ETH_P_IP, &ipv4(SRC, UDP, 0, 0, &udp))),
        (
            "IPv4, one VLAN tag",
            frame(&[ETH_P_8021Q], ETH_P_IP, &ipv4(SRC, UDP, 0, 0, &udp)),
        ),
        (
            "IPv4, two VLAN tags",
            frame(
                &[ETH_P_8021AD, ETH_P_8021Q],
                ETH_P_IP,
                &ipv4(SRC, UDP, 0, 0, &udp),
            ),
        ),
        (
            "IPv4 with options",
            frame(&[], ETH_P_IP, &ipv4(SRC, UDP, 1, 0, &udp)),
        ),
        ("IPv6", frame(&[], ETH_P_IPV6, &ipv6(SRC6, UDP, &udp))),
        (
            "IPv6, one VLAN tag",
            frame(&[ETH_P_8021Q], ETH_P_IPV6, &ipv6(SRC6, UDP, &udp)),
        ),
    ]
}

fn scanning_only() -> Result<TestProgram> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(Config {
        flags: CONFIG_SCANNERS,
        ..Config::default()
    })?;
    Ok(t)
}

/// Runs `body` in every encapsulation; the kernel must agree with
/// `expected` (and `model` with it, so that the model stays honest).
fn expect(t: &mut TestProgram, body: &[u8], expected: bool, what: &str) -> Result<()> {
    assert_eq!(
        model(body),
        expected,
        "model, {what}: {:?}",
        String::from_utf8_lossy(body)
    );
    for (encap, f) in encapsulations(body) {
        let want = if expected { DROP } else { PASS };
        assert_eq!(
            t.run(&f)?,
            want,
            "{what} ({encap}): {:?}",
            String::from_utf8_lossy(body)
        );
    }
    Ok(())
}

const REQUEST: &str = "OPTIONS sip:100@10.0.0.1 SIP/2.0\r\n";
const TAIL: &str = "Call-ID: 1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

/// A request whose User-Agent line's '\n' is at payload offset `at` (a
/// filler header before it), with `ua` as the whole header line.
fn ua_line_at(at: usize, ua: &str) -> Vec<u8> {
    let mut m = String::from(REQUEST);
    // The filler line "X: xxx\r\n" ends with the '\n' at `at`.
    let filler = (at + 1)
        .checked_sub(REQUEST.len() + "X: \r\n".len())
        .expect("room for a filler line");
    m.push_str("X: ");
    m.push_str(&"x".repeat(filler));
    m.push_str("\r\n");
    assert_eq!(m.len(), at + 1);
    m.push_str(ua);
    m.push_str("\r\n");
    m.push_str(TAIL);
    m.into_bytes()
}

#[test]
fn the_header_is_found_at_every_byte_of_a_word_and_step() -> Result<()> {
    let mut t = scanning_only()?;
    // Every alignment within a word, and within a 32-byte step, in every
    // encapsulation (each moves the payload's own alignment too).
    for at in 40..40 + 32 {
        expect(
            &mut t,
            &ua_line_at(at, "User-Agent: friendly-scanner"),
            true,
            &format!("scanner, line at {at}"),
        )?;
        expect(
            &mut t,
            &ua_line_at(at, "User-Agent: Yealink SIP-T46S 66.86.0.15"),
            false,
            &format!("phone, line at {at}"),
        )?;
    }
    Ok(())
}

#[test]
fn the_window_ends_at_512_bytes() -> Result<()> {
    let mut t = scanning_only()?;
    // The last lines the window holds, and the first it does not.
    for at in (WINDOW - 20)..WINDOW {
        expect(
            &mut t,
            &ua_line_at(at, "User-Agent: friendly-scanner"),
            true,
            &format!("line at {at}"),
        )?;
    }
    for at in WINDOW..WINDOW + 20 {
        expect(
            &mut t,
            &ua_line_at(at, "User-Agent: friendly-scanner"),
            false,
            &format!("line at {at}, beyond the window"),
        )?;
    }
    // A header whose name or value runs past the window's end is read whole.
    expect(
        &mut t,
        &ua_line_at(WINDOW - 1, "User-Agent:    friendly-scanner"),
        true,
        "a value past the window's end",
    )?;
    Ok(())
}

#[test]
fn case_does_not_matter_anywhere() -> Result<()> {
    let mut t = scanning_only()?;
    for ua in [
        "user-agent: friendly-scanner",
        "USER-AGENT: FRIENDLY-SCANNER",
        "UsEr-AgEnT: fRiEnDlY-sCaNnEr",
        "uSER-aGENT:SipVicious",
        "User-agent:\tsIpClI",
    ] {
        for at in [60, 61, 62, 63, 64, 65, 66, 67] {
            expect(&mut t, &ua_line_at(at, ua), true, ua)?;
        }
    }
    Ok(())
}

#[test]
fn other_lines_starting_with_u_are_not_user_agents() -> Result<()> {
    let mut t = scanning_only()?;
    for line in [
        "Unsupported: friendly-scanner",
        "User-to-User: friendly-scanner",
        "User-Agen: friendly-scanner",
        "User_Agent: friendly-scanner",
        "UserAgent: friendly-scanner",
        "User-Agent friendly-scanner",
        "U: friendly-scanner",
        "User-Agent:      friendly-scanner", // five spaces: not looked past
    ] {
        expect(&mut t, &ua_line_at(70, line), false, line)?;
    }
    // Lines starting with U before the User-Agent: looked past, up to three.
    for u_lines in 0..=3 {
        let mut m = String::from(REQUEST);
        for _ in 0..u_lines {
            m.push_str("Unsupported: 100rel\r\n");
        }
        m.push_str("User-Agent: friendly-scanner\r\n");
        m.push_str(TAIL);
        expect(
            &mut t,
            m.as_bytes(),
            true,
            &format!("{u_lines} Unsupported lines first"),
        )?;
    }
    // A fourth one ends the search (bounded work, a miss), as does a wall of
    // them, which costs four compares.
    let mut m = String::from(REQUEST);
    m.push_str(&"Unsupported: 100rel\r\n".repeat(4));
    m.push_str("User-Agent: friendly-scanner\r\n");
    m.push_str(TAIL);
    expect(&mut t, m.as_bytes(), false, "four Unsupported lines first")?;
    let mut m = String::from(REQUEST);
    m.push_str(&"U\r\n".repeat(150));
    m.push_str("User-Agent: friendly-scanner\r\n");
    expect(&mut t, m.as_bytes(), false, "a wall of U lines")?;
    // And a '\n' 'U' pair in a value is no line of its own worth more.
    let mut m = String::from(REQUEST);
    m.push_str("Subject: a\nUser-Agent: friendly-scanner\r\n");
    m.push_str(TAIL);
    expect(&mut t, m.as_bytes(), true, "a bare LF starts a line too")?;
    Ok(())
}

#[test]
fn the_first_header_after_the_request_line() -> Result<()> {
    let mut t = scanning_only()?;
    for request in [
        "OPTIONS sip:a SIP/2.0\r\n",
        "OPTIONS sip:ab SIP/2.0\r\n",
        "OPTIONS sip:abc SIP/2.0\r\n",
        "OPTIONS sip:abcd SIP/2.0\r\n",
        "REGISTER sip:x SIP/2.0\n",
    ] {
        let m = format!("{request}User-Agent: friendly-scanner\r\n{TAIL}");
        expect(&mut t, m.as_bytes(), true, request)?;
    }
    Ok(())
}

#[test]
fn short_payloads_and_the_packets_end() -> Result<()> {
    let mut t = scanning_only()?;
    let line = b"\nUser-Agent: friendly-scanner\r\n\r\n";
    assert_eq!(line.len(), 33);
    // Every prefix, shorter than a word up to the whole line: the scan needs
    // 33 bytes from the line's '\n' on.
    for len in 0..=line.len() {
        expect(
            &mut t,
            &line[..len],
            len == line.len(),
            &format!("{len} bytes"),
        )?;
    }
    // The same at the end of a message, at every alignment: the headers end
    // before the window does.
    for pad in 0..16 {
        let mut m = REQUEST.as_bytes().to_vec();
        m.extend_from_slice(format!("X: {}\r", "x".repeat(pad)).as_bytes());
        m.extend_from_slice(line);
        expect(&mut t, &m, true, &format!("ending the message, pad {pad}"))?;
        m.pop();
        expect(&mut t, &m, false, &format!("one byte short, pad {pad}"))?;
    }
    // A payload of a few bytes, CRLF keep-alives, nothing at all.
    for body in [
        &b""[..],
        b"\r\n",
        b"\r\n\r\n",
        b"\n",
        b"U",
        b"\nU",
        b"\nUser-Ag",
    ] {
        expect(&mut t, body, false, "tiny")?;
    }
    Ok(())
}

#[test]
fn a_body_is_not_a_header() -> Result<()> {
    let mut t = scanning_only()?;
    // A blank line (CRLF CRLF, or a bare LF one) ends the headers: a
    // scanner's User-Agent line in the body is text the message carries
    // (a message/sipfrag, a chat), not its sender's: no drop.
    for (what, m) in [
        (
            "CRLF",
            String::from("MESSAGE sip:a SIP/2.0\r\nContent-Length: 30\r\n\r\nUser-Agent: friendly-scanner\r\n"),
        ),
        (
            "LF",
            String::from("MESSAGE sip:a SIP/2.0\nContent-Length: 30\n\nUser-Agent: friendly-scanner\n\n"),
        ),
        (
            "after the phone's own",
            String::from("MESSAGE sip:a SIP/2.0\r\nUser-Agent: Yealink\r\n\r\nx\r\nUser-Agent: friendly-scanner\r\n\r\n"),
        ),
        (
            "deep in a body",
            format!(
                "INVITE sip:a SIP/2.0\r\nContent-Length: 300\r\n\r\nv=0\r\n{}User-Agent: friendly-scanner\r\n\r\n",
                "a=x\r\n".repeat(40)
            ),
        ),
    ] {
        expect(&mut t, m.as_bytes(), false, what)?;
    }
    // The blank line right before the line, at every alignment.
    for pad in 0..32 {
        for blank in ["\r\n\r\n", "\n\n", "\r\n\n"] {
            let m = format!(
                "{REQUEST}X: {}{blank}User-Agent: friendly-scanner\r\n{TAIL}",
                "x".repeat(pad)
            );
            expect(
                &mut t,
                m.as_bytes(),
                false,
                &format!("{blank:?}, pad {pad}"),
            )?;
        }
    }
    // Headers before a body still count, and a folded line (LF then a tab)
    // is no blank line.
    let m = String::from("INVITE sip:a SIP/2.0\r\nUser-Agent: friendly-scanner\r\n\r\nv=0\r\n");
    expect(&mut t, m.as_bytes(), true, "a header before the body")?;
    let m =
        format!("INVITE sip:a SIP/2.0\r\nSubject: a\r\n\tb\r\nUser-Agent: sipvicious\r\n{TAIL}");
    expect(&mut t, m.as_bytes(), true, "a folded line before")?;
    Ok(())
}

/// A SIP-like payload built to land on the scan's edges: header lines of
/// every length, names starting with U, agents that are and are not
/// scanners, random case, whitespace, LF or CRLF, blank lines and bodies,
/// cut at any length.
fn random_payload(r: &mut Rng) -> Vec<u8> {
    let mut m: Vec<u8> = Vec::new();
    if r.below(8) != 0 {
        let requests: [&[u8]; 4] = [
            b"OPTIONS sip:100@10.0.0.1 SIP/2.0",
            b"REGISTER sip:x SIP/2.0",
            b"INVITE sip:1000@192.0.2.1:5060;transport=udp SIP/2.0",
            b"SIP/2.0 200 OK",
        ];
        m.extend_from_slice(r.pick::<&[u8]>(&requests));
        m.extend_from_slice(b"\r\n");
    }
    let agents: [&[u8]; 12] = [
        b"friendly-scanner",
        b"sipvicious",
        b"SIPCLI/v1.8",
        b"VaxSIPUserAgent/3.1",
        b"pplsip",
        b"sip-scan 1.0",
        b"iWar",
        b"sivus",
        b"sundayddr",
        b"Yealink SIP-T46S 66.86.0.15",
        b"friendly-scanne",
        b"FreeSWITCH-mod_sofia/1.10.12",
    ];
    let names: [&[u8]; 9] = [
        b"User-Agent:",
        b"user-agent:",
        b"USER-AGENT:",
        b"Unsupported:",
        b"User-to-User:",
        b"User-Agen:",
        b"Via:",
        b"X-Padding:",
        b"U:",
    ];
    for _ in 0..r.below(14) {
        match r.below(10) {
            // A blank line, then anything.
            0 => m.extend_from_slice(if r.below(2) == 0 { b"\r\n" } else { b"\n" }),
            // A filler line of any length.
            1 | 2 => {
                m.extend_from_slice(b"X-F: ");
                let len = r.below(80);
                m.extend(std::iter::repeat_n(b'f', len));
            }
            _ => {
                let mut name = r.pick(&names).to_vec();
                for b in name.iter_mut() {
                    if r.below(4) == 0 && b.is_ascii_alphabetic() {
                        *b ^= 0x20;
                    }
                }
                m.extend_from_slice(&name);
                for _ in 0..r.below(6) {
                    m.push(*r.pick(b" \t"));
                }
                let mut agent = r.pick(&agents).to_vec();
                for b in agent.iter_mut() {
                    if r.below(3) == 0 && b.is_ascii_alphabetic() {
                        *b ^= 0x20;
                    }
                }
                m.extend_from_slice(&agent);
            }
        }
        m.extend_from_slice(if r.below(6) == 0 { b"\n" } else { b"\r\n" });
    }
    m.extend_from_slice(b"\r\n");
    if r.below(3) == 0 {
        let cut = r.below(m.len() + 1);
        m.truncate(cut);
    }
    m
}

#[test]
fn the_kernel_agrees_with_the_model_on_random_messages() -> Result<()> {
    let mut t = scanning_only()?;
    let mut r = Rng(0x5eed_0f5c_a11e_d5e7);
    let (mut drops, mut passes) = (0, 0);
    for case in 0..3000 {
        let body = random_payload(&mut r);
        let expected = model(&body);
        // One encapsulation per message, in turn: all of them over the run.
        let (encap, f) = encapsulations(&body).swap_remove(case % 6);
        let want = if expected { DROP } else { PASS };
        assert_eq!(
            t.run(&f)?,
            want,
            "case {case} ({encap}): {:?}",
            String::from_utf8_lossy(&body)
        );
        if expected {
            drops += 1;
        } else {
            passes += 1;
        }
    }
    // Both answers, often: the generator does reach the edges.
    assert!(
        drops > 300 && passes > 300,
        "{drops} drops, {passes} passes"
    );
    Ok(())
}
