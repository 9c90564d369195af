//! End to end, log-driven: FreeSWITCH-style failure lines appended to a log
//! the daemon follows make the attacker's SIP traffic die in XDP, while
//! allow-listed and other sources keep flowing; bans and read positions
//! survive restarts and reboots; status, reload and the control socket work.
use anyhow::Result;
use sipguard_tests::{
    daemon::{cli, cli_ok, Daemon},
    fixture::{append, failure, failures, now_stamp, Setup, FREESWITCH_JAIL},
    netns::*,
    Sandbox,
};
use std::{
    net::UdpSocket,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

const PROBES: usize = 20;

/// The FreeSWITCH jail, with OTHER_V6 in ignoreip.
static CONFIG: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("ignoreip = [\"fd00:5167::3\"]\n{FREESWITCH_JAIL}"));

/// Waits (bounded) until `udp_delivered` from `src` to `dst` returns `want`.
fn wait_delivered(src: &UdpSocket, dst: &UdpSocket, want: usize, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = udp_delivered(src, dst, PROBES)?;
        if got == want {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {got} of {PROBES} delivered, expected {want}"
        );
    }
}

fn status(sb: &Sandbox) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&cli_ok(
        sb,
        &["status", "freeswitch", "--json"],
    )?)?)
}

#[test]
fn failure_lines_ban_the_attacker_and_nobody_else() -> Result<()> {
    let s = Setup::new(&CONFIG)?;
    let (sb, pair) = (&s.sb, &s.pair);
    let d = &s.daemon;
    let sip4 = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let sip6 = udp_socket(&pair.server, addr(SERVER_V6, 5060))?;
    let attacker = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    let bystander = udp_socket(&pair.client, addr(OTHER_V4, 0))?;
    let allowed = udp_socket(&pair.client, addr(OTHER_V6, 0))?;
    let attacker6 = udp_socket(&pair.client, addr(CLIENT_V6, 0))?;
    assert_eq!(udp_delivered(&attacker, &sip4, PROBES)?, PROBES);

    // The attacker tries to frame the bystander through the SIP username, and
    // the allow-listed address fails as often as the attacker.
    let framing: String = (0..5)
        .map(|i| failure(CLIENT_V4, &format!("x] from ip {OTHER_V4} {i}")))
        .collect();
    append(sb, &framing)?;
    append(sb, &failures(OTHER_V6, 10))?;
    wait_delivered(
        &attacker,
        &sip4,
        0,
        &format!("attacker banned by its log lines\n{}", d.log()),
    )?;
    assert_eq!(
        udp_delivered(&bystander, &sip4, PROBES)?,
        PROBES,
        "the framed bystander is not banned"
    );
    assert_eq!(
        udp_delivered(&allowed, &sip6, PROBES)?,
        PROBES,
        "ignoreip is never banned"
    );

    // IPv6 offenders are banned as their /64, but this one shares the
    // server's own /64: the ban is narrowed to the attacker's /128.
    append(sb, &failures(CLIENT_V6, 3))?;
    wait_delivered(&attacker6, &sip6, 0, "the IPv6 attacker is banned")?;
    assert_eq!(
        udp_delivered(&allowed, &sip6, PROBES)?,
        PROBES,
        "the ignoreip address in that /64 still flows"
    );
    assert!(
        d.log()
            .contains("narrowed the ban of fd00:5167::/64 to fd00:5167::2"),
        "{}",
        d.log()
    );

    let st = status(sb)?;
    let jail = &st["jails"][0];
    assert_eq!(jail["filter"]["total_failed"], 18, "{st}");
    assert_eq!(jail["actions"]["currently_banned"], 2, "{st}");
    let banned: Vec<&str> = jail["actions"]["banned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(banned, vec![CLIENT_V4, CLIENT_V6], "{st}");
    let first = &jail["actions"]["banned"][0];
    assert!(
        first["reason"].as_str().unwrap().contains("3 failures"),
        "{st}"
    );
    assert!(
        first["line"].as_str().unwrap().contains(CLIENT_V4),
        "the matched line is kept: {st}"
    );
    let text = cli_ok(sb, &["status", "freeswitch"])?;
    assert!(
        text.contains("Currently banned: 2") && text.contains("Total failed:     18"),
        "{text}"
    );
    Ok(())
}

#[test]
fn restart_keeps_bans_and_read_position_and_reboot_reinstates_bans() -> Result<()> {
    let sb = Sandbox::new(&CONFIG)?;
    append(&sb, "")?;
    let pair = Pair::new()?;
    let args = ["--iface", pair.server_if.as_str()];
    let mut d = Daemon::start(&pair.server, &sb, &args)?;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let a = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    let b = udp_socket(&pair.client, addr(OTHER_V4, 0))?;
    append(&sb, &failures(CLIENT_V4, 3))?;
    wait_delivered(&a, &sip, 0, "a banned")?;
    d.stop()?;

    // Written while the daemon is down: must be read after the restart.
    append(&sb, &failures(OTHER_V4, 3))?;
    let d = Daemon::start(&pair.server, &sb, &args)?;
    assert!(
        d.log().contains("1 kept in the kernel, 0 written again"),
        "no unban/re-ban on restart:\n{}",
        d.log()
    );
    wait_delivered(&b, &sip, 0, "b banned from lines written while stopped")?;
    assert_eq!(udp_delivered(&a, &sip, PROBES)?, 0, "a still banned");
    let st = status(&sb)?;
    assert_eq!(
        st["jails"][0]["filter"]["total_failed"], 3,
        "old lines are not read twice: {st}"
    );
    let mut d = d;
    d.stop()?;

    // "Reboot" (systemd stops the daemon, the pinned maps are gone): the
    // state file brings the bans back.
    std::fs::remove_dir_all(&sb.pin)?;
    let d = Daemon::start(&pair.server, &sb, &args)?;
    assert!(
        d.log().contains("0 kept in the kernel, 2 written again"),
        "{}",
        d.log()
    );
    assert_eq!(
        udp_delivered(&a, &sip, PROBES)?,
        0,
        "a banned again after the reboot"
    );
    assert_eq!(
        udp_delivered(&b, &sip, PROBES)?,
        0,
        "b banned again after the reboot"
    );
    let list = cli_ok(&sb, &["list"])?;
    assert!(
        list.contains("in 59m"),
        "expiry kept, not restarted: {list}"
    );
    Ok(())
}

#[test]
fn manual_bans_go_through_the_daemon_and_reload_keeps_bans() -> Result<()> {
    let s = Setup::new(&CONFIG)?;
    let (sb, pair) = (&s.sb, &s.pair);
    let mode = std::fs::metadata(sb.socket())?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket is root-only");
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let a = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    cli_ok(sb, &["ban", CLIENT_V4, "--for", "10m"])?;
    assert_eq!(udp_delivered(&a, &sip, PROBES)?, 0);
    let all: serde_json::Value = serde_json::from_str(&cli_ok(sb, &["status", "--json"])?)?;
    let manual = all["jails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "manual")
        .expect("manual jail");
    assert_eq!(
        manual["actions"]["banned"][0]["address"], CLIENT_V4,
        "{all}"
    );

    // A bad config on reload is refused with its line; the daemon and bans stay.
    sb.write_config(&CONFIG.replace("bantime = \"1h\"", "bantime = \"soon\""))?;
    let out = cli(sb, &["reload"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    // Line 8 of CONFIG: the sandbox's first line keeps FreeSWITCH discovery off.
    assert!(
        !out.status.success() && err.contains("line 9") && err.contains("bantime"),
        "{err}"
    );
    sb.write_config(&CONFIG.replace("maxretry = 3", "maxretry = 1"))?;
    cli_ok(sb, &["reload"])?;
    assert_eq!(udp_delivered(&a, &sip, PROBES)?, 0, "bans survive a reload");
    let b = udp_socket(&pair.client, addr(OTHER_V4, 0))?;
    append(sb, &failures(OTHER_V4, 1))?;
    wait_delivered(&b, &sip, 0, "the reloaded maxretry = 1 applies")?;

    cli_ok(sb, &["unban", CLIENT_V4])?;
    assert_eq!(udp_delivered(&a, &sip, PROBES)?, PROBES);
    let out = cli(sb, &["unban", CLIENT_V4])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not banned"));
    Ok(())
}

#[test]
fn bad_config_stops_the_daemon_with_file_line_and_key() -> Result<()> {
    let sb = Sandbox::new("[jails.fs]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nmaxretr = 3\n")?;
    let pair = Pair::new()?;
    let err =
        sipguard_tests::daemon::refused_run(&pair.server, &sb, &["--iface", &pair.server_if])?;
    assert!(
        // Line 4 as written; the sandbox's first line keeps discovery off.
        err.contains("sipguard.toml") && err.contains("line 5") && err.contains("maxretr"),
        "{err}"
    );
    assert!(!pair.server_has_xdp()?, "nothing attached");
    Ok(())
}

#[test]
fn test_filter_counts_and_replays() -> Result<()> {
    let sb = Sandbox::new(&CONFIG)?;
    let mut log = String::new();
    for i in 0..4 {
        log.push_str(&format!("2024-03-01 12:00:0{i}.000000 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u{i}@d] from ip 203.0.113.9\n"));
    }
    log.push_str("2024-03-01 12:00:05.000000 [WARNING] sofia_reg.c:1842 SIP auth challenge (REGISTER) on sofia profile 'internal' for [u@d] from ip 203.0.113.10\n");
    log.push_str("2024-03-01 12:00:06.000000 [NOTICE] switch_core.c:1 something else\n");
    log.push_str("\u{fffd} broken \u{1} line\n");
    std::fs::write(sb.path("test.log"), log)?;
    let out: serde_json::Value = serde_json::from_str(&cli_ok(
        &sb,
        &[
            "test-filter",
            sb.path("test.log").to_str().unwrap(),
            "--jail",
            "freeswitch",
            "--replay",
            "--json",
        ],
    )?)?;
    assert_eq!(
        (
            out["lines"].as_u64(),
            out["matched"].as_u64(),
            out["missed"].as_u64()
        ),
        (Some(7), Some(4), Some(3)),
        "{out}"
    );
    assert_eq!(out["hosts"][0]["host"], "203.0.113.9");
    assert_eq!(out["bans"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(out["bans"][0]["net"], "203.0.113.9");
    let text = cli_ok(
        &sb,
        &[
            "test-filter",
            sb.path("test.log").to_str().unwrap(),
            "--filter",
            "freeswitch-challenge",
        ],
    )?;
    assert!(text.contains("1 matched"), "{text}");
    Ok(())
}

/// Lines that merely contain failure text (siptrace headers, dialplan logs
/// of a User-Agent, a forged syslog line of another program) ban nobody:
/// only lines FreeSWITCH wrote, parsed from their start, count.
#[test]
fn injected_failure_text_bans_nobody() -> Result<()> {
    let s = Setup::new(&CONFIG)?;
    let (sb, pair) = (&s.sb, &s.pair);
    let d = &s.daemon;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let victim = udp_socket(&pair.client, addr(OTHER_V4, 0))?;
    let text = format!("[WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@10.0.8.5] from ip {OTHER_V4}");
    let stamped = format!("{} {text}", now_stamp());
    let injected = [
        format!("User-Agent: x {text}"),
        format!("User-Agent: {stamped}"),
        format!("Subject: {stamped}"),
        format!("   {stamped}"),
        format!(
            "{} [INFO] mod_dptools.c:1712 User-Agent: {text}",
            now_stamp()
        ),
        format!("{} 97.00% [NOTICE] switch_cpp.cpp:1466 {text}", now_stamp()),
        format!("{} [WARNING] switch_cpp.cpp:1466 x {text}", now_stamp()),
        format!(
            "{} [INFO] switch_channel.c:1104 EXPORT (export_vars) [sip_user_agent]=[{stamped}]",
            now_stamp()
        ),
        format!("Mar  1 12:00:00 host kamailio[12]: {stamped}"),
        text.clone(),
        format!("x{stamped}"),
        format!("\t{stamped}"),
    ];
    append(sb, &(injected.join("\n") + "\n"))?;
    // A real failure line after them proves the daemon read past them.
    append(sb, &failure(CLIENT_V4, "marker"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(sb)?["jails"][0]["filter"]["total_failed"] != 1 {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = status(sb)?;
    assert_eq!(st["jails"][0]["filter"]["lines"], 13, "{st}");
    assert_eq!(st["jails"][0]["actions"]["currently_banned"], 0, "{st}");
    assert_eq!(udp_delivered(&victim, &sip, PROBES)?, PROBES);
    Ok(())
}

/// FreeSWITCH logging two hours behind the daemon's timezone: every line
/// looks two hours old, so the jail cannot ban; that is counted and
/// warned about, and `log_timezone` puts it right (through a reload).
#[test]
fn a_log_timezone_mismatch_is_loud_and_log_timezone_fixes_it() -> Result<()> {
    let s = Setup::new(&CONFIG)?;
    let (sb, pair) = (&s.sb, &s.pair);
    let d = &s.daemon;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    // Written in UTC-2, whatever the daemon's own zone is.
    let behind = || {
        (chrono::Utc::now() - chrono::Duration::hours(2))
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string()
    };
    let line = |i: usize| {
        format!("{} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [{i}@10.0.8.5] from ip {CLIENT_V4}\n", behind())
    };
    append(sb, &(0..12).map(line).collect::<String>())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d
        .log()
        .contains("is FreeSWITCH logging in another timezone")
    {
        assert!(Instant::now() < deadline, "no warning:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = status(sb)?;
    assert_eq!(st["jails"][0]["filter"]["skewed"], 12, "{st}");
    assert_eq!(st["jails"][0]["actions"]["currently_banned"], 0, "{st}");
    assert_eq!(udp_delivered(&attacker, &sip, PROBES)?, PROBES);

    sb.write_config(&format!("log_timezone = \"-02:00\"\n{}", *CONFIG))?;
    cli_ok(sb, &["reload"])?;
    append(sb, &(20..23).map(line).collect::<String>())?;
    wait_delivered(&attacker, &sip, 0, "banned once the timezone is right")?;
    Ok(())
}

/// A reload with the jail unchanged keeps its offenders: two failures
/// before it and one after still make three within findtime.
#[test]
fn reload_keeps_the_offenders_of_unchanged_jails() -> Result<()> {
    let s = Setup::new(&CONFIG)?;
    let (sb, pair) = (&s.sb, &s.pair);
    let d = &s.daemon;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    append(sb, &failures(CLIENT_V4, 2))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(sb)?["jails"][0]["filter"]["currently_failed"] != 1 {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    cli_ok(sb, &["reload"])?;
    append(sb, &failure(CLIENT_V4, "third"))?;
    wait_delivered(
        &attacker,
        &sip,
        0,
        "banned by 2 + 1 failures across the reload",
    )?;
    Ok(())
}

/// `list` reads the bans from the kernel and asks the daemon for their
/// notes a page at a time: with more bans than a page, every ban still
/// has its jail.
/// Many bans: `list` pages through every ban's note; `status` lists the
/// first thousand and counts the rest; the log tells of each, in sums past
/// a hundred a second.
#[test]
fn list_pages_the_notes_of_many_bans() -> Result<()> {
    let s = Setup::new(&CONFIG.replace("maxretry = 3", "maxretry = 1"))?;
    let sb = &s.sb;
    let d = &s.daemon;
    let n = 25_000u32;
    let lines: String = (0..n)
        .map(|i| failure(&std::net::Ipv4Addr::from(0x6440_0000 + i).to_string(), "u"))
        .collect();
    append(sb, &lines)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(sb)?["jails"][0]["actions"]["currently_banned"] != n {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A status lists the first 1000 by address and counts the rest.
    let actions = &status(sb)?["jails"][0]["actions"];
    let listed = actions["banned"].as_array().unwrap();
    assert_eq!(listed.len(), 1000, "{actions}");
    assert_eq!(actions["banned_not_listed"], n - 1000);
    assert_eq!(listed[0]["address"], "100.64.0.0");
    assert_eq!(listed[999]["address"], "100.64.3.231");
    assert!(
        listed[0]["line"]
            .as_str()
            .unwrap()
            .contains("from ip 100.64.0.0"),
        "{}",
        listed[0]
    );
    let list: serde_json::Value = serde_json::from_str(&cli_ok(sb, &["list", "--json"])?)?;
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), n as usize);
    // The daemon's log: a line per ban up to 100 a second, the rest of
    // each second's bans counted in one line; together, every ban.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = d.log();
        let one_by_one = log.matches("[freeswitch] banned 100.").count() as u64;
        let summed: u64 = log
            .lines()
            .filter_map(|l| l.split("[freeswitch] banned ").nth(1))
            .filter_map(|rest| rest.strip_suffix(" more in the last second, not logged one by one (`sipguard list` has every ban)"))
            .map(|n| n.parse::<u64>().unwrap())
            .sum();
        if one_by_one + summed == u64::from(n) {
            assert!(
                one_by_one < u64::from(n) / 10,
                "{one_by_one} lines for {n} bans"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{one_by_one} + {summed} of {n} bans logged"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        rows.iter().all(|b| b["jail"] == "freeswitch"),
        "a ban without its note"
    );
    Ok(())
}
