//! End to end, prefix aggregation (`aggregate_after`): failure lines of
//! three addresses of one /24 make the daemon ban the /24, which drops a
//! fourth address that never failed; two addresses make nothing; a /24
//! holding a protected address is never made (and the log says why, once);
//! the prefix ban survives a restart and a reboot, `list` shows its member
//! count, and `unban` lifts it without lifting the members; a reload lifts
//! the prefixes the new configuration would not make. A packet jail
//! with aggregation is a configuration error.
use anyhow::Result;
use sipguard_tests::{
    fixture::{append, failures, wait_until, Setup, FREESWITCH_JAIL},
    netns::*,
    packet::routable_udp4,
    Sandbox,
};
use std::{net::UdpSocket, time::Duration};

/// The FreeSWITCH jail (3 failures within a minute ban for an hour), and
/// 3 banned members of a /24 ban the /24.
fn config(before: &str) -> String {
    format!("{before}{FREESWITCH_JAIL}aggregate_after = 3\n")
}

const PREFIX: &str = "198.51.100.0";
const MEMBERS: [&str; 3] = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
/// In the /24, never failed.
const FOURTH: &str = "198.51.100.4";

/// How many of `n` datagrams forged from `src` reach `to`'s socket (the
/// address is not the client's: the frames are written on its veth).
fn forged_reach(s: &Setup, raw: &RawSocket, src: &str, to: &UdpSocket, n: usize) -> Result<usize> {
    let macs = s.pair.macs()?;
    let dst = to.local_addr()?;
    let (std::net::IpAddr::V4(src), std::net::IpAddr::V4(dst_ip)) = (src.parse()?, dst.ip()) else {
        anyhow::bail!("IPv4 only");
    };
    let frame = routable_udp4(
        macs,
        src.octets(),
        dst_ip.octets(),
        dst.port(),
        b"OPTIONS sip:probe SIP/2.0\r\n\r\n",
    );
    to.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    while to.recv(&mut buf).is_ok() {} // earlier probes
    for _ in 0..n {
        raw.send(&frame)?;
    }
    let mut got = 0;
    while got < n && to.recv(&mut buf).is_ok() {
        got += 1;
    }
    Ok(got)
}

/// `list --json`'s row for `address`/`prefix`, if any.
fn row(s: &Setup, address: &str, prefix: u8) -> Result<Option<serde_json::Value>> {
    Ok(s.json(&["list"])?
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["address"] == address && b["prefix"] == prefix)
        .cloned())
}

/// Whether the pinned `banned_v4` trie holds exactly 198.51.100.0/24.
fn in_trie(s: &Setup) -> Result<bool> {
    let maps = sipguard::kernel::maps::KernelMaps::open(&s.sb.pin)?;
    Ok(maps.ban_entry("198.51.100.0/24".parse()?)?.is_some())
}

/// Appends 3 failures of each of `ips` and waits until each is banned.
fn fail(s: &Setup, ips: &[&str]) -> Result<()> {
    for ip in ips {
        append(&s.sb, &failures(ip, 3))?;
    }
    wait_until(10, "the members are banned", || {
        let banned = s.banned()?;
        Ok(ips.iter().all(|ip| banned.iter().any(|b| b == ip)))
    })
}

