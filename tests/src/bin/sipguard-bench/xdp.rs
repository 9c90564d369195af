//! `cargo xtask bench xdp`: the XDP program's cost per packet, measured in the
//! kernel with BPF_PROG_TEST_RUN, beside an empty XDP program in the same run.
//! Figures are medians of several runs of `REPEAT` packets each; what matters
//! is the ratio to the empty program, which cancels most of the machine.
use crate::{report::Section, storm};
use anyhow::{bail, Result};
use sipguard::{addr::parse_net, kernel::clock};
use sipguard_tests::{kernel::TestProgram, packet::*};
use std::time::Duration;

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;
/// Line rate of 64-byte frames (84 bytes on the wire), in Mpps.
const LINE_RATES: [(&str, f64); 3] = [("10 GbE", 14.88), ("25 GbE", 37.2), ("100 GbE", 148.8)];
const RATE_LIMITED: &str = "rate-limited drop (v4, over 1 pps)";
/// The floors (xdp-ebpf/src/floors.rs).
pub const FLOOR_PARSE: &str = "floor_parse";
pub const FLOOR_LOOKUP: &str = "floor_lookup";

fn median_ns(mut f: impl FnMut() -> Result<Duration>) -> Result<f64> {
    let mut v = (0..RUNS)
        .map(|_| f().map(|d| d.as_nanos() as f64))
        .collect::<Result<Vec<_>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[RUNS / 2])
}

/// Fills the blocklist with `n` distinct /32s (v4) and /128s (v6) in
/// 100.64.0.0/10 and fd00::/16, none of them the probe sources.
pub fn fill(t: &mut TestProgram, n: u32) -> Result<()> {
    let now = clock::mono_now_ns();
    for i in 0..n {
        let v4 = std::net::Ipv4Addr::from(0x6440_0000u32 + i);
        t.maps
            .ban(ipnet::IpNet::from(std::net::IpAddr::V4(v4)), 0, 0, now)?;
        let v6 =
            std::net::Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i));
        t.maps
            .ban(ipnet::IpNet::from(std::net::IpAddr::V6(v6)), 0, 0, now)?;
    }
    Ok(())
}

