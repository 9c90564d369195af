//! End to end: the operator's decisions are never undone behind their back.
//! The allowlist survives restarts and reboots and is exactly what the
//! operator and the configuration say; an unban or allow made with the CLI
//! while the daemon is stopped is not undone by the next start; allowed
//! networks are not counted by the jails.
use anyhow::Result;
use sipguard_tests::{
    fixture::{append, failure, failures, wait_until, Setup, FREESWITCH_JAIL},
    netns::*,
    Sandbox,
};

const PROBES: usize = 20;

const CONFIG: &str = FREESWITCH_JAIL;

/// `n` failures of `ip`, appended to the followed log.
fn append_failures(sb: &Sandbox, ip: &str, n: usize) -> Result<()> {
    append(sb, &failures(ip, n))
}

#[test]
fn the_allowlist_is_the_operators_across_restarts_and_reboots() -> Result<()> {
    let mut s = Setup::new(&format!("ignoreip = [\"198.51.100.0/24\"]\n{CONFIG}"))?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let office = udp_socket(&s.pair.client, addr(OTHER_V4, 0))?;

    // "The office", allowed through the running daemon, is never counted.
    s.cli(&["allow", OTHER_V4])?;
    append_failures(&s.sb, OTHER_V4, 5)?;
    append_failures(&s.sb, CLIENT_V4, 3)?;
    wait_until(5, "the attacker is banned", || {
        Ok(s.banned()? == [CLIENT_V4])
    })?;
    let st = s.json(&["status", "freeswitch"])?;
    assert_eq!(st["jails"][0]["filter"]["ignored"], 5, "{st}");

    // Reboot: the operator's entry comes back with the daemon.
    s.reboot()?;
    assert!(
        s.allowed()?.contains(&format!("{OTHER_V4}/32")),
        "{:?}",
        s.allowed()?
    );
    assert!(s.allowed()?.contains(&"198.51.100.0/24".to_owned()));
    assert_eq!(udp_delivered(&office, &sip, PROBES)?, PROBES);

    // A network removed from ignoreip is no longer allow-listed after a
    // restart, although the program (and the allowlist) stayed in place.
    s.daemon.stop()?;
    s.sb.write_config(CONFIG)?;
    s.start_again()?;
    let now = s.allowed()?;
    assert!(!now.contains(&"198.51.100.0/24".to_owned()), "{now:?}");
    assert!(now.contains(&format!("{OTHER_V4}/32")), "{now:?}");

    // Disallowed through the daemon: gone for good, also after a reboot.
    s.cli(&["disallow", OTHER_V4])?;
    s.reboot()?;
    assert!(!s.allowed()?.contains(&format!("{OTHER_V4}/32")));
    Ok(())
}

#[test]
fn changes_made_while_the_daemon_is_stopped_are_kept() -> Result<()> {
    let mut s = Setup::new(CONFIG)?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let office = udp_socket(&s.pair.client, addr(OTHER_V4, 0))?;
    append_failures(&s.sb, CLIENT_V4, 3)?;
    wait_until(5, "banned by the log", || Ok(s.banned()? == [CLIENT_V4]))?;
    s.daemon.stop()?;

    // The daemon is stopped: the CLI changes the maps itself.
    s.cli(&["unban", CLIENT_V4])?;
    s.cli(&["allow", OTHER_V4])?;
    s.cli(&["ban", "192.0.2.99", "--for", "1h"])?;
    assert_eq!(
        udp_delivered(&attacker, &sip, PROBES)?,
        PROBES,
        "unbanned at once"
    );

    // The start does not undo them, also when it is a reboot.
    s.start_again()?;
    assert!(
        s.daemon.log().contains("applying 3 change(s)"),
        "{}",
        s.daemon.log()
    );
    assert_eq!(s.banned()?, ["192.0.2.99"]);
    assert_eq!(
        udp_delivered(&attacker, &sip, PROBES)?,
        PROBES,
        "not banned again"
    );
    s.reboot()?;
    assert_eq!(
        s.banned()?,
        ["192.0.2.99"],
        "the offline ban is kept, the unban too"
    );
    assert!(s.allowed()?.contains(&format!("{OTHER_V4}/32")));
    assert_eq!(udp_delivered(&office, &sip, PROBES)?, PROBES);
    assert_eq!(udp_delivered(&attacker, &sip, PROBES)?, PROBES);
    Ok(())
}

