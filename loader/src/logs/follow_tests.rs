//! The follower's tests: rotations under writes, and files a local user
//! put in its way.
use super::*;
use std::{fs::OpenOptions, io::Write as _};

/// Every line there is to read now: polls until the follower has
/// caught up (a rotated file's rest takes a poll of its own).
fn collect(f: &mut Follower) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..100 {
        f.poll(&mut |l| out.push(String::from_utf8_lossy(l).into_owned()))
            .unwrap();
        if !f.behind {
            return out;
        }
    }
    panic!("still behind after 100 polls");
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
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
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

/// `collect` on another thread: a follower that blocks (on a FIFO's
/// open, say) fails the test instead of hanging it.
fn collect_within(mut f: Follower, secs: u64) -> (Follower, Vec<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines = collect(&mut f);
        let _ = tx.send((f, lines));
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("the follower blocked")
}

#[test]
fn a_fifo_in_place_of_the_log_is_refused_once_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    append(&p, b"one\n");
    let f = Follower::new(p.clone(), Start::Beginning);
    let (f, got) = collect_within(f, 5);
    assert_eq!(got, ["one"]);
    // Rotated away, and a FIFO put in its place: the old file's last
    // lines are read, the FIFO is not opened for good.
    append(&p, b"two\n");
    fs::rename(&p, dir.path().join("a.log.1")).unwrap();
    crate::files::mkfifo(&p);
    let (mut f, got) = collect_within(f, 5);
    assert_eq!(got, ["two"]);
    for _ in 0..5 {
        (f, _) = collect_within(f, 5);
    }
    assert_eq!(f.refusals, 1, "one warning, not one a poll");
    // A FIFO from the start, and a device: refused too.
    let g = Follower::new(p.clone(), Start::End);
    let (g, got) = collect_within(g, 5);
    assert!(got.is_empty() && g.refusals == 1);
    let (d, _) = collect_within(Follower::new("/dev/zero".into(), Start::Beginning), 5);
    assert_eq!(d.refusals, 1);
    // A regular file again: read from its beginning.
    fs::remove_file(&p).unwrap();
    append(&p, b"three\n");
    let (f, got) = collect_within(f, 5);
    assert_eq!(got, ["three"]);
    assert_eq!(f.refusals, 1);
}

#[test]
fn a_huge_sparse_file_is_not_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    append(&p, b"first\nhalf a line");
    let size = 64 << 30;
    let file = OpenOptions::new().write(true).open(&p).unwrap();
    file.set_len(size).unwrap();
    file.write_all_at(b" end of the long line\nlast\n", size)
        .unwrap();
    let mut f = Follower::new(p.clone(), Start::Beginning);
    let mut got = Vec::new();
    let mut polls = 0;
    let started = std::time::Instant::now();
    loop {
        polls += 1;
        f.poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned()))
            .unwrap();
        if !f.behind || polls > 100 {
            break;
        }
    }
    // Reading 64 GiB of zeros would take 16384 polls of 4 MiB.
    assert!(polls <= 3, "{polls} polls");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // The line running through the hole is one too long to keep.
    assert_eq!(got, ["first", "last"]);
    assert_eq!(f.skipped_long, 1);
    // Still followed after the hole, and resumable from there.
    append(&p, b"more\n");
    assert_eq!(collect(&mut f), ["more"]);
    assert_eq!(f.position().unwrap().offset, size + 32);
}

#[test]
fn a_huge_rotated_rest_is_read_a_chunk_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    append(&p, b"start\n");
    let mut f = Follower::new(p.clone(), Start::Beginning);
    assert_eq!(collect(&mut f), ["start"]);
    let total = 500_000;
    let text: String = (0..total).map(|i| format!("line {i:08}\n")).collect();
    append(&p, text.as_bytes());
    // Copy-truncate, with a FIFO named like a copy next to the real one.
    fs::copy(&p, dir.path().join("a.log.1")).unwrap();
    crate::files::mkfifo(&dir.path().join("a.log.2"));
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    // (Longer than what was read: a file of the same size is noticed
    // only at its next write.)
    append(&p, b"after the rotation\n");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut most = 0;
        for _ in 0..100 {
            let before = got.len();
            f.poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned()))
                .unwrap();
            most = most.max(got.len() - before);
            if !f.behind {
                break;
            }
        }
        let _ = tx.send((got, most));
    });
    let (got, most) = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the follower blocked");
    // 14 bytes a line: at most 4 MiB of them in one poll.
    assert!(
        most <= (MAX_READ as usize) / 14 + 1,
        "{most} lines in a poll"
    );
    assert_eq!(got.len(), total + 1);
    assert_eq!(got[0], "line 00000000");
    assert_eq!(got[total - 1], format!("line {:08}", total - 1));
    assert_eq!(got[total], "after the rotation");
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

#[test]
fn globs_and_siblings_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..MAX_GLOB_FILES + 50 {
        append(&dir.path().join(format!("{i:04}.log")), b"");
    }
    let pat = format!("{}/*.log", dir.path().display());
    assert_eq!(expand(&[pat]).len(), MAX_GLOB_FILES);
    // A folder filled with thousands of `NAME.*`: only the newest few are
    // ever considered (each may be opened).
    let log = dir.path().join("fs.log");
    append(&log, b"");
    for i in 0..MAX_SIBLINGS * 4 {
        append(&dir.path().join(format!("fs.log.{i}")), b"");
    }
    assert_eq!(siblings(&log).len(), MAX_SIBLINGS);
}