pub fn run(out: &mut Section) -> Result<()> {
    let clean = [192, 0, 2, 1];
    let banned = [192, 0, 2, 66];
    let in_cidr = [198, 51, 100, 7];
    let clean6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let banned6 = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66,
    ];
    let limited = [192, 0, 2, 77];
    let cases: [(&str, Vec<u8>, u32); 8] = [
        ("non-SIP pass (udp/53, v4)", udp4(clean, 53), 2),
        ("SIP pass, unbanned (udp/5060, v4)", udp4(clean, 5060), 2),
        ("SIP pass, unbanned (udp/5060, v6)", udp6(clean6, 5060), 2),
        ("banned drop (v4 /32)", udp4(banned, 5060), 1),
        ("banned drop (v6 /128)", udp6(banned6, 5060), 1),
        ("CIDR-banned drop (v4 in /24)", udp4(in_cidr, 5060), 1),
        ("banned, other port pass (v4)", udp4(banned, 53), 2),
        (RATE_LIMITED, udp4(limited, 5060), 1),
    ];
    say!(
        out,
        "## XDP per-packet cost (BPF_PROG_TEST_RUN, {REPEAT} repeats, median of {RUNS})\n"
    );
    say!(out, "One core's packets per second is 1000 / (ns per packet); the last column is how many cores that would take at the line rate of 64-byte frames: {} Mpps.\n",
        LINE_RATES.map(|(name, mpps)| format!("{name} {mpps}")).join(", "));
    say!(out, "Beside each case, two floors measured on the same packet: the *parse floor* is a program that parses exactly as sipguard does (VLAN tags, IPv4 options, the IPv6 extension-header chain) and drops; the *lookup floor* adds one hash lookup of the source in sipguard's own table of single addresses (the same size and fill). What sipguard adds to the lookup floor is its own work: the ban's clock and ports, the counters, the trace switch (and for a CIDR ban the trie, which the floor does not walk).\n");
    say!(out, "| blocklist size (v4 and v6 each) | case | ns/packet | × empty program | parse floor (ns) | lookup floor (ns) | × lookup floor | Mpps per core | cores for 10 / 25 / 100 GbE |");
    say!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut t = TestProgram::load()?;
    t.load_program(FLOOR_PARSE)?;
    t.load_program(FLOOR_LOOKUP)?;
    let now = clock::mono_now_ns();
    t.maps.ban(parse_net("192.0.2.66")?, 0, 0, now)?;
    t.maps.ban(parse_net("2001:db8::66")?, 0, 0, now)?;
    t.maps.ban(parse_net("198.51.100.0/24")?, 0, 0, now)?;
    let row = |out: &mut Section,
               size: u32,
               name: &str,
               ns: f64,
               floor: f64,
               floors: Option<(f64, f64)>| {
        let cores = LINE_RATES
            .map(|(_, mpps)| format!("{:.1}", mpps * ns / 1e3))
            .join(" / ");
        let floors = match floors {
            Some((parse, lookup)) => format!("{parse:.1} | {lookup:.1} | {:.2}", ns / lookup),
            None => " | | ".into(),
        };
        say!(
            out,
            "| {size} (+3) | {name} | {ns:.1} | {:.2} | {floors} | {:.1} | {cores} |",
            ns / floor,
            1e3 / ns
        );
    };
    let mut size = 0;
    for target in [1u32, 10_000, 1_000_000] {
        fill(&mut t, target - size)?;
        size = target;
        let floor = median_ns(|| Ok(t.run_floor(&udp4(clean, 5060), REPEAT)?.1))?;
        row(out, size, "empty XDP program (floor)", floor, floor, None);
        for (name, frame, action) in &cases {
            // The limiter is on only for its own case: 1 packet/s, burst 1,
            // so every repeat after the first is over the rate.
            let config = if *name == RATE_LIMITED {
                let mut c = common::Config::default().with_rate(1, 1);
                c.escalate_secs = 5;
                c.escalate_window_secs = 60;
                c
            } else {
                common::Config::default()
            };
            t.maps.set_config(config)?;
            let ns = median_ns(|| {
                let (got, d) = t.run_repeat(frame, REPEAT)?;
                if got != *action {
                    bail!("{name}: action {got}, expected {action}");
                }
                Ok(d)
            })?;
            let floors = (
                median_ns(|| Ok(t.run_named(FLOOR_PARSE, frame, REPEAT)?.1))?,
                median_ns(|| Ok(t.run_named(FLOOR_LOOKUP, frame, REPEAT)?.1))?,
            );
            row(out, size, name, ns, floor, Some(floors));
        }
        t.maps.set_config(common::Config::default())?;
    }
    rate_limiter(out)?;
    crate::admission::run(out)?;
    fragments(out)?;
    storm::forged_storm(out)?;
    storm::sources_in_turn(out)?;
    host_hash(out)?;
    trace_switch(out)?;
    crate::dispatcher::run(out)?;
    multi_core(out)
}

/// Single addresses in the exact-match hash against the same bans in the
/// LPM trie (where sipguard kept them before layout 4, and where the
/// program still finds one): 10 000 neighbouring /32s each, the probe
/// among them, so the trie's walk is as deep as a dense block makes it.
fn host_hash(out: &mut Section) -> Result<()> {
    say!(out, "\n### Banned addresses: exact-match hash against LPM trie (10 000 neighbouring /32s in each, one program, same run)\n");
    say!(out, "| case | ns/packet | × empty program |");
    say!(out, "|---|---:|---:|");
    let mut t = TestProgram::load()?;
    let now = clock::mono_now_ns();
    for i in 0..10_000u32 {
        let a = std::net::Ipv4Addr::from(0x6440_0000u32 + i);
        t.maps
            .ban(ipnet::IpNet::from(std::net::IpAddr::V4(a)), 0, 0, now)?;
    }
    let path = t.maps.pin_dir().join(common::map_name::BANNED_V4);
    let mut trie: aya::maps::LpmTrie<_, common::V4Key, common::BanEntry> =
        aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(aya::maps::MapData::from_pin(
            &path,
        )?))?;
    for i in 0..10_000u32 {
        let a = std::net::Ipv4Addr::from(0x6480_0000u32 + i).octets();
        let e = common::BanEntry {
            prefix_len: 32,
            id: 1_000_000 + u64::from(i),
            ..Default::default()
        };
        trie.insert(&aya::maps::lpm_trie::Key::new(32, common::v4_key(a)), e, 0)?;
    }
    let floor = median_ns(|| Ok(t.run_floor(&udp4([192, 0, 2, 1], 5060), REPEAT)?.1))?;
    for (name, src, action) in [
        (
            "SIP pass, unbanned (a hash probe and a trie lookup)",
            std::net::Ipv4Addr::new(192, 0, 2, 1),
            2,
        ),
        (
            "banned drop, /32 in the hash",
            std::net::Ipv4Addr::from(0x6440_0000u32 + 4_321),
            1,
        ),
        (
            "banned drop, /32 in the trie (layout 3 and before)",
            std::net::Ipv4Addr::from(0x6480_0000u32 + 4_321),
            1,
        ),
    ] {
        let frame = udp4(src.octets(), 5060);
        let ns = median_ns(|| {
            let (got, d) = t.run_repeat(&frame, REPEAT)?;
            if got != action {
                bail!("{name}: action {got}, expected {action}");
            }
            Ok(d)
        })?;
        say!(out, "| {name} | {ns:.1} | {:.2} |", ns / floor);
    }
    Ok(())
}