/// Bans made after the last snapshot of the state live in its change log
/// (one line per change, not a rewrite of every ban): a crash followed by a
/// reboot (maps gone) loses none of them.
#[test]
fn bans_since_the_last_snapshot_survive_a_crash_and_a_reboot() -> Result<()> {
    let mut s = Setup::new(CONFIG)?;
    // A start writes no snapshot (it logs what it changed): none yet.
    let snapshot = std::fs::read(s.sb.state()).ok();
    s.cli(&["ban", "192.0.2.50", "--for", "1h"])?;
    append_failures(&s.sb, CLIENT_V4, 3)?;
    let log = s.sb.state().with_extension("changes");
    wait_until(5, "both bans in the change log", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(text.contains("192.0.2.50/32") && text.contains(&format!("{CLIENT_V4}/32")))
    })?;
    // The snapshot itself was not rewritten for them.
    assert_eq!(std::fs::read(s.sb.state()).ok(), snapshot);
    s.daemon.kill()?;
    std::fs::remove_dir_all(&s.sb.pin)?;
    s.start_again()?;
    let both = |s: &Setup| -> Result<()> {
        let mut banned = s.banned()?;
        banned.sort();
        assert_eq!(banned, [CLIENT_V4, "192.0.2.50"]);
        let st = s.json(&["status", "freeswitch"])?;
        assert_eq!(st["jails"][0]["actions"]["currently_banned"], 1, "{st}");
        Ok(())
    };
    both(&s)?;
    // A clean stop writes the snapshot, which alone brings them back.
    s.daemon.stop()?;
    assert!(s.sb.state().exists());
    assert!(!log.exists());
    std::fs::remove_dir_all(&s.sb.pin)?;
    s.start_again()?;
    both(&s)
}

/// Once the change log outgrows the table, a snapshot replaces it, written
/// while the daemon goes on banning (a slice at a time, by a writer
/// thread): the bans made
/// meanwhile go to a new log, and a crash followed by a reboot loses none.
#[test]
fn a_snapshot_written_in_the_background_loses_no_ban_made_meanwhile() -> Result<()> {
    let mut s = Setup::new(&CONFIG.replace("maxretry = 3", "maxretry = 1"))?;
    let addr = |i: u32| std::net::Ipv4Addr::from(0x6440_0000 + i).to_string();
    let lines =
        |from: u32, to: u32| -> String { (from..to).map(|i| failure(&addr(i), "u")).collect() };
    let banned_now = |s: &Setup| -> Result<u64> {
        Ok(
            s.json(&["status", "freeswitch"])?["jails"][0]["actions"]["currently_banned"]
                .as_u64()
                .unwrap_or(0),
        )
    };
    // Two change-log lines a ban (the ban, its count): past 50 000 bans
    // the log is larger than the table plus its margin.
    let (first, more) = (60_000u32, 2_000u32);
    append(&s.sb, &lines(0, first))?;
    wait_until(
        30,
        "the first bans, and a snapshot written in the background",
        || {
            Ok(banned_now(&s)? == u64::from(first)
                && s.daemon.log().contains("state written in the background"))
        },
    )?;
    let log = s.sb.state().with_extension("changes");
    let older = s.sb.state().with_extension("changes.old");
    wait_until(5, "the older change log removed", || Ok(!older.exists()))?;
    // The snapshot holds what was banned when it began; the bans after go
    // to the new log, beside it.
    append(&s.sb, &lines(first, first + more))?;
    wait_until(10, "the later bans in the new change log", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(text.contains(&format!("\"{}/32\"", addr(first + more - 1))))
    })?;
    assert!(
        !s.daemon.log().contains("saving state failed"),
        "{}",
        s.daemon.log()
    );
    s.daemon.kill()?;
    std::fs::remove_dir_all(&s.sb.pin)?;
    s.start_again()?;
    assert_eq!(
        banned_now(&s)?,
        u64::from(first + more),
        "{}",
        s.daemon.log()
    );
    let banned = s.banned()?;
    for i in [0, first - 1, first, first + more - 1] {
        assert!(banned.contains(&addr(i)), "{} missing", addr(i));
    }
    Ok(())
}

