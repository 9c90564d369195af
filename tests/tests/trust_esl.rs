//! Trust from FreeSWITCH's event socket, end to end: the real daemon in a
//! namespace talks to an event-socket stand-in that follows
//! mod_event_socket's framing (tests/src/esl.rs). A registration's address
//! reaches the kernel's trusted map and `list --trusted`; an unregister
//! ends it; a restarted FreeSWITCH's listing is taken in on reconnect; a
//! wrong password is a clear error with backoff and never logged; a
//! hostile peer is dropped and the daemon carries on.
use anyhow::Result;
use sipguard_tests::{
    daemon::Daemon,
    esl::{register, unregister, Esl, Row},
    fixture::{wait_until, Setup},
    netns::{Pair, SERVER_V4},
    Sandbox,
};
use std::sync::atomic::Ordering;

const PASSWORD: &str = "Clue-8f3a-secret";

/// A daemon whose `[trust] esl` is a stand-in in its namespace.
fn setup(password_in_config: &str, rows: Vec<Row>) -> Result<(Setup, Esl)> {
    setup_as(password_in_config, rows, None, "")
}

/// `setup` with the stand-in's sockets owned by `uid`, and more `[trust]`.
fn setup_as(
    password_in_config: &str,
    rows: Vec<Row>,
    uid: Option<u32>,
    more: &str,
) -> Result<(Setup, Esl)> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let esl = Esl::start_as(&pair.server, 0, PASSWORD, rows, uid)?;
    sb.write_config(&format!(
        "[trust]\nesl = \"127.0.0.1:{}\"\nesl_password = \"{password_in_config}\"\n{more}",
        esl.port
    ))?;
    let daemon = Daemon::start(&pair.server, &sb, &["--iface", pair.server_if.as_str()])?;
    Ok((Setup { daemon, pair, sb }, esl))
}

