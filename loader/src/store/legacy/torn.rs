//! A record torn by a crash mid-write, cut off before anything is appended.
//!
//! The journal and the change log are files of JSON lines, appended to. A
//! crash (or a CLI killed) mid-write leaves the last line without its end;
//! a record appended after it would be glued onto the fragment and lost
//! with it when the file is read (an operator's offline unban would come
//! back). So whoever opens one of them to append first cuts the file back
//! to its last complete line, and puts the fragment aside (`PATH.torn`) so
//! nothing is silently thrown away.
use anyhow::{Context as _, Result};
use std::{
    fs::{self, File},
    io::Write as _,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Bytes read at a time, backwards, looking for the last line's end.
const CHUNK: u64 = 64 * 1024;

/// Where the fragments cut from `path` are kept.
pub fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".torn");
    PathBuf::from(name)
}

/// Cuts `file` (open for writing, at `path`) back to its last complete
/// line. Returns the size of the fragment cut off (0: nothing was torn).
pub fn cut_torn_tail(file: &File, path: &Path) -> Result<u64> {
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let keep =
        complete_len(file, len).with_context(|| format!("cannot read {}", path.display()))?;
    if keep == len {
        return Ok(0);
    }
    let mut fragment = vec![0; usize::try_from(len - keep)?];
    file.read_exact_at(&mut fragment, keep)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // A whole record that only lacks its line end (a short write: the
    // disk filled up) is ended, not cut: it was written, and it counts. A
    // JSON object cut anywhere before its last byte never parses.
    if serde_json::from_slice::<serde_json::Value>(&fragment).is_ok_and(|v| v.is_object()) {
        file.write_all_at(b"\n", len)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::warn!(
            "{}: its last record had no line end (a short write); ended it",
            path.display()
        );
        return Ok(0);
    }
    let aside = aside_path(path);
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&aside)
        .with_context(|| format!("cannot open {}", aside.display()))?;
    out.write_all(&fragment)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.sync_data())
        .with_context(|| format!("cannot write {}", aside.display()))?;
    file.set_len(keep)
        .and_then(|()| file.sync_data())
        .with_context(|| format!("cannot truncate {}", path.display()))?;
    tracing::warn!(
        "{}: its last record was torn (a crash mid-write); cut {} byte(s) off, kept in {}",
        path.display(),
        fragment.len(),
        aside.display()
    );
    Ok(fragment.len() as u64)
}

/// The length of `file` up to and including its last `\n` (0 if none).
fn complete_len(file: &File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    // Each turn moves `end` back by up to CHUNK: at most len / CHUNK turns.
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(len);
        }
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::legacy::{changes, journal, state::State};

    /// Tears the last record of `path`: cuts it in the middle.
    fn tear(path: &Path) {
        let text = fs::read(path).unwrap();
        assert_eq!(text.last(), Some(&b'\n'));
        let last_start = text[..text.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let cut = last_start + (text.len() - last_start) / 2;
        fs::write(path, &text[..cut]).unwrap();
    }

    #[test]
    fn a_journal_append_after_a_tear_keeps_every_complete_record() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let unban = |n: &str| journal::Change::Unban { net: n.into() };
        {
            let mut j = journal::lock(&state).unwrap();
            for n in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
                j.append(&unban(n)).unwrap();
            }
        }
        tear(&journal::path(&state));
        {
            let mut j = journal::lock(&state).unwrap();
            j.append(&unban("192.0.2.9")).unwrap();
        }
        let j = journal::lock(&state).unwrap();
        assert_eq!(
            j.changes().unwrap(),
            vec![unban("192.0.2.1"), unban("192.0.2.2"), unban("192.0.2.9")]
        );
        let fragment = fs::read_to_string(aside_path(&journal::path(&state))).unwrap();
        assert!(fragment.starts_with("{\"op\":\"unban\""), "{fragment}");
    }

    #[test]
    fn a_change_log_append_after_a_tear_keeps_every_complete_record() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let count = |n: &str, k: u32| changes::Change::Count {
            net: n.into(),
            n: k,
            at: 7,
        };
        let mut log = changes::ChangeLog::new(&state, 0);
        log.append(&[count("192.0.2.1/32", 1), count("192.0.2.2/32", 2)])
            .unwrap();
        log.flush();
        drop(log);
        tear(&changes::path(&state));
        let mut log = changes::ChangeLog::new(&state, 0);
        log.append(&[count("192.0.2.3/32", 3)]).unwrap();
        log.flush();
        let mut header = State::default();
        let (applied, mut over) = changes::read(&state, &mut header).unwrap();
        assert_eq!(applied, 2, "the first record and the new one");
        let mut counts: Vec<_> = over.counts(std::iter::empty()).collect();
        counts.sort();
        assert_eq!(
            counts,
            vec![
                ("192.0.2.1/32".to_owned(), 1, 7),
                ("192.0.2.3/32".to_owned(), 3, 7)
            ]
        );
    }

    #[test]
    fn complete_files_are_left_alone_and_long_fragments_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "a\nb\n").unwrap();
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(cut_torn_tail(&f, &path).unwrap(), 0);
        assert_eq!(fs::read_to_string(&path).unwrap(), "a\nb\n");
        // A fragment longer than one chunk, and a file of nothing but one.
        let long = "x".repeat(3 * CHUNK as usize);
        fs::write(&path, format!("a\n{long}")).unwrap();
        assert_eq!(cut_torn_tail(&f, &path).unwrap(), long.len() as u64);
        assert_eq!(fs::read_to_string(&path).unwrap(), "a\n");
        fs::write(&path, "torn").unwrap();
        assert_eq!(cut_torn_tail(&f, &path).unwrap(), 4);
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        assert_eq!(
            fs::read_to_string(aside_path(&path)).unwrap(),
            format!("{long}\ntorn\n")
        );
        // A whole record without its line end is ended, not moved aside.
        fs::write(&path, "{\"a\":1}\n{\"unban\":\"192.0.2.1\"}").unwrap();
        assert_eq!(cut_torn_tail(&f, &path).unwrap(), 0);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"unban\":\"192.0.2.1\"}\n"
        );
    }
}
