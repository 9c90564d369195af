//! The matched log lines of the newest bans, within a byte budget. The line
//! is the operator's evidence for a ban they look into, which is a recent
//! one; a campaign of a million bans would otherwise hold a million lines
//! (~150 MB of FreeSWITCH lines that differ only in the address). A ban
//! whose line was let go keeps everything else; the daemon's own log has
//! every line.
use std::collections::VecDeque;

/// A line's number in the store (never reused); `NONE`: no line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineRef(u64);

impl LineRef {
    pub const NONE: LineRef = LineRef(u64::MAX);
}

/// Bytes a line costs beyond its text: its pointer and length in the
/// queue, the allocator's header.
const OVERHEAD: usize = 32;

pub struct LineStore {
    lines: VecDeque<Box<str>>,
    /// The number of `lines[0]`.
    first: u64,
    bytes: usize,
    budget: usize,
}

impl LineStore {
    pub fn new(budget: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            first: 0,
            bytes: 0,
            budget,
        }
    }

    /// Keeps `line`, letting go of the oldest lines past the budget.
    pub fn push(&mut self, line: &str) -> LineRef {
        if line.is_empty() || line.len() + OVERHEAD > self.budget {
            return LineRef::NONE;
        }
        self.bytes += line.len() + OVERHEAD;
        while self.bytes > self.budget {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len() + OVERHEAD;
            self.first += 1;
        }
        self.lines.push_back(line.into());
        LineRef(self.first + self.lines.len() as u64 - 1)
    }

    /// The line, if still kept ("" if none or let go).
    pub fn get(&self, r: LineRef) -> &str {
        r.0.checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.lines.get(i))
            .map_or("", |l| l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_lines_are_kept_within_the_budget() {
        let mut store = LineStore::new(3 * (10 + OVERHEAD));
        let refs: Vec<LineRef> = (0..5)
            .map(|i| store.push(&format!("line {i:05}")))
            .collect();
        assert_eq!(store.get(refs[0]), "", "let go");
        assert_eq!(store.get(refs[1]), "");
        assert_eq!(store.get(refs[2]), "line 00002");
        assert_eq!(store.get(refs[4]), "line 00004");
        assert_eq!(store.push(""), LineRef::NONE);
        assert_eq!(store.get(LineRef::NONE), "");
        // A line larger than the whole budget is not kept, and pushes
        // nothing out.
        assert_eq!(store.push(&"x".repeat(1000)), LineRef::NONE);
        assert_eq!(store.get(refs[2]), "line 00002");
    }
}
