//! End to end: the Redis fleet against those who can write to its Redis
//! without being members (the Redis is routinely shared), and against a
//! server that answers garbage. A real redis-server runs in the server
//! namespace with box 1; "box9" is a member the test impersonates with the
//! fleet's key (the daemon's own signing code), anyone else writes raw.
use anyhow::Result;
use sipguard::fleet::redis::entry::{Entry, Op};
use sipguard_tests::{
    daemon::{cli_ok, Daemon},
    engines::{
        ban_entry, signed_event, signed_text, write_fleet_key, Redis, FLEET_KEY, REDIS_PORT,
    },
    fixture::{wait_until, Setup},
    netns::*,
    Sandbox,
};
use std::{
    io::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

const MEMBER_BAN: &str = "203.0.113.70";

fn config(extra: &str) -> String {
    format!(
        "[redis]\nurl = \"redis://127.0.0.1:{REDIS_PORT}\"\nnode = \"box1\"\nkey_file = \"{{dir}}/fleet.key\"\n{extra}"
    )
}

fn rejected(s: &Setup, reason: &str) -> Result<u64> {
    Ok(s.json(&["status"])?["fleet"]["redis"]["rejected"][reason]
        .as_u64()
        .unwrap_or(0))
}

fn listed(s: &Setup, address: &str) -> Result<bool> {
    Ok(s.banned()?.iter().any(|a| a == address))
}

/// How many of 5 datagrams from the client reach box 1's SIP port.
fn client_reaches(s: &Setup) -> Result<usize> {
    let from = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let to = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    udp_delivered(&from, &to, 5)
}

fn entry(op: Op, node: &str, net: &str) -> Entry {
    let mut e = ban_entry(node, net);
    e.op = op;
    e
}

fn publish(redis: &Redis, key: &str, e: &Entry) -> Result<()> {
    let (text, mac) = signed_event(key, e);
    redis.add_event(&[("e", &text), ("m", &mac)])
}

/// Box 1 follows the fleet: a member's ban arrives. The entry, for replays.
fn following(s: &Setup, redis: &Redis) -> Result<Entry> {
    // Published only to the stream (not the snapshot), so only once the
    // reader has read where the stream stood: before, it would start after it.
    wait_until(10, "box 1 follows the fleet", || {
        Ok(s.daemon.log().contains("Redis fleet: following"))
    })?;
    let e = ban_entry("box9", MEMBER_BAN);
    publish(redis, FLEET_KEY, &e)?;
    wait_until(10, "a member's ban arrives", || listed(s, MEMBER_BAN))?;
    Ok(e)
}

#[test]
fn entries_from_non_members_change_nothing_and_are_counted() -> Result<()> {
    let s = Setup::new("")?;
    let redis = Redis::start(&s.pair.server)?;
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o600)?;
    s.sb.write_config(&config(""))?;
    s.cli(&["reload"])?;
    let member = following(&s, &redis)?;
    let before = s.banned()?;
    assert_eq!(client_reaches(&s)?, 5);

    let now = chrono::Utc::now().timestamp_millis();
    let client = ban_entry("box9", CLIENT_V4);
    // Unsigned, signed with another key.
    redis.add_event(&[("e", &client.text())])?;
    publish(&redis, "not-the-fleet-key-0123456789", &client)?;
    // Signed, but published 20 minutes ago; and an exact replay.
    let mut old = client.clone();
    old.ts_ms = now - 20 * 60 * 1000;
    publish(&redis, FLEET_KEY, &old)?;
    publish(&redis, FLEET_KEY, &member)?;
    // In this box's own name, without the key.
    publish(
        &redis,
        "not-the-fleet-key-0123456789",
        &ban_entry("box1", CLIENT_V4),
    )?;
    // Signed, with a node name past 64 bytes.
    let long = client.text().replace("box9", &"n".repeat(65));
    redis.add_event(&[("e", &long), ("m", &signed_text(FLEET_KEY, &long))])?;
    // Non-UTF-8.
    redis.add_event(&[("e", "sipguard-fleet-1 ban \u{fffd}"), ("m", "zz")])?;
    // An unsigned fleet unban of the member's ban.
    redis.add_event(&[("e", &entry(Op::FleetUnban, "box9", MEMBER_BAN).text())])?;
    wait_until(10, "every hostile entry counted", || {
        Ok(rejected(&s, "bad_mac")? >= 4
            && rejected(&s, "replay")? == 2
            && rejected(&s, "own_name")? == 1
            && rejected(&s, "malformed")? == 1)
    })?;
    assert_eq!(s.banned()?, before, "nothing changed in the kernel maps");
    assert!(listed(&s, MEMBER_BAN)?);
    assert_eq!(client_reaches(&s)?, 5, "the client still passes");

    // Box 1's own ban: an unsigned fleet unban leaves it in force.
    s.cli(&["ban", CLIENT_V4, "--for", "1h"])?;
    assert_eq!(client_reaches(&s)?, 0);
    let forged = rejected(&s, "bad_mac")?;
    redis.add_event(&[
        ("e", &entry(Op::FleetUnban, "box9", CLIENT_V4).text()),
        ("m", &"0".repeat(64)),
    ])?;
    wait_until(5, "the forged unban counted", || {
        Ok(rejected(&s, "bad_mac")? == forged + 1)
    })?;
    assert!(listed(&s, CLIENT_V4)?);
    assert_eq!(client_reaches(&s)?, 0, "still dropped");

    // A signed member's fleet unban works.
    publish(&redis, FLEET_KEY, &entry(Op::FleetUnban, "box9", CLIENT_V4))?;
    wait_until(5, "the member's fleet unban applies", || {
        Ok(!listed(&s, CLIENT_V4)?)
    })?;
    assert_eq!(client_reaches(&s)?, 5);

    // With accept_fleet_unban = false, even a member's is refused.
    s.sb.write_config(&config("accept_fleet_unban = false\n"))?;
    s.cli(&["reload"])?;
    s.cli(&["ban", CLIENT_V4, "--for", "1h"])?;
    publish(&redis, FLEET_KEY, &entry(Op::FleetUnban, "box9", CLIENT_V4))?;
    wait_until(10, "the fleet unban refused", || {
        Ok(rejected(&s, "fleet_unban_refused")? == 1)
    })?;
    assert!(listed(&s, CLIENT_V4)?);
    assert_eq!(client_reaches(&s)?, 0);
    Ok(())
}

