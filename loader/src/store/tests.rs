//! The store's own tests: batches in, the same state out.
use super::*;
use std::{collections::BTreeMap, path::Path};

pub(crate) fn ban(net: &str, origin: Option<&str>) -> SavedBan {
    SavedBan {
        net: net.into(),
        jail: origin.unwrap_or("freeswitch").into(),
        banned_at: 1_700_000_000_000,
        expires_at: Some(1_700_000_600_000),
        expires_mono: Some(123_456_789),
        reason: "5 failures in 10m".into(),
        line: "SIP auth failure from ip 203.0.113.5 \u{e9}".into(),
        all_ports: origin.is_some(),
        ports_only: origin.is_none(),
        origin: origin.map(Into::into),
        count: u32::from(origin.is_none()) * 3,
    }
}

fn clock(boot: &str, at: i64) -> Option<Clock> {
    Some(Clock {
        boot_id: boot.into(),
        saved_at: at,
    })
}

/// Everything a restore reads, bans sorted.
fn read(store: &mut Store) -> State {
    let r = store.restore().unwrap();
    let mut st = r.header.clone();
    st.bans = r.bans().collect();
    assert_eq!(st.bans.len(), r.bans_len);
    for c in r.counts() {
        st.set_count(c);
    }
    r.finish().unwrap();
    st.bans
        .sort_by(|a, b| (&a.net, &a.origin).cmp(&(&b.net, &b.origin)));
    st
}

