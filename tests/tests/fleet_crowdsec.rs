//! End to end, CrowdSec trust: what a shared LAPI (or whoever answers in
//! its place) can turn against the operator.
//!
//! * A forged flood: box A bans the "source" ports-only; without `[flood]
//!   export` nothing leaves; with it, the decision says ports-only, box B
//!   applies it so, A's own bouncer never widens it, and A's operator unban
//!   deletes it from the LAPI so it does not come back.
//! * A hostile LAPI stand-in streaming tens of MB of empty objects and of
//!   huge strings: the daemon's peak memory stays within 64 MiB of idle.
//! * A LAPI or APIBAN answering with a redirect to another host: the other
//!   host never sees the key.
//!
//! Box A runs in the server namespace (with the real LAPI), box B in the
//! client one; the victims' packets are forged on either veth, so neither
//! box takes a victim for an address of its own.
use anyhow::Result;
use sipguard_tests::{
    daemon::{cli_ok, Daemon},
    engines::{Lapi, LAPI_PORT},
    fixture::{wait_until, Setup},
    http::Server,
    netns::*,
    packet::routable_udp4,
    Sandbox,
};
use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Forged flood sources: addresses of neither box.
const VICTIM_LOCAL: &str = "198.51.100.81";
const VICTIM_EXPORTED: &str = "198.51.100.82";
const FLOOD: &str =
    "[flood]\nrate = 100\nburst = 100\nescalate_after = 2\nwindow = \"60s\"\nbantime = \"10m\"\n";

fn bans(sb: &Sandbox) -> Result<Vec<(String, String, bool)>> {
    let list: serde_json::Value = serde_json::from_str(&cli_ok(sb, &["list", "--json"])?)?;
    Ok(list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap_or("").to_owned();
            (s("address"), s("jail"), b["ports_only"] == true)
        })
        .collect())
}

fn jails_of(sb: &Sandbox, addr: &str) -> Result<Vec<String>> {
    Ok(bans(sb)?
        .into_iter()
        .filter(|(a, ..)| a == addr)
        .map(|(_, j, _)| j)
        .collect())
}

/// A forger on each side: frames from any source address, so neither box
/// ever takes a victim for an address of its own.
struct Forgers {
    /// On the client's veth, towards box A.
    to_a: RawSocket,
    to_a_macs: ([u8; 6], [u8; 6]),
    /// On the server's veth, towards box B.
    to_b: RawSocket,
    to_b_macs: ([u8; 6], [u8; 6]),
}

impl Forgers {
    fn new(s: &Setup) -> Result<Self> {
        let (client, server) = s.pair.macs()?;
        let iface = s.pair.server_if.clone();
        Ok(Self {
            to_a: s.pair.forger()?,
            to_a_macs: (client, server),
            to_b: in_netns_scoped(&s.pair.server, move || RawSocket::bind(&iface))?,
            to_b_macs: (server, client),
        })
    }
}

fn v4(ip: &str) -> [u8; 4] {
    ip.parse::<std::net::Ipv4Addr>()
        .expect("test addresses are valid")
        .octets()
}

/// How many of `n` datagrams forged from `src` reach `to`'s socket.
fn forged_reach(
    raw: &RawSocket,
    macs: ([u8; 6], [u8; 6]),
    src: &str,
    to: &UdpSocket,
    n: usize,
) -> Result<usize> {
    let dst = to.local_addr()?;
    let std::net::IpAddr::V4(dst_ip) = dst.ip() else {
        anyhow::bail!("IPv4 only");
    };
    let frame = routable_udp4(
        macs,
        v4(src),
        dst_ip.octets(),
        dst.port(),
        b"OPTIONS sip:probe SIP/2.0\r\n\r\n",
    );
    for _ in 0..n {
        raw.send(&frame)?;
    }
    to.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < n && to.recv(&mut buf).is_ok() {
        got += 1;
    }
    Ok(got)
}

