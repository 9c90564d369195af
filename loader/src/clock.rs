//! The kernel times bans with `CLOCK_MONOTONIC` read at tick resolution
//! (`bpf_ktime_get_coarse_ns`, the cheapest clock in XDP): it never jumps
//! with wall-time changes. It stops during suspend, which can only make a ban
//! last longer.
use std::time::{Duration, SystemTime};

pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The monotonic-clock deadline `duration` from now.
pub fn deadline_ns(duration: Duration) -> u64 {
    mono_now_ns().saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

/// How long ago a monotonic-clock instant was (zero if in the future).
pub fn age(ns: u64) -> Duration {
    Duration::from_nanos(mono_now_ns().saturating_sub(ns))
}

/// How long until a monotonic-clock instant (zero if past).
pub fn remaining(ns: u64) -> Duration {
    Duration::from_nanos(ns.saturating_sub(mono_now_ns()))
}

/// The wall-clock time of a monotonic-clock instant.
pub fn to_system_time(ns: u64) -> SystemTime {
    let now = mono_now_ns();
    if ns <= now {
        SystemTime::now() - Duration::from_nanos(now - ns)
    } else {
        SystemTime::now() + Duration::from_nanos(ns - now)
    }
}

/// Short human form, whole seconds: `4m 59s`.
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