/// What `sipguard trace` costs other packets: the program as attached (it
/// reads the one-entry `trace` map per packet) against the same program
/// built without the switch, with the switch off, and on for another source.
fn trace_switch(out: &mut Section) -> Result<()> {
    say!(out, "\n### The trace switch (`sipguard trace`)\n");
    say!(out, "The attached program reads a one-entry `trace` map per packet. `sipguard_untraced` is the same program without that read, measured in the same run.\n");
    say!(out, "| case | untraced twin (ns) | switch off (ns) | × twin | tracing another source (ns) | × twin | tracing this source (ns) |");
    say!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let mut t = TestProgram::load()?;
    t.load_program("sipguard_untraced")?;
    t.maps
        .ban(parse_net("192.0.2.66")?, 0, 0, clock::mono_now_ns())?;
    let path = t.maps.pin_dir().join(common::map_name::TRACE);
    let mut switch: aya::maps::Array<_, common::TraceFilter> =
        aya::maps::Array::try_from(aya::maps::Map::Array(aya::maps::MapData::from_pin(&path)?))?;
    let tracing = |addr: [u8; 4]| {
        let mut f = common::TraceFilter {
            on: 1,
            family: 4,
            prefix_len: 32,
            deadline_ns: u64::MAX,
            ..Default::default()
        };
        f.addr[..4].copy_from_slice(&addr);
        f
    };
    for (name, src) in [
        ("SIP pass, unbanned (udp/5060, v4)", [192, 0, 2, 1]),
        ("banned drop (v4 /32)", [192, 0, 2, 66]),
    ] {
        let frame = udp4(src, 5060);
        let time = |t: &mut TestProgram, program: &str| {
            median_ns(|| Ok(t.run_named(program, &frame, REPEAT)?.1))
        };
        switch.set(0, common::TraceFilter::default(), 0)?;
        let twin = time(&mut t, "sipguard_untraced")?;
        let off = time(&mut t, sipguard::kernel::program::PROGRAM)?;
        switch.set(0, tracing([203, 0, 113, 1]), 0)?;
        let other = time(&mut t, sipguard::kernel::program::PROGRAM)?;
        // Records fill the 128 KiB ring (nobody reads it here): after that
        // each packet pays a failed reserve, as when a reader falls behind.
        switch.set(0, tracing(src), 0)?;
        let this = time(&mut t, sipguard::kernel::program::PROGRAM)?;
        switch.set(0, common::TraceFilter::default(), 0)?;
        say!(
            out,
            "| {name} | {twin:.1} | {off:.1} | {:.2} | {other:.1} | {:.2} | {this:.1} |",
            off / twin,
            other / twin
        );
    }
    Ok(())
}

/// Repeats per run in the multi-core table.
const MC_REPEAT: u32 = 5_000_000;
/// Two-CPU runs per case: the worst is reported (where the host places the
/// two vCPUs decides whether a shared cache line bounces).
const MC_RUNS: usize = 5;

