//! The jail's tests: counting failures into bans, and what is not one.
use super::*;

#[derive(serde::Deserialize)]
struct Jails {
    jails: BTreeMap<String, JailConfig>,
}

fn jail(toml: &str) -> Jail {
    let c: Jails = toml::from_str(toml).unwrap();
    let (name, j) = c.jails.iter().next().unwrap();
    Jail::new(name, j, StartAt::End, LogTz::Local).unwrap()
}

fn default_jail(name: &str) -> Jail {
    let c: Jails = toml::from_str(DEFAULT_JAILS).unwrap();
    Jail::new(name, &c.jails[name], StartAt::End, LogTz::Local).unwrap()
}

fn failure(ip: &str, user: &str) -> String {
    format!("2024-03-01 12:00:00.123456 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [{user}@10.0.8.5] from ip {ip}")
}

fn challenge(ip: &str, user: &str) -> String {
    format!("2024-03-01 12:00:00.123456 [WARNING] sofia_reg.c:1842 SIP auth challenge (REGISTER) on sofia profile 'internal' for [{user}@10.0.8.5] from ip {ip}")
}

/// Feeds lines in replay mode (line times), returns the bans requested.
fn feed(j: &mut Jail, lines: &[String]) -> Vec<BanRequest> {
    let ignore = NeverBan::default();
    let mut banned = std::collections::HashSet::new();
    let mut out = Vec::new();
    for l in lines {
        if let Some(b) = j.on_line(l, 0, false, &ignore, &|n| banned.contains(n), &|_| 0) {
            banned.insert(b.net);
            out.push(b);
        }
    }
    out
}

#[test]
fn brute_force_is_banned_by_default() {
    let mut j = default_jail("freeswitch");
    let lines: Vec<String> = (0..10)
        .map(|i| failure("203.0.113.9", &format!("{i}")))
        .collect();
    let bans = feed(&mut j, &lines);
    assert_eq!(bans.len(), 1, "ten failures within a minute ban");
    assert_eq!(bans[0].net.to_string(), "203.0.113.9/32");
    assert_eq!(bans[0].duration, Some(Duration::from_secs(3600)));
    let mut j = default_jail("freeswitch");
    assert!(feed(&mut j, &lines[..9]).is_empty(), "nine do not");
}

/// Power cut: 50 phones behind one NAT address re-register at once, each
/// with one challenge then success. Neither default jail bans them, also
/// when it happens three times in a row.
#[test]
fn power_outage_behind_one_nat_is_never_banned() {
    let nat = "198.51.100.20";
    let mut lines = Vec::new();
    for _ in 0..3 {
        for phone in 0..50 {
            lines.push(challenge(nat, &format!("phone{phone}")));
        }
    }
    assert!(feed(&mut default_jail("freeswitch"), &lines).is_empty());
    assert!(feed(&mut default_jail("freeswitch-flood"), &lines).is_empty());
    // ...while a real challenge flood from one address is caught.
    let flood: Vec<String> = (0..600)
        .map(|i| challenge("203.0.113.7", &format!("u{i}")))
        .collect();
    assert_eq!(feed(&mut default_jail("freeswitch-flood"), &flood).len(), 1);
}

#[test]
fn injected_usernames_count_only_the_real_source() {
    let mut j = default_jail("freeswitch");
    let victim = "192.0.2.50";
    let lines: Vec<String> = (0..30)
        .map(|i| failure("203.0.113.66", &format!("x] from ip {victim} {i}")))
        .collect();
    let bans = feed(&mut j, &lines);
    assert!(
        bans.iter().all(|b| b.net.to_string() == "203.0.113.66/32"),
        "{bans:?}"
    );
    assert_eq!(bans.len(), 1);
}

#[test]
fn ipv6_offenders_are_counted_per_64() {
    let mut j = default_jail("freeswitch");
    let lines: Vec<String> = (0..10)
        .map(|i| failure(&format!("2001:db8:1:2::{i:x}"), "u"))
        .collect();
    let bans = feed(&mut j, &lines);
    assert_eq!(bans.len(), 1, "ten addresses of one /64 are one offender");
    assert_eq!(bans[0].net.to_string(), "2001:db8:1:2::/64");
}

#[test]
fn live_lines_older_than_findtime_do_not_count() {
    let mut j = default_jail("freeswitch");
    let ignore = NeverBan::default();
    // The lines are from 2024; "now" is much later.
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..20 {
        assert!(j
            .on_line(
                &failure("203.0.113.9", &i.to_string()),
                now,
                true,
                &ignore,
                &|_| false,
                &|_| 0
            )
            .is_none());
    }
    assert_eq!(j.stats.too_old, 20);
}

