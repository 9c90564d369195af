//! Many bans at once (`BanManager::ban_all`, a burst of log lines): the
//! same bans, counts, kernel entries and change-log lines as made one by
//! one with `ban`, with the new single IPv4 addresses written in batches.
use anyhow::Result;
use ipnet::IpNet;
use sipguard::bans::{changes::Change, remote::RemoteBan, BanManager, Order, Scope};
use sipguard::kernel::{maps::KernelMaps, program::Capacity};
use sipguard_tests::kernel::TestProgram;
use std::{collections::BTreeMap, time::Duration};

fn net(s: &str) -> IpNet {
    sipguard::addr::parse_net(s).unwrap()
}

/// A burst's orders: over two batches of new addresses, with what a batch
/// must not take among them (a second failure of one address, one banned
/// by the operator or by CrowdSec, an IPv6 address, a range).
fn orders() -> Vec<(IpNet, Option<Duration>, Scope)> {
    let hour = Some(Duration::from_secs(3600));
    let mut o: Vec<_> = (0..10_000u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x6440_0000 + i);
            (IpNet::from(std::net::IpAddr::V4(ip)), hour, Scope::Ports)
        })
        .collect();
    o.insert(10, (o[3].0, Some(Duration::from_secs(7200)), Scope::Ports));
    o.insert(20, (net("192.0.2.1"), hour, Scope::Ports));
    o.insert(8200, (net("192.0.2.2"), hour, Scope::AllPorts));
    o.insert(30, (net("2001:db8::1"), hour, Scope::Ports));
    o.insert(40, (net("198.51.100.0/24"), hour, Scope::Ports));
    o.insert(9000, (o[5000].0, hour, Scope::AllPorts));
    o
}

/// A ban manager on a fresh program, with 192.0.2.1 banned for good by
/// the operator and 192.0.2.2 by CrowdSec.
fn manager(t: &TestProgram) -> Result<BanManager> {
    let mut bans = BanManager::new(KernelMaps::open(t.pin())?);
    bans.ban(net("192.0.2.1"), "manual", None, "r", "", Scope::Ports)?;
    let crowdsec = RemoteBan {
        origin: "crowdsec".into(),
        expires_at_ns: None,
        scope: Scope::Ports,
        reason: "r".into(),
    };
    bans.remote_ban(net("192.0.2.2"), crowdsec)?;
    bans.take_changes(usize::MAX);
    Ok(bans)
}

/// What a ban manager and its maps hold, without the times (two managers
/// ban at different instants): per network, its ban (jail, count, scope,
/// line, whether it ends) and the kernel's flags and whether it ends; the
/// change log's lines; the bans made per jail.
type Held = (
    BTreeMap<IpNet, (String, u32, Scope, String, bool, u32, bool)>,
    Vec<String>,
    BTreeMap<String, u64>,
);

fn held(bans: &mut BanManager, maps: &KernelMaps) -> Result<Held> {
    let mut table = BTreeMap::new();
    for (n, b) in bans.iter() {
        let entry = maps.ban_entry(*n)?.expect("in the kernel");
        table.insert(
            *n,
            (
                b.jail.to_owned(),
                bans.ban_count(n),
                b.scope,
                b.line.to_owned(),
                b.expires_at_ns.is_some(),
                entry.flags,
                entry.expires_at_ns != 0,
            ),
        );
    }
    let mut lines: Vec<String> = bans
        .take_changes(usize::MAX)
        .into_iter()
        .map(|c| match c {
            Change::Net { net, bans } => format!(
                "net {net}: {:?}",
                bans.iter()
                    .map(|b| (
                        &b.jail,
                        b.count,
                        &b.line,
                        b.all_ports,
                        b.expires_at.is_some()
                    ))
                    .collect::<Vec<_>>()
            ),
            Change::Count { net, n, .. } => format!("count {net}: {n}"),
            other => format!("{other:?}"),
        })
        .collect();
    lines.sort();
    let made = bans.total_by_jail.clone().into_iter().collect();
    Ok((table, lines, made))
}