/// `list --trusted`: (address, origin).
fn trusted(s: &Setup) -> Result<Vec<(String, String)>> {
    Ok(s.json(&["list", "--trusted"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["address"].as_str().unwrap_or("?").to_owned(),
                t["origin"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect())
}

fn is_trusted(s: &Setup, addr: &str) -> Result<bool> {
    Ok(trusted(s)?.iter().any(|(a, _)| a == addr))
}

#[test]
fn registrations_are_trusted_until_unregistered_and_relearnt_on_reconnect() -> Result<()> {
    let (mut s, esl) = setup(PASSWORD, vec![])?;
    wait_until(
        20,
        "the daemon subscribes and asks for the registrations",
        || Ok(esl.commands().iter().any(|c| c == "api show registrations")),
    )?;
    assert_eq!(
        esl.commands(),
        vec![
            "auth *".to_owned(),
            "event plain CUSTOM sofia::register sofia::unregister sofia::expire".to_owned(),
            "api show registrations".to_owned(),
        ]
    );
    esl.send(register("reg-1@phone", "192.0.2.10", 3600));
    wait_until(10, "the registered address is trusted", || {
        is_trusted(&s, "192.0.2.10")
    })?;
    // The empty listing ("\n0 total.\n", no header, as FreeSWITCH
    // answers with no registrations) kept the connection: one accepted.
    assert_eq!(esl.accepted.load(Ordering::Relaxed), 1);
    let v = s.json(&["status"])?;
    assert_eq!(v["trust"]["esl"]["bad_events"], 0, "{v}");
    assert_eq!(
        trusted(&s)?,
        vec![("192.0.2.10".into(), "registered".into())]
    );
    let left = s.json(&["list", "--trusted"])?[0]["expires_in_secs"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        (4190..=4200).contains(&left),
        "expires 3600 s + grace 600 s, got {left}"
    );
    // Unregister names the registration (call-id, user, host), not the address.
    esl.send(unregister("reg-1@phone"));
    wait_until(10, "unregister ends the trust", || {
        Ok(!is_trusted(&s, "192.0.2.10")?)
    })?;

    // FreeSWITCH restarts (the port closes and opens again) with a phone
    // that registered meanwhile: the listing on reconnect brings it in.
    let port = esl.port;
    drop(esl);
    let expires_at = chrono::Utc::now().timestamp() + 1800;
    let esl = Esl::start(
        &s.pair.server,
        port,
        PASSWORD,
        vec![Row {
            user: "1001".into(),
            realm: "example.org".into(),
            call_id: "reg-2@phone".into(),
            ip: "192.0.2.20".into(),
            expires_at,
        }],
    )?;
    wait_until(
        30,
        "the listing's registration is trusted after the reconnect",
        || is_trusted(&s, "192.0.2.20"),
    )?;
    assert!(esl.authenticated.load(Ordering::Relaxed) >= 1);
    // An IPv6 phone is trusted by its /64, as the limiter keys it.
    esl.send(register("reg-3@phone", "2001:db8:1:2::a", 600));
    wait_until(10, "the IPv6 /64 is trusted", || {
        is_trusted(&s, "2001:db8:1:2::/64")
    })?;
    let status = s.cli(&["status", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&status)?;
    assert_eq!(v["trust"]["esl"]["state"], "connected", "{status}");
    assert!(!status.contains(PASSWORD), "no password in status");
    let human = s.cli(&["status"])?;
    assert!(
        human.contains(&format!("event socket connected (127.0.0.1:{port})")),
        "{human}"
    );
    // The connection's counts, as JSON has them.
    let esl_counts = format!(
        "{} connect(s), {} event(s), 0 bad, 0 refused peer(s)",
        v["trust"]["esl"]["connects"], v["trust"]["esl"]["events"]
    );
    assert!(human.contains(&esl_counts), "{esl_counts} in {human}");
    s.daemon.stop()?;
    assert!(!s.daemon.log().contains(PASSWORD), "no password in the log");
    assert!(
        !s.daemon.log().contains("not on loopback"),
        "no clear-text warning for loopback"
    );
    Ok(())
}

fn row(user: &str, call_id: &str, ip: &str) -> Row {
    Row {
        user: user.into(),
        realm: "example.org".into(),
        call_id: call_id.into(),
        ip: ip.into(),
        expires_at: chrono::Utc::now().timestamp() + 1800,
    }
}

/// FreeSWITCH drops a registration without an event (the operator flushed
/// it): the listings asked every `relist` end its trust once it is missing
/// from two of them, on one connection. A user with two devices, of which
/// FreeSWITCH's core table lists only the last (`multiple-registrations`
/// off in switch.conf), keeps both trusted.
#[test]
fn a_registration_dropped_without_an_event_ends_at_the_listings() -> Result<()> {
    let (s, esl) = setup_as(
        PASSWORD,
        vec![row("1002", "old@phone", "192.0.2.30")],
        None,
        "relist = \"1s\"\n",
    )?;
    wait_until(20, "the listed registration is trusted", || {
        is_trusted(&s, "192.0.2.30")
    })?;
    let listings = || {
        esl.commands()
            .iter()
            .filter(|c| *c == "api show registrations")
            .count()
    };
    wait_until(10, "asked again while connected", || Ok(listings() >= 3))?;
    assert!(is_trusted(&s, "192.0.2.30")?, "still listed, still trusted");
    // User 1000's desk phone and softphone, by events.
    esl.send(register("desk@phone", "192.0.2.33", 1800));
    esl.send(register("soft@phone", "192.0.2.34", 1800));
    wait_until(10, "both devices trusted", || {
        Ok(is_trusted(&s, "192.0.2.33")? && is_trusted(&s, "192.0.2.34")?)
    })?;
    // User 1002 flushed; the core table holds user 1000's last device.
    esl.set_rows(vec![row("1000", "soft@phone", "192.0.2.34")]);
    wait_until(10, "the flushed registration's trust ends", || {
        Ok(!is_trusted(&s, "192.0.2.30")?)
    })?;
    let seen = listings();
    wait_until(10, "three more listings", || Ok(listings() >= seen + 3))?;
    assert!(
        is_trusted(&s, "192.0.2.33")? && is_trusted(&s, "192.0.2.34")?,
        "a listed user's other device stays"
    );
    // One connection all along: a listing is not a reconnect.
    assert_eq!(esl.accepted.load(Ordering::Relaxed), 1);
    Ok(())
}

/// An event socket off loopback (the server namespace's own veth address:
/// the connection never leaves the namespace) is warned about once, in
/// clear words; being an address of this box, its peer is still checked
/// as a local socket (root's here) and the connection works.
#[test]
fn an_event_socket_off_loopback_is_warned_about() -> Result<()> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let ip: std::net::Ipv4Addr = SERVER_V4.parse()?;
    let esl = Esl::start_at(&pair.server, ip, 0, PASSWORD, vec![], None)?;
    let at = format!("{SERVER_V4}:{}", esl.port);
    sb.write_config(&format!(
        "[trust]\nesl = \"{at}\"\nesl_password = \"{PASSWORD}\"\n"
    ))?;
    let daemon = Daemon::start(&pair.server, &sb, &["--iface", pair.server_if.as_str()])?;
    let mut s = Setup { daemon, pair, sb };
    wait_until(20, "the daemon subscribes", || {
        Ok(esl.commands().iter().any(|c| c == "api show registrations"))
    })?;
    esl.send(register("reg-9@phone", "192.0.2.90", 600));
    wait_until(10, "the registered address is trusted", || {
        is_trusted(&s, "192.0.2.90")
    })?;
    let warning = format!(
        "the event socket at {at} is not on loopback: ESL has no TLS, its password crosses the network in clear text"
    );
    s.daemon.stop()?;
    let log = s.daemon.log();
    assert_eq!(log.matches(&warning).count(), 1, "{log}");
    assert!(!log.contains(PASSWORD), "no password in the log");
    Ok(())
}

#[test]
fn a_wrong_password_is_a_clear_error_with_backoff_and_never_shown() -> Result<()> {
    let wrong = "Wrong-7c1d-password";
    let (s, esl) = setup(wrong, vec![])?;
    wait_until(20, "the daemon tries again after backing off", || {
        Ok(esl.accepted.load(Ordering::Relaxed) >= 2)
    })?;
    assert_eq!(esl.authenticated.load(Ordering::Relaxed), 0);
    let log = s.daemon.log();
    assert!(log.contains("refused the password (-ERR invalid)"), "{log}");
    // Backoff: not a tight loop of reconnects.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(esl.accepted.load(Ordering::Relaxed) <= 4, "backs off");
    let status = s.cli(&["status", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&status)?;
    assert_eq!(v["trust"]["esl"]["state"], "down", "{status}");
    assert!(v["trust"]["esl"]["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("refused the password"));
    for text in [&status, &s.daemon.log()] {
        assert!(
            !text.contains(wrong) && !text.contains(PASSWORD),
            "no password shown: {text}"
        );
    }
    Ok(())
}

/// `nobody`: a local user who bound FreeSWITCH's port while it was away.
const NOBODY: u32 = 65534;

#[test]
fn a_local_listener_of_another_user_is_never_sent_the_password() -> Result<()> {
    let (s, esl) = setup_as(PASSWORD, vec![], Some(NOBODY), "")?;
    wait_until(20, "the daemon tries again after backing off", || {
        Ok(esl.accepted.load(Ordering::Relaxed) >= 2)
    })?;
    // Connected, greeted, and left without a word: no `auth` line at all.
    assert_eq!(esl.commands(), Vec::<String>::new());
    assert_eq!(esl.authenticated.load(Ordering::Relaxed), 0);
    let log = s.daemon.log();
    assert!(
        log.contains(&format!("is a socket of uid {NOBODY}, not root's"))
            && log.contains("the password is not sent to it"),
        "{log}"
    );
    let v = s.json(&["status"])?;
    assert!(
        v["trust"]["esl"]["refused_peers"].as_u64().unwrap_or(0) >= 1,
        "{v}"
    );
    assert_eq!(v["trust"]["esl"]["state"], "down", "{v}");
    let status = v.to_string();
    for text in [&status, &s.daemon.log()] {
        assert!(!text.contains(PASSWORD), "no password shown: {text}");
    }
    Ok(())
}

#[test]
fn the_user_named_by_esl_uid_is_sent_the_password() -> Result<()> {
    let (s, esl) = setup_as(
        PASSWORD,
        vec![],
        Some(NOBODY),
        &format!("esl_uid = {NOBODY}\n"),
    )?;
    wait_until(20, "connected to FreeSWITCH's user's socket", || {
        Ok(esl.authenticated.load(Ordering::Relaxed) >= 1)
    })?;
    esl.send(register("reg-5@phone", "192.0.2.50", 600));
    wait_until(10, "trusted", || is_trusted(&s, "192.0.2.50"))?;
    Ok(())
}

#[test]
fn a_hostile_peer_is_dropped_and_the_daemon_carries_on() -> Result<()> {
    let (s, esl) = setup(PASSWORD, vec![])?;
    wait_until(20, "connected", || {
        Ok(esl.commands().iter().any(|c| c == "api show registrations"))
    })?;
    // A body of a gigabyte announced.
    esl.send(b"Content-Type: text/event-plain\nContent-Length: 999999999\n\n".to_vec());
    wait_until(20, "dropped and reconnected", || {
        Ok(esl.authenticated.load(Ordering::Relaxed) >= 2)
    })?;
    assert!(
        s.daemon
            .log()
            .contains("a body of 999999999 bytes announced"),
        "{}",
        s.daemon.log()
    );
    // A header line that never ends.
    esl.send(vec![b'A'; 64 * 1024]);
    wait_until(20, "dropped and reconnected again", || {
        Ok(esl.authenticated.load(Ordering::Relaxed) >= 3)
    })?;
    assert!(
        s.daemon
            .log()
            .contains("a header line longer than 8192 bytes"),
        "{}",
        s.daemon.log()
    );
    // Still working: a registration is trusted.
    esl.send(register("reg-9@phone", "192.0.2.30", 600));
    wait_until(10, "trusted after the hostile frames", || {
        is_trusted(&s, "192.0.2.30")
    })?;
    Ok(())
}

#[test]
fn the_operators_trust_is_kept_across_restarts_and_made_offline_too() -> Result<()> {
    let mut s = Setup::new("")?;
    s.cli(&["trust", "192.0.2.40"])?;
    s.cli(&["trust", "192.0.2.41", "--for", "1h"])?;
    assert_eq!(
        trusted(&s)?,
        vec![
            ("192.0.2.40".into(), "operator".into()),
            ("192.0.2.41".into(), "operator".into())
        ]
    );
    let list = s.json(&["list", "--trusted"])?;
    assert!(list[0]["expires_in_secs"].is_null());
    let left = list[1]["expires_in_secs"].as_u64().unwrap_or(0);
    assert!((3590..=3600).contains(&left), "{left}");
    // A range is not a source; something not trusted cannot be untrusted.
    let out = sipguard_tests::daemon::cli(&s.sb, &["trust", "192.0.2.0/24"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust takes one address"));
    let out = sipguard_tests::daemon::cli(&s.sb, &["untrust", "192.0.2.99"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("192.0.2.99 is not trusted"));

    s.restart()?;
    assert_eq!(trusted(&s)?.len(), 2, "kept across a restart");
    // With the daemon stopped: written to the kernel and the file.
    s.daemon.stop()?;
    s.cli(&["untrust", "192.0.2.40"])?;
    s.cli(&["trust", "192.0.2.42"])?;
    assert_eq!(
        trusted(&s)?
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>(),
        ["192.0.2.41", "192.0.2.42"]
    );
    s.start_again()?;
    assert_eq!(
        trusted(&s)?
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>(),
        ["192.0.2.41", "192.0.2.42"],
        "the daemon takes the offline changes in"
    );
    s.cli(&["untrust", "192.0.2.42"])?;
    assert_eq!(trusted(&s)?.len(), 1);
    // A duration past any sensible end is refused, not overflowed.
    let out = sipguard_tests::daemon::cli(&s.sb, &["trust", "192.0.2.43", "--for", "100000000y"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 3650 days"), "{err}");
    assert_eq!(trusted(&s)?.len(), 1);

    // The file unreadable at start: the kernel's entries stay, the file is
    // not overwritten, changes are refused until it is mended.
    let file = format!("{}.trusted", s.sb.state().display());
    s.daemon.stop()?;
    std::fs::write(&file, "{not json")?;
    s.start_again()?;
    assert_eq!(
        trusted(&s)?,
        vec![("192.0.2.41".into(), "operator".into())],
        "the kernel's operator entry kept"
    );
    let out = sipguard_tests::daemon::cli(&s.sb, &["trust", "192.0.2.44"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not be read at start"), "{err}");
    s.restart()?;
    assert_eq!(
        std::fs::read_to_string(&file)?,
        "{not json",
        "not overwritten"
    );
    assert!(s
        .daemon
        .log()
        .contains("trusted sources file cannot be read"));
    Ok(())
}

/// `sipguard trust`'s refusal when the operator's file is full.
fn refused_as_full(s: &Setup, addr: &str) -> Result<String> {
    let out = sipguard_tests::daemon::cli(&s.sb, &["trust", addr])?;
    anyhow::ensure!(!out.status.success(), "{addr} was trusted");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        err.contains("8192 operator-trusted sources already: untrust some first"),
        "{err}"
    );
    Ok(err)
}

#[test]
fn the_operators_cap_holds_with_or_without_the_daemon() -> Result<()> {
    let mut s = Setup::new("")?;
    s.daemon.stop()?;
    // 8 191 entries in force and one ended (dropped when read: not counted).
    let ended = serde_json::json!({"addr": "10.0.0.0", "until": 1});
    let rows: Vec<_> = std::iter::once(ended)
        .chain((1..8192u32).map(
            |i| serde_json::json!({"addr": format!("10.0.{}.{}", i / 256, i % 256), "until": null}),
        ))
        .collect();
    let file = format!("{}.trusted", s.sb.state().display());
    std::fs::write(
        &file,
        serde_json::json!({"version": 1, "trusted": rows}).to_string(),
    )?;
    // Offline: room for one more, then full; trusting one already there
    // again is a refresh, not a new entry.
    s.cli(&["trust", "192.0.2.60"])?;
    let offline = refused_as_full(&s, "192.0.2.61")?;
    s.cli(&["trust", "10.0.0.7", "--for", "1h"])?;
    // The daemon reads the file whole and refuses the same way.
    s.start_again()?;
    assert_eq!(trusted(&s)?.len(), 8192);
    let online = refused_as_full(&s, "192.0.2.61")?;
    assert_eq!(offline, online, "the same refusal");
    s.cli(&["untrust", "10.0.0.7"])?;
    s.cli(&["trust", "192.0.2.61"])?;
    Ok(())
}
