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
    // They are in the saved state before any daemon reads it.
    assert_eq!(s.sb.db_count("bans WHERE net = '192.0.2.99/32'")?, 1);
    assert_eq!(
        s.sb.db_count(&format!("bans WHERE net = '{CLIENT_V4}/32'"))?,
        0
    );
    assert_eq!(
        s.sb.db_count(&format!("allowlist WHERE net = '{OTHER_V4}/32'"))?,
        1
    );
    s.start_again()?;
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

/// Every tick's bans are committed to the database by its writer thread:
/// a crash followed by a reboot (maps gone) loses none that were
/// committed, and the database reads as an operator's `sqlite3` would.
#[test]
fn bans_in_the_database_survive_a_crash_and_a_reboot() -> Result<()> {
    let mut s = Setup::new(CONFIG)?;
    s.cli(&["ban", "192.0.2.50", "--for", "1h"])?;
    append_failures(&s.sb, CLIENT_V4, 3)?;
    wait_until(5, "both bans in the database", || {
        Ok(s.sb.db_count(&format!(
            "bans WHERE net IN ('192.0.2.50/32', '{CLIENT_V4}/32') AND origin = ''"
        ))? == 2)
    })?;
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
    // A clean stop, then a reboot: the same.
    s.daemon.stop()?;
    std::fs::remove_dir_all(&s.sb.pin)?;
    s.start_again()?;
    both(&s)
}

/// A ban campaign, the daemon killed at moments it is writing: every ban
/// the database had committed when it died comes back after a reboot, and
/// the file passes SQLite's own check every time. (Bans made since the last
/// tick are in the kernel only: a crash followed by a reboot within that
/// second loses them, with the log lines read since, as before.)
#[test]
fn a_campaign_killed_mid_write_loses_no_committed_ban() -> Result<()> {
    let mut s = Setup::new(&CONFIG.replace("maxretry = 3", "maxretry = 1"))?;
    let addr = |i: u32| std::net::Ipv4Addr::from(0x6440_0000 + i).to_string();
    let lines =
        |from: u32, to: u32| -> String { (from..to).map(|i| failure(&addr(i), "u")).collect() };
    let committed = |s: &Setup| s.sb.db_count("bans WHERE origin = ''");
    let mut from = 0u32;
    // A tick (1 s) commits what the last one banned: kills at moments
    // between ticks, as the burst is read and written.
    for (round, wait_ms) in [(0u32, 1700u64), (1, 2300), (2, 3100)] {
        let to = from + 20_000;
        append(&s.sb, &lines(from, to))?;
        // Killed while the burst is being banned and written.
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        s.daemon.kill()?;
        let kept = committed(&s)?;
        let integrity: String = rusqlite::Connection::open(s.sb.db())?.query_row(
            "PRAGMA integrity_check",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(integrity, "ok", "round {round}");
        std::fs::remove_dir_all(&s.sb.pin)?;
        s.start_again()?;
        let banned = s.banned()?.len() as i64;
        assert!(
            banned >= kept,
            "round {round}: {banned} banned after the reboot, {kept} were committed"
        );
        from = to;
    }
    // The kills fell while bans were being written: some were committed
    // (else the test proved nothing), and they all came back.
    assert!(s.banned()?.len() >= 20_000, "{:?}", s.banned()?.len());
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