/// Floods box A's SIP port with frames forged from `victim` until A bans
/// it as `sip-flood` (bounded: 15 s).
fn flood_until_banned(s: &Setup, f: &Forgers, victim: &str) -> Result<()> {
    let frame = routable_udp4(
        f.to_a_macs,
        v4(victim),
        v4(SERVER_V4),
        5060,
        b"OPTIONS sip:flood@x SIP/2.0\r\n\r\n",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for _ in 0..100 {
            for _ in 0..10 {
                f.to_a.send(&frame)?;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if jails_of(&s.sb, victim)?.iter().any(|j| j == "sip-flood") {
            return Ok(());
        }
    }
    anyhow::bail!("{victim} was not banned for its flood: {:?}", bans(&s.sb)?)
}

#[test]
fn a_forged_flood_never_becomes_a_fleet_wide_all_ports_ban() -> Result<()> {
    let s = Setup::new(FLOOD)?;
    let mut lapi = Lapi::start(&s.pair.server)?;
    lapi.machine("boxa", "boxa-Passw0rd-xyz")?;
    let key_a = lapi.bouncer_key("boxa")?;
    let key_b = lapi.bouncer_key("boxb")?;
    let crowdsec_a = format!(
        "[crowdsec]\napi_url = \"http://127.0.0.1:{LAPI_PORT}/\"\napi_key = \"{key_a}\"\nupdate_frequency = \"1s\"\nmachine_id = \"boxa\"\npassword = \"boxa-Passw0rd-xyz\"\nall_ports = true\n"
    );
    s.sb.write_config(&format!("{crowdsec_a}{FLOOD}"))?;
    s.cli(&["reload"])?;
    let sb_b = Sandbox::new(&format!(
        "[crowdsec]\napi_url = \"http://{SERVER_V4}:{LAPI_PORT}/\"\napi_key = \"{key_b}\"\nupdate_frequency = \"1s\"\nall_ports = true\n"
    ))?;
    let _box_b = Daemon::start(&s.pair.client, &sb_b, &["--iface", &s.pair.client_if])?;
    let forgers = Forgers::new(&s)?;

    // Without `[flood] export`: the ban stays on box A.
    flood_until_banned(&s, &forgers, VICTIM_LOCAL)?;
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !lapi.decisions()?.to_string().contains(VICTIM_LOCAL),
        "a packet ban left the box: {}",
        lapi.decisions()?
    );
    assert!(jails_of(&sb_b, VICTIM_LOCAL)?.is_empty());

    // With it: the decision exists, marked ports-only, for the flood's
    // own 10 minutes.
    s.sb.write_config(&format!("{crowdsec_a}{FLOOD}export = true\n"))?;
    s.cli(&["reload"])?;
    flood_until_banned(&s, &forgers, VICTIM_EXPORTED)?;
    wait_until(10, "the flood ban is a decision in the LAPI", || {
        Ok(lapi.decisions()?.to_string().contains(VICTIM_EXPORTED))
    })?;
    let decisions = lapi.decisions()?.to_string();
    assert!(
        decisions.contains("sipguard/sip-flood machine=boxa ports-only"),
        "{decisions}"
    );
    wait_until(10, "box B has the decision", || {
        Ok(jails_of(&sb_b, VICTIM_EXPORTED)? == ["crowdsec"])
    })?;
    let on_b = bans(&sb_b)?;
    assert!(
        on_b.iter()
            .any(|(a, _, ports_only)| a == VICTIM_EXPORTED && *ports_only),
        "box B must apply it ports-only: {on_b:?}"
    );

    // Box A's own bouncer never widens its own ban: after several pulls
    // it is still the one sip-flood ban, and port 53 still answers.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jails_of(&s.sb, VICTIM_EXPORTED)?, ["sip-flood"]);
    let dns_a = udp_socket(&s.pair.server, addr(SERVER_V4, 53))?;
    assert_eq!(
        forged_reach(&forgers.to_a, forgers.to_a_macs, VICTIM_EXPORTED, &dns_a, 5)?,
        5,
        "box A widened its own ban"
    );

    // On box B: the victim's traffic to SIP drops, to other ports flows.
    let sip_b = udp_socket(&s.pair.client, addr(CLIENT_V4, 5060))?;
    let dns_b = udp_socket(&s.pair.client, addr(CLIENT_V4, 53))?;
    let (raw, macs) = (&forgers.to_b, forgers.to_b_macs);
    assert_eq!(
        forged_reach(raw, macs, VICTIM_EXPORTED, &sip_b, 5)?,
        0,
        "box B must drop SIP: {:?}",
        bans(&sb_b)?
    );
    assert_eq!(
        forged_reach(raw, macs, VICTIM_EXPORTED, &dns_b, 5)?,
        5,
        "box B dropped all ports"
    );
    // The flood kept on box A reaches nothing of box B's either.
    assert_eq!(forged_reach(raw, macs, VICTIM_LOCAL, &sip_b, 5)?, 5);
    assert!(jails_of(&sb_b, VICTIM_LOCAL)?.is_empty());

    // A's operator unbans: the LAPI loses the decision, box B lifts it,
    // and a full resync on A (after a LAPI outage) does not bring it back.
    s.cli(&["unban", VICTIM_EXPORTED])?;
    wait_until(10, "the LAPI deleted box A's decision", || {
        Ok(!lapi.decisions()?.to_string().contains(VICTIM_EXPORTED))
    })?;
    wait_until(10, "box B lifted it", || {
        Ok(jails_of(&sb_b, VICTIM_EXPORTED)?.is_empty())
    })?;
    lapi.restart()?;
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        jails_of(&s.sb, VICTIM_EXPORTED)?.is_empty(),
        "{:?}",
        bans(&s.sb)?
    );
    assert!(
        s.daemon.log().contains("deleted this machine's"),
        "{}",
        s.daemon.log()
    );
    Ok(())
}

/// A process's memory figure (`VmHWM`, `VmRSS`) in KiB.
fn vm(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/{pid}/status"))
}

