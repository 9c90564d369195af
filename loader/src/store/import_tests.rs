//! One test per older form, each made by the writers that wrote it.
use super::super::{
    legacy::{changes, journal, snapshot, state},
    records::{Position, SavedBan, State, VERSION},
    tests::ban,
    Batch, Store,
};
use super::*;
use std::collections::BTreeMap;

fn sample() -> State {
    State {
        version: VERSION,
        boot_id: Some("boot-1".into()),
        saved_at: Some(5),
        bans: vec![
            ban("203.0.113.5/32", None),
            ban("2001:db8::/64", Some("crowdsec")),
            ban("198.51.100.0/24", Some("redis:box2")),
        ],
        allowed: Some(vec!["10.0.0.0/8".into()]),
        ban_counts: BTreeMap::from([("192.0.2.7/32".into(), 1)]),
        ban_counted_at: BTreeMap::from([("192.0.2.7/32".into(), 1_699_999_000_000)]),
        positions: BTreeMap::from([("/var/log/fs.log".into(), at(10))]),
        cursors: BTreeMap::from([("apiban".into(), "300".into())]),
    }
}

fn at(offset: u64) -> Position {
    Position {
        dev: 1,
        ino: 2,
        offset,
    }
}

/// What the store of `state_file` holds, bans sorted by network.
fn stored(state_file: &Path) -> State {
    let mut store = Store::open(state_file).unwrap();
    let r = store.restore().unwrap();
    let mut st = r.header.clone();
    st.bans = r.bans().collect();
    for c in r.counts() {
        st.set_count(c);
    }
    r.finish().unwrap();
    st.bans.sort_by(|a, b| a.net.cmp(&b.net));
    st
}

fn sorted(mut st: State) -> State {
    st.bans.sort_by(|a, b| a.net.cmp(&b.net));
    st
}

/// Every older file is renamed `.imported`, and a second open takes in
/// nothing.
fn all_moved_aside(state_file: &Path) {
    for p in legacy_files(state_file) {
        assert!(!p.exists(), "{} left", p.display());
    }
    assert!(Store::open(state_file).unwrap().imported().is_none());
}

#[test]
fn a_binary_snapshot_with_its_change_logs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    // Something the database held before: replaced by the whole state.
    Store::open(&path)
        .unwrap()
        .write(&Batch {
            bans: vec![ban("192.0.2.200/32", None)],
            ..Default::default()
        })
        .unwrap();
    state::save(&path, &sample()).unwrap();
    let mut log = changes::ChangeLog::new(&path, 0);
    log.append(&[changes::Change::Net {
        net: "203.0.113.5/32".into(),
        bans: vec![],
    }])
    .unwrap();
    // A background snapshot began: the log above is the older one.
    log.rotate().unwrap();
    log.append(&[
        changes::Change::Net {
            net: "192.0.2.50/32".into(),
            bans: vec![ban("192.0.2.50/32", None)],
        },
        changes::Change::Count {
            net: "192.0.2.7/32".into(),
            n: 2,
            at: 9,
        },
    ])
    .unwrap();
    log.flush();
    state::save_positions(&path, &BTreeMap::from([("/var/log/fs.log".into(), at(99))])).unwrap();
    let imported = Store::open(&path).unwrap().imported().cloned().unwrap();
    assert_eq!(
        (imported.bans, imported.counts, imported.changes),
        (3, 1, 3)
    );
    assert_eq!(imported.files.len(), 4);
    let mut want = sample();
    want.bans.remove(0);
    want.bans.push(ban("192.0.2.50/32", None));
    want.ban_counts.insert("192.0.2.7/32".into(), 2);
    want.ban_counted_at.insert("192.0.2.7/32".into(), 9);
    want.positions.insert("/var/log/fs.log".into(), at(99));
    assert_eq!(stored(&path), sorted(want));
    all_moved_aside(&path);
    assert!(imported_path(&changes::older_path(&path)).exists());
}

