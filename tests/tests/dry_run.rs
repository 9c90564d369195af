//! End to end: a dry run on a live box. Jails ban and the program reaches
//! its verdicts as usual, but a banned source's traffic still arrives; the
//! would-be drops show in `stats`, `list`, `status` and the metrics. Turning
//! it off with a reload starts dropping at once.
use anyhow::Result;
use sipguard_tests::{
    fixture::{append, failures, wait_until, Setup, FREESWITCH_JAIL},
    netns::*,
};

#[test]
fn a_dry_run_bans_and_counts_but_drops_nothing() -> Result<()> {
    let s = Setup::new(&format!("dry_run = true\n{FREESWITCH_JAIL}"))?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;

    append(&s.sb, &failures(CLIENT_V4, 3))?;
    wait_until(5, "banned by the log", || Ok(s.banned()? == [CLIENT_V4]))?;
    assert_eq!(udp_delivered(&attacker, &sip, 30)?, 30, "a dry run dropped");

    let stats = s.json(&["stats"])?;
    assert_eq!(stats["dry_run"], true);
    assert_eq!(stats["counters"]["drop_banned"]["packets"], 30, "{stats}");
    let list = s.json(&["list"])?;
    assert_eq!(
        (list[0]["packets"].as_u64(), &list[0]["dry_run"]),
        (Some(30), &true.into())
    );
    assert!(s.cli(&["list"])?.contains("DRY RUN"));
    assert_eq!(s.json(&["status"])?["dry_run"], true);
    assert_eq!(s.metric("sipguard_dry_run")?, Some(1.0));
    assert_eq!(
        s.metric("sipguard_xdp_packets_total{action=\"drop_banned\"}")?,
        Some(30.0)
    );

    // Rolled out: the same ban now drops.
    s.sb.write_config(FREESWITCH_JAIL)?;
    s.cli(&["reload"])?;
    assert_eq!(udp_delivered(&attacker, &sip, 30)?, 0);
    assert_eq!(s.json(&["stats"])?["dry_run"], false);
    Ok(())
}

#[test]
fn run_dry_run_flag() -> Result<()> {
    let mut s = Setup::with_args(FREESWITCH_JAIL, &["--dry-run"])?;
    assert_eq!(s.json(&["stats"])?["dry_run"], true);
    s.cli(&["ban", CLIENT_V4])?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    assert_eq!(udp_delivered(&attacker, &sip, 10)?, 10);
    // The service manager's status line says so.
    assert!(s.daemon.log().contains("DRY RUN"));
    s.restart()?;
    assert_eq!(s.json(&["stats"])?["dry_run"], false);
    assert_eq!(udp_delivered(&attacker, &sip, 10)?, 0);
    Ok(())
}