/// `e` as the member's snapshot entry (`NODE|NET` in the set, its signed
/// entry in the hash), written as the daemon's writer does.
fn put_snapshot_entry(redis: &Redis, e: &Entry, score: &str) -> Result<String> {
    let key = sipguard::fleet::redis::Secret::new(FLEET_KEY.as_bytes().to_vec());
    let (text, mac) = e.sign(&key, "sipguard:entries");
    let member = format!("{}|{}", e.node, e.net);
    let value = format!("{text}\n{mac}");
    redis.cli(&["ZADD", "sipguard:bans", score, &member])?;
    redis.cli(&["HSET", "sipguard:entries", &member, &value])?;
    Ok(value)
}

/// Makes box 1's reader start again from a snapshot, as anyone who can
/// write to the Redis can: a stream key of the wrong type fails its next
/// read, then the key goes.
fn force_resync(s: &Setup, redis: &Redis) -> Result<()> {
    let errors = || -> Result<u64> {
        Ok(
            s.json(&["status"])?["fleet"]["workers"]["redis-in"]["errors"]
                .as_u64()
                .unwrap_or(0),
        )
    };
    let before = errors()?;
    redis.cli(&["DEL", "sipguard:events"])?;
    redis.cli(&["SET", "sipguard:events", "not a stream"])?;
    wait_until(10, "the reader fails its read", || Ok(errors()? > before))?;
    redis.cli(&["DEL", "sipguard:events"])?;
    let follows = s.daemon.log().matches("Redis fleet: following").count();
    wait_until(15, "the reader takes a new snapshot", || {
        Ok(s.daemon.log().matches("Redis fleet: following").count() > follows)
    })
}

