//! End to end: `sipguard trace` shows, live, each packet of one source with
//! the verdict the XDP program reached and the ban that decided it; other
//! sources stay out of it; Ctrl-C turns the switch off again; one trace at
//! a time.
use anyhow::{Context as _, Result};
use sipguard_tests::{
    daemon::bin,
    fixture::{Setup, FREESWITCH_JAIL},
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

fn switch_on(s: &Setup) -> Result<bool> {
    let data = aya::maps::MapData::from_pin(s.sb.pin.join(common::map_name::TRACE))?;
    let map: aya::maps::Array<_, common::TraceFilter> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data))?;
    Ok(map.get(&0, 0)?.on != 0)
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
