//! End to end: `sipguard trace` shows, live, each packet of one source with
//! the verdict the XDP program reached and the ban that decided it; other
//! sources stay out of it; Ctrl-C turns the switch off again; one trace at
//! a time. The switch is a lease: a tracer killed with SIGKILL has it
//! turned off by the daemon, and past its deadline the program itself
//! writes nothing; very wide prefixes need --force.
use anyhow::{Context as _, Result};
use sipguard_tests::{
    daemon::bin,
    fixture::{wait_until, Setup, FREESWITCH_JAIL},
    netns::*,
};
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

/// `sipguard trace ARGS`, started; returns once the switch is on.
fn start_trace(s: &Setup, args: &[&str]) -> Result<(Child, BufReader<std::process::ChildStderr>)> {
    let mut child = Command::new(bin())
        .args(s.sb.args())
        .arg("trace")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = BufReader::new(child.stderr.take().context("stderr")?);
    let mut first = String::new();
    err.read_line(&mut first)?;
    anyhow::ensure!(first.starts_with("tracing"), "trace did not start: {first}");
    Ok((child, err))
}

fn switch(s: &Setup) -> Result<aya::maps::Array<aya::maps::MapData, common::TraceFilter>> {
    let data = aya::maps::MapData::from_pin(s.sb.pin.join(common::map_name::TRACE))?;
    Ok(aya::maps::Array::try_from(aya::maps::Map::Array(data))?)
}

fn switch_on(s: &Setup) -> Result<bool> {
    Ok(switch(s)?.get(&0, 0)?.on != 0)
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn trace_shows_each_packet_with_its_verdict_and_ban() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    s.cli(&["ban", CLIENT_V4, "--for", "1h"])?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let other = udp_socket(&s.pair.client, addr(OTHER_V4, 0))?;

    let (child, _err) = start_trace(&s, &[CLIENT_V4, "--count", "6", "--seconds", "30"])?;
    assert!(switch_on(&s)?);
    // A second trace is refused while this one runs.
    let second = s.cli(&["trace", OTHER_V4, "--count", "1"]);
    assert!(second.unwrap_err().to_string().contains("tracing already"));

    assert_eq!(udp_delivered(&attacker, &sip, 3)?, 0);
    assert_eq!(udp_delivered(&other, &sip, 3)?, 3);
    s.cli(&["unban", CLIENT_V4])?;
    assert_eq!(udp_delivered(&attacker, &sip, 3)?, 3);

    let out = child.wait_with_output()?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for l in &lines[..3] {
        assert!(
            l.contains(CLIENT_V4)
                && l.contains("drop_banned")
                && l.contains(&format!("by the ban of {CLIENT_V4}")),
            "{l}"
        );
    }
    for l in &lines[3..] {
        assert!(
            l.contains("pass_not_banned") && !l.contains("by the ban"),
            "{l}"
        );
    }
    assert!(
        !text.contains(OTHER_V4),
        "another source was traced:\n{text}"
    );
    assert!(!switch_on(&s)?, "the switch stays on after the trace");
    Ok(())
}

#[test]
fn ctrl_c_stops_a_prefix_trace() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    s.cli(&["allow", OTHER_V4])?;
    s.cli(&["ban", "10.213.0.0/24"])?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let other = udp_socket(&s.pair.client, addr(OTHER_V4, 0))?;
    let (child, mut err) = start_trace(&s, &["10.213.0.0/24"])?;
    assert_eq!(udp_delivered(&other, &sip, 2)?, 2);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.matches("pass_allowlisted").count(), 2, "{text}");
    assert!(text.contains("by the ban of 10.213.0.0/24"), "{text}");
    let mut summary = String::new();
    err.read_line(&mut summary)?;
    assert!(summary.contains("2 packet(s) traced"), "{summary}");
    assert!(!switch_on(&s)?);
    Ok(())
}

#[test]
fn a_killed_tracer_loses_its_lease_and_a_new_trace_takes_over() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let client = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let (mut child, _err) = start_trace(&s, &[CLIENT_V4])?;
    assert!(switch_on(&s)?);
    // Killed without a chance to clean up (and reaped, as a shell would).
    signal(&child, libc::SIGKILL);
    child.wait()?;
    assert!(switch_on(&s)?, "nothing else turned it off");
    wait_until(5, "the daemon turned the switch off", || {
        Ok(!switch_on(&s)?)
    })?;
    assert!(
        s.daemon.log().contains("trace by process"),
        "{}",
        s.daemon.log()
    );

    // A new trace just works, and sees packets.
    let (child, _err) = start_trace(&s, &[CLIENT_V4, "--count", "2", "--seconds", "20"])?;
    assert_eq!(udp_delivered(&client, &sip, 2)?, 2);
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.matches("pass_not_banned").count(), 2, "{text}");
    Ok(())
}

#[test]
fn past_its_deadline_a_trace_writes_nothing_even_without_a_daemon() -> Result<()> {
    let mut s = Setup::new(FREESWITCH_JAIL)?;
    // No daemon to turn the switch off: only the program's own check stands.
    s.daemon.stop()?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let client = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let (child, mut err) = start_trace(&s, &[CLIENT_V4, "--seconds", "60"])?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The tracer hangs (stopped: it cannot renew), and its lease runs out.
    signal(&child, libc::SIGSTOP);
    let mut sw = switch(&s)?;
    let mut lease = sw.get(&0, 0)?;
    assert_eq!((lease.on, lease.owner_pid), (1, child.id()));
    assert!(lease.deadline_ns > 0);
    lease.deadline_ns = 1;
    sw.set(0, lease, 0)?;
    assert_eq!(udp_delivered(&client, &sip, 3)?, 3);
    // Stopped by Ctrl-C as it wakes: it reads what the ring holds, then ends.
    signal(&child, libc::SIGINT);
    signal(&child, libc::SIGCONT);
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert!(text.is_empty(), "records past the deadline:\n{text}");
    let mut summary = String::new();
    std::io::BufRead::read_line(&mut err, &mut summary)?;
    assert!(summary.contains("0 packet(s) traced"), "{summary}");
    Ok(())
}

#[test]
fn very_wide_prefixes_need_force() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    for wide in [
        "0.0.0.0/0",
        "::/0",
        "10.0.0.0/8",
        "10.213.0.0/15",
        "fd00::/32",
    ] {
        let refused = s.cli(&["trace", wide, "--count", "1", "--seconds", "1"]);
        let e = refused.expect_err(wide).to_string();
        assert!(e.contains("--force"), "{wide}: {e}");
        assert!(!switch_on(&s)?);
    }
    let (child, _err) = start_trace(&s, &["0.0.0.0/0", "--force", "--seconds", "1"])?;
    assert!(switch_on(&s)?);
    assert!(child.wait_with_output()?.status.success());
    assert!(!switch_on(&s)?);
    // A /16 and a /48 are narrow enough.
    for ok in ["10.213.0.0/16", "fd00:5167::/48"] {
        let (child, _err) = start_trace(&s, &[ok, "--seconds", "0.2"])?;
        assert!(child.wait_with_output()?.status.success(), "{ok}");
    }
    Ok(())
}
