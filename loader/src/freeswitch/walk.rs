//! Discovery's walk of the tree: what it may read (files, bytes, folder
//! entries, expanded text) and reading files and globs within that.
use std::path::{Path, PathBuf};

/// Most files one discovery considers, all includes together: an include
/// that fans out exponentially (each file including a folder of files that
/// include it again) stops here.
pub(super) const MAX_FILES: usize = 256;
/// Most bytes one discovery reads, all files together (a sparse "file" of
/// terabytes is refused by its size, before a byte of it is read).
pub(super) const MAX_BYTES: u64 = 16 << 20;
/// Longest a `$${variable}` expansion may grow (`set b=$${a}$${a}`, then
/// `set c=$${b}$${b}`, ... doubles at each line).
pub(super) const MAX_VALUE: usize = 64 * 1024;
/// Most text the walk holds after expansion, all tags and `set`s together:
/// a million small tags each expanding a 64 KiB variable would otherwise
/// be tens of GiB from a 16 MiB tree.
pub(super) const MAX_EXPANDED: usize = 16 << 20;
/// What one kept tag costs beyond its text (counted against `MAX_EXPANDED`).
pub(super) const TAG_OVERHEAD: usize = 64;
/// Includes nested deeper than this are not followed (a loop, or a mistake).
pub(super) const MAX_DEPTH: usize = 8;
/// Most wildcard components in one include pattern (`/*/*/*/x` would
/// walk the whole file system).
pub(super) const MAX_WILDCARDS: usize = 2;
/// Most entries read from one folder while globbing.
pub(super) const MAX_DIR_ENTRIES: usize = 4096;
/// Most folder entries the walk reads, all globs together.
pub(super) const MAX_ENTRIES: usize = 65_536;
/// Most gateway hosts kept (each is resolved).
pub(super) const MAX_HOSTS: usize = 256;
/// What is left of the walk's bounds.
pub(super) struct Budget {
    pub(super) files: usize,
    pub(super) bytes: u64,
    pub(super) expanded: usize,
    pub(super) entries: usize,
    /// A bound was hit (and said so, once): nothing more is read.
    pub(super) spent: bool,
}

impl Budget {
    pub(super) fn new() -> Self {
        Self {
            files: MAX_FILES,
            bytes: MAX_BYTES,
            expanded: MAX_EXPANDED,
            entries: MAX_ENTRIES,
            spent: false,
        }
    }

    /// Ends the walk with one warning for the whole of it.
    fn stop(&mut self, file: &Path, why: &str, warnings: &mut Vec<String>) {
        if !self.spent {
            self.spent = true;
            warnings.push(format!(
                "{}: not read, nor anything after it: {why}",
                shown(file)
            ));
        }
    }

    /// One more file to consider: false once `MAX_FILES` are, or another
    /// bound ended the walk.
    pub(super) fn take_file(&mut self, file: &Path, warnings: &mut Vec<String>) -> bool {
        if self.files == 0 {
            let why = format!("discovery reads at most {MAX_FILES} files (includes fanning out?)");
            self.stop(file, &why, warnings);
        }
        if self.spent {
            return false;
        }
        self.files -= 1;
        true
    }

    /// `n` more bytes of expanded text held: false (and the walk ends) past
    /// `MAX_EXPANDED`.
    pub(super) fn hold(&mut self, n: usize, file: &Path, warnings: &mut Vec<String>) -> bool {
        if n > self.expanded {
            let why = format!(
                "discovery holds at most {MAX_EXPANDED} bytes of expanded text ($${{variables}} repeated?)"
            );
            self.stop(file, &why, warnings);
            return false;
        }
        self.expanded -= n;
        true
    }
}

/// A path for a warning: file names are anyone's text.
pub(super) fn shown(p: &Path) -> String {
    crate::text::escape(&p.display().to_string()).into_owned()
}

