//! The kernel times bans with `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns`): it
//! keeps counting through suspend, like wall time, but never jumps.
use std::time::{Duration, SystemTime};

pub fn boot_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec; CLOCK_BOOTTIME exists on every kernel with BPF.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The boot-clock deadline `duration` from now.
pub fn deadline_ns(duration: Duration) -> u64 {
    boot_now_ns().saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

/// How long ago a boot-clock instant was (zero if in the future).
pub fn age(ns: u64) -> Duration {
    Duration::from_nanos(boot_now_ns().saturating_sub(ns))
}

/// How long until a boot-clock instant (zero if past).
pub fn remaining(ns: u64) -> Duration {
    Duration::from_nanos(ns.saturating_sub(boot_now_ns()))
}

/// The wall-clock time of a boot-clock instant.
pub fn to_system_time(ns: u64) -> SystemTime {
    let now = boot_now_ns();
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