#[test]
fn a_burst_makes_what_one_by_one_makes() -> Result<()> {
    let orders = orders();
    let line = |i: usize| format!("line {i}");
    // One by one.
    let one = TestProgram::load()?;
    let mut by_one = manager(&one)?;
    let mut one_results = Vec::new();
    for (i, (n, d, s)) in orders.iter().enumerate() {
        one_results.push(by_one.ban(*n, "fs", *d, "1 failures", &line(i), *s)?);
    }
    // At once.
    let all = TestProgram::load()?;
    let mut at_once = manager(&all)?;
    let lines: Vec<String> = (0..orders.len()).map(line).collect();
    let burst: Vec<Order> = orders
        .iter()
        .zip(&lines)
        .map(|((n, d, s), l)| Order {
            net: *n,
            jail: "fs",
            duration: *d,
            reason: "1 failures",
            line: l,
            scope: *s,
        })
        .collect();
    let all_results: Vec<bool> = at_once.ban_all(&burst).into_iter().collect::<Result<_>>()?;
    assert_eq!(all_results, one_results);
    assert!(all_results.iter().filter(|made| **made).count() > 10_000);
    let (one_held, all_held) = (
        held(&mut by_one, &one.maps)?,
        held(&mut at_once, &all.maps)?,
    );
    assert_eq!(all_held.0.len(), 10_004, "every network, once");
    // The first difference, if any (the whole would be 10 000 lines).
    let (table, lines) = (&one_held.0, &one_held.1);
    if let Some((n, held)) = all_held.0.iter().find(|(n, h)| table.get(n) != Some(h)) {
        panic!("{n}: at once {held:?}, one by one {:?}", table.get(n));
    }
    assert_eq!(all_held.1.len(), lines.len(), "change-log lines");
    if let Some((at_once, by_one)) = all_held.1.iter().zip(lines).find(|(a, b)| a != b) {
        panic!("change-log line at once {at_once:?}, one by one {by_one:?}");
    }
    assert_eq!(all_held.2, one_held.2, "bans made per jail");
    // Twice the same address: its count is 2, as one by one.
    assert_eq!(at_once.ban_count(&orders[3].0), 2);
    // Each ban has an id of its own (its drop counters' slot).
    let ids: std::collections::HashSet<u64> = all.maps.bans()?.iter().map(|b| b.entry.id).collect();
    assert_eq!(ids.len(), 10_004);
    Ok(())
}

/// A map that fills up in the middle of a batch: the bans it took are
/// made, each of the others fails with the map's error, as one by one.
#[test]
fn a_full_map_fails_the_bans_it_cannot_take() -> Result<()> {
    let t = TestProgram::load_with(Capacity {
        bans: 4,
        allowed: 4,
    })?;
    let mut bans = BanManager::new(KernelMaps::open(t.pin())?);
    // More than a batch (8192): every batch after the map fills fails
    // whole, and each of its bans must still fail alone, with its error.
    let nets: Vec<IpNet> = (1..=10_000u32)
        .map(|i| net(&format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)))
        .collect();
    let burst: Vec<Order> = nets
        .iter()
        .map(|n| Order {
            net: *n,
            jail: "fs",
            duration: None,
            reason: "r",
            line: "",
            scope: Scope::Ports,
        })
        .collect();
    let results = bans.ban_all(&burst);
    let made: Vec<bool> = results.iter().map(|r| matches!(r, Ok(true))).collect();
    assert_eq!(made.iter().filter(|m| **m).count(), 4);
    assert!(made[..4].iter().all(|m| *m));
    for r in &results[4..] {
        let e = r.as_ref().unwrap_err().to_string();
        assert!(e.contains("blocklist is full"), "{e}");
    }
    assert_eq!(bans.len(), 4);
    for n in &nets[..4] {
        assert!(bans.is_banned(n) && t.maps.ban_entry(*n)?.is_some());
    }
    for n in nets[4..].iter().step_by(97) {
        assert!(!bans.is_banned(n) && t.maps.ban_entry(*n)?.is_none());
    }
    Ok(())
}