#[test]
fn a_hostile_lapi_answer_is_bounded_in_memory() -> Result<()> {
    let s = Setup::new("")?;
    // 0: an empty stream; 1: 50 MB of empty objects; 2: huge strings;
    // 3: 300 000 well-formed decisions (over max_decisions).
    let mode = Arc::new(AtomicU8::new(0));
    let empties = Arc::new(format!(
        r#"{{"new":[{}{{}}],"deleted":null}}"#,
        "{},".repeat((50 << 20) / 3)
    ));
    let huge = Arc::new(format!(
        r#"{{"new":[{{"scope":"Ip","value":"{a}","scenario":"{a}"}},{{"scope":"Ip","value":"192.0.2.1","origin":"{b}"}}],"{a}":["{b}"]}}"#,
        a = "a".repeat(12 << 20),
        b = "\\u00e9".repeat(2 << 20)
    ));
    let many = Arc::new({
        let mut t = String::from(r#"{"new":["#);
        for i in 0..300_000u32 {
            let ip = std::net::Ipv4Addr::from(0x2c00_0000 + i);
            t.push_str(&format!(
                r#"{{"id":{i},"type":"ban","scope":"Ip","value":"{ip}","duration":"1h","scenario":"s{i}","origin":"crowdsec"}},"#
            ));
        }
        t.pop();
        t.push_str("]}");
        t
    });
    let m = mode.clone();
    let (e, h, n) = (empties.clone(), huge.clone(), many.clone());
    let lapi = Server::start(
        &s.pair.server,
        Box::new(move |_| {
            let body = match m.load(Ordering::SeqCst) {
                1 => (*e).clone(),
                2 => (*h).clone(),
                3 => (*n).clone(),
                _ => r#"{"new":null,"deleted":null}"#.to_owned(),
            };
            (200, body)
        }),
    )?;
    s.sb.write_config(&format!(
        "[crowdsec]\napi_url = \"{}\"\napi_key = \"k\"\nupdate_frequency = \"1s\"\nmax_decisions = 1000\n",
        lapi.url("/")
    ))?;
    s.cli(&["reload"])?;
    for _ in 0..3 {
        lapi.next(Duration::from_secs(10))
            .expect("the bouncer pulls");
    }
    let pid = s.daemon.pid();
    let idle = vm(pid, "VmHWM")?;
    for (m, what) in [
        (1u8, "empty objects"),
        (2, "huge strings"),
        (3, "300 000 decisions"),
    ] {
        mode.store(m, Ordering::SeqCst);
        // The request after the hostile answer comes once it was read (a
        // debug build parses ~2 MB/s of objects).
        let started = Instant::now();
        let deadline = started + Duration::from_secs(240);
        let mut served = 0;
        while served < 2 && Instant::now() < deadline {
            if lapi.next(Duration::from_secs(5)).is_some() {
                served += 1;
                eprintln!("{what}: request {served} after {:?}", started.elapsed());
            }
        }
        assert!(served >= 2, "{what}: the bouncer stopped pulling");
        let peak = vm(pid, "VmHWM")?;
        eprintln!("{what}: VmHWM {peak} KiB, idle {idle} KiB");
        assert!(
            peak < idle + 64 * 1024,
            "{what}: peak {peak} KiB against {idle} KiB idle"
        );
        assert!(s.json(&["status"])?.is_object(), "status answers");
    }
    let log = s.daemon.log();
    assert!(log.contains("no decision within bounds"), "{log}");
    assert!(log.contains("more than max_decisions = 1000"), "{log}");
    let st = s.json(&["status"])?;
    assert_eq!(st["remote"]["crowdsec"]["bans"], 1000, "{st}");
    Ok(())
}

#[test]
fn keys_never_follow_a_redirect() -> Result<()> {
    let s = Setup::new("")?;
    let elsewhere = Server::recorder(&s.pair.server)?;
    let target = elsewhere.url("/");
    let lapi = Server::start(&s.pair.server, Box::new(move |_| (302, target.clone())))?;
    let target = elsewhere.url("/api/");
    let apiban = Server::start(&s.pair.server, Box::new(move |_| (302, target.clone())))?;
    s.sb.write_config(&format!(
        "[crowdsec]\napi_url = \"{}\"\napi_key = \"secret-bouncer-key\"\nupdate_frequency = \"1s\"\nmachine_id = \"m1\"\npassword = \"secret-machine-pw\"\n\
         [apiban]\nkey = \"secret-apiban-key\"\nurl = \"{}\"\ninterval = \"1m\"\n",
        lapi.url("/"),
        apiban.url("/api/")
    ))?;
    s.cli(&["reload"])?;
    // An unban makes the alert sender log in (to delete its decisions).
    s.cli(&["ban", "203.0.113.9"])?;
    s.cli(&["unban", "203.0.113.9"])?;
    let first = lapi
        .next(Duration::from_secs(10))
        .expect("the bouncer asked");
    assert!(first
        .headers
        .iter()
        .any(|(k, v)| k == "x-api-key" && v == "secret-bouncer-key"));
    apiban.next(Duration::from_secs(10)).expect("APIBAN asked");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        elsewhere.next(Duration::from_millis(500)).is_none(),
        "a redirect was followed"
    );
    let log = s.daemon.log();
    assert!(log.contains("redirects are not followed"), "{log}");
    for secret in [
        "secret-bouncer-key",
        "secret-machine-pw",
        "secret-apiban-key",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    Ok(())
}
