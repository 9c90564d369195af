//! End to end: sipguard as a service. The service manager hears `READY=1`
//! only once the program is attached and the saved bans are in force,
//! `RELOADING=1`/`READY=1` around a reload, `STOPPING=1`, and `WATCHDOG=1`
//! when asked for; `status --wait` is the same promise without systemd.
use anyhow::Result;
use sipguard_tests::{
    daemon::{cli, Daemon},
    fixture::{Setup, FREESWITCH_JAIL},
    netns::Pair,
    Sandbox,
};
use std::time::Duration;

/// A saved ban and no pins: the daemon starts as after a reboot, with the
/// program to verify and attach and the ban to write back.
fn rebooted_with_a_ban() -> Result<Setup> {
    let mut s = Setup::new(FREESWITCH_JAIL)?;
    s.cli(&["ban", "192.0.2.7", "--for", "1h"])?;
    s.daemon.stop()?;
    std::fs::remove_dir_all(&s.sb.pin)?;
    Ok(s)
}

#[test]
fn ready_only_once_attached_with_the_saved_bans_in_force() -> Result<()> {
    let mut s = rebooted_with_a_ban()?;
    assert!(!s.pair.server_has_xdp()?);
    let args = ["--iface", s.pair.server_if.as_str()];
    s.daemon = Daemon::spawn(&s.pair.server, &s.sb, &args, &[("WATCHDOG_USEC", "400000")])?;
    let ready = s.daemon.wait_for("READY=1", Duration::from_secs(30))?;
    // Checked the moment READY=1 arrives: verifying and attaching take
    // seconds, so a READY=1 sent early would be caught here.
    assert!(
        s.pair.server_has_xdp()?,
        "READY=1 before the program was attached"
    );
    assert_eq!(
        s.banned()?,
        ["192.0.2.7"],
        "READY=1 before the saved bans were in force"
    );
    assert!(
        ready.contains("STATUS=protecting; 1 ban(s) in force"),
        "{ready}"
    );

    // The watchdog is fed at half the timeout, from the event loop.
    for _ in 0..3 {
        s.daemon.wait_for("WATCHDOG=1", Duration::from_secs(2))?;
    }

    // A reload is announced, with the monotonic time systemd asks for, and
    // followed by READY=1.
    s.cli(&["reload"])?;
    let reloading = s.daemon.wait_for("RELOADING=1", Duration::from_secs(5))?;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    s.daemon.wait_for("READY=1", Duration::from_secs(5))?;

    // A status change reaches systemctl's status line.
    s.cli(&["ban", "192.0.2.8"])?;
    s.daemon.wait_for(
        "STATUS=protecting; 2 ban(s) in force, 0 packet(s) dropped",
        Duration::from_secs(5),
    )?;

    // SIGTERM: STOPPING=1, and the program stays attached.
    let pid = s.daemon.pid();
    // SAFETY: plain kill(2) on the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    s.daemon.wait_for("STOPPING=1", Duration::from_secs(10))?;
    assert!(s.pair.server_has_xdp()?);
    Ok(())
}

#[test]
fn status_wait_returns_once_protection_is_active() -> Result<()> {
    let sb = Sandbox::new(FREESWITCH_JAIL)?;
    let pair = Pair::new()?;

    // No daemon: a clear failure once the wait is over.
    let t = std::time::Instant::now();
    let out = cli(&sb, &["status", "--wait", "0.5"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no daemon with protection active"), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(500));

    // A daemon starting: `status --wait` returns 0 only once it protects.
    let _daemon = Daemon::spawn(&pair.server, &sb, &["--iface", &pair.server_if], &[])?;
    let out = cli(&sb, &["status", "--wait", "30", "--json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pair.server_has_xdp()?,
        "status --wait returned before the attach"
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(status["jails"][0]["name"], "freeswitch", "{status}");

    // Nonsense is refused.
    let out = cli(&sb, &["status", "--wait", "-1"])?;
    assert!(!out.status.success());
    Ok(())
}

/// The repository's unit, as `cargo xtask install` writes it for this
/// binary: systemd accepts it, and its sandbox scores well.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../loader/dist/sipguard.service"
    ))?
    .replace(
        "/usr/local/sbin/sipguard",
        &sipguard_tests::daemon::bin().display().to_string(),
    );
    for key in [
        "Type=notify",
        "ExecReload=",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.contains(key), "{key} missing");
    }
    let path = dir.path().join("sipguard.service");
    std::fs::write(&path, unit)?;
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()?;
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // Exposure is scored 0 (locked down) to 10 (unsafe); 3.5 or less is "OK".
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=35", "--no-pager"])
        .arg(&path)
        .output()?;
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
    Ok(())
}