#[test]
fn deleting_the_fleets_keys_or_putting_an_old_entry_back_lifts_and_bans_nothing() -> Result<()> {
    let s = Setup::new("")?;
    let redis = Redis::start(&s.pair.server)?;
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o600)?;
    s.sb.write_config(&config(""))?;
    s.cli(&["reload"])?;
    let far = (chrono::Utc::now().timestamp_millis() + 3_600_000).to_string();
    // A member's ban in the snapshot, taken at a resync.
    let ban = ban_entry("box9", CLIENT_V4);
    let old_value = put_snapshot_entry(&redis, &ban, &far)?;
    following(&s, &redis)?;
    force_resync(&s, &redis)?;
    wait_until(10, "the snapshot's ban is taken", || listed(&s, CLIENT_V4))?;
    assert_eq!(client_reaches(&s)?, 0);

    // Someone without the key deletes the fleet's keys and forces a new
    // snapshot: an absence is no signed unban, both bans stay.
    redis.cli(&["DEL", "sipguard:bans", "sipguard:entries"])?;
    force_resync(&s, &redis)?;
    assert!(listed(&s, CLIENT_V4)?, "a deleted entry lifted a ban");
    assert!(listed(&s, MEMBER_BAN)?, "a deleted entry lifted a ban");
    assert_eq!(client_reaches(&s)?, 0);

    // The member unbans: its signed unban on the stream and its tombstone.
    let mut unban = entry(Op::Unban, "box9", CLIENT_V4);
    unban.end_ms = None;
    put_snapshot_entry(&redis, &unban, &far)?;
    publish(&redis, FLEET_KEY, &unban)?;
    wait_until(10, "the member's unban applies", || {
        Ok(!listed(&s, CLIENT_V4)?)
    })?;
    assert_eq!(client_reaches(&s)?, 5);

    // The old signed ban entry, kept by whoever read it, put back in place
    // of the tombstone: refused as a replay at the next snapshot.
    let replays = rejected(&s, "replay")?;
    let member = format!("box9|{CLIENT_V4}/32");
    redis.cli(&["HSET", "sipguard:entries", &member, &old_value])?;
    force_resync(&s, &redis)?;
    wait_until(5, "the old entry counted as a replay", || {
        Ok(rejected(&s, "replay")? > replays)
    })?;
    assert!(!listed(&s, CLIENT_V4)?, "a lifted ban came back");
    assert_eq!(client_reaches(&s)?, 5);
    Ok(())
}

#[test]
fn without_a_private_key_the_fleet_is_refused() -> Result<()> {
    let s = Setup::new("")?;
    let redis = Redis::start(&s.pair.server)?;
    let refused = || -> Result<String> {
        Ok(s.json(&["status"])?["fleet"]["redis"]["refused"]
            .as_str()
            .unwrap_or("")
            .to_owned())
    };
    s.sb.write_config(&format!(
        "[redis]\nurl = \"redis://:hunter2pass@127.0.0.1:{REDIS_PORT}\"\nnode = \"box1\"\n"
    ))?;
    s.cli(&["reload"])?;
    assert!(refused()?.contains("needs `key_file`"), "{}", refused()?);
    assert!(s.daemon.log().contains("Redis fleet NOT started"));
    // A key others can read.
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o644)?;
    s.sb.write_config(&config(""))?;
    s.cli(&["reload"])?;
    assert!(refused()?.contains("group or others"), "{}", refused()?);
    // Too short.
    write_fleet_key(s.sb.dir.path(), "short", 0o600)?;
    s.cli(&["reload"])?;
    assert!(refused()?.contains("at least 16"), "{}", refused()?);
    // A member's ban is not taken while refused.
    publish(&redis, FLEET_KEY, &ban_entry("box9", MEMBER_BAN))?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(!listed(&s, MEMBER_BAN)?);
    // Fixed: the fleet starts, and catches up.
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o600)?;
    s.cli(&["reload"])?;
    assert_eq!(refused()?, "");
    following(&s, &redis)?;
    assert!(!s.daemon.log().contains("hunter2pass"));
    Ok(())
}