/// One source's packets dropped (or passed) on every CPU at once, beside
/// the same on one CPU: a cache line that every CPU writes for the same
/// source (a ban's counters, the source's rate state) makes each drop cost
/// more as CPUs are added; a path with no shared writes stays flat.
fn multi_core(out: &mut Section) -> Result<()> {
    let cpus = std::thread::available_parallelism()?.get().min(8);
    let mut t = TestProgram::load()?;
    let now = clock::mono_now_ns();
    t.maps.ban(parse_net("192.0.2.66")?, 0, 0, now)?;
    let fd = t.prog_fd()?;
    say!(out, "\n## One source on {cpus} CPUs at once (BPF_PROG_TEST_RUN, {MC_REPEAT} repeats per CPU, worst of {MC_RUNS} runs)\n");
    say!(
        out,
        "| case | 1 CPU (ns/packet) | {cpus} CPUs at once (ns/packet, worst run) | × 1 CPU |"
    );
    say!(out, "|---|---:|---:|---:|");
    let cases: [(&str, Vec<u8>, common::Config, u32); 3] = [
        (
            "banned drop (v4 /32)",
            udp4([192, 0, 2, 66], 5060),
            common::Config::default(),
            1,
        ),
        (
            "rate-limited drop (over 1 pps)",
            udp4([192, 0, 2, 77], 5060),
            {
                let mut c = common::Config::default().with_rate(1, 1);
                c.escalate_secs = 5;
                c.escalate_window_secs = 60;
                c
            },
            1,
        ),
        (
            "SIP pass, limiter on, under the rate",
            udp4([192, 0, 2, 1], 5060),
            limiter_on(),
            2,
        ),
    ];
    for (name, frame, cfg, want) in &cases {
        t.maps.set_config(*cfg)?;
        // On a thread of its own: pinning must not outlive the measurement
        // (the later benchmarks need every CPU).
        let one = {
            let (got, ns) = std::thread::scope(|scope| {
                scope
                    .spawn(|| sipguard_tests::kernel::test_run_on(0, fd, frame, MC_REPEAT))
                    .join()
                    .expect("run thread")
            })?;
            if got != *want {
                bail!("{name}: action {got}, expected {want}");
            }
            ns
        };
        let mut worst: f64 = 0.0;
        for _ in 0..MC_RUNS {
            let per_cpu: Vec<f64> = std::thread::scope(|scope| {
                let runs: Vec<_> = (0..cpus)
                    .map(|cpu| {
                        scope.spawn(move || {
                            sipguard_tests::kernel::test_run_on(cpu, fd, frame, MC_REPEAT)
                        })
                    })
                    .collect();
                runs.into_iter()
                    .map(|r| r.join().expect("run thread").map(|(_, ns)| ns))
                    .collect::<Result<_>>()
            })?;
            worst = worst.max(per_cpu.iter().sum::<f64>() / per_cpu.len() as f64);
        }
        say!(
            out,
            "| {name} | {one:.1} | {worst:.1} | {:.2} |",
            worst / one
        );
    }
    Ok(())
}

/// A limiter that is on but never over: the path every packet takes.
fn limiter_on() -> common::Config {
    common::Config::default().with_rate(500, u32::MAX)
}

/// What fragments cost beside a whole packet, limiter on (never over).
fn fragments(out: &mut Section) -> Result<()> {
    let mut t = TestProgram::load()?;
    t.maps.set_config(limiter_on())?;
    t.maps
        .ban(parse_net("192.0.2.66")?, 0, 0, clock::mono_now_ns())?;
    let src = [192, 0, 2, 1];
    let src6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let cases: [(&str, Vec<u8>, u32); 6] = [
        ("whole SIP packet (v4, the clean path)", udp4(src, 5060), 2),
        (
            "IPv4 first fragment (ports read, limited)",
            frame(
                &[],
                ETH_P_IP,
                &ipv4(src, UDP, 0, MORE_FRAGMENTS, &udp(5060)),
            ),
            2,
        ),
        (
            "IPv4 later fragment (charged to its source)",
            frame(&[], ETH_P_IP, &ipv4(src, UDP, 0, 185, &[0u8; 64])),
            2,
        ),
        (
            "IPv6 atomic fragment (an ordinary packet)",
            frame(
                &[],
                ETH_P_IPV6,
                &ipv6(src6, FRAGMENT, &v6_frag(UDP, 0, false, &udp(5060))),
            ),
            2,
        ),
        (
            "IPv6 later fragment (charged to its source)",
            frame(
                &[],
                ETH_P_IPV6,
                &ipv6(src6, FRAGMENT, &v6_frag(UDP, 181, false, &[0u8; 64])),
            ),
            2,
        ),
        (
            "banned source's fragment (drop)",
            frame(
                &[],
                ETH_P_IP,
                &ipv4([192, 0, 2, 66], UDP, 0, 185, &[0u8; 64]),
            ),
            1,
        ),
    ];
    let floor = median_ns(|| Ok(t.run_floor(&cases[0].1, REPEAT)?.1))?;
    say!(
        out,
        "\n## Fragments (limiter on and never over, {REPEAT} repeats, median of {RUNS})\n"
    );
    say!(out, "| case | ns/packet | × empty program |");
    say!(out, "|---|---:|---:|");
    say!(out, "| empty XDP program (floor) | {floor:.1} | 1.00 |");
    for (name, f, want) in &cases {
        let ns = median_ns(|| {
            let (got, d) = t.run_repeat(f, REPEAT)?;
            if got != *want {
                bail!("{name}: action {got}, expected {want}");
            }
            Ok(d)
        })?;
        say!(out, "| {name} | {ns:.1} | {:.2} |", ns / floor);
    }
    Ok(())
}

