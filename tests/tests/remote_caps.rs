//! Remote bans bounded (`[fleet]`): a hostile feed (an APIBAN stand-in on
//! the test namespace, answering what an attacker who owns it would) offers
//! /8s, ranges too wide, more address space and more entries than the caps
//! allow. Only what the caps allow reaches the kernel maps, the rest is
//! counted (status, metrics) and told in the log once, a log-driven ban
//! still gets in, and `status` keeps answering. Then the ban manager's kept
//! counts against a walk, on real kernel maps.
use anyhow::Result;
use ipnet::IpNet;
use sipguard::bans::{remote::RemoteBan, BanManager, Scope};
use sipguard_tests::{
    fixture::{append, failures, wait_until, Setup, FREESWITCH_JAIL},
    http::Server,
    kernel::TestProgram,
};
use std::{collections::BTreeMap, time::Duration};

/// Per origin at most 100 bans and two /16s' worth of IPv4 addresses (plus
/// some); all remote origins together at most 40 bans.
const CAPS: &str = r#"
[fleet]
max_bans_per_origin = 100
max_ipv4_addresses_per_origin = 131200
max_remote_bans = 40
"#;

/// What the hostile feed hands in, and what the caps make of it.
fn hostile_page() -> (Vec<String>, Vec<String>) {
    let mut offered: Vec<String> = [
        "44.0.0.0/8",      // width
        "45.0.0.0/8",      // width
        "46.0.0.0/8",      // width
        "198.18.0.0/15",   // width
        "2001:db8::/24",   // width
        "172.20.0.0/16",   // fits
        "172.21.0.0/16",   // fits
        "172.22.0.0/16",   // over the origin's address space
        "2001:db8:1::/48", // fits
    ]
    .map(String::from)
    .to_vec();
    // 60 single addresses: 37 fit beside the three networks above.
    offered.extend((0..60).map(|i| format!("203.0.113.{i}")));
    let mut allowed: Vec<String> = ["172.20.0.0/16", "172.21.0.0/16", "2001:db8:1::/48"]
        .map(String::from)
        .to_vec();
    allowed.extend((0..37).map(|i| format!("203.0.113.{i}/32")));
    (offered, allowed)
}

fn apiban_bans(s: &Setup) -> Result<Vec<String>> {
    let list = s.json(&["list"])?;
    let mut out: Vec<String> = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|b| b["jail"] == "apiban")
        .map(|b| format!("{}/{}", b["address"].as_str().unwrap_or("?"), b["prefix"]))
        .collect();
    out.sort();
    Ok(out)
}

