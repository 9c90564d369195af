//! `cargo xtask bench xdp`: the XDP program's cost per packet, measured in the
//! kernel with BPF_PROG_TEST_RUN, beside an empty XDP program in the same run.
//! Figures are medians of several runs of `REPEAT` packets each; what matters
//! is the ratio to the empty program, which cancels most of the machine.
use anyhow::{bail, Result};
use sipguard::{addr::parse_net, clock};
use sipguard_tests::{kernel::TestProgram, packet::*};
use std::time::Duration;

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "xdp".into());
    match what.as_str() {
        "xdp" => xdp(),
        other => bail!("unknown benchmark '{other}' (known: xdp)"),
    }
}

fn median_ns(mut f: impl FnMut() -> Result<Duration>) -> Result<f64> {
    let mut v = (0..RUNS)
        .map(|_| f().map(|d| d.as_nanos() as f64))
        .collect::<Result<Vec<_>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[RUNS / 2])
}

/// Fills the blocklist with `n` distinct /32s (v4) and /128s (v6) in
/// 100.64.0.0/10 and fd00::/16, none of them the probe sources.
fn fill(t: &mut TestProgram, n: u32) -> Result<()> {
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

fn xdp() -> Result<()> {
    let clean = [192, 0, 2, 1];
    let banned = [192, 0, 2, 66];
    let in_cidr = [198, 51, 100, 7];
    let clean6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let banned6 = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66,
    ];
    let cases: [(&str, Vec<u8>, u32); 7] = [
        ("non-SIP pass (udp/53, v4)", udp4(clean, 53), 2),
        ("SIP pass, unbanned (udp/5060, v4)", udp4(clean, 5060), 2),
        ("SIP pass, unbanned (udp/5060, v6)", udp6(clean6, 5060), 2),
        ("banned drop (v4 /32)", udp4(banned, 5060), 1),
        ("banned drop (v6 /128)", udp6(banned6, 5060), 1),
        ("CIDR-banned drop (v4 in /24)", udp4(in_cidr, 5060), 1),
        ("banned, other port pass (v4)", udp4(banned, 53), 2),
    ];
    println!("## XDP per-packet cost (BPF_PROG_TEST_RUN, {REPEAT} repeats, median of {RUNS})\n");
    println!("| blocklist size | case | ns/packet | × empty program | Mpps per core |");
    println!("|---:|---|---:|---:|---:|");
    let mut t = TestProgram::load()?;
    let now = clock::mono_now_ns();
    t.maps.ban(parse_net("192.0.2.66")?, 0, 0, now)?;
    t.maps.ban(parse_net("2001:db8::66")?, 0, 0, now)?;
    t.maps.ban(parse_net("198.51.100.0/24")?, 0, 0, now)?;
    let mut size = 0;
    for target in [1u32, 10_000, 1_000_000] {
        fill(&mut t, target - size)?;
        size = target;
        let floor = median_ns(|| Ok(t.run_floor(&udp4(clean, 5060), REPEAT)?.1))?;
        println!(
            "| {size} (+3) | empty XDP program (floor) | {floor:.1} | 1.00 | {:.1} |",
            1e3 / floor
        );
        for (name, frame, action) in &cases {
            let ns = median_ns(|| {
                let (got, d) = t.run_repeat(frame, REPEAT)?;
                if got != *action {
                    bail!("{name}: action {got}, expected {action}");
                }
                Ok(d)
            })?;
            println!(
                "| {size} (+3) | {name} | {ns:.1} | {:.2} | {:.1} |",
                ns / floor,
                1e3 / ns
            );
        }
    }
    println!(
        "\nLine rate for 64-byte frames: 10 GbE 14.88 Mpps, 25 GbE 37.2 Mpps, 100 GbE 148.8 Mpps."
    );
    Ok(())
}
