//! `bench xdp`'s one-run-per-packet sections: a forged-source storm against
//! the rate limiter, and banned sources in turn against the lookup floors.
//! Each packet is one BPF_PROG_TEST_RUN, so every figure carries the
//! timer's own cost alike: compare them with each other, not with the
//! repeated runs of the other tables.
use crate::{
    report::Section,
    xdp::{fill, FLOOR_LOOKUP},
};
use anyhow::{bail, Result};
use common::Config;
use sipguard_tests::{kernel::TestProgram, packet::*};
use std::time::Duration;

/// Packets of each row: more sources than the rate map holds, so the LRU
/// map evicts on every new source once it is full.
const PACKETS: u32 = 300_000;
/// Where the IPv4 source is in `udp4`'s frame.
const SRC_AT: usize = 14 + 12;

/// Runs `PACKETS` frames from `source(i)` through `program`, one run each;
/// returns the mean ns per packet.
fn each(t: &mut TestProgram, program: &str, want: u32, source: impl Fn(u32) -> u32) -> Result<f64> {
    let mut f = udp4([100, 64, 0, 0], 5060);
    let mut total = Duration::ZERO;
    for i in 0..PACKETS {
        f[SRC_AT..SRC_AT + 4].copy_from_slice(&source(i).to_be_bytes());
        let (got, d) = t.run_named(program, &f, 1)?;
        if got != want {
            bail!("{program}: action {got}, expected {want}");
        }
        total += d;
    }
    Ok(total.as_nanos() as f64 / f64::from(PACKETS))
}

/// The limiter at `rate` with a burst no source reaches here: one source
/// repeated is never limited, and the first stage is on.
fn limiter(rate: u32, burst: u32) -> Config {
    Config::default().with_rate(rate, burst)
}

/// A forged-source storm: every packet from a new source, one packet each,
/// against one source repeated, at the daemon's default rate (500 packets/s:
/// the first stage's window is 8 ms); with the first stage off (the exact
/// limiter that bursts under 48 keep: an insert per packet, and once the
/// map is full an eviction); and at 1 packet/s, whose 4 s window holds the
/// whole storm, so the sketch fills and more sources get state.
pub fn forged_storm(out: &mut Section) -> Result<()> {
    say!(
        out,
        "\n## Forged-source storm (limiter on, {PACKETS} packets, one BPF_PROG_TEST_RUN each)\n"
    );
    say!(out, "Each packet is one run (the kernel's timing of a single run), so the figures carry the timer's own cost; compare them with each other, not with the tables above. *Sources given state* is how many entries the rate map holds after the row.\n");
    say!(
        out,
        "| case | ns/packet | × one source repeated | sources given state |"
    );
    say!(out, "|---|---:|---:|---:|");
    let sipguard = "sipguard";
    let base = 0x6440_0000;
    let mut t = TestProgram::load()?;
    t.maps.set_config(limiter(500, u32::MAX))?;
    t.load_program(FLOOR_LOOKUP)?;
    let same = each(&mut t, sipguard, 2, |_| base)?;
    say!(out, "| one source repeated, 500 packets/s (the default rate, never reached) | {same:.1} | 1.00 | 1 |");
    // What any program that checks a new source's ban pays: the parse and
    // the probe of the table of banned addresses, which misses the cache.
    let floor = each(&mut t, FLOOR_LOOKUP, 2, |i| base + i)?;
    say!(
        out,
        "| lookup floor, a new source each packet (the ban check alone) | {floor:.1} | {:.2} | |",
        floor / same
    );
    let rows: [(&str, Config); 3] = [
        (
            "a new source each packet, 500 packets/s: first stage on (sipguard's)",
            limiter(500, u32::MAX),
        ),
        (
            "a new source each packet, 500 packets/s: first stage off (bursts under 48)",
            limiter(500, 47),
        ),
        (
            "a new source each packet, 1 packet/s: first stage on, the storm in one window",
            limiter(1, u32::MAX),
        ),
    ];
    for (name, cfg) in rows {
        let mut t = TestProgram::load()?;
        t.maps.set_config(cfg)?;
        let storm = each(&mut t, sipguard, 2, |i| base + i)?;
        let states = t.maps.rate_states()?.len();
        say!(
            out,
            "| {name} | {storm:.1} | {:.2} | {states} |",
            storm / same
        );
    }
    Ok(())
}

/// `bench xdp-storm`: the two sections alone.
pub fn run_alone(out: &mut Section) -> Result<()> {
    forged_storm(out)?;
    sources_in_turn(out)
}

/// Bans in the table, for `sources_in_turn`.
const IN_TURN_BANS: u32 = 1_000_000;

/// Banned sources in turn: each packet from another banned address (a scan
/// campaign, a CrowdSec list), so the lookups miss the cache as they would
/// on a real box, beside one banned source repeated (cache-hot); each
/// beside the lookup floor (the parse and one hash lookup of the source)
/// with the same sources.
pub fn sources_in_turn(out: &mut Section) -> Result<()> {
    say!(out, "\n## Banned sources in turn ({IN_TURN_BANS} bans, {PACKETS} packets, one BPF_PROG_TEST_RUN each)\n");
    say!(out, "The *lookup floor* is a program that parses as sipguard does and looks the source up once in the same table (the *cold* lookup floor when the sources come in turn).\n");
    say!(out, "| sources | empty program (ns) | lookup floor (ns) | sipguard, banned drop (ns) | × lookup floor |");
    say!(out, "|---|---:|---:|---:|---:|");
    let mut t = TestProgram::load()?;
    t.load_program(FLOOR_LOOKUP)?;
    fill(&mut t, IN_TURN_BANS)?;
    // Spread over `n` bans of the table: a stride prime to its size.
    let in_turn = |n: u32| move |i: u32| 0x6440_0000 + (u64::from(i) * 7919 % u64::from(n)) as u32;
    for (name, n) in [
        ("one banned source repeated", 1),
        ("10 000 banned sources in turn", 10_000),
        ("1 000 000 banned sources in turn", IN_TURN_BANS),
    ] {
        let empty = each(&mut t, "pass_all", 2, in_turn(n))?;
        let floor = each(&mut t, FLOOR_LOOKUP, 1, in_turn(n))?;
        let ns = each(&mut t, "sipguard", 1, in_turn(n))?;
        say!(
            out,
            "| {name} | {empty:.1} | {floor:.1} | {ns:.1} | {:.2} |",
            ns / floor
        );
    }
    Ok(())
}