#[test]
fn a_server_answering_garbage_costs_restarts_not_the_reader() -> Result<()> {
    let s = Setup::new("")?;
    let listener = tcp_listener(&s.pair.server, addr("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let server = std::thread::spawn(move || {
        let mut answered = 0u32;
        while !stopped.load(Ordering::Relaxed) && answered < 10_000 {
            let Ok((mut c, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            answered += 1;
            // Not UTF-8, not RESP: whatever a lying server may say.
            let _ = c.write_all(b"*2\r\n$4\r\n\xff\xfe\xfd\xfc\r\n\xc3(\x00garbage\r\n");
        }
    });
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o600)?;
    s.sb.write_config(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{port}\"\nnode = \"box1\"\nkey_file = \"{{dir}}/fleet.key\"\n"
    ))?;
    s.cli(&["reload"])?;
    let restarts = || -> Result<u64> {
        Ok(
            s.json(&["status"])?["fleet"]["redis"]["restarts"]["redis-in"]["errors"]
                .as_u64()
                .unwrap_or(0)
                + s.json(&["status"])?["fleet"]["redis"]["restarts"]["redis-in"]["panics"]
                    .as_u64()
                    .unwrap_or(0),
        )
    };
    wait_until(15, "the reader restarted twice", || Ok(restarts()? >= 2))?;
    // The daemon keeps answering and protecting.
    s.cli(&["ban", CLIENT_V4, "--for", "1m"])?;
    assert_eq!(client_reaches(&s)?, 0);
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    Ok(())
}

/// The daemon's peak resident memory so far (VmHWM), bytes.
fn peak_memory(s: &Setup) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.daemon.pid()))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/PID/status"))?;
    Ok(kib * 1024)
}

/// 200 MB: far past any bound, well within the server's 512 MB per value.
const HUGE: usize = 200 << 20;

#[test]
fn oversized_entries_are_counted_and_never_read_whole() -> Result<()> {
    let s = Setup::new("")?;
    let redis = Redis::start(&s.pair.server)?;
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o600)?;
    // A snapshot entry of 200 MB, its member in force, before box 1
    // follows the fleet; and a member name of 2 MB.
    let member = "box9|203.0.113.71/32";
    redis.cli(&["ZADD", "sipguard:bans", "+inf", member])?;
    redis.cli_with_value(&["HSET", "sipguard:entries", member], b'x', HUGE)?;
    redis.cli_with_value(&["ZADD", "sipguard:bans", "+inf"], b'y', 2 << 20)?;
    let idle = peak_memory(&s)?;
    s.sb.write_config(&config(""))?;
    s.cli(&["reload"])?;
    following(&s, &redis)?;
    wait_until(5, "the oversized snapshot entries counted", || {
        Ok(rejected(&s, "oversized")? == 2)
    })?;

    // A stream entry with a 200 MB field; then a member's ban, which
    // arrives as usual.
    redis.cli_with_value(&["XADD", "sipguard:events", "*", "m", "0", "e"], b'z', HUGE)?;
    let after = ban_entry("box9", "203.0.113.72");
    publish(&redis, FLEET_KEY, &after)?;
    wait_until(10, "the ban after the oversized entry arrives", || {
        listed(&s, "203.0.113.72")
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", s.daemon.log()))?;
    assert_eq!(rejected(&s, "oversized")?, 3);
    assert!(!listed(&s, "203.0.113.71")?);
    let peak = peak_memory(&s)?;
    assert!(
        peak < idle + (64 << 20),
        "the daemon's peak memory grew by {} MiB reading the fleet",
        (peak - idle) >> 20
    );
    Ok(())
}

#[test]
fn a_redis_refusing_scripts_is_not_read() -> Result<()> {
    let s = Setup::new("")?;
    let redis = Redis::start(&s.pair.server)?;
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o600)?;
    // A user allowed everything but scripts.
    redis.cli(&[
        "ACL",
        "SETUSER",
        "noscripts",
        "on",
        ">noscripts-pw-1234",
        "~*",
        "+@all",
        "-@scripting",
    ])?;
    s.sb.write_config(&format!(
        "[redis]\nurl = \"redis://noscripts:noscripts-pw-1234@127.0.0.1:{REDIS_PORT}\"\nnode = \"box1\"\nkey_file = \"{{dir}}/fleet.key\"\n"
    ))?;
    s.cli(&["reload"])?;
    let refused = || -> Result<String> {
        Ok(s.json(&["status"])?["fleet"]["redis"]["refused"]
            .as_str()
            .unwrap_or("")
            .to_owned())
    };
    wait_until(10, "the refusal shown in status", || {
        Ok(refused()?.contains("refuses the fleet's scripts"))
    })?;
    assert!(refused()?.contains("NOPERM") || refused()?.contains("permission"));
    assert!(s.daemon.log().contains("refuses the fleet's scripts"));
    assert!(!s.daemon.log().contains("noscripts-pw-1234"));
    // A member's ban is not read (a plain XREAD would take it).
    publish(&redis, FLEET_KEY, &ban_entry("box9", MEMBER_BAN))?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(!listed(&s, MEMBER_BAN)?, "nothing read");
    // Scripts allowed: the fleet is followed (at the reader's next try).
    redis.cli(&["ACL", "SETUSER", "noscripts", "+@scripting"])?;
    wait_until(40, "the refusal cleared once scripts are allowed", || {
        Ok(refused()?.is_empty())
    })?;
    following(&s, &redis)?;
    Ok(())
}

