//! End to end: the operator's decisions are never undone behind their back.
//! The allowlist survives restarts and reboots and is exactly what the
//! operator and the configuration say; an unban or allow made with the CLI
//! while the daemon is stopped is not undone by the next start; allowed
//! networks are not counted by the jails.
use anyhow::Result;
use sipguard_tests::{
    daemon::{cli_ok, Daemon},
    netns::*,
    Sandbox,
};
use std::time::{Duration, Instant};

const PROBES: usize = 20;

/// A jail on `{dir}/freeswitch.log`: 3 failures within a minute ban for an hour.
const CONFIG: &str = r#"
[jails.freeswitch]
logpath = "{dir}/freeswitch.log"
filter = "freeswitch"
maxretry = 3
findtime = "1m"
bantime = "1h"
"#;

fn append(sb: &Sandbox, ip: &str, n: usize) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sb.path("freeswitch.log"))?;
    for i in 0..n {
        writeln!(
            f,
            "{} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u{i}@10.0.8.5] from ip {ip}",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.6f")
        )?;
    }
    Ok(())
}

fn allowed(sb: &Sandbox) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(&cli_ok(sb, &["list", "--allowed", "--json"])?)?;
    Ok(v.as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["address"].as_str().unwrap(), a["prefix"]))
        .collect())
}

fn banned(sb: &Sandbox) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(&cli_ok(sb, &["list", "--json"])?)?;
    Ok(v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect())
}

/// A reboot as far as sipguard can tell: the daemon stopped and every pin
/// (maps and links) gone; only the state file is left.
fn reboot(sb: &Sandbox) -> Result<()> {
    std::fs::remove_dir_all(&sb.pin)?;
    Ok(())
}

/// Waits (bounded) until `what` holds.
fn wait(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f()? {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn the_allowlist_is_the_operators_across_restarts_and_reboots() -> Result<()> {
    let sb = Sandbox::new(&format!("ignoreip = [\"198.51.100.0/24\"]\n{CONFIG}"))?;
    append(&sb, CLIENT_V4, 0)?;
    let pair = Pair::new()?;
    let args = ["--iface", pair.server_if.as_str()];
    let mut d = Daemon::start(&pair.server, &sb, &args)?;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let office = udp_socket(&pair.client, addr(OTHER_V4, 0))?;

    // "The office", allowed through the running daemon, is never counted.
    cli_ok(&sb, &["allow", OTHER_V4])?;
    append(&sb, OTHER_V4, 5)?;
    append(&sb, CLIENT_V4, 3)?;
    wait("the attacker is banned", || Ok(banned(&sb)? == [CLIENT_V4]))?;
    let st: serde_json::Value =
        serde_json::from_str(&cli_ok(&sb, &["status", "freeswitch", "--json"])?)?;
    assert_eq!(st["jails"][0]["filter"]["ignored"], 5, "{st}");

    // Reboot: the operator's entry comes back with the daemon.
    d.stop()?;
    reboot(&sb)?;
    let mut d = Daemon::start(&pair.server, &sb, &args)?;
    assert!(
        allowed(&sb)?.contains(&format!("{OTHER_V4}/32")),
        "{:?}",
        allowed(&sb)?
    );
    assert!(allowed(&sb)?.contains(&"198.51.100.0/24".to_owned()));
    assert_eq!(udp_delivered(&office, &sip, PROBES)?, PROBES);

    // A network removed from ignoreip is no longer allow-listed after a
    // restart, although the program (and the allowlist) stayed in place.
    d.stop()?;
    sb.write_config(CONFIG)?;
    let mut d = Daemon::start(&pair.server, &sb, &args)?;
    let now = allowed(&sb)?;
    assert!(!now.contains(&"198.51.100.0/24".to_owned()), "{now:?}");
    assert!(now.contains(&format!("{OTHER_V4}/32")), "{now:?}");

    // Disallowed through the daemon: gone for good, also after a reboot.
    cli_ok(&sb, &["disallow", OTHER_V4])?;
    d.stop()?;
    reboot(&sb)?;
    let _d = Daemon::start(&pair.server, &sb, &args)?;
    assert!(!allowed(&sb)?.contains(&format!("{OTHER_V4}/32")));
    Ok(())
}

#[test]
fn changes_made_while_the_daemon_is_stopped_are_kept() -> Result<()> {
    let sb = Sandbox::new(CONFIG)?;
    append(&sb, CLIENT_V4, 0)?;
    let pair = Pair::new()?;
    let args = ["--iface", pair.server_if.as_str()];
    let mut d = Daemon::start(&pair.server, &sb, &args)?;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    let office = udp_socket(&pair.client, addr(OTHER_V4, 0))?;
    append(&sb, CLIENT_V4, 3)?;
    wait("banned by the log", || Ok(banned(&sb)? == [CLIENT_V4]))?;
    d.stop()?;

    // The daemon is stopped: the CLI changes the maps itself.
    cli_ok(&sb, &["unban", CLIENT_V4])?;
    cli_ok(&sb, &["allow", OTHER_V4])?;
    cli_ok(&sb, &["ban", "192.0.2.99", "--for", "1h"])?;
    assert_eq!(
        udp_delivered(&attacker, &sip, PROBES)?,
        PROBES,
        "unbanned at once"
    );

    // The start does not undo them, also when it is a reboot.
    let mut d = Daemon::start(&pair.server, &sb, &args)?;
    assert!(d.log().contains("applying 3 change(s)"), "{}", d.log());
    assert_eq!(banned(&sb)?, ["192.0.2.99"]);
    assert_eq!(
        udp_delivered(&attacker, &sip, PROBES)?,
        PROBES,
        "not banned again"
    );
    d.stop()?;
    reboot(&sb)?;
    let _d = Daemon::start(&pair.server, &sb, &args)?;
    assert_eq!(
        banned(&sb)?,
        ["192.0.2.99"],
        "the offline ban is kept, the unban too"
    );
    assert!(allowed(&sb)?.contains(&format!("{OTHER_V4}/32")));
    assert_eq!(udp_delivered(&office, &sip, PROBES)?, PROBES);
    assert_eq!(udp_delivered(&attacker, &sip, PROBES)?, PROBES);
    Ok(())
}
