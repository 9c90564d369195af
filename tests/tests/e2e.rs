//! End to end: the `sipguard` daemon attached (driver-mode XDP) to the server
//! side of a veth pair between two namespaces this test creates, real UDP and
//! TCP from the client side, bans changed with the real CLI.
use anyhow::Result;
use sipguard_tests::{
    daemon::{cli, cli_ok, Daemon},
    fixture::Setup,
    netns::*,
    Sandbox,
};
use std::{
    net::{TcpListener, UdpSocket},
    time::{Duration, Instant},
};

const PROBES: usize = 20;
const SIP: u16 = 5060;
const OTHER_PORT: u16 = 8080;

/// One client source: its UDP socket and address.
struct Source {
    udp: UdpSocket,
    ip: std::net::IpAddr,
}

/// The server's listeners on the SIP port and on an unprotected port.
struct Server {
    udp_sip: UdpSocket,
    udp_other: UdpSocket,
    _tcp_sip: TcpListener,
    _tcp_other: TcpListener,
    ip: &'static str,
}

fn source(pair: &Pair, ip: &str) -> Result<Source> {
    Ok(Source {
        udp: udp_socket(&pair.client, addr(ip, 0))?,
        ip: ip.parse()?,
    })
}

fn server(pair: &Pair, ip: &'static str) -> Result<Server> {
    Ok(Server {
        udp_sip: udp_socket(&pair.server, addr(ip, SIP))?,
        udp_other: udp_socket(&pair.server, addr(ip, OTHER_PORT))?,
        _tcp_sip: tcp_listener(&pair.server, addr(ip, SIP))?,
        _tcp_other: tcp_listener(&pair.server, addr(ip, OTHER_PORT))?,
        ip,
    })
}

fn udp_to(src: &Source, dst: &UdpSocket) -> Result<usize> {
    udp_delivered(&src.udp, dst, PROBES)
}

fn tcp_to(pair: &Pair, src: &Source, srv: &Server, port: u16) -> Result<bool> {
    tcp_connects(&pair.client, src.ip, addr(srv.ip, port))
}

/// Ports mode: before a ban everything flows; after it the source's SIP
/// traffic (UDP and TCP) dies while its other ports and other sources flow;
/// after unban it flows again.
fn ports_mode(server_ip: &'static str, client_ip: &str, other_ip: &str, mode: &str) -> Result<()> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let daemon = Daemon::start(
        &pair.server,
        &sb,
        &["--iface", &pair.server_if, "--xdp-mode", mode],
    )?;
    assert!(
        daemon.log().contains(&format!("({mode})")),
        "attached in {mode} mode: {}",
        daemon.log()
    );
    assert!(
        pair.server_has_xdp()?,
        "program attached to the server veth"
    );
    let srv = server(&pair, server_ip)?;
    let attacker = source(&pair, client_ip)?;
    let other = source(&pair, other_ip)?;

    assert_eq!(
        udp_to(&attacker, &srv.udp_sip)?,
        PROBES,
        "before the ban, SIP/UDP flows"
    );
    assert!(
        tcp_to(&pair, &attacker, &srv, SIP)?,
        "before the ban, SIP/TCP connects"
    );

    cli_ok(&sb, &["ban", client_ip])?;
    assert_eq!(
        udp_to(&attacker, &srv.udp_sip)?,
        0,
        "banned: SIP/UDP dropped"
    );
    assert!(
        !tcp_to(&pair, &attacker, &srv, SIP)?,
        "banned: SIP/TCP cannot connect"
    );
    assert_eq!(
        udp_to(&attacker, &srv.udp_other)?,
        PROBES,
        "banned: other UDP port still flows"
    );
    assert!(
        tcp_to(&pair, &attacker, &srv, OTHER_PORT)?,
        "banned: other TCP port still connects"
    );
    assert_eq!(
        udp_to(&other, &srv.udp_sip)?,
        PROBES,
        "another source still reaches SIP"
    );

    let list: serde_json::Value = serde_json::from_str(&cli_ok(&sb, &["list", "--json"])?)?;
    let dropped = list[0]["packets"].as_u64().unwrap();
    assert!(
        dropped >= PROBES as u64,
        "the ban counted its drops: {list}"
    );

    cli_ok(&sb, &["unban", client_ip])?;
    assert_eq!(
        udp_to(&attacker, &srv.udp_sip)?,
        PROBES,
        "after unban, SIP/UDP flows again"
    );
    assert!(
        tcp_to(&pair, &attacker, &srv, SIP)?,
        "after unban, SIP/TCP connects again"
    );
    Ok(())
}

#[test]
fn ipv4_ban_unban_ports_mode() -> Result<()> {
    ports_mode(SERVER_V4, CLIENT_V4, OTHER_V4, "driver")
}

#[test]
fn ipv4_ban_unban_skb_mode() -> Result<()> {
    ports_mode(SERVER_V4, CLIENT_V4, OTHER_V4, "skb")
}

#[test]
fn ipv6_ban_unban_ports_mode() -> Result<()> {
    ports_mode(SERVER_V6, CLIENT_V6, OTHER_V6, "driver")
}