/// A flooding source: not an address of either box. It floods box 1 from
/// the client side, then speaks to box 2 from the server side.
const FLOODER: &str = "198.51.100.88";

const FLOOD: &str =
    "[flood]\nrate = 100\nburst = 100\nescalate_after = 2\nwindow = \"60s\"\nbantime = \"10m\"\n";

/// Box 1 (server side, with `flood` settings) and box 2 (client side, in
/// global all-ports mode), following the same Redis with the same key.
fn two_boxes(flood: &str) -> Result<(Setup, Redis, Sandbox, Daemon)> {
    let s = Setup::new("")?;
    let redis = Redis::start(&s.pair.server)?;
    write_fleet_key(s.sb.dir.path(), FLEET_KEY, 0o600)?;
    s.sb.write_config(&format!("{}{flood}", config("")))?;
    s.cli(&["reload"])?;
    let sb2 = Sandbox::new(&format!(
        "all_ports = true\n[redis]\nurl = \"redis://{SERVER_V4}:{REDIS_PORT}\"\nnode = \"box2\"\nkey_file = \"{{dir}}/fleet.key\"\n"
    ))?;
    write_fleet_key(sb2.dir.path(), FLEET_KEY, 0o600)?;
    let d2 = Daemon::start(&s.pair.client, &sb2, &["--iface", &s.pair.client_if])?;
    Ok((s, redis, sb2, d2))
}

