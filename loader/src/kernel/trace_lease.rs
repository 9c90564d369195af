//! The `trace` switch is a lease: the tracer's pid and a deadline on the
//! kernel's monotonic clock. The program itself writes no record past the
//! deadline (so a tracer killed with SIGKILL, or a lost SSH session, stops
//! costing anything within `LEASE` even with no daemon), the tracer renews
//! it every `RENEW` while it runs, and the daemon's tick turns off at once a
//! switch whose tracer is gone.
use crate::kernel::clock;
use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData};
use common::{map_name, TraceFilter};
use std::{path::Path, time::Duration};

/// How long a lease lasts unless renewed.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a running tracer renews it.
pub const RENEW: Duration = Duration::from_secs(5);

/// The pinned switch of `pin_dir`; `None` when the attached program
/// predates `trace` (no such pin).
pub fn open(pin_dir: &Path) -> Result<Option<Array<MapData, TraceFilter>>> {
    let path = pin_dir.join(map_name::TRACE);
    if !path.exists() {
        return Ok(None);
    }
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Some(Array::try_from(Map::Array(data))?))
}

/// A deadline `LEASE` from now, on the clock the program reads.
pub fn deadline() -> u64 {
    clock::mono_now_ns() + LEASE.as_nanos() as u64
}

/// True while `pid` exists (EPERM: it does, someone else's).
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(pid, 0) sends nothing; it only checks the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The live tracer holding `f`, if any: on, before its deadline, and its
/// process still there.
pub fn holder(f: &TraceFilter, now_ns: u64) -> Option<u32> {
    (f.on != 0 && now_ns < f.deadline_ns && alive(f.owner_pid)).then_some(f.owner_pid)
}

/// Turns the switch off when it is on but nobody holds it (the tracer is
/// gone, or its lease ran out); returns the tracer's pid when it did.
pub fn end_orphan(pin_dir: &Path) -> Result<Option<u32>> {
    let Some(mut switch) = open(pin_dir)? else {
        return Ok(None);
    };
    let f = switch.get(&0, 0)?;
    if f.on == 0 || holder(&f, clock::mono_now_ns()).is_some() {
        return Ok(None);
    }
    switch.set(0, TraceFilter::default(), 0)?;
    Ok(Some(f.owner_pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_only_by_a_live_tracer_before_its_deadline() {
        let me = std::process::id();
        let now = clock::mono_now_ns();
        let on = |pid, deadline_ns| TraceFilter {
            on: 1,
            owner_pid: pid,
            deadline_ns,
            ..TraceFilter::default()
        };
        assert_eq!(holder(&on(me, now + 1_000_000_000), now), Some(me));
        assert_eq!(holder(&on(me, now), now), None, "past its deadline");
        assert_eq!(holder(&TraceFilter::default(), now), None, "off");
        // A child that has exited and been reaped: its pid is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(!alive(dead));
        assert_eq!(holder(&on(dead, now + 1_000_000_000), now), None);
        assert!(alive(1), "init exists");
        assert!(!alive(0) && !alive(u32::MAX));
    }
}