#[test]
fn a_hostile_feed_gets_only_what_the_caps_allow() -> Result<()> {
    let mut s = Setup::new(&format!("{CAPS}{FREESWITCH_JAIL}"))?;
    let (offered, allowed) = hostile_page();
    let page = serde_json::json!({ "ipaddress": offered, "ID": "200" }).to_string();
    let feed = Server::start(
        &s.pair.server,
        Box::new(move |req| {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            match body["id"].as_str() {
                Some("100") => (200, page.clone()),
                _ => (404, r#"{"ipaddress":["no new bans"],"ID":"none"}"#.into()),
            }
        }),
    )?;
    s.sb.write_config(&format!(
        "{CAPS}[apiban]\nkey = \"k\"\nurl = \"{}\"\ninterval = \"1m\"\n{FREESWITCH_JAIL}",
        feed.url("/api/")
    ))?;
    s.cli(&["reload"])?;
    let mut expected = allowed;
    expected.sort();
    wait_until(10, "the feed's allowed part is in force", || {
        Ok(apiban_bans(&s)?.len() >= expected.len())
    })
    .map_err(|e| e.context(format!("{:?}\n{}", s.banned(), s.daemon.log())))?;
    assert_eq!(apiban_bans(&s)?, expected);
    for wide in [
        "44.0.0.0/8",
        "198.18.0.0/15",
        "172.22.0.0/16",
        "203.0.113.59",
    ] {
        assert!(!s.banned()?.iter().any(|b| b == wide), "{wide} banned");
    }

    // Refusals are counted, not errors: 5 too wide, 1 over the address
    // space, 23 over the room of all remote origins.
    let st = s.json(&["status"])?;
    let apiban = &st["remote"]["apiban"];
    assert_eq!(apiban["bans"], 40, "{st}");
    assert_eq!(apiban["over_cap"], 29, "{st}");
    assert_eq!(apiban["ipv4_addresses"], 2 * 65_536 + 37, "{st}");
    assert_eq!(apiban["ipv6_64s"], 65_536, "{st}");
    assert_eq!(
        s.metric("sipguard_bans_refused_total{jail=\"apiban\",cause=\"over_cap\"}")?,
        Some(29.0)
    );
    assert_eq!(
        s.metric("sipguard_active_bans{jail=\"apiban\",family=\"ipv4\"}")?,
        Some(39.0)
    );
    // Told once, not once per entry.
    let told = s.daemon.log().matches("[apiban] refused to ban").count();
    assert_eq!(told, 1, "{}", s.daemon.log());

    // The remote origins are at their cap; a log-driven ban still gets in.
    append(&s.sb, &failures("192.0.2.50", 3))?;
    wait_until(10, "the log-driven ban is in force", || {
        Ok(s.banned()?.iter().any(|b| b == "192.0.2.50"))
    })?;
    // Status keeps answering, and the counts survive a restart.
    s.restart()?;
    assert_eq!(s.json(&["status"])?["remote"]["apiban"]["bans"], 40);
    assert_eq!(apiban_bans(&s)?, expected);
    Ok(())
}

/// The bans per (jail, family) and per (origin, family) the manager keeps
/// counted, against a walk of every ban, after thousands of random bans,
/// replacements, unbans, remote bans, unbans and resyncs on real maps.
#[test]
fn kept_counts_equal_a_walk_of_the_bans() -> Result<()> {
    let t = TestProgram::load()?;
    let mut bans = BanManager::new(sipguard::kernel::maps::KernelMaps::open(t.pin())?);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let jails = ["freeswitch", "manual", "sip-flood"];
    let origins = ["crowdsec", "apiban", "redis:a"];
    for step in 0..3_000u64 {
        let x = next();
        let net: IpNet = if x % 3 == 0 {
            format!("2001:db8:{:x}::/64", (x >> 8) % 50).parse()?
        } else {
            format!("192.0.2.{}/32", (x >> 8) % 120).parse()?
        };
        match (x >> 20) % 5 {
            0 | 1 => {
                let jail = jails[((x >> 30) % 3) as usize];
                let d = ((x >> 34) % 2 == 0).then_some(Duration::from_secs(60 + step));
                bans.ban(net, jail, d, "r", "", Scope::Ports)?;
            }
            2 => {
                bans.unban(net)?;
            }
            3 => {
                let ban = RemoteBan {
                    origin: origins[((x >> 30) % 3) as usize].into(),
                    expires_at_ns: None,
                    scope: Scope::Ports,
                    reason: "r".into(),
                };
                bans.remote_ban(net, ban)?;
            }
            _ if (x >> 30) % 10 == 0 => {
                bans.unban_all(net)?;
            }
            _ => {
                bans.remote_unban(net, origins[((x >> 30) % 3) as usize])?;
            }
        }
        if step % 100 == 0 {
            bans.prune_counts(0, Duration::ZERO);
            assert_eq!(kept(&bans), walked(&bans), "step {step}");
        }
    }
    assert_eq!(kept(&bans), walked(&bans));
    Ok(())
}

type Counts = BTreeMap<(String, &'static str), u64>;

fn family(net: &IpNet) -> &'static str {
    if net.addr().is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

fn kept(bans: &BanManager) -> Counts {
    let mut out = Counts::new();
    for (jail, f, n) in bans.counts_by_jail() {
        out.insert((jail.to_owned(), f), n);
    }
    for (origin, t) in bans.remote().tallies() {
        for (f, name) in sipguard::bans::FAMILIES.iter().enumerate() {
            if t.bans[f] > 0 {
                out.insert((origin.to_owned(), name), t.bans[f]);
            }
        }
    }
    out
}

fn walked(bans: &BanManager) -> Counts {
    let mut out = Counts::new();
    for (net, b) in bans.iter() {
        *out.entry((b.jail.to_owned(), family(net))).or_default() += 1;
    }
    for (net, b) in bans.remote().iter() {
        *out.entry((b.origin.to_owned(), family(net))).or_default() += 1;
    }
    out
}