#[test]
fn auto_mode_falls_back_to_skb_and_default_route_picks_the_interface() -> Result<()> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    // Loopback has no driver-mode XDP: auto falls back to skb, loudly.
    let mut daemon = Daemon::start(&pair.server, &sb, &["--iface", "lo"])?;
    let log = daemon.log();
    assert!(
        log.contains("falling back to skb mode") && log.contains("attached to lo (skb)"),
        "{log}"
    );
    daemon.stop()?;
    // The program stays attached after a stop; a new daemon would take over
    // its link, mode and all. Detach to attach anew.
    assert!(cli_ok(&sb, &["detach"])?.contains("detached from lo"));
    // Driver mode asked for explicitly is an error, not a silent fallback.
    let err = sipguard_tests::daemon::refused_run(
        &pair.server,
        &sb,
        &["--iface", "lo", "--xdp-mode", "driver"],
    )?;
    assert!(err.contains("cannot attach to lo"), "{err}");
    // No --iface: the default route's interface.
    pair.server
        .ip(&["route", "add", "default", "via", CLIENT_V4])?;
    let daemon = Daemon::start(&pair.server, &sb, &[])?;
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "protecting {}, the interface of the default route",
            pair.server_if
        )),
        "{log}"
    );
    assert!(pair.server_has_xdp()?);
    Ok(())
}

#[test]
fn all_ports_mode_drops_every_port() -> Result<()> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let _daemon = Daemon::start(
        &pair.server,
        &sb,
        &["--iface", &pair.server_if, "--all-ports"],
    )?;
    for (server_ip, client_ip) in [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)] {
        let srv = server(&pair, server_ip)?;
        let attacker = source(&pair, client_ip)?;
        assert_eq!(udp_to(&attacker, &srv.udp_other)?, PROBES);
        cli_ok(&sb, &["ban", client_ip, "--for", "10m"])?;
        assert_eq!(
            udp_to(&attacker, &srv.udp_sip)?,
            0,
            "{client_ip}: SIP dropped"
        );
        assert_eq!(
            udp_to(&attacker, &srv.udp_other)?,
            0,
            "{client_ip}: other UDP port dropped too"
        );
        assert!(
            !tcp_to(&pair, &attacker, &srv, OTHER_PORT)?,
            "{client_ip}: other TCP port dropped too"
        );
    }
    Ok(())
}

#[test]
fn cidr_ban_and_allowlist_win() -> Result<()> {
    let s = Setup::new("")?;
    let (sb, pair) = (&s.sb, &s.pair);
    let srv = server(pair, SERVER_V4)?;
    let a = source(pair, CLIENT_V4)?;
    let b = source(pair, OTHER_V4)?;
    cli_ok(sb, &["ban", "10.213.0.0/24"])?;
    assert_eq!(udp_to(&a, &srv.udp_sip)?, 0);
    assert_eq!(udp_to(&b, &srv.udp_sip)?, 0);
    cli_ok(sb, &["allow", OTHER_V4])?;
    assert_eq!(
        udp_to(&b, &srv.udp_sip)?,
        PROBES,
        "allow-listed source is never dropped"
    );
    assert_eq!(
        udp_to(&a, &srv.udp_sip)?,
        0,
        "the rest of the /24 stays banned"
    );
    let allowed: serde_json::Value =
        serde_json::from_str(&cli_ok(sb, &["list", "--allowed", "--json"])?)?;
    let entry = allowed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["address"] == OTHER_V4)
        .expect("the allow-listed source is listed");
    assert!(
        entry["hits"].as_u64().unwrap() >= PROBES as u64,
        "{allowed}"
    );
    Ok(())
}

#[test]
fn ban_survives_daemon_restart() -> Result<()> {
    let mut s = Setup::new("")?;
    let srv = server(&s.pair, SERVER_V4)?;
    let attacker = source(&s.pair, CLIENT_V4)?;
    s.cli(&["ban", CLIENT_V4, "--for", "1h"])?;
    assert_eq!(udp_to(&attacker, &srv.udp_sip)?, 0);

    assert!(
        s.daemon.stop()?.success(),
        "clean stop:\n{}",
        s.daemon.log()
    );
    assert!(
        s.pair.server_has_xdp()?,
        "a clean stop leaves the program attached"
    );
    assert_eq!(
        udp_to(&attacker, &srv.udp_sip)?,
        0,
        "dropped with no daemon"
    );

    s.start_again()?;
    assert!(
        s.daemon.log().contains("1 ban(s) in force"),
        "{}",
        s.daemon.log()
    );
    assert_eq!(
        udp_to(&attacker, &srv.udp_sip)?,
        0,
        "the ban is enforced again after restart"
    );
    let list = s.cli(&["list"])?;
    assert!(
        list.contains(CLIENT_V4) && list.contains("in 59m"),
        "{list}"
    );
    Ok(())
}