#[test]
fn three_members_ban_their_24_which_drops_a_fourth_and_stays() -> Result<()> {
    let mut s = Setup::new(&config(""))?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let raw = s.pair.forger()?;
    assert_eq!(
        forged_reach(&s, &raw, FOURTH, &sip, 10)?,
        10,
        "the path works"
    );

    // N - 1 members: no prefix (the aggregation runs as the member is banned).
    fail(&s, &MEMBERS[..2])?;
    assert_eq!(row(&s, PREFIX, 24)?, None, "{}", s.daemon.log());
    assert_eq!(forged_reach(&s, &raw, FOURTH, &sip, 10)?, 10);

    // The third: the /24 is in the kernel's range trie, and `list` shows
    // it with its jail and member count.
    fail(&s, &MEMBERS[2..])?;
    assert!(in_trie(&s)?, "{}", s.daemon.log());
    let prefix = row(&s, PREFIX, 24)?.expect("the /24 is banned");
    assert_eq!(prefix["jail"], "freeswitch", "{prefix}");
    let reason = prefix["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("aggregated from 3 members"), "{prefix}");
    let left = prefix["expires_in_secs"].as_u64().unwrap_or(0);
    assert!((3500..=3600).contains(&left), "the members' hour: {prefix}");
    assert_eq!(
        forged_reach(&s, &raw, FOURTH, &sip, 10)?,
        0,
        "the fourth is dropped"
    );
    let table = s.cli(&["list"])?;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("198.51.100.0/24") && l.contains("aggregated from 3 members")),
        "{table}"
    );
    assert!(
        s.daemon
            .log()
            .contains("[freeswitch] banned 198.51.100.0/24 for"),
        "{}",
        s.daemon.log()
    );
    // Members keep their own bans.
    for m in MEMBERS {
        assert!(row(&s, m, 32)?.is_some(), "{m}");
    }

    // A restart, then a reboot (pins gone, only the state file left): the
    // prefix ban is there with its reason, and still drops.
    s.restart()?;
    assert!(row(&s, PREFIX, 24)?.is_some_and(|r| r["reason"] == reason));
    s.reboot()?;
    let again = row(&s, PREFIX, 24)?.expect("restored after a reboot");
    assert_eq!(again["reason"], reason, "{again}");
    assert!(again["expires_in_secs"].as_u64().unwrap_or(0) <= left);
    assert_eq!(forged_reach(&s, &raw, FOURTH, &sip, 10)?, 0);

    // `unban PREFIX` lifts the prefix, not its members.
    s.cli(&["unban", "198.51.100.0/24"])?;
    assert_eq!(row(&s, PREFIX, 24)?, None);
    assert!(!in_trie(&s)?);
    for m in MEMBERS {
        assert!(row(&s, m, 32)?.is_some(), "{m} stays banned");
    }
    assert_eq!(forged_reach(&s, &raw, FOURTH, &sip, 10)?, 10);
    Ok(())
}

#[test]
fn a_24_holding_a_protected_address_is_never_made() -> Result<()> {
    let s = Setup::new(&config("ignoreip = [\"198.51.100.200\"]\n"))?;
    fail(&s, &MEMBERS)?;
    // A fourth member: still no prefix, and nothing more said.
    fail(&s, &[FOURTH])?;
    assert_eq!(row(&s, PREFIX, 24)?, None);
    let said = "[freeswitch] not aggregating 3 banned members into 198.51.100.0/24: \
                it would cover 198.51.100.200 (ignoreip)";
    let log = s.daemon.log();
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert_eq!(log.matches("not aggregating").count(), 1, "{log}");

    // The server's own /24 (10.213.0.1 is this host's address).
    fail(&s, &[CLIENT_V4, OTHER_V4, "10.213.0.4"])?;
    assert_eq!(row(&s, "10.213.0.0", 24)?, None);
    wait_until(5, "the refusal is logged", || {
        Ok(s.daemon
            .log()
            .contains("into 10.213.0.0/24: it would cover 10.213.0.1 (an address of this host)"))
    })?;
    Ok(())
}

