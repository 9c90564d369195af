//! End to end: bans shared through real engines, started by the tests in
//! the test namespaces. A CrowdSec LAPI (Debian's `crowdsec -no-cs`) whose
//! `cscli` decisions drop traffic and stop dropping when deleted, and which
//! carries one box's log-driven bans to another; a redis-server carrying
//! bans between two boxes, with catch-up, fleet unbans, no echo, and a
//! restart of Redis that loses nothing; the APIBAN feed against a local
//! fixture. Box 1 runs in the server namespace, box 2 in the client one.
use anyhow::Result;
use sipguard_tests::{
    daemon::{cli_ok, Daemon},
    engines::{
        ban_entry, signed_text, write_fleet_key, Lapi, Redis, FLEET_KEY, LAPI_PORT, REDIS_PORT,
    },
    fixture::{append, failures, wait_until, Setup, FREESWITCH_JAIL},
    http::Server,
    netns::*,
    Sandbox,
};
use std::time::Duration;

/// An offender of box 1's log that box 2 must then drop: not an address of
/// either box until the test gives it to the server namespace to send from.
const OFFENDER: &str = "198.51.100.77";

fn origins(sb: &Sandbox) -> Result<Vec<(String, String)>> {
    let list: serde_json::Value = serde_json::from_str(&cli_ok(sb, &["list", "--json"])?)?;
    Ok(list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or("").to_owned(),
                b["jail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

fn has(sb: &Sandbox, addr: &str, origin: &str) -> Result<bool> {
    Ok(origins(sb)?
        .iter()
        .any(|(a, o)| a == addr && o.starts_with(origin)))
}

/// Box 2: a second sandbox and daemon on the client side of the pair.
fn box2(s: &Setup, config: &str) -> Result<(Sandbox, Daemon)> {
    let sb = Sandbox::new(config)?;
    let d = Daemon::start(&s.pair.client, &sb, &["--iface", &s.pair.client_if])?;
    Ok((sb, d))
}

/// How many of `n` datagrams from the offender (an address the server
/// side takes for it now, after box 1 banned it) reach box 2's socket.
fn offender_reaches_box2(s: &Setup, n: usize) -> Result<usize> {
    s.pair.server.ip(&[
        "addr",
        "add",
        &format!("{OFFENDER}/32"),
        "dev",
        &s.pair.server_if,
    ])?;
    let from = udp_socket(&s.pair.server, addr(OFFENDER, 0))?;
    let to = udp_socket(&s.pair.client, addr(CLIENT_V4, 5060))?;
    udp_delivered(&from, &to, n)
}

#[test]
fn crowdsec_decisions_drop_and_lift_through_outages() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    let lapi = Lapi::start(&s.pair.server)?;
    let key = lapi.bouncer_key("sipguard-box1")?;
    s.sb.write_config(&format!(
        "[crowdsec]\napi_url = \"http://127.0.0.1:{LAPI_PORT}/\"\napi_key = \"{key}\"\nupdate_frequency = \"1s\"\n{FREESWITCH_JAIL}"
    ))?;
    s.cli(&["reload"])?;
    let mut lapi = lapi;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    // Port 53 too: a CrowdSec decision drops everything, as firewall bouncers do.
    let dns = udp_socket(&s.pair.server, addr(SERVER_V4, 53))?;
    assert_eq!(udp_delivered(&attacker, &sip, 5)?, 5);

    lapi.cscli(&["decisions", "add", "--ip", CLIENT_V4, "--duration", "1h"])?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "2001:db8:77::/48",
        "--duration",
        "2h",
    ])?;
    // The box's own address: never banned, whatever CrowdSec says.
    lapi.cscli(&["decisions", "add", "--ip", SERVER_V4, "--duration", "1h"])?;
    // Within the update frequency (1 s) plus a second.
    wait_until(2, "the decisions are in force", || {
        Ok(has(&s.sb, CLIENT_V4, "crowdsec")? && has(&s.sb, "2001:db8:77::", "crowdsec")?)
    })?;
    assert_eq!(udp_delivered(&attacker, &sip, 5)?, 0);
    assert_eq!(udp_delivered(&attacker, &dns, 5)?, 0);
    let st = s.json(&["status"])?;
    assert_eq!(st["remote"]["crowdsec"]["bans"], 2, "{st}");
    assert_eq!(st["remote"]["crowdsec"]["refused_never_ban"], 1, "{st}");
    assert!(!has(&s.sb, SERVER_V4, "")?);
    assert_eq!(
        s.metric("sipguard_active_bans{jail=\"crowdsec\",family=\"ipv4\"}")?,
        Some(1.0)
    );

    // Deleted: traffic flows again within the update frequency.
    lapi.cscli(&["decisions", "delete", "--ip", CLIENT_V4])?;
    wait_until(5, "the deletion is applied", || {
        Ok(!has(&s.sb, CLIENT_V4, "")?)
    })?;
    assert_eq!(udp_delivered(&attacker, &sip, 5)?, 5);

    // An outage keeps what is in force; the return resynchronises.
    lapi.cscli(&["decisions", "add", "--ip", CLIENT_V4, "--duration", "1h"])?;
    wait_until(5, "banned again", || has(&s.sb, CLIENT_V4, "crowdsec"))?;
    lapi.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        udp_delivered(&attacker, &sip, 5)?,
        0,
        "an outage lifted a ban"
    );
    lapi.restart()?;
    lapi.cscli(&["decisions", "delete", "--range", "2001:db8:77::/48"])?;
    lapi.cscli(&["decisions", "add", "--ip", OTHER_V4, "--duration", "1h"])?;
    wait_until(10, "resynchronised after the outage", || {
        Ok(has(&s.sb, OTHER_V4, "crowdsec")? && !has(&s.sb, "2001:db8:77::", "")?)
    })?;
    assert!(has(&s.sb, CLIENT_V4, "crowdsec")?);
    assert!(s.daemon.log().contains("the LAPI at"), "{}", s.daemon.log());

    // The operator's unban stands through the next full list (an outage
    // makes the bouncer read it all again); a new, longer decision is
    // enforced.
    s.cli(&["unban", CLIENT_V4])?;
    lapi.kill();
    std::thread::sleep(Duration::from_secs(2));
    lapi.restart()?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "203.0.113.44",
        "--duration",
        "1h",
    ])?;
    wait_until(10, "resynchronised after the second outage", || {
        has(&s.sb, "203.0.113.44", "crowdsec")
    })?;
    assert!(!has(&s.sb, CLIENT_V4, "")?, "the resync undid the unban");
    assert_eq!(udp_delivered(&attacker, &sip, 5)?, 5);
    lapi.cscli(&["decisions", "add", "--ip", CLIENT_V4, "--duration", "3h"])?;
    wait_until(5, "a new decision is enforced", || {
        has(&s.sb, CLIENT_V4, "crowdsec")
    })?;
    Ok(())
}