/// The cost the rate limiter adds to unbanned SIP traffic, beside the same
/// packet with the limiter off and the empty program, in one run.
fn rate_limiter(out: &mut Section) -> Result<()> {
    let mut t = TestProgram::load()?;
    let frame = udp4([192, 0, 2, 1], 5060);
    let run = |t: &mut TestProgram, cfg: common::Config, want: u32| -> Result<f64> {
        t.maps.set_config(cfg)?;
        median_ns(|| {
            let (got, d) = t.run_repeat(&frame, REPEAT)?;
            if got != want {
                bail!("action {got}, expected {want}");
            }
            Ok(d)
        })
    };
    let floor = median_ns(|| Ok(t.run_floor(&frame, REPEAT)?.1))?;
    let off = run(&mut t, common::Config::default(), 2)?;
    // Never over: 100 M packets/s with an enormous burst.
    let under = run(
        &mut t,
        common::Config::default().with_rate(500, u32::MAX),
        2,
    )?;
    // Over after the first two packets: 1 packet/s, burst 1.
    let mut cfg = common::Config::default().with_rate(1, 1);
    cfg.escalate_secs = 5;
    cfg.escalate_window_secs = 60;
    let over = run(&mut t, cfg, 1)?;
    say!(out, "\n## Rate limiter cost (SIP/UDP from one unbanned source, {REPEAT} repeats, median of {RUNS})\n");
    say!(
        out,
        "| case | ns/packet | × empty program | added by the limiter |"
    );
    say!(out, "|---|---:|---:|---:|");
    say!(out, "| empty XDP program (floor) | {floor:.1} | 1.00 | |");
    say!(out, "| limiter off | {off:.1} | {:.2} | |", off / floor);
    say!(
        out,
        "| limiter on, under the rate (pass) | {under:.1} | {:.2} | {:+.1} ns |",
        under / floor,
        under - off
    );
    say!(
        out,
        "| limiter on, over the rate (drop) | {over:.1} | {:.2} | {:+.1} ns |",
        over / floor,
        over - off
    );

    // Scanner signatures on (limiter off), SIP packets of real sizes.
    let scan = |t: &mut TestProgram, body: &[u8], want: u32| -> Result<f64> {
        let f = sipguard_tests::packet::frame(
            &[],
            ETH_P_IP,
            &ipv4([192, 0, 2, 1], UDP, 0, 0, &udp_with(5060, body)),
        );
        median_ns(|| {
            let (got, d) = t.run_repeat(&f, REPEAT)?;
            if got != want {
                bail!("action {got}, expected {want}");
            }
            Ok(d)
        })
    };
    let phone = sip_options("User-Agent: Yealink SIP-T46S 66.86.0.15", 0);
    let no_ua = sip_options("", 400);
    let scanner = sip_options("User-Agent: friendly-scanner", 0);
    t.maps.set_config(common::Config::default())?;
    let phone_off = scan(&mut t, &phone, 2)?;
    t.maps.set_config(common::Config {
        flags: common::CONFIG_SCANNERS,
        ..common::Config::default()
    })?;
    let phone_on = scan(&mut t, &phone, 2)?;
    let no_ua_on = scan(&mut t, &no_ua, 2)?;
    let scanner_on = scan(&mut t, &scanner, 1)?;
    say!(out, "\n## Scanner signature cost (SIP/UDP OPTIONS from one unbanned source, {REPEAT} repeats, median of {RUNS})\n");
    say!(
        out,
        "| case | ns/packet | × empty program | added by the scan |"
    );
    say!(out, "|---|---:|---:|---:|");
    say!(
        out,
        "| scanners off, a phone's OPTIONS ({} bytes) | {phone_off:.1} | {:.2} | |",
        phone.len(),
        phone_off / floor
    );
    say!(out, "| scanners on, a phone's OPTIONS (User-Agent at byte {}) | {phone_on:.1} | {:.2} | {:+.1} ns |", ua_at(&phone), phone_on / floor, phone_on - phone_off);
    say!(out, "| scanners on, no User-Agent in the 512-byte window (worst case) | {no_ua_on:.1} | {:.2} | {:+.1} ns |", no_ua_on / floor, no_ua_on - phone_off);
    say!(
        out,
        "| scanners on, svmap's OPTIONS (drop) | {scanner_on:.1} | {:.2} | {:+.1} ns |",
        scanner_on / floor,
        scanner_on - phone_off
    );
    Ok(())
}

fn ua_at(body: &[u8]) -> usize {
    body.windows(11)
        .position(|w| w == b"User-Agent:")
        .unwrap_or(0)
}
