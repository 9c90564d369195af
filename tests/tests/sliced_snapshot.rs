//! The snapshot the daemon writes while it runs, a slice of its tables per
//! step of the loop (`bans::sliced`), while bans are made, lifted and
//! widened between the steps: the file read back, with the change log's
//! lines written since the snapshot began laid over it (as a start reads
//! them), holds every ban and count the tables hold at the end.
use anyhow::{anyhow, Result};
use sipguard::{
    bans::{changes::Change, remote::RemoteBan, state, BanManager, Scope},
    kernel::maps::KernelMaps,
    store::{legacy::snapshot, records::State},
};
use sipguard_tests::kernel::TestProgram;
use std::{net::Ipv4Addr, time::Duration};

/// The `i`th address of the test's range (10.0.0.0/8: never routed here).
fn v4(i: u32) -> ipnet::IpNet {
    ipnet::IpNet::from(std::net::IpAddr::from(Ipv4Addr::from(0x0a00_0000 + i)))
}

const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

/// Every ban and count of a state, as text to compare: times are left out
/// (a remote ban's start is the time of its writing), but whether a ban
/// ends is kept (a ban widened to permanent must stay so).
fn view(state: &State) -> (Vec<String>, Vec<String>) {
    let mut bans: Vec<String> = state
        .bans
        .iter()
        .map(|b| {
            let count = match b.origin {
                None => state.ban_counts.get(&b.net).copied().unwrap_or(b.count),
                Some(_) => b.count,
            };
            format!(
                "{} {:?} {} {} {} ends={} all={} only={} count={}",
                b.net,
                b.origin,
                b.jail,
                b.reason,
                b.line,
                b.expires_at.is_some(),
                b.all_ports,
                b.ports_only,
                count
            )
        })
        .collect();
    bans.sort();
    // A start puts a banned network's count into its ban (`take_counts`):
    // only the others' are counts of their own.
    let banned: std::collections::HashSet<&str> = state
        .bans
        .iter()
        .filter(|b| b.origin.is_none())
        .map(|b| b.net.as_str())
        .collect();
    let mut counts: Vec<String> = state
        .counts()
        .filter(|(net, n, _)| *n > 0 && !banned.contains(net.as_str()))
        .map(|(net, n, _)| format!("{net} {n}"))
        .collect();
    counts.sort();
    (bans, counts)
}

/// What only `got` has, and what only `want` has.
fn differences(got: &[String], want: &[String]) -> (Vec<String>, Vec<String>) {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    (only(got, want), only(want, got))
}

/// What a start makes of a snapshot and the change log after it.
fn lay_over(state: &mut State, log: Vec<Change>) {
    for change in log {
        match change {
            Change::Net { net, bans } => {
                state.bans.retain(|b| b.net != net);
                state.bans.extend(bans);
            }
            Change::Count { net, n: 0, .. } => {
                state.ban_counts.remove(&net);
                state.ban_counted_at.remove(&net);
            }
            Change::Count { net, n, at } => state.set_count((net, n, at)),
            Change::Meta { .. } | Change::Clock { .. } => {}
        }
    }
}

