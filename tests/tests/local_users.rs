//! End to end: what a local user can put in the daemon's way (a FIFO or a
//! huge sparse file in place of a log, thousands of idle connections to its
//! metrics port and control socket) never stalls it: `status` answers, the
//! other logs still ban, its descriptors stay bounded and it does not spin.
use anyhow::{Context as _, Result};
use sipguard_tests::{
    fixture::{append, failures, wait_until, Setup, FREESWITCH_JAIL},
    netns::*,
};
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// `status` answers within a second.
fn status_answers(s: &Setup) -> Result<()> {
    let started = Instant::now();
    s.cli(&["status"])?;
    let took = started.elapsed();
    anyhow::ensure!(took < Duration::from_secs(1), "status took {took:?}");
    Ok(())
}

/// The daemon's open descriptors.
fn fds(s: &Setup) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{}/fd", s.daemon.pid()))?.count())
}

/// The daemon's CPU time (user + system) so far.
fn cpu(s: &Setup) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.daemon.pid()))?;
    // After the command's name in parentheses: state is field 3, utime 14.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis((f[0] + f[1]) * 1000 / hz))
}

/// The daemon's CPU time over the next two seconds: well under one core.
fn no_spin(s: &Setup) -> Result<()> {
    let before = cpu(s)?;
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu(s)? - before;
    anyhow::ensure!(used < Duration::from_millis(500), "{used:?} of CPU in 2 s");
    Ok(())
}

fn mkfifo(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// This test process may hold thousands of connections.
fn raise_own_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn a_fifo_in_place_of_a_log_stalls_nothing() -> Result<()> {
    let s = Setup::new(
        r#"
[jails.freeswitch]
logpath = ["{dir}/freeswitch.log", "{dir}/logs/*.log"]
filter = "freeswitch"
maxretry = 3
findtime = "1m"
bantime = "1h"
"#,
    )?;
    append(&s.sb, "")?;
    std::fs::create_dir(s.sb.path("logs"))?;
    std::fs::write(s.sb.path("logs/fs.log"), "")?;
    mkfifo(&s.sb.path("logs/evil.log"))?;
    // The followed log rotated away, a FIFO in its place.
    std::fs::rename(s.sb.path("freeswitch.log"), s.sb.path("freeswitch.log.1"))?;
    mkfifo(&s.sb.path("freeswitch.log"))?;
    // A tick (1 s) picks up the glob's files; polls see the FIFO.
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        status_answers(&s)?;
    }
    // The jail's other log still bans.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(s.sb.path("logs/fs.log"))?;
    std::io::Write::write_all(&mut f, failures(CLIENT_V4, 3).as_bytes())?;
    wait_until(5, "banned from the jail's other log", || {
        Ok(s.banned()? == [CLIENT_V4])
    })?;
    no_spin(&s)?;
    // One warning for the FIFO, not one a poll (ten a second).
    let log = s.daemon.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("freeswitch.log is a FIFO"))
        .count();
    assert_eq!(warned, 1, "{log}");
    Ok(())
}

#[test]
fn a_huge_sparse_file_in_place_of_the_log_is_not_read_whole() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    append(&s.sb, "")?;
    // 64 GiB of holes, then failures: a "copy" a local user made.
    let fake = s.sb.path("fake");
    let size = 64u64 << 30;
    let file = std::fs::File::create(&fake)?;
    file.set_len(size)?;
    std::os::unix::fs::FileExt::write_all_at(
        &file,
        format!("\n{}", failures(CLIENT_V4, 3)).as_bytes(),
        size,
    )?;
    drop(file);
    let cpu_before = cpu(&s)?;
    std::fs::rename(&fake, s.sb.path("freeswitch.log"))?;
    status_answers(&s)?;
    // Reading its zeros, 4 MiB a turn, would take thousands of turns.
    wait_until(5, "banned from the lines after the hole", || {
        Ok(s.banned()? == [CLIENT_V4])
    })?;
    status_answers(&s)?;
    let used = cpu(&s)? - cpu_before;
    assert!(used < Duration::from_secs(2), "{used:?} of CPU");
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.daemon.pid()))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    assert!(rss_kb < 256 * 1024, "{rss_kb} kB resident");
    Ok(())
}

#[test]
fn idle_metrics_connections_are_bounded_and_never_spin_it() -> Result<()> {
    raise_own_fd_limit();
    let s = Setup::new(FREESWITCH_JAIL)?;
    let base = fds(&s)?;
    let idle = in_netns(&s.pair.server, || {
        (0..2000)
            .map(|_| std::net::TcpStream::connect("127.0.0.1:9713"))
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    status_answers(&s)?;
    let started = Instant::now();
    let (head, body) = s.http_get("/metrics")?;
    assert!(head.contains("200"), "{head}");
    assert!(body.contains("sipguard_build_info"));
    assert!(started.elapsed() < Duration::from_secs(1));
    let held = fds(&s)?;
    assert!(held <= base + 64 + 8, "{held} descriptors (from {base})");
    no_spin(&s)?;
    drop(idle);

    // Out of descriptors: accepting backs off instead of spinning.
    wait_until(10, "idle scrapers gone", || Ok(fds(&s)? <= base + 2))?;
    let limit = fds(&s)? as u64 + 4;
    set_fd_limit(s.daemon.pid(), limit)?;
    let idle = in_netns(&s.pair.server, || {
        (0..50)
            .map(|_| std::net::TcpStream::connect("127.0.0.1:9713"))
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    let spun = no_spin(&s);
    drop(idle);
    set_fd_limit(s.daemon.pid(), 65536)?;
    spun?;
    assert!(
        s.daemon
            .log()
            .contains("metrics endpoint: cannot accept a client"),
        "{}",
        s.daemon.log()
    );
    wait_until(10, "answering again", || Ok(s.cli(&["status"]).is_ok()))?;
    Ok(())
}

/// Sets the soft limit on open files of process `pid`.
fn set_fd_limit(pid: u32, soft: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child with valid structs.
    unsafe {
        if libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        lim.rlim_cur = soft.min(lim.rlim_max);
        if libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

#[test]
fn idle_control_connections_are_bounded() -> Result<()> {
    raise_own_fd_limit();
    let s = Setup::new(FREESWITCH_JAIL)?;
    let base = fds(&s)?;
    let idle = (0..500)
        .map(|_| std::os::unix::net::UnixStream::connect(s.sb.socket()))
        .collect::<std::io::Result<Vec<_>>>()?;
    status_answers(&s)?;
    let held = fds(&s)?;
    assert!(held <= base + 32 + 8, "{held} descriptors (from {base})");
    no_spin(&s)?;
    // Still banning.
    append(&s.sb, &failures(CLIENT_V4, 3))?;
    wait_until(5, "banned", || Ok(s.banned()? == [CLIENT_V4]))?;
    drop(idle);
    Ok(())
}
