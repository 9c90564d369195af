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
use crate::{bans::state::Position, files::Opened};
use std::{
    fs::{self, File},
    io,
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
    /// A rotated file (or copy) still to be read to its end, a chunk a
    /// poll, before the file at `path` is read.
    drain: Option<Drain>,
    /// What was at `path` when it was last refused (not a regular file):
    /// its device, inode and type, so the warning is given once per thing.
    refused: Option<(u64, u64, u32)>,
    pub lines: u64,
    pub skipped_long: u64,
    /// Warnings given for something other than a regular file at `path`.
    pub refusals: u64,
    /// The last poll stopped at `MAX_READ` with more written after it.
    pub behind: bool,
}

/// The rest of a rotated file: read through the descriptor we hold (or the
/// copy we found), from `offset` to its end.
struct Drain {
    file: File,
    id: (u64, u64),
    offset: u64,
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
            drain: None,
            refused: None,
            lines: 0,
            skipped_long: 0,
            refusals: 0,
            behind: false,
        }
    }

    /// The position to save: the start of the first line not yet complete
    /// (in the rotated file still being read, if there is one: a restart
    /// finds it by its inode next to the new one).
    pub fn position(&self) -> Option<Position> {
        let (id, offset) = match &self.drain {
            Some(d) => (d.id, d.offset),
            None => {
                self.file.as_ref()?;
                (self.id, self.offset)
            }
        };
        Some(Position {
            dev: id.0,
            ino: id.1,
            offset: offset.saturating_sub(self.partial.len() as u64),
        })
    }

    /// Reads what is new and calls `emit` for each complete line. One call
    /// reads at most `MAX_READ` bytes of the file (and as much of a rotated
    /// one); `behind` says when there is more.
    pub fn poll(&mut self, emit: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        self.behind = false;
        if self.drain.is_some() {
            self.read_drain(emit)?;
            if self.drain.is_some() {
                self.behind = true;
                return Ok(());
            }
        }
        if self.file.is_none() && !self.open()? {
            return Ok(());
        }
        if self.drain.is_some() {
            self.behind = true;
            return Ok(());
        }
        self.read_new(emit)?;
        if self.behind {
            // More of this file (or of its copy) first.
            return Ok(());
        }
        // Rotated by rename (or deleted and recreated): finish the old file
        // through the descriptor we hold, then start on the new one.
        match fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) != self.id => {
                if let Some(old) = self.file.take() {
                    self.drain = Some(Drain {
                        file: old,
                        id: self.id,
                        offset: self.offset,
                    });
                }
                self.tail.clear();
                self.offset = 0;
                self.open()?;
                self.behind = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// Opens the file if it is there and is a regular file; returns false if
    /// it is not (yet). A FIFO, device or socket in its place is refused
    /// without blocking, with one warning until something else is there.
    fn open(&mut self) -> io::Result<bool> {
        let (file, meta) = match crate::files::open_regular(&self.path)? {
            Opened::File(f, m) => (f, m),
            Opened::Missing => return Ok(false),
            Opened::NotRegular(m) => {
                self.refuse(&m);
                return Ok(false);
            }
        };
        self.refused = None;
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
                if let Some((old, id)) = sibling_with_inode(&self.path, pos) {
                    tracing::info!(
                        "{}: reading the rest of rotated {}",
                        self.path.display(),
                        old.display()
                    );
                    if let Opened::File(file, _) = crate::files::open_regular(&old)? {
                        self.drain = Some(Drain {
                            file,
                            id,
                            offset: pos.offset,
                        });
                    }
                }
                0
            }
        };
        if self.drain.is_none() {
            self.partial.clear();
            self.skipping = false;
        }
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

    /// Warns about something other than a regular file at our path, once
    /// for each thing put there.
    fn refuse(&mut self, meta: &fs::Metadata) {
        let what = (meta.dev(), meta.ino(), meta.mode() & libc::S_IFMT);
        if self.refused == Some(what) {
            return;
        }
        self.refused = Some(what);
        self.refusals += 1;
        tracing::warn!(
            "{} is {}, not a regular file: not read (the jail's other logs still are)",
            crate::text::escape(&self.path.display().to_string()),
            crate::files::kind(meta)
        );
    }

    fn read_new(&mut self, emit: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let size = file.metadata()?.len();
        if size < self.offset || (size > self.offset && !self.tail_matches(file)?) {
            return self.truncated(emit);
        }
        if size <= self.offset {
            return Ok(());
        }
        let chunk = read_chunk(file, self.offset, size)?;
        // A copy-truncate between the check above and this read would hand
        // us the new file's bytes as if they followed ours: if the bytes
        // before our offset are no longer ours, drop what we read and take
        // the rest from the copy (the next poll reads the new file).
        if !self.tail_matches(file)? {
            return self.truncated(emit);
        }
        if chunk.hole {
            // Only zeros before the data: what is before `chunk.at`.
            self.tail = vec![0; TAIL.min(chunk.at as usize)];
            self.skip_line();
        }
        self.offset = chunk.at + chunk.bytes.len() as u64;
        self.behind = size > self.offset;
        self.remember_tail(&chunk.bytes);
        self.lines_of(&chunk.bytes, emit);
        Ok(())
    }

    /// Reads the next chunk of the rotated file; ends the drain at its end.
    fn read_drain(&mut self, emit: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let Some(d) = self.drain.as_mut() else {
            return Ok(());
        };
        let size = d.file.metadata()?.len();
        let chunk = if size > d.offset {
            read_chunk(&d.file, d.offset, size)?
        } else {
            Chunk::default()
        };
        d.offset = chunk.at.max(d.offset) + chunk.bytes.len() as u64;
        let done = d.offset >= size || chunk.bytes.is_empty() && !chunk.hole;
        if chunk.hole {
            self.skip_line();
        }
        self.lines_of(&chunk.bytes, emit);
        if done {
            self.drain = None;
            self.flush_partial(emit);
        }
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

    /// Copy-truncate: what we had not read yet is taken from the copy (on
    /// the next polls), then the file again from its beginning.
    fn truncated(&mut self, emit: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        tracing::info!(
            "{}: truncated (copy-truncate rotation)",
            self.path.display()
        );
        match self.copy_holding_our_tail() {
            Some((file, id)) => {
                self.drain = Some(Drain {
                    file,
                    id,
                    offset: self.offset,
                });
            }
            None => self.flush_partial(emit),
        }
        self.offset = 0;
        self.tail.clear();
        self.behind = true;
        Ok(())
    }

    /// The sibling holding our last bytes at our offset, opened (regular
    /// files only: a FIFO named like a copy must not hang us).
    fn copy_holding_our_tail(&self) -> Option<(File, (u64, u64))> {
        if self.tail.is_empty() {
            return None;
        }
        siblings(&self.path).into_iter().find_map(|p| {
            let Ok(Opened::File(f, meta)) = crate::files::open_regular(&p) else {
                return None;
            };
            let mut buf = vec![0; self.tail.len()];
            let ours = f
                .read_exact_at(&mut buf, self.offset - self.tail.len() as u64)
                .is_ok()
                && buf == self.tail;
            ours.then(|| (f, (meta.dev(), meta.ino())))
        })
    }

    /// The line being read runs through a hole longer than any line we
    /// accept: it is skipped, as reading its zeros would have.
    fn skip_line(&mut self) {
        if !self.skipping {
            self.skipped_long += 1;
            self.skipping = true;
        }
        self.partial.clear();
    }

    /// Keeps the last `TAIL` bytes read from the file at `path`.
    fn remember_tail(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(TAIL);
        if keep == TAIL {
            self.tail.clear();
        } else {
            let drop = (self.tail.len() + keep).saturating_sub(TAIL);
            self.tail.drain(..drop);
        }
        self.tail.extend_from_slice(&bytes[bytes.len() - keep..]);
    }

    fn lines_of(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&[u8])) {
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

/// Bytes read from a file, starting at `at`.
#[derive(Default)]
struct Chunk {
    at: u64,
    bytes: Vec<u8>,
    /// A hole longer than any line was stepped over to reach `at`.
    hole: bool,
}

/// At most `MAX_READ` bytes of `file` from `from` (up to `size`), stepping
/// over a hole longer than a line first: a sparse file of terabytes is read
/// as its data, not as its zeros.
fn read_chunk(file: &File, from: u64, size: u64) -> io::Result<Chunk> {
    let data = crate::files::data_from(file, from, size);
    let (at, hole) = if data - from > MAX_LINE as u64 {
        (data.min(size), true)
    } else {
        (from, false)
    };
    let mut bytes = vec![0; size.saturating_sub(at).min(MAX_READ) as usize];
    let mut got = 0;
    while got < bytes.len() {
        match file.read_at(&mut bytes[got..], at + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    bytes.truncate(got);
    Ok(Chunk { at, bytes, hole })
}

/// Most entries of a log's folder read when looking for its rotated copy.
const MAX_SIBLING_ENTRIES: usize = 4096;
/// Most rotated copies considered (the newest): each may be opened.
const MAX_SIBLINGS: usize = 16;
/// Most files one `logpath` glob follows.
const MAX_GLOB_FILES: usize = 256;

/// Rotated siblings of `path` (`NAME.*` in the same folder), newest first:
/// at most `MAX_SIBLINGS`, from the first `MAX_SIBLING_ENTRIES` entries of
/// the folder (a folder a local user filled is not read whole each poll).
fn siblings(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .take(MAX_SIBLING_ENTRIES)
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.truncate(MAX_SIBLINGS);
    found.into_iter().map(|(_, p)| p).collect()
}

fn sibling_with_inode(path: &Path, pos: Position) -> Option<(PathBuf, (u64, u64))> {
    let id = (pos.dev, pos.ino);
    siblings(path)
        .into_iter()
        .find(|p| fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == id))
        .map(|p| (p, id))
}

/// Expands a jail's `logpath` entries (paths or globs) to existing files;
/// plain paths are kept even when missing, so they are picked up once created.
/// A glob follows at most `MAX_GLOB_FILES` (the first in its order), and
/// says so once: this runs every tick.
pub fn expand(patterns: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        if p.contains(['*', '?', '[']) {
            if let Ok(paths) = glob::glob(p) {
                let mut files = paths.filter_map(|r| r.ok()).filter(|p| p.is_file());
                out.extend(files.by_ref().take(MAX_GLOB_FILES));
                if files.next().is_some() {
                    warn_once_too_many(p);
                }
            }
        } else {
            out.push(PathBuf::from(p));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Patterns already said to match too many files.
static TOO_MANY: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn warn_once_too_many(pattern: &str) {
    let Ok(mut warned) = TOO_MANY.lock() else {
        return;
    };
    if !warned.iter().any(|w| w == pattern) {
        warned.push(pattern.to_owned());
        tracing::warn!(
            "logpath {}: more than {MAX_GLOB_FILES} files match; following the first {MAX_GLOB_FILES}",
            crate::text::escape(pattern)
        );
    }
}

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
