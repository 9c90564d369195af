//! End to end, invalid messages: a source that keeps sending datagrams that
//! are neither SIP nor a keepalive to the SIP port is held to its invalid
//! budget, then banned in `sip-invalid` (protected ports only), while
//! another source's real SIP, CRLF keepalives and STUN flow untouched and
//! are never banned. And per-method budgets: an OPTIONS flood held to its
//! budget while the same source's REGISTERs pass, shown in `stats`, `top`
//! and the metrics.
use anyhow::Result;
use sipguard_tests::{fixture::Setup, netns::*, packet::sip_options};
use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

/// Sends `body` `n` times from `from` to `to`; how many arrived.
fn delivered(from: &UdpSocket, to: &UdpSocket, body: &[u8], n: usize) -> Result<usize> {
    let dst = to.local_addr()?;
    to.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = [0u8; 2048];
    while to.recv(&mut buf).is_ok() {}
    for _ in 0..n {
        from.send_to(body, dst)?;
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut got = 0;
    while got < n && Instant::now() < deadline {
        if to.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    Ok(got)
}

/// A STUN binding request (RFC 5389) with a FINGERPRINT-sized attribute.
fn stun() -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&[0x80, 0x28, 0, 4, 1, 2, 3, 4]);
    m
}

#[test]
fn garbage_is_held_then_banned_while_real_sip_flows() -> Result<()> {
    let s = Setup::new(
        "[flood]\ninvalid_rate = 5\ninvalid_burst = 10\nescalate_after = 2\nwindow = \"60s\"\n",
    )?;
    let pair = &s.pair;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let other_port = udp_socket(&pair.server, addr(SERVER_V4, 5999))?;
    let junk = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    let phone = udp_socket(&pair.client, addr(OTHER_V4, 0))?;
    let garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not SIP at all";

    // A burst of garbage: the budget's burst gets through, the rest not.
    let got = delivered(&junk, &sip, garbage, 100)?;
    assert!((10..=20).contains(&got), "held to its burst: {got} of 100");
    assert!(s.counter("drop_invalid")? >= 80);
    // The phone's SIP, keepalives and STUN: far over the invalid budget's
    // burst, never charged to it.
    let options = sip_options("User-Agent: Yealink SIP-T46S", 0);
    assert_eq!(delivered(&phone, &sip, &options, 50)?, 50);
    assert_eq!(delivered(&phone, &sip, b"\r\n\r\n", 50)?, 50);
    assert_eq!(delivered(&phone, &sip, b"\r\n", 50)?, 50);
    assert_eq!(delivered(&phone, &sip, &stun(), 50)?, 50);
    assert_eq!(
        delivered(
            &phone,
            &sip,
            b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            50
        )?,
        50
    );

    // Sustained: banned after 2 seconds over the budget (bounded: 15 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for _ in 0..20 {
            junk.send_to(garbage, sip.local_addr()?)?;
            std::thread::sleep(Duration::from_millis(10));
        }
        let st = s.json(&["status", "sip-invalid"])?;
        let banned = &st["jails"][0]["actions"]["banned"];
        if banned[0]["address"] == CLIENT_V4 {
            let reason = banned[0]["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("over 5 invalid messages/s"), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "not banned in time: {st}");
    }
    let list = s.json(&["list"])?;
    let bans = list.as_array().cloned().unwrap_or_default();
    assert_eq!(bans.len(), 1, "only the garbage source: {list}");
    assert_eq!(bans[0]["jail"], "sip-invalid", "{list}");
    // Banned on the protected ports only: its SIP is dropped, its other
    // traffic flows.
    assert_eq!(delivered(&junk, &sip, &options, 5)?, 0);
    assert_eq!(delivered(&junk, &other_port, garbage, 5)?, 5);
    assert!(s.counter("drop_banned")? > 0);
    // The phone is still fine, and never banned.
    assert_eq!(delivered(&phone, &sip, &options, 20)?, 20);
    assert_eq!(s.banned()?, vec![CLIENT_V4.to_owned()]);
    Ok(())
}

#[test]
fn invalid_rate_zero_lets_garbage_through() -> Result<()> {
    let s = Setup::new("[flood]\ninvalid_rate = 0\n")?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let junk = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    assert_eq!(delivered(&junk, &sip, b"not sip, not sip", 50)?, 50);
    assert_eq!(s.counter("drop_invalid")?, 0);
    Ok(())
}

#[test]
fn an_options_flood_is_held_while_the_same_source_registers() -> Result<()> {
    let s = Setup::new("[flood.methods]\nOPTIONS = { rate = 10, burst = 20 }\nREGISTER = 100\n")?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let pbx = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let options = sip_options("User-Agent: FreeSWITCH", 0);
    let register = b"REGISTER sip:example.com SIP/2.0\r\nCall-ID: 2\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let got = delivered(&pbx, &sip, &options, 200)?;
    assert!(
        (21..=30).contains(&got),
        "OPTIONS held to burst + rate: {got} of 200"
    );
    assert_eq!(delivered(&pbx, &sip, register, 150)?, 150, "REGISTERs pass");
    let dropped = s.counter("drop_method_options")?;
    assert!(dropped >= 170, "{dropped}");
    assert_eq!(s.counter("drop_method_register")?, 0);
    assert!(s.banned()?.is_empty(), "over a method budget is not a ban");
    let stats = s.json(&["stats"])?;
    assert_eq!(
        stats["sip_budgets"]["methods"]["OPTIONS"]["rate"], 10,
        "{stats}"
    );
    assert_eq!(
        stats["sip_budgets"]["methods"]["REGISTER"]["burst"], 200,
        "{stats}"
    );
    assert_eq!(
        stats["sip_budgets"]["invalid"]["rate"], 5,
        "the default: {stats}"
    );
    let top = s.json(&["top", "--interval", "0.2"])?;
    assert_eq!(
        top["budget_drops"]["OPTIONS"]["dropped_total"], dropped,
        "{top}"
    );
    assert_eq!(
        s.metric("sipguard_xdp_packets_total{action=\"drop_method_options\"}")?,
        Some(dropped as f64)
    );
    Ok(())
}

/// A jail's own ports may be another service (TURN here): protected like
/// the SIP ports, but its datagrams are not SIP and never judged invalid;
/// the SIP ports still are.
#[test]
fn a_jails_extra_port_is_never_judged_as_sip() -> Result<()> {
    let s = Setup::new(
        "[jails.turn]\nlogpath = \"/nonexistent-sipguard-test/turn.log\"\nfilter = \"freeswitch\"\nports = [3478]\n",
    )?;
    let turn = udp_socket(&s.pair.server, addr(SERVER_V4, 3478))?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let client = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let allocate = b"\x00\x03\x00\x00\x21\x12\xa4\x42 a TURN request, not a binding";
    assert_eq!(delivered(&client, &turn, allocate, 100)?, 100);
    assert_eq!(s.counter("drop_invalid")?, 0);
    let status = s.json(&["status"])?;
    assert!(status.to_string().contains("3478"), "protected: {status}");
    let got = delivered(&client, &sip, allocate, 100)?;
    assert!((10..=20).contains(&got), "the SIP port still judged: {got}");
    Ok(())
}
