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

/// The text is kept in blocks of this size, each line within one (a longer
/// line has a block of its own): a line kept or let go costs no allocation
/// of its own (one each, freed as the budget let lines go, was a seventh
/// of a ban's cost in a burst of a million).
const BLOCK: usize = 64 << 10;

/// Where a line lies: its block's number and its bytes there.
#[derive(Clone, Copy, Debug)]
struct Span {
    block: u64,
    start: u32,
    len: u32,
}

/// Bytes a line costs beyond its text: where it lies, in the queue. The
/// blocks add at most one block's worth beyond the budget (the oldest,
/// partly let go) and the newest's room left.
const OVERHEAD: usize = std::mem::size_of::<Span>();

pub struct LineStore {
    lines: VecDeque<Span>,
    /// The number of `lines[0]`.
    first: u64,
    /// Oldest first; `blocks[0]` is number `first_block`.
    blocks: VecDeque<String>,
    first_block: u64,
    bytes: usize,
    budget: usize,
}

impl LineStore {
    pub fn new(budget: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            first: 0,
            blocks: VecDeque::new(),
            first_block: 0,
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
            self.bytes -= old.len as usize + OVERHEAD;
            self.first += 1;
        }
        // The blocks no line kept lies in go (the newest stays, to fill).
        let newest = (self.first_block + self.blocks.len() as u64).saturating_sub(1);
        let oldest_kept = self.lines.front().map_or(newest, |s| s.block);
        while self.first_block < oldest_kept && self.blocks.len() > 1 {
            self.blocks.pop_front();
            self.first_block += 1;
        }
        if self
            .blocks
            .back()
            .is_none_or(|b| b.capacity() - b.len() < line.len())
        {
            self.blocks
                .push_back(String::with_capacity(BLOCK.max(line.len())));
        }
        let block = self.first_block + self.blocks.len() as u64 - 1;
        let text = self.blocks.back_mut().expect("a block was made");
        let start = text.len();
        text.push_str(line);
        self.lines.push_back(Span {
            block,
            start: start as u32,
            len: line.len() as u32,
        });
        LineRef(self.first + self.lines.len() as u64 - 1)
    }

    /// The line, if still kept ("" if none or let go).
    pub fn get(&self, r: LineRef) -> &str {
        r.0.checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.lines.get(i))
            .map_or("", |s| {
                let text = &self.blocks[(s.block - self.first_block) as usize];
                &text[s.start as usize..(s.start + s.len) as usize]
            })
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

    /// Lines over many blocks (one longer than a block among them): each
    /// kept line reads back whole, the let-go ones are empty, and the
    /// blocks held stay within the budget and two blocks.
    #[test]
    fn lines_in_blocks_read_back_and_old_blocks_go() {
        let budget = 5 * BLOCK;
        let mut store = LineStore::new(budget);
        let line = |i: usize| match i {
            3000 => format!("{i:06} {}", "y".repeat(BLOCK + 10)),
            _ => format!("{i:06} {}", "x".repeat(i % 300)),
        };
        let refs: Vec<LineRef> = (0..20_000).map(|i| store.push(&line(i))).collect();
        let kept = (0..20_000)
            .filter(|&i| {
                let got = store.get(refs[i]);
                assert!(got.is_empty() || got == line(i), "line {i}");
                !got.is_empty()
            })
            .count();
        assert!(store.get(refs[0]).is_empty() && store.get(refs[3000]).is_empty());
        assert_eq!(store.get(refs[19_999]), line(19_999));
        // Every line from the oldest kept on is kept.
        assert_eq!(kept as u64, 20_000 - store.first);
        assert!(store.bytes <= budget);
        let held: usize = store.blocks.iter().map(String::capacity).sum();
        assert!(held <= budget + 2 * BLOCK, "{held}");
    }
}
