//! End to end, as an attacker who forges source addresses: raw frames from
//! the client namespace against the daemon in the server namespace. Forged
//! packets never ban the server's gateway, resolver or own network, a storm
//! of forged sources adds no more bans than the budget, fragments do not slip
//! past the limiter, and a busy legitimate TCP peer is never limited.
use anyhow::Result;
use sipguard_tests::{daemon::Daemon, fixture::Setup, netns::*, packet::*, Sandbox};
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

/// These tests count packets: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const GATEWAY: &str = "10.213.0.254";
const RESOLVER: &str = "10.213.0.53";

fn v4(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

/// A scanner's OPTIONS from `src`, as a routable frame to the server.
fn scanner4(pair: &Pair, src: [u8; 4]) -> Result<Vec<u8>> {
    Ok(routable_udp4(
        pair.macs()?,
        src,
        v4(SERVER_V4),
        5060,
        &sip_options("User-Agent: friendly-scanner", 0),
    ))
}

/// Sends `frames` in batches with short pauses, so that the veth's queue
/// (not XDP) never has to drop any. Bounded by the slice.
fn send_paced(raw: &RawSocket, frames: &[Vec<u8>]) -> Result<()> {
    for (i, f) in frames.iter().enumerate() {
        raw.send(f)?;
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// Gateway and resolver: allow-listed from the routing table and
/// resolv.conf, so forged scanner packets and floods "from" them ban
/// nothing, and their real traffic keeps flowing. A gateway added while
/// the daemon runs is picked up too.
#[test]
fn forged_packets_never_ban_the_gateway_or_the_resolver() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The resolver and the route exist before the daemon starts.
    let sb = Sandbox::new(
        "resolv_conf = \"{dir}/resolv.conf\"\n[flood]\nrate = 50\nburst = 50\nescalate_after = 1\nscanner_bans = true\n",
    )?;
    std::fs::write(sb.path("resolv.conf"), format!("nameserver {RESOLVER}\n"))?;
    let pair = Pair::new()?;
    pair.server
        .ip(&["route", "add", "default", "via", GATEWAY])?;
    let daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    let s = Setup { daemon, pair, sb };
    let pair = &s.pair;
    let listed = s.allowed()?;
    for protected in [GATEWAY, RESOLVER, SERVER_V4] {
        assert!(
            listed.contains(&format!("{protected}/32")),
            "{protected} in {listed:?}"
        );
    }
    let raw = pair.forger()?;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    sip.set_read_timeout(Some(Duration::from_millis(300)))?;
    for who in [GATEWAY, RESOLVER] {
        // Scanner packets, then a flood, forged from the protected address.
        send_paced(&raw, &vec![scanner4(pair, v4(who))?; 5])?;
        let flood = routable_udp4(
            pair.macs()?,
            v4(who),
            v4(SERVER_V4),
            5060,
            b"OPTIONS sip:x SIP/2.0\r\n\r\n",
        );
        for _ in 0..3 {
            send_paced(&raw, &vec![flood.clone(); 300])?;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.banned()?.is_empty(), "nothing banned: {:?}", s.banned()?);
    assert_eq!(s.counter("drop_rate_limited")?, 0);
    assert_eq!(s.counter("pass_scanner_allowlisted")?, 10);
    // The gateway's own SIP packets still reach the listener.
    let mut buf = [0u8; 2048];
    while sip.recv(&mut buf).is_ok() {}
    let probe = routable_udp4(
        pair.macs()?,
        v4(GATEWAY),
        v4(SERVER_V4),
        5060,
        b"OPTIONS sip:gw SIP/2.0\r\n\r\n",
    );
    send_paced(&raw, &vec![probe; 100])?;
    let mut got = 0;
    while sip.recv(&mut buf).is_ok() {
        got += 1;
    }
    assert_eq!(got, 100, "the gateway's packets reach port 5060");

    // A route added under the running daemon: its gateway is protected
    // within the refresh interval.
    pair.server
        .ip(&["route", "add", "198.51.100.0/24", "via", "10.213.0.250"])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s.allowed()?.contains(&"10.213.0.250/32".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "new gateway not protected: {:?}",
            s.allowed()?
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// One forged scanner packet from a neighbour in the server's own IPv6 /64
/// bans that neighbour's /128, never the /64 that holds the server.
#[test]
fn a_neighbour_in_the_own_64_is_banned_alone() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Setup::new("[flood]\nscanner_bans = true\n")?;
    let pair = &s.pair;
    let raw = pair.forger()?;
    let body = sip_options("User-Agent: friendly-scanner", 0);
    let neighbour = "fd00:5167::99";
    raw.send(&frame(
        &[],
        ETH_P_IPV6,
        &ipv6(v6(neighbour), UDP, &udp_with(5060, &body)),
    ))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.banned()?.is_empty() {
        assert!(Instant::now() < deadline, "not banned at all");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.banned()?, [neighbour], "the /128 alone");
    // The client, in the same /64, still reaches the server.
    let client = udp_socket(&pair.client, addr(CLIENT_V6, 0))?;
    let server = udp_socket(&pair.server, addr(SERVER_V6, 5060))?;
    assert_eq!(udp_delivered(&client, &server, 20)?, 20);
    Ok(())
}

/// 5000 forged scanner packets, each from a new source: every one dropped,
/// but at most the per-minute budget (and what a few seconds refill) banned.
#[test]
fn a_forged_storm_cannot_fill_the_blocklist() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Setup::new("[flood]\nscanner_bans = true\nmax_bans_per_minute = 60\n")?;
    let pair = &s.pair;
    let raw = pair.forger()?;
    let frames: Vec<Vec<u8>> = (0..5000u32)
        .map(|i| scanner4(pair, (0x6440_0000 + i).to_be_bytes())) // 100.64.0.0/10
        .collect::<Result<_>>()?;
    let start = Instant::now();
    send_paced(&raw, &frames)?;
    std::thread::sleep(Duration::from_millis(500));
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        s.counter("drop_scanner")?,
        5000,
        "every forged packet dropped"
    );
    let banned = s.banned()?.len();
    let refill = (secs + 1.0).ceil() as usize;
    assert!(
        (50..=60 + refill).contains(&banned),
        "{banned} bans after {secs:.1} s (budget 60 a minute)"
    );
    let st = s.json(&["status", "sip-scanner"])?;
    let skipped = st["jails"][0]["actions"]["skipped_over_budget"]
        .as_u64()
        .unwrap();
    assert_eq!(skipped as usize + banned, 5000, "{st}");
    Ok(())
}

/// 8000 frames from one unbanned source as IPv6 atomic fragments, then as
/// IPv4 first fragments and later fragments to 5060: held to the rate like
/// any packet. A real fragmented INVITE below the rate still gets through.
#[test]
fn fragment_floods_are_held_to_the_rate() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Setup::new("[flood]\nrate = 100\nburst = 100\nescalate_after = 0\n")?;
    let pair = &s.pair;
    let raw = pair.forger()?;
    let src6 = v6("2001:db8:66::1");
    let src4 = [198, 51, 100, 66];
    let shapes: [(&str, Vec<u8>); 3] = [
        (
            "IPv6 atomic fragments",
            frame(
                &[],
                ETH_P_IPV6,
                &ipv6(src6, FRAGMENT, &v6_frag(UDP, 0, false, &udp(5060))),
            ),
        ),
        (
            "IPv4 first fragments",
            frame(
                &[],
                ETH_P_IP,
                &ipv4(src4, UDP, 0, MORE_FRAGMENTS, &udp(5060)),
            ),
        ),
        (
            "IPv4 later fragments",
            frame(
                &[],
                ETH_P_IP,
                &ipv4([198, 51, 100, 67], UDP, 0, 185, &[0u8; 64]),
            ),
        ),
    ];
    for (what, f) in shapes {
        let (passed0, limited0) = (
            s.counter("pass_not_banned")?,
            s.counter("drop_rate_limited")?,
        );
        let start = Instant::now();
        send_paced(&raw, &vec![f; 8000])?;
        let secs = start.elapsed().as_secs_f64();
        let passed = s.counter("pass_not_banned")? - passed0;
        let limited = s.counter("drop_rate_limited")? - limited0;
        let allowed = 100 + (100.0 * (secs + 0.5)) as u64;
        // (The pass counter also sees the namespaces' own neighbour
        // discovery, a few packets.)
        assert!(
            passed <= allowed && limited >= 8000 - allowed && passed + limited >= 8000,
            "{what}: {passed} passed, {limited} limited in {secs:.1} s (at most {allowed})"
        );
    }
    // A large INVITE over UDP, fragmented by the client's own stack: 20 of
    // them, well below the rate, all arrive whole.
    let phone = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    sip.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut invite = b"INVITE sip:100@10.213.0.1 SIP/2.0\r\n".to_vec();
    invite.resize(3000, b'a');
    let mut buf = [0u8; 4096];
    for _ in 0..20 {
        phone.send_to(&invite, sip.local_addr()?)?;
        let n = sip.recv(&mut buf)?;
        assert_eq!(n, invite.len(), "the INVITE arrived whole");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One TCP connection to 5060 carrying SIP requests and their responses at
/// a few thousand packets a second for longer than `escalate_after`, from an
/// unbanned source, under the default settings: never limited, never banned.
#[test]
fn a_busy_tcp_peer_is_not_a_flood() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Setup::new("")?;
    let pair = &s.pair;
    let listener = tcp_listener(&pair.server, addr(SERVER_V4, 5060))?;
    let request = b"OPTIONS sip:trunk@10.213.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 10.213.0.2\r\nContent-Length: 0\r\n\r\n";
    let response = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = vec![0u8; request.len()];
        let mut answered = 0;
        while conn.read_exact(&mut buf).is_ok() {
            conn.write_all(response)?;
            answered += 1;
        }
        Ok(answered)
    });
    let mut client = in_netns(&pair.client, || {
        std::net::TcpStream::connect_timeout(&addr(SERVER_V4, 5060), Duration::from_secs(2))
    })?;
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let start = Instant::now();
    let mut done = 0;
    let mut buf = vec![0u8; response.len()];
    // ~1 500 requests a second for 7 s (each with its response and ACKs:
    // several thousand packets a second), bounded in count.
    while start.elapsed() < Duration::from_secs(7) && done < 20_000 {
        client.write_all(request)?;
        client.read_exact(&mut buf)?;
        done += 1;
        if done % 3 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    drop(client);
    let answered = server.join().expect("server thread")?;
    assert_eq!(answered, done);
    let rate = done as f64 / start.elapsed().as_secs_f64();
    assert!(rate > 700.0, "the peer was busy: {rate:.0} requests/s");
    assert_eq!(s.counter("drop_rate_limited")?, 0, "never limited");
    assert!(s.banned()?.is_empty(), "never banned");
    Ok(())
}