/// A banned source sending 1 000 packets a second while the daemon is
/// restarted as a service manager does it (SIGTERM, then a new start, which
/// verifies the program for seconds): not one packet gets through.
#[test]
fn a_restart_lets_nothing_through() -> Result<()> {
    let mut s = Setup::new("")?;
    let srv = server(&s.pair, SERVER_V4)?;
    let attacker = source(&s.pair, CLIENT_V4)?;
    s.cli(&["ban", CLIENT_V4, "--for", "1h"])?;
    let dst = srv.udp_sip.local_addr()?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent = std::thread::scope(|scope| -> Result<usize> {
        let sender = scope.spawn(|| {
            let mut sent = 0;
            // 1 000 a second, bounded to 60 s.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 60_000 {
                let _ = attacker.udp.send_to(b"OPTIONS sip:x SIP/2.0\r\n\r\n", dst);
                sent += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(300));
        s.restart()?;
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(sender.join().expect("sender"))
    })?;
    assert!(sent > 500, "the flood ran through the restart: {sent}");
    srv.udp_sip.set_nonblocking(true)?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    while srv.udp_sip.recv(&mut buf).is_ok() {
        got += 1;
    }
    assert_eq!(got, 0, "{got} of {sent} packets got through the restart");
    Ok(())
}

#[test]
fn killed_daemon_keeps_protecting_and_bans_expire_in_the_kernel() -> Result<()> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let args = ["--iface", pair.server_if.as_str()];
    let mut daemon = Daemon::start(&pair.server, &sb, &args)?;
    let srv = server(&pair, SERVER_V4)?;
    let attacker = source(&pair, CLIENT_V4)?;
    cli_ok(&sb, &["ban", CLIENT_V4, "--for", "3"])?;
    let banned_at = Instant::now();
    daemon.kill()?;
    assert!(
        pair.server_has_xdp()?,
        "the pinned link keeps the program attached"
    );
    assert_eq!(
        udp_to(&attacker, &srv.udp_sip)?,
        0,
        "still dropped with the daemon dead"
    );
    // Wait out the ban (bounded), with no daemon to remove it.
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(banned_at.elapsed()) + Duration::from_millis(300),
    );
    assert_eq!(
        udp_to(&attacker, &srv.udp_sip)?,
        PROBES,
        "the kernel ended the ban on time"
    );
    let list = cli_ok(&sb, &["list"])?;
    assert!(
        list.contains("expired"),
        "the entry is still there, marked expired: {list}"
    );
    let stats: serde_json::Value = serde_json::from_str(&cli_ok(&sb, &["stats", "--json"])?)?;
    assert!(
        stats["counters"]["pass_ban_expired"]["packets"]
            .as_u64()
            .unwrap()
            >= PROBES as u64,
        "{stats}"
    );

    // A new daemon takes over the pinned link, then sweeps the expired ban.
    let _daemon = Daemon::start(&pair.server, &sb, &args)?;
    assert!(_daemon.log().contains("existing link"), "{}", _daemon.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    while cli_ok(&sb, &["list"])?.contains(CLIENT_V4) {
        assert!(Instant::now() < deadline, "expired ban not swept");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn detach_removes_a_program_left_by_a_killed_daemon() -> Result<()> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let mut daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    daemon.kill()?;
    assert!(pair.server_has_xdp()?);
    let out = cli_ok(&sb, &["detach"])?;
    assert!(out.contains(&pair.server_if), "{out}");
    assert!(!pair.server_has_xdp()?, "detached");
    Ok(())
}

#[test]
fn bad_input_gets_a_clear_error_and_nonzero_exit() -> Result<()> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    // A missing interface: the daemon refuses before loading anything.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", pair.server.path()))
        .arg(sipguard_tests::daemon::bin())
        .args(sb.args())
        .args(["run", "--iface", "sgnosuchif0"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no network interface named 'sgnosuchif0'"),
        "{err}"
    );

    let _daemon = Daemon::start(&pair.server, &sb, &["--iface", &pair.server_if])?;
    for (args, expect) in [
        (vec!["ban", "10.0.0.300"], "invalid address '10.0.0.300'"),
        (vec!["ban", "10.0.0.0/33"], "invalid network '10.0.0.0/33'"),
        (vec!["ban", "0.0.0.0/0"], "refusing to ban 0.0.0.0/0"),
        (
            vec!["ban", "192.0.2.1", "--for", "soon"],
            "invalid duration 'soon'",
        ),
        (vec!["unban", "192.0.2.99"], "192.0.2.99 is not banned"),
        (vec!["allow", "fe80::/xx"], "invalid network 'fe80::/xx'"),
    ] {
        let out = cli(&sb, &args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one-line error: {err}");
    }
    Ok(())
}

#[test]
fn only_root_changes_bans() -> Result<()> {
    let s = Setup::new("")?;
    let sb = &s.sb;
    for args in [
        vec!["ban", "192.0.2.1"],
        vec!["unban", "192.0.2.1"],
        vec!["allow", "192.0.2.1"],
        vec!["list"],
    ] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(sipguard_tests::daemon::bin())
            .args(sb.args())
            .args(&args)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("only root can"),
            "{args:?}: {err}"
        );
    }
    assert!(
        cli_ok(sb, &["list"])?.contains("0 ban(s)"),
        "nothing was banned"
    );
    Ok(())
}