#[test]
fn batches_written_are_what_a_restore_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_db(&dir.path().join("state.db")).unwrap();
    let empty = read(&mut store);
    assert_eq!(empty.allowed, None, "never saved: the kernel's is adopted");
    assert!(empty.bans.is_empty() && empty.boot_id.is_none());
    let at = |offset| Position {
        dev: u64::MAX,
        ino: 2,
        offset,
    };
    let mut w = store.writer().unwrap();
    let first = w
        .send(Batch {
            clock: clock("boot-1", 10),
            nets: vec![
                ("192.0.2.1/32".into(), vec![ban("192.0.2.1/32", None)]),
                (
                    "2001:db8::/64".into(),
                    vec![
                        ban("2001:db8::/64", None),
                        ban("2001:db8::/64", Some("crowdsec")),
                    ],
                ),
            ],
            counts: vec![("192.0.2.7/32".into(), 2, 5), ("192.0.2.8/32".into(), 1, 0)],
            positions: vec![("/var/log/fs.log".into(), Some(at(10)))],
            cursors: vec![("apiban".into(), Some("300".into()))],
            allowed: Some(vec!["10.0.0.0/8".into()]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(first, 1);
    assert_eq!(
        w.send(Batch::default()).unwrap(),
        1,
        "an empty batch is not sent"
    );
    let second = w
        .send(Batch {
            clock: clock("boot-1", 20),
            // The network's bans now: its crowdsec ban is gone.
            nets: vec![("2001:db8::/64".into(), vec![ban("2001:db8::/64", None)])],
            bans: vec![ban("198.51.100.0/24", Some("redis:box2"))],
            unbans: vec![("192.0.2.1/32".into(), None)],
            counts: vec![("192.0.2.8/32".into(), 0, 0)],
            positions: vec![("/var/log/fs.log".into(), Some(at(99)))],
            allowed: Some(vec!["10.0.0.0/8".into(), "192.0.2.128/25".into()]),
            ..Default::default()
        })
        .unwrap();
    w.wait(second).unwrap();
    assert_eq!(w.durable(), 2);
    let progress = w.close().unwrap();
    assert_eq!((progress.batches, progress.failed), (2, None));
    let mut store = Store::open_db(&dir.path().join("state.db")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let st = read(&mut store);
    let want = State {
        version: records::VERSION,
        boot_id: Some("boot-1".into()),
        saved_at: Some(20),
        bans: vec![
            ban("198.51.100.0/24", Some("redis:box2")),
            ban("2001:db8::/64", None),
        ],
        allowed: Some(vec!["10.0.0.0/8".into(), "192.0.2.128/25".into()]),
        ban_counts: BTreeMap::from([("192.0.2.7/32".into(), 2)]),
        ban_counted_at: BTreeMap::from([("192.0.2.7/32".into(), 5)]),
        positions: BTreeMap::from([("/var/log/fs.log".into(), at(99))]),
        cursors: BTreeMap::from([("apiban".into(), "300".into())]),
    };
    assert_eq!(st, want);
    // Readable with plain SQL, as an operator would.
    let (scope, expires): (String, String) = store
        .conn()
        .query_row(
            "SELECT scope, expires_utc FROM bans_readable WHERE origin = 'redis:box2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (scope.as_str(), expires.as_str()),
        ("all-ports", "2023-11-14 22:23:20")
    );
}

#[test]
fn a_later_boot_voids_the_monotonic_deadlines_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_db(&dir.path().join("state.db")).unwrap();
    let b = |net| Batch {
        clock: clock("boot-1", 1),
        bans: vec![ban(net, None)],
        ..Default::default()
    };
    store.write(&b("192.0.2.1/32")).unwrap();
    store.write(&b("192.0.2.2/32")).unwrap();
    assert!(read(&mut store)
        .bans
        .iter()
        .all(|b| b.expires_mono.is_some()));
    let mut later = b("192.0.2.3/32");
    later.clock = clock("boot-2", 2);
    store.write(&later).unwrap();
    let st = read(&mut store);
    let mono: Vec<Option<u64>> = st.bans.iter().map(|b| b.expires_mono).collect();
    assert_eq!(mono, [None, None, Some(123_456_789)]);
    assert!(
        st.bans.iter().all(|b| b.expires_at.is_some()),
        "wall-time ends stand"
    );
    assert_eq!(st.boot_id.as_deref(), Some("boot-2"));
}

#[test]
fn a_replace_batch_is_the_whole_state_and_a_failed_batch_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_db(&dir.path().join("state.db")).unwrap();
    store
        .write(&Batch {
            bans: vec![ban("192.0.2.1/32", None)],
            counts: vec![("192.0.2.9/32".into(), 4, 4)],
            cursors: vec![("apiban".into(), Some("1".into()))],
            ..Default::default()
        })
        .unwrap();
    let mut w = store.writer().unwrap();
    // The whole state: what it does not hold goes.
    let seq = w
        .send(Batch {
            replace: true,
            bans: vec![ban("192.0.2.2/32", None)],
            ..Default::default()
        })
        .unwrap();
    w.wait(seq).unwrap();
    w.close().unwrap();
    let mut store = Store::open_db(&dir.path().join("state.db")).unwrap();
    let st = read(&mut store);
    assert_eq!(st.bans, [ban("192.0.2.2/32", None)]);
    assert!(st.ban_counts.is_empty() && st.cursors.is_empty());
    // A batch that fails part way is rolled back whole, and said; it is
    // tried again in front of the next batch.
    store
        .conn()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON offenders
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    let mut w = store.writer().unwrap();
    let seq = w
        .send(Batch {
            bans: vec![ban("192.0.2.3/32", None)],
            counts: vec![("192.0.2.9/32".into(), 1, 1)],
            ..Default::default()
        })
        .unwrap();
    assert!(w.wait(seq).is_err());
    let p = w.progress();
    assert_eq!((p.durable, p.pending, p.lost), (0, 1, false));
    assert_eq!(w.take_failure().map(|f| f.0), Some(1));
    let mut other = Store::open_db(&dir.path().join("state.db")).unwrap();
    assert_eq!(
        read(&mut other).bans,
        [ban("192.0.2.2/32", None)],
        "nothing of it"
    );
    // The disk is back: the failed batch goes in with the next.
    other.conn().execute_batch("DROP TRIGGER refuse").unwrap();
    let next = w
        .send(Batch {
            cursors: vec![("apiban".into(), Some("2".into()))],
            ..Default::default()
        })
        .unwrap();
    w.wait(next).unwrap();
    w.wait(seq).unwrap();
    assert_eq!(w.progress().pending, 0);
    w.close().unwrap();
    let st = read(&mut other);
    assert_eq!(st.bans.len(), 2);
    assert_eq!(
        (st.ban_counts["192.0.2.9/32"], st.cursors["apiban"].as_str()),
        (1, "2")
    );
}

#[test]
fn the_database_is_readable_by_root_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut store = Store::open_db(&path).unwrap();
    store
        .write(&Batch {
            bans: vec![ban("192.0.2.1/32", None)],
            ..Default::default()
        })
        .unwrap();
    for p in ["state.db", "state.db-wal", "state.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{p}");
    }
}

#[test]
fn change_log_lines_become_a_batch() {
    use legacy::changes::Change;
    let b = Batch::from_changes([
        Change::Clock {
            boot_id: "b".into(),
            saved_at: 3,
        },
        Change::Net {
            net: "192.0.2.1/32".into(),
            bans: vec![],
        },
        Change::Count {
            net: "192.0.2.1/32".into(),
            n: 2,
            at: 1,
        },
        Change::Meta {
            allowed: vec!["10.0.0.0/8".into()],
            cursors: BTreeMap::from([("apiban".into(), "7".into())]),
        },
    ]);
    assert_eq!(b.clock, clock("b", 3));
    assert_eq!(b.nets, [("192.0.2.1/32".to_owned(), vec![])]);
    assert_eq!(b.counts, [("192.0.2.1/32".to_owned(), 2, 1)]);
    assert_eq!(b.allowed, Some(vec!["10.0.0.0/8".to_owned()]));
    assert_eq!(b.cursors, [("apiban".to_owned(), Some("7".to_owned()))]);
}