/// `FLOODER` floods box 1's SIP port until box 1 bans it (`sip-flood`).
fn flood_box1(s: &Setup) -> Result<()> {
    let host = format!("{FLOODER}/32");
    s.pair
        .client
        .ip(&["addr", "add", &host, "dev", &s.pair.client_if])?;
    let from = udp_socket(&s.pair.client, addr(FLOODER, 0))?;
    let to = addr(SERVER_V4, 5060);
    let banned = wait_until(15, "box 1 bans the flooding source", || {
        // ~2 000 packets/s for half a second: 20 times the rate.
        for _ in 0..100 {
            for _ in 0..10 {
                from.send_to(b"OPTIONS sip:flood@x SIP/2.0\r\n\r\n", to)?;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let list = s.json(&["list"])?;
        Ok(list.as_array().is_some_and(|l| {
            l.iter()
                .any(|b| b["address"] == FLOODER && b["jail"] == "sip-flood")
        }))
    });
    drop(from);
    // The address moves to the server side (a source address is anyone's).
    s.pair
        .client
        .ip(&["addr", "del", &host, "dev", &s.pair.client_if])?;
    s.pair
        .server
        .ip(&["addr", "add", &host, "dev", &s.pair.server_if])?;
    banned
}

/// How many of 5 datagrams from `FLOODER` reach box 2's `port`.
fn flooder_reaches_box2(s: &Setup, port: u16) -> Result<usize> {
    let from = udp_socket(&s.pair.server, addr(FLOODER, 0))?;
    let to = udp_socket(&s.pair.client, addr(CLIENT_V4, port))?;
    udp_delivered(&from, &to, 5)
}

/// Box 2's ban of `address`, as `list --json` shows it.
fn box2_ban(sb2: &Sandbox, address: &str) -> Result<Option<serde_json::Value>> {
    let list: serde_json::Value = serde_json::from_str(&cli_ok(sb2, &["list", "--json"])?)?;
    Ok(list
        .as_array()
        .and_then(|l| l.iter().find(|b| b["address"] == address).cloned()))
}

/// Every entry of the fleet's Redis (stream, hash, sorted set), as text.
fn everything_in_redis(redis: &Redis) -> Result<String> {
    Ok([
        redis.cli(&["XRANGE", "sipguard:events", "-", "+"])?,
        redis.cli(&["HGETALL", "sipguard:entries"])?,
        redis.cli(&["ZRANGE", "sipguard:bans", "0", "-1"])?,
    ]
    .join("\n"))
}

#[test]
fn packet_evidence_stays_on_the_box_that_saw_it() -> Result<()> {
    let (s, redis, sb2, _d2) = two_boxes(FLOOD)?;
    flood_box1(&s)?;
    // A ban box 1 makes after it reaches box 2: the fleet carries bans,
    // and everything box 1 would have sent before is there.
    s.cli(&["ban", "203.0.113.80", "--for", "1h"])?;
    wait_until(10, "box 2 has box 1's later ban", || {
        Ok(box2_ban(&sb2, "203.0.113.80")?.is_some())
    })?;
    let all = everything_in_redis(&redis)?;
    assert!(all.contains("203.0.113.80"), "{all}");
    assert!(!all.contains(FLOODER), "the flood ban left box 1: {all}");
    assert_eq!(box2_ban(&sb2, FLOODER)?, None);
    assert_eq!(flooder_reaches_box2(&s, 5060)?, 5, "box 2 drops nothing");
    Ok(())
}

#[test]
fn exported_packet_evidence_stays_ports_only_on_every_box() -> Result<()> {
    let (s, redis, sb2, _d2) = two_boxes(&format!("{FLOOD}export = true\n"))?;
    flood_box1(&s)?;
    wait_until(10, "box 2 has box 1's flood ban", || {
        Ok(box2_ban(&sb2, FLOODER)?.is_some())
    })?;
    // Published as packet evidence...
    let entries = redis.cli(&["HGETALL", "sipguard:entries"])?;
    let entry = entries
        .lines()
        .find(|l| l.contains(FLOODER) && l.starts_with("sipguard-fleet-1"))
        .unwrap_or_default();
    assert!(entry.contains(" ports-only "), "{entries}");
    // ...applied as such by box 2, although box 2 bans every port.
    let ban = box2_ban(&sb2, FLOODER)?.unwrap_or_default();
    assert_eq!(ban["ports_only"], true, "{ban}");
    assert_eq!(ban["all_ports"], false, "{ban}");
    assert_eq!(
        flooder_reaches_box2(&s, 5060)?,
        0,
        "the SIP port is dropped"
    );
    assert_eq!(
        flooder_reaches_box2(&s, 9999)?,
        5,
        "another port still passes"
    );
    // Box 2's own bans take every port there (all_ports = true).
    cli_ok(&sb2, &["ban", FLOODER, "--for", "1h"])?;
    assert_eq!(flooder_reaches_box2(&s, 9999)?, 0);
    Ok(())
}
