//! One clock for bans: `CLOCK_MONOTONIC`, the clock the kernel ends bans by
//! (`bpf_ktime_get_coarse_ns`, the cheapest clock in XDP). The daemon ends and
//! compares bans by the same deadlines the kernel holds, so a step of the
//! wall clock (NTP at boot, an operator's `date -s`, a VM resumed) neither
//! frees a banned source early nor keeps an ended ban alive. The clock
//! stops during suspend, which can only make a ban last longer.
//!
//! Wall time is used only where a deadline must outlive the boot: the state
//! file stores each ban's wall-clock end beside its monotonic deadline and
//! the boot id. A restart on the same boot uses the monotonic deadlines
//! as they are; after a reboot they are converted once from wall time,
//! never to more than the ban had left when it was saved.
use std::time::{Duration, SystemTime};

/// The clocks bans need; the system's in the daemon, a fake one in tests.
pub trait Clock {
    /// `CLOCK_MONOTONIC`, ns.
    fn mono_ns(&self) -> u64;
    /// Wall time, ms since the epoch.
    fn wall_ms(&self) -> i64;
    /// Changes with every boot (`/proc/sys/kernel/random/boot_id`).
    fn boot_id(&self) -> String;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct System;

impl Clock for System {
    fn mono_ns(&self) -> u64 {
        mono_now_ns()
    }

    fn wall_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn boot_id(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }
}

/// The system's clocks read once: for a restore, which judges a million
/// saved ends against the same instant (two clock reads each otherwise).
#[derive(Clone, Copy, Debug)]
pub struct Frozen {
    pub mono_ns: u64,
    pub wall_ms: i64,
}

impl Frozen {
    pub fn now() -> Self {
        Self {
            mono_ns: mono_now_ns(),
            wall_ms: System.wall_ms(),
        }
    }
}

impl Clock for Frozen {
    fn mono_ns(&self) -> u64 {
        self.mono_ns
    }

    fn wall_ms(&self) -> i64 {
        self.wall_ms
    }

    fn boot_id(&self) -> String {
        System.boot_id()
    }
}

/// A ban's end as the state file keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedEnd {
    /// Wall-clock end, ms since the epoch.
    pub wall_ms: i64,
    /// Monotonic deadline, valid on the boot that wrote it.
    pub mono_ns: Option<u64>,
    /// When the state was written (wall ms), to bound a reboot's conversion.
    pub saved_wall_ms: Option<i64>,
}

/// The deadline to write into the state file for a monotonic deadline.
pub fn to_saved(deadline_ns: u64, clock: &dyn Clock) -> SavedEnd {
    let left_ms = (deadline_ns.saturating_sub(clock.mono_ns()) / 1_000_000) as i64;
    let now = clock.wall_ms();
    SavedEnd {
        wall_ms: now.saturating_add(left_ms),
        mono_ns: Some(deadline_ns),
        saved_wall_ms: Some(now),
    }
}

/// The monotonic deadline of a saved ban end, on this boot. `same_boot`:
/// the state was written on this boot, and its monotonic deadline holds
/// whatever the wall clock did since. After a reboot the wall clock is all
/// there is: the ban gets what is left by it, but never more than it had
/// left when saved (a clock that went back must not lengthen bans).
/// `None`: the ban has ended.
pub fn from_saved(end: SavedEnd, same_boot: bool, clock: &dyn Clock) -> Option<u64> {
    let now = clock.mono_ns();
    if same_boot {
        if let Some(deadline) = end.mono_ns {
            return (deadline > now).then_some(deadline);
        }
    }
    let wall_now = clock.wall_ms();
    let mut left_ms = end.wall_ms.saturating_sub(wall_now);
    if let Some(saved) = end.saved_wall_ms {
        left_ms = left_ms.min(end.wall_ms.saturating_sub(saved));
    }
    (left_ms > 0).then(|| now.saturating_add(left_ms as u64 * 1_000_000))
}

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

#[cfg(test)]
pub mod fake {
    use super::Clock;
    use std::cell::Cell;

    /// A clock the test moves: monotonic and wall time independently (a
    /// wall-clock step), together (time passing), or a reboot.
    #[derive(Debug)]
    pub struct FakeClock {
        pub mono: Cell<u64>,
        pub wall: Cell<i64>,
        pub boot: Cell<u32>,
    }