/// Reads one file of the tree, within what is left of the walk's bytes:
/// regular files only (opened without blocking: a FIFO never hangs us).
pub(super) fn read_file(
    file: &Path,
    depth: usize,
    budget: &mut Budget,
    warnings: &mut Vec<String>,
) -> Option<String> {
    use crate::files::Opened;
    let (f, meta) = match crate::files::open_regular(file) {
        Ok(Opened::File(f, meta)) => (f, meta),
        Ok(Opened::Missing) if depth == 0 => return None,
        Ok(Opened::Missing) => {
            warnings.push(format!("{}: not found", shown(file)));
            return None;
        }
        Ok(Opened::NotRegular(meta)) => {
            warnings.push(format!(
                "{}: {}, not a regular file: not read",
                shown(file),
                crate::files::kind(&meta)
            ));
            return None;
        }
        Err(e) => {
            warnings.push(format!("{}: {e}", shown(file)));
            return None;
        }
    };
    // Refused by its size before a byte is read: a sparse file of any size
    // costs a stat, not a read of its zeros. One that grows meanwhile is
    // still cut at the budget.
    let too_big = |len: u64, warnings: &mut Vec<String>| {
        warnings.push(format!(
            "{}: {len} bytes: not read (discovery reads at most {MAX_BYTES} bytes in all)",
            shown(file),
        ));
    };
    if meta.len() > budget.bytes {
        too_big(meta.len(), warnings);
        return None;
    }
    let bytes = match crate::files::read_at_most(&f, budget.bytes) {
        Ok(Some(b)) => b,
        Ok(None) => {
            too_big(meta.len(), warnings);
            return None;
        }
        Err(e) => {
            warnings.push(format!("{}: {e}", shown(file)));
            return None;
        }
    };
    budget.bytes -= bytes.len() as u64;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The paths `pattern` matches, sorted, at most `MAX_FILES` of them.
/// FreeSWITCH expands includes with glob(3), where `**` is `*`: so here
/// too. A pattern never walks a whole tree: at most `MAX_WILDCARDS`
/// components with wildcards, `MAX_DIR_ENTRIES` entries read from each
/// folder (streamed, never a whole folder at once) and the walk's
/// `entries` in all.
pub(super) fn glob_sorted(
    pattern: &Path,
    budget: &mut Budget,
    warnings: &mut Vec<String>,
) -> Vec<PathBuf> {
    use std::path::Component;
    let wild = |c: &str| c.contains(['*', '?', '[']);
    let parts: Vec<Component> = pattern.components().collect();
    let wildcards = parts
        .iter()
        .filter(|c| wild(&c.as_os_str().to_string_lossy()))
        .count();
    if wildcards > MAX_WILDCARDS {
        warnings.push(format!(
            "{}: not followed: more than {MAX_WILDCARDS} wildcard components",
            shown(pattern)
        ));
        return Vec::new();
    }
    let mut paths = vec![PathBuf::new()];
    for part in parts {
        let text = part.as_os_str().to_string_lossy();
        if !wild(&text) {
            paths.iter_mut().for_each(|p| p.push(part));
            continue;
        }
        let mut text = text.into_owned();
        while text.contains("**") {
            text = text.replace("**", "*");
        }
        let Ok(matcher) = glob::Pattern::new(&text) else {
            warnings.push(format!("{}: not a valid pattern", shown(pattern)));
            return Vec::new();
        };
        let mut next = Vec::new();
        for dir in &paths {
            matching_entries(dir, &matcher, budget, warnings, &mut next);
        }
        next.sort();
        next.truncate(MAX_FILES);
        paths = next;
    }
    let mut files: Vec<PathBuf> = paths
        .into_iter()
        // A link that leads nowhere (or to itself) is kept: reading it says why.
        .filter(|p| p.symlink_metadata().is_ok() && !p.is_dir())
        .collect();
    files.sort();
    files
}

/// Appends the entries of `dir` whose names match, reading at most
/// `MAX_DIR_ENTRIES` of them and never past the walk's entry budget.
pub(super) fn matching_entries(
    dir: &Path,
    matcher: &glob::Pattern,
    budget: &mut Budget,
    warnings: &mut Vec<String>,
    out: &mut Vec<PathBuf>,
) {
    let at = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(at) else {
        return;
    };
    for (read, entry) in entries.enumerate() {
        if read == MAX_DIR_ENTRIES || budget.entries == 0 {
            warnings.push(format!(
                "{}: only {read} entries read (discovery reads at most {MAX_DIR_ENTRIES} a folder, {MAX_ENTRIES} in all)",
                shown(dir)
            ));
            return;
        }
        budget.entries -= 1;
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| matcher.matches(n)) {
            out.push(dir.join(name));
        }
    }
}