#[test]
fn one_boxs_log_bans_reach_another_through_crowdsec() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    let lapi = Lapi::start(&s.pair.server)?;
    lapi.machine("box1", "box1-Passw0rd-xyz")?;
    let key1 = lapi.bouncer_key("box1")?;
    let key2 = lapi.bouncer_key("box2")?;
    s.sb.write_config(&format!(
        "[crowdsec]\napi_url = \"http://127.0.0.1:{LAPI_PORT}/\"\napi_key = \"{key1}\"\nupdate_frequency = \"1s\"\nmachine_id = \"box1\"\npassword = \"box1-Passw0rd-xyz\"\n{FREESWITCH_JAIL}"
    ))?;
    s.cli(&["reload"])?;
    let (sb2, _box2) = box2(
        &s,
        &format!(
            "[crowdsec]\napi_url = \"http://{SERVER_V4}:{LAPI_PORT}/\"\napi_key = \"{key2}\"\nupdate_frequency = \"1s\"\n"
        ),
    )?;

    append(&s.sb, &failures(OFFENDER, 3))?;
    wait_until(5, "box 1 bans from its log", || {
        has(&s.sb, OFFENDER, "freeswitch")
    })?;
    wait_until(10, "box 2 enforces box 1's detection", || {
        has(&sb2, OFFENDER, "crowdsec")
    })?;
    let decisions = lapi.decisions()?;
    assert!(
        decisions.to_string().contains("sipguard/freeswitch"),
        "{decisions}"
    );
    assert_eq!(offender_reaches_box2(&s, 5)?, 0);
    // Manual bans are the operator's business, not detections.
    s.cli(&["ban", "203.0.113.50"])?;
    std::thread::sleep(Duration::from_secs(3));
    assert!(!lapi.decisions()?.to_string().contains("203.0.113.50"));
    Ok(())
}