    impl Default for FakeClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl FakeClock {
        pub fn new() -> Self {
            Self {
                mono: Cell::new(1_000_000_000_000),
                wall: Cell::new(1_700_000_000_000),
                boot: Cell::new(1),
            }
        }

        /// Time passes: both clocks move on.
        pub fn pass(&self, secs: u64) {
            self.mono.set(self.mono.get() + secs * 1_000_000_000);
            self.wall.set(self.wall.get() + secs as i64 * 1000);
        }

        /// The wall clock is stepped; monotonic time is not.
        pub fn step_wall(&self, secs: i64) {
            self.wall.set(self.wall.get() + secs * 1000);
        }

        /// Suspend: wall time passes, CLOCK_MONOTONIC stands still.
        pub fn suspend(&self, secs: i64) {
            self.step_wall(secs);
        }

        /// A reboot after `down` seconds: monotonic time starts again.
        pub fn reboot(&self, down: i64) {
            self.step_wall(down);
            self.mono.set(5_000_000_000);
            self.boot.set(self.boot.get() + 1);
        }
    }

    impl Clock for FakeClock {
        fn mono_ns(&self) -> u64 {
            self.mono.get()
        }
        fn wall_ms(&self) -> i64 {
            self.wall.get()
        }
        fn boot_id(&self) -> String {
            format!("boot-{}", self.boot.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeClock, *};

    const HOUR: u64 = 3600;

    fn saved_after(clock: &FakeClock, secs: u64) -> (SavedEnd, String) {
        let deadline = clock.mono_ns() + secs * 1_000_000_000;
        (to_saved(deadline, clock), clock.boot_id())
    }

    fn restore(end: SavedEnd, boot: &str, clock: &FakeClock) -> Option<u64> {
        from_saved(end, boot == clock.boot_id(), clock)
    }

    fn left_secs(deadline: Option<u64>, clock: &FakeClock) -> Option<u64> {
        deadline.map(|d| (d - clock.mono_ns()) / 1_000_000_000)
    }

    #[test]
    fn wall_clock_steps_do_not_move_deadlines_on_the_same_boot() {
        let c = FakeClock::new();
        let (end, boot) = saved_after(&c, HOUR);
        c.pass(600);
        c.step_wall(-86_400); // back a day: must not lengthen the ban
        assert_eq!(left_secs(restore(end, &boot, &c), &c), Some(HOUR - 600));
        c.step_wall(2 * 86_400); // forward a day: must not end it early
        assert_eq!(left_secs(restore(end, &boot, &c), &c), Some(HOUR - 600));
        c.pass(HOUR);
        assert_eq!(restore(end, &boot, &c), None, "ended on time");
    }

    #[test]
    fn suspend_only_makes_bans_longer() {
        let c = FakeClock::new();
        let (end, boot) = saved_after(&c, HOUR);
        c.suspend(10 * HOUR as i64);
        assert_eq!(
            left_secs(restore(end, &boot, &c), &c),
            Some(HOUR),
            "the kernel's clock stood still too"
        );
    }

    #[test]
    fn a_reboot_converts_once_from_wall_time() {
        let c = FakeClock::new();
        let (end, boot) = saved_after(&c, HOUR);
        c.reboot(600);
        assert_eq!(left_secs(restore(end, &boot, &c), &c), Some(HOUR - 600));
        // Down longer than the ban: ended.
        let c = FakeClock::new();
        let (end, boot) = saved_after(&c, HOUR);
        c.reboot(2 * HOUR as i64);
        assert_eq!(restore(end, &boot, &c), None);
        // A clock behind at boot never lengthens a ban past what it had left.
        let c = FakeClock::new();
        let (end, boot) = saved_after(&c, HOUR);
        c.reboot(-7 * 86_400);
        assert_eq!(left_secs(restore(end, &boot, &c), &c), Some(HOUR));
        // A state from before boot ids were saved: wall time, as after a reboot.
        let c = FakeClock::new();
        let end = SavedEnd {
            wall_ms: c.wall_ms() + 1_800_000,
            mono_ns: None,
            saved_wall_ms: None,
        };
        assert_eq!(left_secs(from_saved(end, true, &c), &c), Some(1800));
    }
}
