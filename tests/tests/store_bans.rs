//! The ban manager's bans through the store and back: a state restored
//! into the maps, written to the database whole (`BanManager::whole_batch`),
//! read back into another ban manager (as a restart after a reboot would)
//! with every ban, origin, scope, end and count as it was.
use anyhow::Result;
use sipguard::{
    bans::{BanManager, InKernel},
    kernel::maps::KernelMaps,
    store::{records::State, SavedBan, Store},
};
use sipguard_tests::kernel::TestProgram;

fn saved(net: &str, origin: Option<&str>, count: u32) -> SavedBan {
    let wall = chrono::Utc::now().timestamp_millis();
    SavedBan {
        net: net.into(),
        jail: origin.unwrap_or("fs").into(),
        banned_at: wall - 1_000,
        expires_at: Some(wall + 3_600_000),
        expires_mono: None,
        reason: "3 failures in 10m".into(),
        line: "a matched line".into(),
        all_ports: origin.is_some(),
        ports_only: false,
        origin: origin.map(Into::into),
        count,
    }
}

#[test]
fn bans_go_through_the_store_and_back() -> Result<()> {
    let state = State {
        bans: vec![
            saved("192.0.2.1/32", None, 2),
            saved("192.0.2.1/32", Some("crowdsec"), 0),
            saved("2001:db8::/64", None, 1),
            saved("198.51.100.0/24", Some("redis:box2"), 0),
        ],
        ban_counts: [("203.0.113.9/32".to_owned(), 4)].into(),
        ..Default::default()
    };
    let t = TestProgram::load()?;
    let mut first = BanManager::new(KernelMaps::open(t.pin())?);
    let before = first.restore(&state)?;
    let dir = tempfile::tempdir()?;
    let mut store = Store::open_db(&dir.path().join("state.db"))?;
    store.write(&first.whole_batch())?;

    // A reboot: empty maps, every ban from the store.
    let t = TestProgram::load()?;
    let mut second = BanManager::new(KernelMaps::open(t.pin())?);
    let r = store.restore()?;
    let header = r.header.clone();
    let restored =
        second.restore_from(&header, (r.bans_len, r.bans()), r.counts(), InKernel::Empty)?;
    r.finish()?;
    assert_eq!(restored, before);
    let view = |m: &BanManager| {
        let mut v: Vec<String> = m
            .iter()
            .map(|(net, b)| format!("{net} {} {:?} {}", b.jail, b.scope, b.line))
            .chain(
                m.remote()
                    .iter()
                    .map(|(net, b)| format!("{net} {} {:?}", b.origin, b.scope)),
            )
            .collect();
        v.sort();
        v
    };
    assert_eq!(view(&first), view(&second));
    for net in ["192.0.2.1", "2001:db8::", "203.0.113.9"] {
        let net = sipguard::addr::parse_net(net)?;
        assert_eq!(first.ban_count(&net), second.ban_count(&net), "{net}");
    }
    assert_eq!(
        second.ban_count(&sipguard::addr::parse_net("192.0.2.1")?),
        2
    );
    Ok(())
}