#[test]
fn only_the_newest_lines_are_read_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_db(&dir.path().join("state.db")).unwrap();
    let bans: Vec<SavedBan> = (1..=5)
        .map(|i| SavedBan {
            line: "x".repeat(68),
            ..ban(&format!("192.0.2.{i}/32"), None)
        })
        .collect();
    store
        .write(&Batch {
            bans,
            ..Default::default()
        })
        .unwrap();
    let mut r = store.restore().unwrap();
    // Two lines of 68 bytes and 32 of overhead each.
    r.keep_lines(250).unwrap();
    let lines: Vec<usize> = r.bans().map(|b| b.line.len()).collect();
    assert_eq!(lines, [0, 0, 0, 68, 68]);
    r.finish().unwrap();
}

#[test]
fn only_moved_positions_and_cursors_are_handed_over() {
    let at = |offset| Position {
        dev: 1,
        ino: 1,
        offset,
    };
    let before = BTreeMap::from([("/a".to_owned(), at(1)), ("/b".to_owned(), at(2))]);
    let now = BTreeMap::from([("/a".to_owned(), at(1)), ("/c".to_owned(), at(3))]);
    let mut b = Batch::default();
    b.positions_since(&before, &now);
    b.cursors_since(
        &BTreeMap::from([("apiban".to_owned(), "1".to_owned())]),
        &BTreeMap::from([("apiban".to_owned(), "2".to_owned())]),
    );
    assert_eq!(
        b.positions,
        [("/c".to_owned(), Some(at(3))), ("/b".to_owned(), None)]
    );
    assert_eq!(b.cursors, [("apiban".to_owned(), Some("2".to_owned()))]);
}

#[test]
fn the_database_is_never_the_state_file_itself() {
    let db = |p: &str| db_path(Path::new(p)).display().to_string();
    assert_eq!(
        db("/var/lib/sipguard/state.json"),
        "/var/lib/sipguard/state.db"
    );
    assert_eq!(db("/var/lib/sipguard/state"), "/var/lib/sipguard/state.db");
    assert_eq!(
        db("/var/lib/sipguard/state.db"),
        "/var/lib/sipguard/state.store.db"
    );
}

#[test]
fn a_database_of_schema_1_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    // Schema 1's table, as the first store wrote it.
    let old = rusqlite::Connection::open(&path).unwrap();
    old.execute_batch(
        "CREATE TABLE bans (net TEXT NOT NULL, origin TEXT NOT NULL DEFAULT '',
             jail TEXT NOT NULL, scope TEXT NOT NULL DEFAULT 'ports',
             banned_at INTEGER NOT NULL, expires_at INTEGER, expires_mono INTEGER,
             boot INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',
             line TEXT NOT NULL DEFAULT '', count INTEGER NOT NULL DEFAULT 0);
         CREATE UNIQUE INDEX bans_key ON bans (net, origin);
         CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         CREATE VIEW bans_readable AS SELECT net, jail FROM bans;
         INSERT INTO meta VALUES ('schema_version', 1), ('boot_seq', 1);
         INSERT INTO bans VALUES ('192.0.2.1/32', 'redis:box2', 'redis:box2', 'all-ports',
             1700000000000, 1700000600000, 123456789, 1, '5 failures in 10m',
             'SIP auth failure from ip 203.0.113.5 é', 0);
         INSERT INTO bans VALUES ('192.0.2.2/32', '', 'freeswitch', 'ports-only',
             1700000000000, 1700000600000, 123456789, 1, '5 failures in 10m',
             'SIP auth failure from ip 203.0.113.5 é', 3);",
    )
    .unwrap();
    drop(old);
    let mut store = Store::open_db(&path).unwrap();
    let version: i64 = schema::meta(store.conn(), "schema_version")
        .unwrap()
        .unwrap();
    assert_eq!(version, schema::VERSION);
    assert_eq!(
        read(&mut store).bans,
        [
            ban("192.0.2.1/32", Some("redis:box2")),
            ban("192.0.2.2/32", None)
        ]
    );
    let readable: (String, String) = store
        .conn()
        .query_row(
            "SELECT jail, scope FROM bans_readable WHERE net = '192.0.2.2/32'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(readable, ("freeswitch".into(), "ports-only".into()));
    assert_eq!(store.integrity_check().unwrap(), "ok");
}