#[test]
fn two_boxes_share_bans_through_redis() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    let mut redis = Redis::start(&s.pair.server)?;
    // Both boxes hold the fleet's key, each in a root-only file of its own.
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o600)?;
    s.sb.write_config(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{REDIS_PORT}\"\nnode = \"box1\"\nkey_file = \"{{dir}}/fleet.key\"\n{FREESWITCH_JAIL}"
    ))?;
    s.cli(&["reload"])?;
    let box2_config = format!(
        "[redis]\nurl = \"redis://{SERVER_V4}:{REDIS_PORT}/0\"\nnode = \"box2\"\nkey_file = \"{{dir}}/fleet.key\"\n"
    );
    let sb2 = Sandbox::new(&box2_config)?;
    write_fleet_key(sb2.dir.path(), FLEET_KEY, 0o600)?;
    let mut d2 = Daemon::start(&s.pair.client, &sb2, &["--iface", &s.pair.client_if])?;

    // A log ban on box 1 reaches box 2, and drops there.
    append(&s.sb, &failures(OFFENDER, 3))?;
    wait_until(5, "box 2 has box 1's ban", || {
        has(&sb2, OFFENDER, "redis:box1")
    })?;
    assert_eq!(offender_reaches_box2(&s, 5)?, 0);
    // No echo: box 1 holds its own ban once, not also as a remote one.
    assert_eq!(
        origins(&s.sb)?
            .iter()
            .filter(|(a, _)| a == OFFENDER)
            .count(),
        1
    );
    assert!(s.json(&["status"])?["remote"]
        .as_object()
        .unwrap()
        .is_empty());

    // Box 2's manual ban reaches box 1.
    cli_ok(&sb2, &["ban", "203.0.113.60", "--for", "1h"])?;
    wait_until(5, "box 1 has box 2's ban", || {
        has(&s.sb, "203.0.113.60", "redis:box2")
    })?;

    // Box 2 away: what box 1 bans meanwhile is there when it is back.
    d2.stop()?;
    s.cli(&["ban", "203.0.113.61", "--for", "1h"])?;
    let mut d2 = Daemon::start(&s.pair.client, &sb2, &["--iface", &s.pair.client_if])?;
    wait_until(5, "box 2 caught up", || {
        has(&sb2, "203.0.113.61", "redis:box1")
    })?;

    // Redis killed: a ban made meanwhile waits and arrives; nothing is lost.
    redis.kill();
    s.cli(&["ban", "203.0.113.62", "--for", "1h"])?;
    std::thread::sleep(Duration::from_secs(1));
    redis.restart()?;
    wait_until(15, "the ban made while Redis was down arrives", || {
        has(&sb2, "203.0.113.62", "redis:box1")
    })?;
    assert!(has(&sb2, "203.0.113.61", "redis:box1")?);
    assert!(
        redis
            .cli(&["ZCARD", "sipguard:bans"])?
            .trim()
            .parse::<u32>()?
            >= 4
    );

    // Unsigned entries (the old format, from anyone who can write to the
    // Redis) change nothing, and are counted.
    for net in ["203.0.113.98", "203.0.113.97"] {
        redis.add_event(&[
            ("node", "evil"),
            ("op", "ban"),
            ("net", net),
            ("end", "-1"),
            ("scope", "all"),
        ])?;
    }
    wait_until(5, "unsigned entries counted", || {
        Ok(s.json(&["status"])?["fleet"]["redis"]["rejected"]["malformed"] == 2)
    })?;
    assert!(!has(&s.sb, "203.0.113.98", "")?);
    // A signed member's entries: a ban of the whole Internet, of box 1's
    // own address, and garbage; then one well-formed entry, which alone is
    // banned.
    for net in ["0.0.0.0/0", SERVER_V4, "not-an-address", "203.0.113.99"] {
        let mut e = ban_entry("evil", "192.0.2.1");
        e.end_ms = None;
        e.scope = sipguard::bans::Scope::AllPorts;
        let text = e.text().replace("192.0.2.1/32", net);
        redis.add_event(&[("e", &text), ("m", &signed_text(FLEET_KEY, &text))])?;
    }
    wait_until(5, "the well-formed entry arrives", || {
        has(&s.sb, "203.0.113.99", "redis:evil")
    })?;
    assert!(!has(&s.sb, SERVER_V4, "")?);
    assert_eq!(
        origins(&s.sb)?
            .iter()
            .filter(|(_, o)| o == "redis:evil")
            .count(),
        1
    );
    let st = s.json(&["status"])?;
    assert_eq!(st["remote"]["redis:evil"]["refused_never_ban"], 1, "{st}");
    // For box 2, 10.213.0.1 is its Redis server: never banned either, or
    // one hostile entry would cut it off the fleet.
    wait_until(5, "box 2 has the well-formed entry", || {
        has(&sb2, "203.0.113.99", "redis:evil")
    })?;
    assert!(!has(&sb2, SERVER_V4, "")?);
    let st2: serde_json::Value = serde_json::from_str(&cli_ok(&sb2, &["status", "--json"])?)?;
    assert_eq!(st2["remote"]["redis:evil"]["refused_never_ban"], 1, "{st2}");

    // A plain unban stays on its box; `unban --fleet` unbans everywhere.
    cli_ok(&sb2, &["unban", "203.0.113.61"])?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(has(&s.sb, "203.0.113.61", "manual")?);
    cli_ok(&sb2, &["unban", "--fleet", OFFENDER])?;
    wait_until(5, "box 1 unbans for the fleet", || {
        Ok(!has(&s.sb, OFFENDER, "")?)
    })?;
    assert!(!has(&sb2, OFFENDER, "")?);
    wait_until(
        5,
        "box 1's own entry of the unbanned address is now its signed unban",
        || {
            // A tombstone, not a deletion: a member that missed the stream
            // learns of the unban from the snapshot.
            let member = format!("box1|{OFFENDER}/32");
            Ok(redis
                .cli(&["HGET", "sipguard:entries", &member])?
                .starts_with(&format!("sipguard-fleet-1 unban box1 {OFFENDER}/32 ")))
        },
    )?;
    // Without a fleet, --fleet is refused.
    d2.stop()?;
    let _ = sb2.write_config("");
    let d2b = Daemon::start(&s.pair.client, &sb2, &["--iface", &s.pair.client_if])?;
    assert!(cli_ok(&sb2, &["unban", "--fleet", "203.0.113.60"])
        .unwrap_err()
        .to_string()
        .contains("needs a fleet"));
    drop(d2b);
    Ok(())
}

