//! A snapshot written by a forked child (Redis's BGSAVE): the child holds a
//! copy-on-write image of the daemon's tables as they were at the fork and
//! writes them out while the daemon's loop goes on banning. Writing a
//! million bans takes a few hundred milliseconds; on the loop that was a
//! stall of every ban, unban and control request; a fork costs the
//! loop a copy of its page tables (milliseconds).
//!
//! Memory: the child shares every page with the daemon; only the pages the
//! daemon writes while the child runs are copied.
//!
//! What the child must not do: it is a copy of one thread of a process that
//! has others, so any lock another thread held at the fork stays held for
//! ever. glibc's allocator is made safe across fork; the child writes a
//! file and exits, and never logs, touches the runtime or runs destructors
//! (`_exit`). Its error, if any, comes back through a pipe. Should it still
//! hang (an error's backtrace taken under a lock another thread held: the
//! daemon turns those off, see `main`), the daemon stops it after a time
//! limit and tries again.
use anyhow::{bail, Context as _, Result};
use std::{
    io::Read as _,
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// A running child.
pub struct Child {
    pid: libc::pid_t,
    /// Read end of the pipe the child writes its error into.
    errors: std::fs::File,
    started: Instant,
    /// How long the fork held the caller up.
    pub paused: Duration,
}

/// Runs `write` in a forked child. The caller's own data is what the child
/// writes: nothing is copied in the parent.
pub fn spawn(write: impl FnOnce() -> Result<()>) -> Result<Child> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make a pipe");
    }
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    let started = Instant::now();
    // SAFETY: the child only runs `child`, which ends in `_exit`.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("cannot fork"),
        0 => {
            drop(read_end);
            child(parent, write_end, write)
        }
        pid => Ok(Child {
            pid,
            errors: std::fs::File::from(read_end),
            started,
            paused: started.elapsed(),
        }),
    }
}

fn child(parent: libc::pid_t, errors: OwnedFd, write: impl FnOnce() -> Result<()>) -> ! {
    // SAFETY: plain system calls on this process; nothing is shared.
    unsafe {
        // Dies with the daemon: a child left writing after a crash could
        // put an older snapshot over what a new daemon wrote.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(3);
        }
        // The runtime's signal handlers are the daemon's: a stop meant for
        // the daemon ends the child, which the daemon then reaps.
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::signal(sig, libc::SIG_DFL);
        }
        // The daemon's loop comes first on a busy box.
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
    // A panic must not unwind into a copy of the daemon's stack.
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)) {
        Ok(Ok(())) => 0,
        Err(_) => 2,
        Ok(Err(e)) => {
            use std::io::Write as _;
            let mut pipe = std::fs::File::from(errors);
            let _ = write!(pipe, "{e:#}");
            1
        }
    };
    // SAFETY: ends the child without running the daemon's destructors
    // (detaching programs, flushing logs) or exit handlers.
    unsafe { libc::_exit(code) }
}

impl Child {
    /// How the child ended, once it has (without waiting); one still
    /// running after `limit` is stopped, and has failed.
    pub fn poll(&mut self, limit: Duration) -> Option<Result<Duration>> {
        let mut status = 0;
        // SAFETY: waits for our own child, without blocking.
        match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
            0 if self.started.elapsed() > limit => {
                // SAFETY: our own child, not reaped yet.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, std::ptr::null_mut(), 0);
                }
                self.pid = 0;
                Some(Err(anyhow::anyhow!(
                    "the snapshot writer was still running after {} s: stopped",
                    limit.as_secs()
                )))
            }
            0 => None,
            -1 => Some(
                Err(std::io::Error::last_os_error()).context("cannot wait for the snapshot writer"),
            ),
            _ => Some(self.outcome(status)),
        }
    }

    /// Stops the child and waits for it (at stop, before the daemon writes
    /// the state itself): what dropping it does, said where it is meant.
    pub fn kill(self) {
        drop(self);
    }

    fn outcome(&mut self, status: libc::c_int) -> Result<Duration> {
        self.pid = 0;
        let took = self.started.elapsed();
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            return Ok(took);
        }
        let mut why = String::new();
        let _ = self.errors.read_to_string(&mut why);
        if !why.is_empty() {
            bail!("{why}");
        }
        if libc::WIFSIGNALED(status) {
            bail!(
                "the snapshot writer was killed (signal {})",
                libc::WTERMSIG(status)
            );
        }
        bail!(
            "the snapshot writer failed (exit status {})",
            libc::WEXITSTATUS(status)
        )
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: our own child, not reaped yet: its pid is still ours.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(mut child: Child) -> Result<Duration> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(done) = child.poll(Duration::from_secs(60)) {
                return done;
            }
            assert!(Instant::now() < until, "the child never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A child that would sleep for a minute.
    fn sleeping() -> Child {
        spawn(|| {
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn the_child_writes_what_the_parent_held_at_the_fork() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut table = vec![1u64, 2, 3];
        let child = spawn(|| {
            // Only the child gets this far; the parent's table may change.
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(&path, format!("{table:?}"))?;
            Ok(())
        })
        .unwrap();
        table.push(4);
        wait(child).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1, 2, 3]");
        assert_eq!(table, [1, 2, 3, 4]);
    }

    #[test]
    fn a_failing_child_says_why() {
        // Made before the fork: the test's other threads may be taking
        // backtraces (see the module's text).
        let err = anyhow::anyhow!("disk full");
        let child = spawn(move || Err(err)).unwrap();
        let err = wait(child).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn a_killed_child_is_reaped_and_reported() {
        let child = sleeping();
        let pid = child.pid;
        // SAFETY: our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let err = wait(child).unwrap_err();
        assert!(err.to_string().contains("killed (signal 15)"), "{err:#}");
    }

    #[test]
    fn a_child_past_its_time_limit_is_stopped() {
        let mut child = sleeping();
        let pid = child.pid;
        assert!(child.poll(Duration::from_millis(50)).is_none());
        std::thread::sleep(Duration::from_millis(100));
        let err = child.poll(Duration::from_millis(50)).unwrap().unwrap_err();
        assert!(err.to_string().contains("still running"), "{err:#}");
        // SAFETY: probes a pid; ESRCH once the child is reaped.
        assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
    }

    #[test]
    fn dropping_a_running_child_ends_it() {
        let child = sleeping();
        let pid = child.pid;
        child.kill();
        // SAFETY: probes a pid; ESRCH once the child is reaped.
        assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
    }
}
