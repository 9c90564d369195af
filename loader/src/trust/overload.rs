//! Overload: the box's SIP packets per second (the program's per-CPU
//! `sip_packets`, summed here every `SAMPLE`: the program writes no shared
//! line for it) against `[trust] overload_pps`, with hysteresis: over the
//! threshold in one sample enters; leaving takes `LEAVE_AFTER` below
//! `LEAVE_RATIO` of it, so a flood that pulses does not flap the state.

use std::time::{Duration, Instant};

/// How often the counters are summed.
pub const SAMPLE: Duration = Duration::from_millis(200);
/// Overload ends below this share of the threshold...
pub const LEAVE_RATIO: f64 = 0.8;
/// ...held this long.
pub const LEAVE_AFTER: Duration = Duration::from_secs(2);

/// A change of state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    Entered { pps: u64 },
    Left { pps: u64 },
}

#[derive(Clone, Debug, Default)]
pub struct Overload {
    pub threshold: u64,
    pub on: bool,
    /// Times entered.
    pub entered: u64,
    /// The last measured rate.
    pub pps: u64,
    last: Option<(u64, Instant)>,
    /// Since when the rate has been below the leaving level.
    calm_since: Option<Instant>,
}

impl Overload {
    /// One sample: the counters' total at `at`. A counter that went back
    /// (the program's maps made anew) starts the measure over.
    pub fn sample(&mut self, total: u64, at: Instant) -> Option<Change> {
        // The first sample only starts the measure.
        let (before, then) = self.last.replace((total, at))?;
        let secs = at.saturating_duration_since(then).as_secs_f64();
        if total < before || secs < 0.01 {
            return None;
        }
        self.pps = ((total - before) as f64 / secs) as u64;
        self.decide(at)
    }

    fn decide(&mut self, at: Instant) -> Option<Change> {
        if self.threshold == 0 {
            return self.on.then(|| self.leave());
        }
        if !self.on {
            if self.pps > self.threshold {
                self.on = true;
                self.entered += 1;
                self.calm_since = None;
                return Some(Change::Entered { pps: self.pps });
            }
            return None;
        }
        if (self.pps as f64) < self.threshold as f64 * LEAVE_RATIO {
            let since = *self.calm_since.get_or_insert(at);
            if at.saturating_duration_since(since) >= LEAVE_AFTER {
                return Some(self.leave());
            }
        } else {
            self.calm_since = None;
        }
        None
    }

    fn leave(&mut self) -> Change {
        self.on = false;
        self.calm_since = None;
        Change::Left { pps: self.pps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pps` for `secs` seconds in samples; returns the changes.
    fn run(
        o: &mut Overload,
        total: &mut u64,
        at: &mut Instant,
        pps: u64,
        secs: f64,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        let steps = (secs / SAMPLE.as_secs_f64()).round() as u64;
        for _ in 0..steps {
            *at += SAMPLE;
            *total += pps * SAMPLE.as_millis() as u64 / 1000;
            out.extend(o.sample(*total, *at));
        }
        out
    }

    #[test]
    fn enters_at_once_and_leaves_only_after_a_calm_spell() {
        let mut o = Overload {
            threshold: 10_000,
            ..Overload::default()
        };
        let (mut total, mut at) = (0u64, Instant::now());
        assert_eq!(
            o.sample(total, at),
            None,
            "the first sample only starts the measure"
        );
        assert!(run(&mut o, &mut total, &mut at, 9_000, 2.0).is_empty());
        assert_eq!(
            run(&mut o, &mut total, &mut at, 20_000, 0.2),
            vec![Change::Entered { pps: 20_000 }]
        );
        // Between 80 % and 100 %: still overloaded (hysteresis).
        assert!(run(&mut o, &mut total, &mut at, 9_000, 5.0).is_empty());
        assert!(o.on);
        // Below 80 %, pulsing back up before 2 s: stays.
        assert!(run(&mut o, &mut total, &mut at, 5_000, 1.0).is_empty());
        assert!(run(&mut o, &mut total, &mut at, 15_000, 0.2).is_empty());
        assert!(run(&mut o, &mut total, &mut at, 5_000, 1.8).is_empty());
        // Calm for 2 s: leaves, once.
        let left = run(&mut o, &mut total, &mut at, 5_000, 1.0);
        assert_eq!(left, vec![Change::Left { pps: 5_000 }]);
        assert!(!o.on);
        assert_eq!(o.entered, 1);
    }

    #[test]
    fn a_counter_reset_or_the_threshold_removed_is_handled() {
        let mut o = Overload {
            threshold: 100,
            ..Overload::default()
        };
        let (mut total, mut at) = (1_000_000u64, Instant::now());
        o.sample(total, at);
        assert_eq!(run(&mut o, &mut total, &mut at, 1_000, 0.2).len(), 1);
        // New maps: the total starts again from 0; no change from that sample.
        at += SAMPLE;
        assert_eq!(o.sample(0, at), None);
        assert!(o.on);
        // Overload turned off in the configuration: leaves at the next sample.
        o.threshold = 0;
        total = 0;
        assert_eq!(
            run(&mut o, &mut total, &mut at, 1_000, 0.2),
            vec![Change::Left { pps: 1_000 }]
        );
    }
}