/// FreeSWITCH in UTC, sipguard two hours ahead: every line looks two
/// hours old. Counted as skewed, and noticed after a run of them.
#[test]
fn a_log_in_another_timezone_is_noticed() {
    let mut j = default_jail("freeswitch");
    let ignore = NeverBan::default();
    let now = chrono::Utc::now();
    let stamp = (now - chrono::Duration::hours(2)).format("%Y-%m-%d %H:%M:%S%.6f");
    let line = |i: usize| {
        format!("{stamp} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [{i}@d] from ip 203.0.113.9")
    };
    let mut warned = 0;
    for i in 0..25 {
        j.on_line(
            &line(i),
            now.timestamp_millis(),
            true,
            &ignore,
            &|_| false,
            &|_| 0,
        );
        warned += usize::from(j.skew.warned.is_some() && j.skew.run == SKEW_RUN);
    }
    assert_eq!(j.stats.skewed, 25);
    assert_eq!(warned, 1, "warned once, at the tenth line");
    // History re-read at start (varying ages) is not a timezone problem.
    let mut h = default_jail("freeswitch");
    for days in 1..30 {
        let old = (now - chrono::Duration::days(days)).format("%Y-%m-%d %H:%M:%S%.6f");
        let l = format!("{old} [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u@d] from ip 203.0.113.9");
        h.on_line(
            &l,
            now.timestamp_millis(),
            true,
            &ignore,
            &|_| false,
            &|_| 0,
        );
    }
    assert!(h.skew.warned.is_none());
}

#[test]
fn ignoreip_is_never_counted() {
    let mut j = default_jail("freeswitch");
    let ignore = NeverBan::from_nets(vec![(
        "203.0.113.0/24".parse().unwrap(),
        crate::bans::never_ban::Why::Configured,
    )]);
    for i in 0..20 {
        assert!(j
            .on_line(
                &failure("203.0.113.9", &i.to_string()),
                0,
                false,
                &ignore,
                &|_| false,
                &|_| 0
            )
            .is_none());
    }
    assert_eq!(j.stats.ignored_ip, 20);
}

/// A jail banning IPv6 /64s, a protected address inside an offender's
/// /64: the ban is narrowed to the offender at the failure, and counted
/// there (the daemon never asks the never-ban set again).
#[test]
fn a_network_over_a_protected_address_is_narrowed_to_the_offender() {
    let mut j = jail(
        "[jails.a]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nmaxretry = 2\nipv6_prefix = 64\n",
    );
    let ignore = NeverBan::from_nets(vec![(
        "2001:db8::1/128".parse().unwrap(),
        crate::bans::never_ban::Why::Configured,
    )]);
    let mut requests = (0..2).filter_map(|i| {
        j.on_line(
            &failure("2001:db8::99", &i.to_string()),
            0,
            false,
            &ignore,
            &|_| false,
            &|_| 0,
        )
    });
    let r = requests.next().expect("a ban at maxretry");
    assert_eq!(r.net, "2001:db8::99/128".parse::<IpNet>().unwrap());
    // The protected address itself is never counted.
    let mut k = jail(
        "[jails.a]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nmaxretry = 2\nipv6_prefix = 64\n",
    );
    for i in 0..5 {
        let line = failure("2001:db8::1", &i.to_string());
        assert!(k
            .on_line(&line, 0, false, &ignore, &|_| false, &|_| 0)
            .is_none());
    }
    assert_eq!(k.stats.ignored_ip, 5);
}

#[test]
fn bantime_increment() {
    let j = jail("[jails.a]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nbantime = \"1h\"\nbantime_increment = true\nbantime_factor = 2\nbantime_maxtime = \"5h\"\n");
    let h = |n: u64| Some(Duration::from_secs(3600 * n));
    assert_eq!(ban_duration(&j.config, 0), h(1));
    assert_eq!(ban_duration(&j.config, 1), h(2));
    assert_eq!(ban_duration(&j.config, 2), h(4));
    assert_eq!(ban_duration(&j.config, 3), h(5), "capped at maxtime");
    let plain = jail("[jails.a]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nbantime = \"1h\"\n");
    assert_eq!(ban_duration(&plain.config, 5), h(1));
    let forever = jail("[jails.a]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nbantime = -1\n");
    assert_eq!(ban_duration(&forever.config, 0), None);
}
