//! Following a log like `tail -F`: by name, across rotations, without losing
//! or repeating a line.
//!
//! * Rotation by rename (FreeSWITCH's `mod_logfile`, logrotate's default): the
//!   old file is read to its end through the descriptor we hold, then the new
//!   file is read from its start.
//! * Copy-truncate: noticed when the file shrinks, or when the bytes just
//!   before our offset change. Lines written after our last read went into
//!   the copy: we find the sibling (`NAME.*`) holding our last bytes at our
//!   offset and read the rest from it first.
//! * A partial last line is held until its newline arrives; a line longer than
//!   `MAX_LINE` is skipped (and counted); invalid UTF-8 is replaced, not fatal.
//! * The position saved is the start of the first incomplete line, so a
//!   restart resumes exactly there, also when the file was rotated meanwhile.
use crate::bans::state::Position;
use std::{
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

/// Longest line we accept; longer ones are skipped and counted.
pub const MAX_LINE: usize = 64 * 1024;
/// How many trailing bytes we remember to recognise our file after a truncation.
const TAIL: usize = 64;
/// Most bytes read from one file in one poll, so a burst cannot starve the
/// rest (and the buffer stays small: it is allocated per read).
/// (The rest is read on the loop's next turn: see `behind`.)
const MAX_READ: u64 = 4 << 20;

pub struct Follower {
    pub path: PathBuf,
    file: Option<File>,
    id: (u64, u64),
    offset: u64,
    partial: Vec<u8>,
    skipping: bool,
    tail: Vec<u8>,
    /// Where to start when the file is first opened.
    first: Option<Start>,
    pub lines: u64,
    pub skipped_long: u64,
    /// The last poll stopped at `MAX_READ` with more written after it.
    pub behind: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Start {
    Beginning,
    End,
    Saved(Position),
}

impl Follower {
    pub fn new(path: PathBuf, start: Start) -> Self {
        // "The end" is the end now, not whenever the first poll happens:
        // lines written in between must not be skipped.
        let start = match start {
            Start::End => match fs::metadata(&path) {
                Ok(m) => Start::Saved(Position {
                    dev: m.dev(),
                    ino: m.ino(),
                    offset: m.len(),
                }),
                Err(_) => Start::Beginning,
            },
            other => other,
        };
        Self {
            path,
            file: None,
            id: (0, 0),
            offset: 0,
            partial: Vec::new(),
            skipping: false,
            tail: Vec::new(),
            first: Some(start),
            lines: 0,
            skipped_long: 0,
            behind: false,
        }
    }

    /// The position to save: the start of the first line not yet complete.
    pub fn position(&self) -> Option<Position> {
        self.file.as_ref()?;
        Some(Position {
            dev: self.id.0,
            ino: self.id.1,
            offset: self.offset - self.partial.len() as u64,
        })
    }

    /// Reads what is new and calls `emit` for each complete line.
    pub fn poll(&mut self, emit: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        if self.file.is_none() && !self.open(emit)? {
            return Ok(());
        }
        self.read_new(emit)?;
        // Rotated by rename (or deleted and recreated): finish the old file,
        // then start on the new one.
        match fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) != self.id => {
                self.read_new(emit)?;
                self.flush_partial(emit);
                self.file = None;
                self.open(emit)?;
                self.read_new(emit)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Opens the file if it exists; returns false if it does not (yet).
    fn open(&mut self, emit: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        self.id = (meta.dev(), meta.ino());
        self.offset = match self.first.take() {
            // A file that appears after we started is new: read all of it.
            None | Some(Start::Beginning) => 0,
            Some(Start::End) => unreachable!("resolved in new()"),
            Some(Start::Saved(pos))
                if (pos.dev, pos.ino) == self.id && pos.offset <= meta.len() =>
            {
                pos.offset
            }
            Some(Start::Saved(pos)) => {
                // Rotated while we were not running: finish the old file
                // (found by its inode next to the new one), then read the new.
                if let Some(old) = sibling_with_inode(&self.path, pos) {
                    tracing::info!(
                        "{}: reading the rest of rotated {}",
                        self.path.display(),
                        old.display()
                    );
                    self.drain_from(&old, pos.offset, emit)?;
                }
                0
            }
        };
        self.partial.clear();
        self.skipping = false;
        self.tail.clear();
        if self.offset > 0 {
            let start = self.offset.saturating_sub(TAIL as u64);
            let mut tail = vec![0; (self.offset - start) as usize];
            file.read_exact_at(&mut tail, start)?;
            self.tail = tail;
        }
        self.file = Some(file);
        Ok(true)
    }

    fn read_new(&mut self, emit: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        self.behind = false;
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let size = file.metadata()?.len();
        if size < self.offset || (size > self.offset && !self.tail_matches(file)?) {
            self.truncated(emit)?;
        }
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let size = file.metadata()?.len();
        if size <= self.offset {
            return Ok(());
        }
        let mut buf = vec![0; (size - self.offset).min(MAX_READ) as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], self.offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        // A copy-truncate between the check above and this read would hand
        // us the new file's bytes as if they followed ours: if the bytes
        // before our offset are no longer ours, drop what we read and take
        // the rest from the copy (the next poll reads the new file).
        let still_ours = self.tail_matches(file)?;
        if !still_ours {
            self.truncated(emit)?;
            return Ok(());
        }
        self.offset += buf.len() as u64;
        self.behind = size > self.offset;
        self.consume(&buf, emit);
        Ok(())
    }

    /// True if the bytes before our offset are still the ones we read.
    fn tail_matches(&self, file: &File) -> io::Result<bool> {
        if self.tail.is_empty() {
            return Ok(true);
        }
        let mut now = vec![0; self.tail.len()];
        match file.read_exact_at(&mut now, self.offset - self.tail.len() as u64) {
            Ok(()) => Ok(now == self.tail),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Copy-truncate: take what we had not read yet from the copy, then start
    /// the file again from its beginning.
    fn truncated(&mut self, emit: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        tracing::info!(
            "{}: truncated (copy-truncate rotation)",
            self.path.display()
        );
        if let Some(copy) = self.copy_holding_our_tail() {
            let from = self.offset;
            self.drain_from(&copy, from, emit)?;
        }
        self.flush_partial(emit);
        self.offset = 0;
        self.tail.clear();
        Ok(())
    }

    fn copy_holding_our_tail(&self) -> Option<PathBuf> {
        if self.tail.is_empty() {
            return None;
        }
        siblings(&self.path).into_iter().find(|p| {
            let Ok(f) = File::open(p) else { return false };
            let mut buf = vec![0; self.tail.len()];
            f.read_exact_at(&mut buf, self.offset - self.tail.len() as u64)
                .is_ok()
                && buf == self.tail
        })
    }

    /// Reads `path` from `from` to its end, continuing the current partial line.
    fn drain_from(
        &mut self,
        path: &Path,
        from: u64,
        emit: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.consume(&buf, emit);
        self.flush_partial(emit);
        Ok(())
    }

    fn consume(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&[u8])) {
        let keep = bytes.len().min(TAIL);
        if keep == TAIL {
            self.tail.clear();
        } else {
            let drop = (self.tail.len() + keep).saturating_sub(TAIL);
            self.tail.drain(..drop);
        }
        self.tail.extend_from_slice(&bytes[bytes.len() - keep..]);

        let mut rest = bytes;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line, after) = rest.split_at(nl);
            rest = &after[1..];
            if self.skipping {
                self.skipping = false;
                self.partial.clear();
                continue;
            }
            if self.partial.len() + line.len() > MAX_LINE {
                self.skipped_long += 1;
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                // The whole line is in this read: handed over in place.
                emit(line.strip_suffix(b"\r").unwrap_or(line));
                self.lines += 1;
            } else {
                self.partial.extend_from_slice(line);
                self.emit_partial(emit);
            }
        }
        if !self.skipping {
            self.partial.extend_from_slice(rest);
            if self.partial.len() > MAX_LINE {
                // Too long already: drop it and everything up to its newline.
                self.skipped_long += 1;
                self.skipping = true;
                self.partial.clear();
            }
        }
    }

    fn emit_partial(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
        emit(line);
        self.lines += 1;
        self.partial.clear();
    }

    /// A file that ended without a newline will never get one.
    fn flush_partial(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() && !self.skipping {
            self.emit_partial(emit);
        }
        self.partial.clear();
        self.skipping = false;
    }
}

/// Rotated siblings of `path` (`NAME.*` in the same folder), newest first.
fn siblings(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

fn sibling_with_inode(path: &Path, pos: Position) -> Option<PathBuf> {
    siblings(path)
        .into_iter()
        .find(|p| fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (pos.dev, pos.ino)))
}

/// Expands a jail's `logpath` entries (paths or globs) to existing files;
/// plain paths are kept even when missing, so they are picked up once created.
pub fn expand(patterns: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        if p.contains(['*', '?', '[']) {
            if let Ok(paths) = glob::glob(p) {
                out.extend(paths.filter_map(|r| r.ok()).filter(|p| p.is_file()));
            }
        } else {
            out.push(PathBuf::from(p));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs::OpenOptions, io::Write as _};

    fn collect(f: &mut Follower) -> Vec<String> {
        let mut out = Vec::new();
        f.poll(&mut |l| out.push(String::from_utf8_lossy(l).into_owned()))
            .unwrap();
        out
    }

    fn append(path: &Path, text: &[u8]) {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text)
            .unwrap();
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut f = Follower::new(p.clone(), Start::Beginning);
        assert!(collect(&mut f).is_empty(), "missing file is fine");
        append(&p, b"one\ntw");
        assert_eq!(collect(&mut f), ["one"]);
        assert_eq!(
            f.position().unwrap().offset,
            4,
            "position is before the partial line"
        );
        append(&p, b"o\r\nthree\n");
        assert_eq!(collect(&mut f), ["two", "three"]);
    }

    #[test]
    fn starts_at_end_by_default_and_resumes_from_saved_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"old\n");
        let mut f = Follower::new(p.clone(), Start::End);
        assert!(collect(&mut f).is_empty());
        append(&p, b"new\npart");
        assert_eq!(collect(&mut f), ["new"]);
        let saved = f.position().unwrap();
        append(&p, b"ial\nafter\n");
        let mut g = Follower::new(p.clone(), Start::Saved(saved));
        assert_eq!(collect(&mut g), ["partial", "after"]);
        // Rotated while stopped: the rest of the old file first, then the new one.
        let saved = g.position().unwrap();
        append(&p, b"late\n");
        fs::rename(&p, dir.path().join("a.log.2026-11-28.1")).unwrap();
        append(&p, b"fresh\n");
        let mut h = Follower::new(p.clone(), Start::Saved(saved));
        assert_eq!(collect(&mut h), ["late", "fresh"]);
    }

    #[test]
    fn end_means_the_end_when_created_not_when_first_polled() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"before\n");
        let mut f = Follower::new(p.clone(), Start::End);
        append(&p, b"after creation, before the first poll\n");
        assert_eq!(collect(&mut f), ["after creation, before the first poll"]);
        // A file that does not exist yet is read from its beginning once it appears.
        let q = dir.path().join("b.log");
        let mut g = Follower::new(q.clone(), Start::End);
        append(&q, b"first\n");
        assert_eq!(collect(&mut g), ["first"]);
    }

    #[test]
    fn long_lines_are_skipped_and_bad_utf8_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut f = Follower::new(p.clone(), Start::Beginning);
        let mut big = vec![b'x'; MAX_LINE + 10];
        big.push(b'\n');
        append(&p, &big[..MAX_LINE / 2]);
        assert!(collect(&mut f).is_empty());
        append(&p, &big[MAX_LINE / 2..]);
        append(&p, b"ok \xff\xfe line\n");
        assert_eq!(collect(&mut f), ["ok \u{fffd}\u{fffd} line"]);
        assert_eq!(f.skipped_long, 1);
    }

    /// A writer rotating (by rename, or by copy-truncate) while the follower
    /// polls: every line arrives exactly once, in order.
    fn rotation_under_writes(copy_truncate: bool) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("freeswitch.log");
        append(&p, b"");
        let mut f = Follower::new(p.clone(), Start::Beginning);
        let total = 20_000;
        // Lines the follower has seen: a rotation waits until the follower
        // has caught up with the writer, as the follower's guarantee is for
        // rotations far apart compared with polls (hours against 100 ms).
        // A loaded machine could otherwise deschedule the follower across
        // two rotations, or across a whole file's life.
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let p = p.clone();
            let dir = dir.path().to_owned();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut out = OpenOptions::new().append(true).open(&p).unwrap();
                for i in 0..total {
                    writeln!(out, "line {i}").unwrap();
                    if i % 3000 == 2999 {
                        let deadline =
                            std::time::Instant::now() + std::time::Duration::from_secs(10);
                        while seen.load(std::sync::atomic::Ordering::Relaxed) <= i
                            && std::time::Instant::now() < deadline
                        {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        let rotated = dir.join(format!("freeswitch.log.{i}"));
                        if copy_truncate {
                            fs::copy(&p, &rotated).unwrap();
                            out.set_len(0).unwrap();
                        } else {
                            fs::rename(&p, &rotated).unwrap();
                            out = OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&p)
                                .unwrap();
                        }
                    }
                }
            })
        };
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while got.len() < total && std::time::Instant::now() < deadline {
            f.poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned()))
                .unwrap();
            seen.store(got.len(), std::sync::atomic::Ordering::Relaxed);
            if writer.is_finished() && got.len() < total {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        writer.join().unwrap();
        f.poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned()))
            .unwrap();
        let want: Vec<String> = (0..total).map(|i| format!("line {i}")).collect();
        let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).take(3).collect();
        let last_missing = want.iter().rev().find(|w| !got.contains(w));
        assert_eq!(
            got.len(),
            want.len(),
            "lines lost or repeated: first missing {missing:?}, last {last_missing:?}"
        );
        assert_eq!(got, want);
    }

    #[test]
    fn rename_rotation_under_writes_loses_nothing() {
        rotation_under_writes(false);
    }

    #[test]
    fn copy_truncate_rotation_under_writes_loses_nothing() {
        rotation_under_writes(true);
    }

    #[test]
    fn globs_expand_and_plain_paths_stay() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), b"");
        append(&dir.path().join("b.log"), b"");
        let pat = format!("{}/*.log", dir.path().display());
        let missing = format!("{}/later.log", dir.path().display());
        let got = expand(&[pat, missing.clone()]);
        assert_eq!(got.len(), 3);
        assert!(got.contains(&PathBuf::from(missing)));
    }
}
