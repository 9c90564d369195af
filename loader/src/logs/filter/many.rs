//! Many lines matched at once (a burst): on every core. Matching needs
//! nothing but the line and the filter, and was the largest part of a
//! line's cost (the failregex alone ~0.6 µs a FreeSWITCH line on a 2-core
//! EPYC VM); what a jail does with the outcomes stays in order, on the loop.
use super::{Filter, Outcome};

/// Lines below which a batch is matched on the caller's thread alone (a
/// thread costs tens of microseconds to start).
const PER_THREAD: usize = 2048;

impl Filter {
    /// What `check` says of each of `lines`, in order.
    pub fn check_all(&self, lines: &[&str]) -> Vec<Outcome> {
        let threads = (lines.len() / PER_THREAD).clamp(1, cores());
        if threads == 1 {
            return lines.iter().map(|l| self.check(l)).collect();
        }
        let per = lines.len().div_ceil(threads);
        std::thread::scope(|s| {
            // A thread the OS refuses (a pids limit, no memory) is no
            // error: its lines are matched here, after the others.
            let others: Vec<_> = lines
                .chunks(per)
                .skip(1)
                .map(|chunk| {
                    let thread = std::thread::Builder::new()
                        .name("sipguard-match".into())
                        .spawn_scoped(s, move || {
                            chunk.iter().map(|l| self.check(l)).collect::<Vec<_>>()
                        });
                    (chunk, thread.ok())
                })
                .collect();
            let mut out: Vec<Outcome> = lines[..per].iter().map(|l| self.check(l)).collect();
            for (chunk, thread) in others {
                match thread {
                    Some(t) => out.extend(t.join().expect("matching a line panicked")),
                    None => out.extend(chunk.iter().map(|l| self.check(l))),
                }
            }
            out
        })
    }
}

/// The cores to match on, read once (it reads cgroup files each time).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch large enough for several threads gets, in order, what each
    /// line gets alone.
    #[test]
    fn many_lines_get_what_each_gets_alone() {
        let f = Filter::builtin("freeswitch").unwrap();
        let lines: Vec<String> = (0..3 * PER_THREAD + 5)
            .map(|i| match i % 3 {
                0 => format!("2024-03-01 12:00:00.{i:06} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u@d] from ip 192.0.{}.{}", i / 256 % 256, i % 256),
                1 => format!("2024-03-01 12:00:00.000000 [WARNING] sofia_reg.c:2531 Can't find user [{i}@d] from 2001:db8::{i:x}"),
                _ => format!("2024-03-01 12:00:00.000000 [INFO] switch_core.c:1 line {i}"),
            })
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let alone: Vec<Outcome> = lines.iter().map(|l| f.check(l)).collect();
        assert_eq!(f.check_all(&lines), alone);
        assert_eq!(
            alone
                .iter()
                .filter(|o| matches!(o, Outcome::Hit { .. }))
                .count(),
            2 * PER_THREAD + 4
        );
    }
}