#[test]
fn a_snapshot_written_in_slices_while_bans_change_holds_them_all() -> Result<()> {
    let t = TestProgram::load()?;
    let mut m = BanManager::new(KernelMaps::open(t.pin())?);
    // 20 000 bans of this box at even addresses (several slices), 3 000
    // of CrowdSec's over a part of them, and counts of bans lifted.
    const N: u32 = 20_000;
    for i in 0..N {
        let line = format!("SIP auth failure from ip {}", v4(2 * i).addr());
        m.ban(v4(2 * i), "fs", HOUR, "3 failures", &line, Scope::Ports)?;
    }
    let remote = |reason: &str| RemoteBan {
        origin: "crowdsec".into(),
        expires_at_ns: None,
        scope: Scope::PortsOnly,
        reason: reason.into(),
    };
    for i in 0..3_000 {
        m.remote_ban(v4(2 * (N - 3_000 + i)), remote("ssh-bf"))?;
    }
    for i in 0..1_000 {
        m.unban(v4(2 * i))?;
    }
    // Every change so far is in the log the snapshot covers.
    m.take_changes(usize::MAX);
    let expected_before = m.len();

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.json");
    let (tx, rx) = std::sync::mpsc::channel();
    let header = State {
        version: sipguard::store::records::VERSION,
        ..Default::default()
    };
    let mut writing = m.start_sliced(1, path.clone(), &header, move |e| {
        let _ = tx.send(e);
    })?;
    let mut step = 0u32;
    // At the finish, as the daemon does: every change since the start goes
    // to the log (here, kept aside), and the tables as they are then.
    let mut at_finish: Option<(Vec<Change>, State)> = None;
    let done = loop {
        let event = rx.recv_timeout(Duration::from_secs(60))?;
        if let Some(done) = writing.on_event(event, &m)? {
            break done;
        }
        if writing.ready_to_finish() {
            let logged = m.take_changes(usize::MAX);
            let mut whole = Vec::new();
            m.write_snapshot(&mut whole, &header)?;
            at_finish = Some((logged, snapshot::read(&whole)?));
            let (tx, rx) = std::sync::mpsc::channel();
            tx.send(true)?;
            writing.finish(rx)?;
        }
        // Between two slices, what the loop's other work does: new bans
        // among the old ones, bans lifted and widened, early and late in
        // the order, a new name, CrowdSec's lifted and new.
        step += 1;
        let new = v4(2 * ((step * 7_919) % N) + 1);
        m.ban(new, "fs", HOUR, "3 failures", "a later line", Scope::Ports)?;
        m.unban(v4(2 * ((step * 104_729) % N)))?;
        let widened = v4(2 * (N - 1 - (step * 31) % N));
        m.ban(widened, "fs", None, "a new reason", "", Scope::AllPorts)?;
        m.remote_unban(v4(2 * (N - 3_000 + (step * 13) % 3_000)), "crowdsec")?;
        m.remote_ban(v4(2 * ((step * 17) % N)), remote("sip-bf"))?;
    };
    done.map_err(|e| anyhow!(e))?;
    writing.stop();
    assert!(
        step >= 8,
        "only {step} steps: the tables were not written in slices"
    );

    let mut restored = state::load(&path)?;
    assert!(
        restored.bans.len() >= expected_before - step as usize,
        "{} bans in the snapshot",
        restored.bans.len()
    );
    // What is on disk the moment the snapshot is in place (a crash then):
    // the snapshot with the log as written at its finish holds the tables
    // as they were at the finish.
    let (logged, then) = at_finish.expect("finished");
    lay_over(&mut restored, logged);
    let (bans, counts) = view(&restored);
    let (want_bans, want_counts) = view(&then);
    assert_eq!(
        differences(&bans, &want_bans),
        (vec![], vec![]),
        "bans at the finish"
    );
    assert_eq!(
        differences(&counts, &want_counts),
        (vec![], vec![]),
        "counts at the finish"
    );
    // And with what the log took after: the tables now.
    lay_over(&mut restored, m.take_changes(usize::MAX));
    let mut whole = Vec::new();
    m.write_snapshot(&mut whole, &header)?;
    let now = snapshot::read(&whole)?;
    let (bans, counts) = view(&restored);
    let (want_bans, want_counts) = view(&now);
    assert_eq!(differences(&bans, &want_bans), (vec![], vec![]), "bans");
    assert_eq!(
        differences(&counts, &want_counts),
        (vec![], vec![]),
        "counts"
    );
    assert!(!want_counts.is_empty());
    Ok(())
}

/// A snapshot stopped half way (the daemon stopping, or saving on the loop
/// instead) leaves the state file that was there.
#[test]
fn a_snapshot_stopped_half_way_leaves_the_last_one() -> Result<()> {
    let t = TestProgram::load()?;
    let mut m = BanManager::new(KernelMaps::open(t.pin())?);
    for i in 0..20_000 {
        m.ban(v4(i), "fs", HOUR, "3 failures", "a line", Scope::Ports)?;
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.json");
    let before = State {
        version: sipguard::store::records::VERSION,
        ..Default::default()
    };
    state::save(&path, &before)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut writing = m.start_sliced(2, path.clone(), &before, move |e| {
        let _ = tx.send(e);
    })?;
    for _ in 0..3 {
        let event = rx.recv_timeout(Duration::from_secs(60))?;
        assert!(writing.on_event(event, &m)?.is_none());
        assert!(!writing.ready_to_finish());
    }
    writing.stop();
    assert!(state::load(&path)?.bans.is_empty());
    Ok(())
}