/// `sipguard ban` while a daemon is starting, at every moment of its
/// start: each ban either reaches the daemon or is in the database before
/// the daemon reads it; none is lost, after the start or after a reboot.
#[test]
fn offline_bans_racing_the_daemons_start_are_all_kept() -> Result<()> {
    let mut s = Setup::new(CONFIG)?;
    let addr = |i: u32| std::net::Ipv4Addr::from(0xc000_0264 + i).to_string(); // 192.0.2.100 +
    const ROUNDS: u32 = 8;
    for round in 0..ROUNDS {
        s.daemon.stop()?;
        // The ban starts a little earlier each round: before, during and
        // after the daemon's own start.
        let sb = &s.sb;
        let banned = std::thread::scope(|scope| {
            let cli = scope.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(u64::from(round) * 60));
                sipguard_tests::daemon::cli_ok(sb, &["ban", &addr(round), "--for", "1h"])
            });
            let started = Setup::start_daemon(&s.pair, sb);
            (cli.join().expect("the CLI thread"), started)
        });
        let (cli, started) = banned;
        cli?;
        s.daemon = started?;
        wait_until(5, "the ban in force", || {
            Ok(s.banned()?.contains(&addr(round)))
        })?;
    }
    s.reboot()?;
    let banned = s.banned()?;
    for round in 0..ROUNDS {
        assert!(
            banned.contains(&addr(round)),
            "{} lost: {banned:?}",
            addr(round)
        );
    }
    Ok(())
}

/// `sipguard export` while the daemon runs: the saved bans in a database
/// read with plain SQL, each with its jail and matched line, a ban made
/// a moment ago included (the change log is laid over the snapshot).
#[test]
fn the_saved_bans_are_read_with_sql_while_the_daemon_runs() -> Result<()> {
    let s = Setup::new(CONFIG)?;
    append_failures(&s.sb, CLIENT_V4, 3)?;
    wait_until(5, "banned by the log", || Ok(s.banned()? == [CLIENT_V4]))?;
    s.cli(&["ban", "192.0.2.99", "--for", "1h"])?;
    // Not beside the state: the export refuses that folder.
    let elsewhere = tempfile::tempdir()?;
    let out = elsewhere.path().join("bans.db");
    let rows = || -> Result<Vec<(String, String, String)>> {
        s.cli(&["export", out.to_str().unwrap()])?;
        let conn = rusqlite::Connection::open(&out)?;
        let mut rows = conn
            .prepare("SELECT net, jail, line FROM bans_readable ORDER BY net")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.sort();
        Ok(rows)
    };
    // Within a tick of the ban, the change log has it.
    wait_until(5, "both bans in the export", || Ok(rows()?.len() == 2))?;
    let rows = rows()?;
    let of = |net: &str| rows.iter().find(|r| r.0 == net);
    let logged = of(&format!("{CLIENT_V4}/32")).expect("the log's ban");
    assert_eq!(logged.1, "freeswitch", "{rows:?}");
    assert!(logged.2.contains(CLIENT_V4), "the matched line: {rows:?}");
    assert_eq!(of("192.0.2.99/32").map(|r| r.1.as_str()), Some("manual"));
    // Only the operator reads it: it holds SIP usernames.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&out)?.permissions().mode() & 0o077, 0);
    Ok(())
}
