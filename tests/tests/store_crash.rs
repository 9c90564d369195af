//! The store survives a daemon killed at any point: a child process hands
//! batches to the store's writer and says each one the writer acknowledged;
//! it is killed (SIGKILL) at a random moment, 50 times, a new one going on
//! where the last left off. After each kill the database passes SQLite's
//! integrity check, holds every acknowledged batch, and holds each batch
//! whole or not at all.
use sipguard::store::{Batch, SavedBan, Store};
use std::{
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

const CHILD: &str = "SIPGUARD_STORE_CRASH_CHILD";
const KILLS: usize = 50;
/// Bans per batch: a transaction long enough to be killed inside.
const PER_BATCH: u32 = 500;

/// Batch `i`: `PER_BATCH` bans of jail `b{i}`, networks of its own, and
/// the feed cursor `crash` set to `i` (the batch a new child goes on from).
fn batch(i: u64) -> Batch {
    let bans = (0..PER_BATCH)
        .map(|j| SavedBan {
            net: format!("2001:db8:{:x}:{j:x}::/64", i),
            jail: format!("b{i}").into(),
            banned_at: 1,
            expires_at: None,
            expires_mono: None,
            reason: "crash test".into(),
            line: "x".repeat(100),
            all_ports: false,
            ports_only: false,
            origin: None,
            count: 1,
        })
        .collect();
    Batch {
        bans,
        cursors: vec![("crash".into(), Some(i.to_string()))],
        ..Default::default()
    }
}

/// The last batch the database holds (the `crash` cursor), if any.
fn last_batch(store: &Store) -> Option<u64> {
    store
        .conn()
        .query_row("SELECT cursor FROM cursors WHERE feed = 'crash'", [], |r| {
            r.get::<_, String>(0)
        })
        .ok()
        .map(|c| c.parse().unwrap())
}

/// The child: writes batches until killed, printing `acked N` once batch
/// N is committed. Does nothing when run as a test of its own.
#[test]
fn crash_child_writer() {
    let Ok(db) = std::env::var(CHILD) else {
        return;
    };
    let store = Store::open_db(Path::new(&db)).unwrap();
    let first = last_batch(&store).map_or(0, |i| i + 1);
    let mut writer = store.writer().unwrap();
    // Bounded: the parent kills it long before.
    for next in first..first + 100_000 {
        let seq = writer.send(batch(next)).unwrap();
        writer.wait(seq).unwrap();
        println!("acked {next}");
    }
}

/// A random number below `n` (the clock's nanoseconds, mixed).
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() % n
}

#[test]
fn every_acknowledged_batch_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut acked: Option<u64> = None;
    for kill in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + random_below(400)));
        // SAFETY: a signal to the child this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        for line in out.lines() {
            if let Some(n) = line.strip_prefix("acked ") {
                acked = acked.max(Some(n.parse().unwrap()));
            }
        }

        let store = Store::open_db(&db).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok", "after kill {kill}");
        let last = last_batch(&store);
        assert!(
            last >= acked,
            "kill {kill}: batch {acked:?} acknowledged, {last:?} kept"
        );
        // Every batch up to the last is there whole, and nothing after it.
        let mut per_jail = store
            .conn()
            .prepare("SELECT jail, count(*) FROM bans_readable GROUP BY jail")
            .unwrap();
        let jails: Vec<(String, u32)> = per_jail
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected = last.map_or(0, |l| l + 1);
        assert_eq!(jails.len() as u64, expected, "kill {kill}: batches kept");
        for (jail, n) in jails {
            assert_eq!(n, PER_BATCH, "kill {kill}: {jail} is not whole");
            let i: u64 = jail[1..].parse().unwrap();
            assert!(Some(i) <= last, "kill {kill}: {jail} past the last batch");
        }
    }
    assert!(
        acked.is_some_and(|a| a > 0),
        "no batch acknowledged in {KILLS} runs"
    );
    println!("{KILLS} kills; the last batch acknowledged: {acked:?}");
}