/// IPv6 offenders are banned as their /64 (`ipv6_prefix`): three /64s of
/// one /56 make the /56 (the IPv6 default: 256 /64s, as a /24 holds 256 addresses), in the `banned_v6` trie.
#[test]
fn three_ipv6_64s_ban_their_56() -> Result<()> {
    let s = Setup::new(&config(""))?;
    for ip in ["2001:db8:6:1::1", "2001:db8:6:2::1"] {
        append(&s.sb, &failures(ip, 3))?;
    }
    wait_until(10, "the members are banned as /64s", || {
        Ok(row(&s, "2001:db8:6:1::", 64)?.is_some() && row(&s, "2001:db8:6:2::", 64)?.is_some())
    })?;
    assert_eq!(row(&s, "2001:db8:6::", 56)?, None);
    append(&s.sb, &failures("2001:db8:6:3::1", 3))?;
    wait_until(10, "the /56 is banned", || {
        Ok(row(&s, "2001:db8:6::", 56)?.is_some())
    })?;
    let prefix = row(&s, "2001:db8:6::", 56)?.expect("banned");
    assert!(
        prefix["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("aggregated from 3 members")),
        "{prefix}"
    );
    let maps = sipguard::kernel::maps::KernelMaps::open(&s.sb.pin)?;
    let entry = maps
        .ban_entry("2001:db8:6::/56".parse()?)?
        .expect("in the trie");
    // Protected ports only: a prefix is an inference from its members.
    assert_ne!(entry.flags & common::BAN_PORTS_ONLY, 0, "{entry:?}");
    Ok(())
}

/// Fewer than N distinct addresses: the same address banned, unbanned and
/// banned again is one member.
#[test]
fn one_address_banned_twice_is_one_member() -> Result<()> {
    let s = Setup::new(&config(""))?;
    fail(&s, &MEMBERS[..1])?;
    s.cli(&["unban", MEMBERS[0]])?;
    fail(&s, &MEMBERS[..2])?;
    assert_eq!(row(&s, PREFIX, 24)?, None, "two addresses, three bans");
    Ok(())
}

/// A reload lifts the prefix bans the jail's new configuration would not
/// make: another IPv6 width lifts the /56 (the /24 stays), and
/// `aggregate_after` taken out lifts the /24; members and an operator's
/// ban of a /24 stay.
#[test]
fn a_reload_lifts_the_prefixes_the_new_configuration_would_not_make() -> Result<()> {
    let s = Setup::new(&config(""))?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let raw = s.pair.forger()?;
    s.cli(&["ban", "203.0.113.0/24", "--for", "1h"])?;
    fail(&s, &MEMBERS)?;
    for ip in ["2001:db8:6:1::1", "2001:db8:6:2::1", "2001:db8:6:3::1"] {
        append(&s.sb, &failures(ip, 3))?;
    }
    wait_until(10, "the /24 and the /56 are banned", || {
        Ok(row(&s, PREFIX, 24)?.is_some() && row(&s, "2001:db8:6::", 56)?.is_some())
    })?;

    // IPv6 prefixes are /48s now: the /56 is not one of them.
    s.sb.write_config(&format!("{}aggregate_v6 = 48\n", config("")))?;
    s.cli(&["reload"])?;
    assert_eq!(row(&s, "2001:db8:6::", 56)?, None, "{}", s.daemon.log());
    assert!(row(&s, PREFIX, 24)?.is_some(), "the /24 is still made so");
    assert!(s.daemon.log().contains(
        "[freeswitch] lifted the prefix ban of 2001:db8:6::/56: the jail's configuration no longer aggregates it"
    ));

    // Aggregation off: the /24 goes, from the kernel too.
    s.sb.write_config(FREESWITCH_JAIL)?;
    s.cli(&["reload"])?;
    assert_eq!(row(&s, PREFIX, 24)?, None, "{}", s.daemon.log());
    assert!(!in_trie(&s)?);
    assert_eq!(forged_reach(&s, &raw, FOURTH, &sip, 10)?, 10);
    for m in MEMBERS {
        assert!(row(&s, m, 32)?.is_some(), "{m} stays banned");
    }
    assert!(
        row(&s, "2001:db8:6:1::", 64)?.is_some(),
        "a /64 member stays"
    );
    assert!(
        row(&s, "203.0.113.0", 24)?.is_some(),
        "the operator's /24 stays"
    );
    Ok(())
}

#[test]
fn packet_jails_with_aggregation_do_not_start() -> Result<()> {
    for text in [
        "[flood]\naggregate_after = 3\n".to_owned(),
        format!("{FREESWITCH_JAIL}\n[jails.sip-flood]\naggregate_after = 3\n"),
    ] {
        let sb = Sandbox::new(&text)?;
        let pair = Pair::new()?;
        let err =
            sipguard_tests::daemon::refused_run(&pair.server, &sb, &["--iface", &pair.server_if])?;
        assert!(
            err.contains("sipguard.toml")
                && err.contains("aggregate_after")
                && err.contains("a packet-evidence jail cannot aggregate")
                && err.contains("forger chooses"),
            "{err}"
        );
        assert!(!pair.server_has_xdp()?, "nothing attached");
    }
    Ok(())
}