#[test]
fn apiban_is_paged_remembered_and_hostile_entries_refused() -> Result<()> {
    let mut s = Setup::new(FREESWITCH_JAIL)?;
    let feed = Server::start(
        &s.pair.server,
        Box::new(|req| {
            if req
                .headers
                .iter()
                .all(|(k, v)| !(k == "authorization" && v == "Bearer test-key"))
            {
                return (401, r#"{"ipaddress":["unauthorized"]}"#.into());
            }
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            match (req.path.as_str(), body["set"].as_str(), body["id"].as_str()) {
                ("/api/get", Some("sip"), Some("100")) => (
                    200,
                    r#"{"ipaddress":["203.0.113.70","2001:db8:70::1","0.0.0.0/0","<script>"],"ID":"200"}"#.into(),
                ),
                ("/api/get", Some("sip"), Some("200")) => {
                    (200, format!(r#"{{"ipaddress":["203.0.113.71","{SERVER_V4}"],"ID":"300"}}"#))
                }
                _ => (404, r#"{"ipaddress":["no new bans"],"ID":"none"}"#.into()),
            }
        }),
    )?;
    s.sb.write_config(&format!(
        "[apiban]\nkey = \"test-key\"\nurl = \"{}\"\ninterval = \"1m\"\n{FREESWITCH_JAIL}",
        feed.url("/api/")
    ))?;
    s.cli(&["reload"])?;
    wait_until(10, "APIBAN's pages are in force", || {
        Ok(has(&s.sb, "203.0.113.70", "apiban")?
            && has(&s.sb, "2001:db8:70::1", "apiban")?
            && has(&s.sb, "203.0.113.71", "apiban")?)
    })?;
    let list: serde_json::Value = serde_json::from_str(&s.cli(&["list", "--json"])?)?;
    let b = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == "203.0.113.70")
        .unwrap();
    let days = b["expires_in_secs"].as_u64().unwrap() / 86_400;
    assert_eq!(days, 6, "7-day bans: {b}");
    assert!(
        !has(&s.sb, SERVER_V4, "")?,
        "the box's own address from a feed"
    );
    assert_eq!(origins(&s.sb)?.len(), 3);
    let asked: Vec<String> = std::iter::from_fn(|| feed.next(Duration::from_millis(200)))
        .map(|r| r.body)
        .collect();
    assert_eq!(asked.len(), 3, "{asked:?}");

    // The last ID is remembered across a restart.
    s.restart()?;
    let first = feed.next(Duration::from_secs(10)).expect("asked again");
    assert!(first.body.contains("\"300\""), "{}", first.body);
    // The feed taken out of the configuration takes its bans along.
    s.sb.write_config(FREESWITCH_JAIL)?;
    s.cli(&["reload"])?;
    assert!(origins(&s.sb)?.is_empty(), "{:?}", origins(&s.sb)?);
    Ok(())
}

#[test]
fn apiban_pages_with_a_hostile_id_or_too_many_entries_are_refused() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    // All digits, so only its length is wrong: it would be kept in the
    // state file and written into every log line of the feed.
    let long_id = "9".repeat(10_000);
    let many: Vec<String> = (0..6000u32)
        .map(|i| std::net::Ipv4Addr::from(0xcb00_7100 + i).to_string())
        .collect();
    let feed = Server::start(
        &s.pair.server,
        Box::new(move |req| {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            match body["id"].as_str() {
                Some("100") => (
                    200,
                    serde_json::json!({ "ipaddress": ["203.0.113.80"], "ID": long_id }).to_string(),
                ),
                _ => (404, r#"{"ipaddress":["no new bans"],"ID":"none"}"#.into()),
            }
        }),
    )?;
    s.sb.write_config(&format!(
        "[apiban]\nkey = \"k\"\nurl = \"{}\"\ninterval = \"1m\"\n{FREESWITCH_JAIL}",
        feed.url("/api/")
    ))?;
    s.cli(&["reload"])?;
    feed.next(Duration::from_secs(10)).expect("APIBAN asked");
    std::thread::sleep(Duration::from_secs(1));
    assert!(origins(&s.sb)?.is_empty(), "{:?}", origins(&s.sb)?);
    let log = s.daemon.log();
    assert!(log.contains("no usable `ID`"), "{log}");
    let line = log.lines().find(|l| l.contains("no usable")).unwrap();
    assert!(line.len() < 600, "the ID was not bounded: {line:?}");
    // Too many addresses in a page: refused whole, the cursor stays.
    let feed2 = Server::start(
        &s.pair.server,
        Box::new(move |_| {
            (
                200,
                serde_json::json!({ "ipaddress": many, "ID": "200" }).to_string(),
            )
        }),
    )?;
    s.sb.write_config(&format!(
        "[apiban]\nkey = \"k\"\nurl = \"{}\"\ninterval = \"1m\"\n{FREESWITCH_JAIL}",
        feed2.url("/api/")
    ))?;
    s.cli(&["reload"])?;
    feed2.next(Duration::from_secs(10)).expect("APIBAN asked");
    std::thread::sleep(Duration::from_secs(1));
    assert!(origins(&s.sb)?.is_empty());
    assert!(
        s.daemon.log().contains("addresses in one page"),
        "{}",
        s.daemon.log()
    );
    Ok(())
}