/// Form 2: the counts in the JSON part, no counts section.
#[test]
fn a_form_2_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let st = sample();
    let mut header = st.clone();
    let bans = std::mem::take(&mut header.bans);
    let mut form3 = Vec::new();
    snapshot::write_parts(
        &mut form3,
        &State {
            ban_counts: Default::default(),
            ban_counted_at: Default::default(),
            ..header.clone()
        },
        bans.iter()
            .flat_map(|b| [Some(&*b.jail), Some(&*b.reason), b.origin.as_deref()])
            .flatten(),
        (bans.len(), bans.iter().cloned()),
        std::iter::empty(),
    )
    .unwrap();
    // Form 3 less its (empty) counts section, behind form 2's header.
    let json_len = u32::from_le_bytes(
        form3[snapshot::MAGIC.len()..snapshot::MAGIC.len() + 4]
            .try_into()
            .unwrap(),
    ) as usize;
    let body = &form3[snapshot::MAGIC.len() + 4 + json_len..form3.len() - 4 - 8];
    let json = serde_json::to_vec(&header).unwrap();
    let mut old = snapshot::MAGIC_2.to_vec();
    old.extend_from_slice(&(json.len() as u32).to_le_bytes());
    old.extend_from_slice(&json);
    old.extend_from_slice(body);
    old.extend_from_slice(b"END\n");
    std::fs::write(&path, old).unwrap();
    assert_eq!(stored(&path), sorted(st));
    all_moved_aside(&path);
}

/// The JSON state of the first versions, its positions inside, and one
/// without an allowlist (the kernel's is adopted then).
#[test]
fn a_json_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let st = sample();
    std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
    assert_eq!(stored(&path), sorted(st.clone()));
    all_moved_aside(&path);
    let mut older = st;
    older.allowed = None;
    std::fs::write(&path, serde_json::to_vec(&older).unwrap()).unwrap();
    let got = stored(&path);
    assert_eq!(got.allowed, None);
    assert_eq!(got.bans.len(), 3);
}

/// A positions file or a journal alone is laid over what the database
/// holds; the journal's changes come last, in order.
#[test]
fn a_positions_file_and_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut kept = ban("192.0.2.1/32", Some("crowdsec"));
    kept.expires_mono = None;
    Store::open(&path)
        .unwrap()
        .write(&Batch {
            bans: vec![
                ban("192.0.2.1/32", None),
                kept.clone(),
                ban("192.0.2.2/32", None),
            ],
            positions: vec![("/a".into(), Some(at(1))), ("/b".into(), Some(at(2)))],
            ..Default::default()
        })
        .unwrap();
    state::save_positions(&path, &BTreeMap::from([("/b".into(), at(20))])).unwrap();
    {
        let mut j = journal::lock(&path).unwrap();
        for change in [
            journal::Change::Ban {
                net: "192.0.2.1".into(),
                expires_at: Some(77),
                all_ports: false,
            },
            journal::Change::Unban {
                net: "192.0.2.2/32".into(),
            },
            journal::Change::Allow {
                net: "10.0.8.0/24".into(),
            },
        ] {
            j.append(&change).unwrap();
        }
    }
    let imported = Store::open(&path).unwrap().imported().cloned().unwrap();
    assert_eq!((imported.bans, imported.journaled), (0, 3));
    let st = stored(&path);
    let bans: Vec<(&str, &str, Option<i64>)> = st
        .bans
        .iter()
        .map(|b: &SavedBan| (b.net.as_str(), &*b.jail, b.expires_at))
        .collect();
    assert_eq!(
        bans,
        [
            ("192.0.2.1/32", "manual", Some(77)),
            ("192.0.2.1/32", "crowdsec", kept.expires_at)
        ]
    );
    assert_eq!(
        st.positions,
        BTreeMap::from([("/a".into(), at(1)), ("/b".into(), at(20))])
    );
    assert_eq!(st.allowed, Some(vec!["10.0.8.0/24".into()]));
    all_moved_aside(&path);
}

/// A state damaged part way: what came before the damage is taken in, the
/// file is moved aside as the daemon moved it (never deleted).
#[test]
fn a_damaged_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    state::save(&path, &sample()).unwrap();
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 60]).unwrap();
    let imported = Store::open(&path).unwrap().imported().cloned().unwrap();
    assert_eq!(imported.bans, 2);
    assert!(imported.files.is_empty());
    assert!(std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("state.json.corrupt-")));
}
