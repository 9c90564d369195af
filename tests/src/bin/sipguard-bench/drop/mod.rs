//! `cargo xtask bench drop`: dropping a flood from banned sources on a real
//! receive path, sipguard against the firewalls fail2ban drives and against
//! an XDP program that drops everything (the floor).
//!
//! Two namespaces joined by a veth pair. A sender in the client namespace,
//! pinned to CPU 0, offers a paced flood of SIP-sized UDP to port 5060 from
//! N banned sources through an AF_PACKET socket, for a bounded time and
//! count. On the server's veth every filter's packets go through one NAPI
//! poll run by a kernel thread pinned to CPU 1 (see `cpu`), so the receive
//! side's cost is that thread's run time, which the scheduler counts
//! exactly, for XDP and netfilter alike; the XDP rows add the program's own
//! run time (`kernel.bpf_stats_enabled`). Nothing sampled at the tick.
//!
//! Each filter counts its own drops (sipguard's per-CPU counters, iptables'
//! and nftables' rule counters); the packets the veth lost before the filter
//! (its ring full) and those that got through to UDP are counted apart, and
//! the three must add up to what was sent.
mod cpu;
mod filters;
mod send;

use crate::report::Section;
use anyhow::{bail, Context as _, Result};
use aya::programs::XdpMode;
use sipguard_tests::netns::{self, Netns, Pair};
use std::time::Duration;

const BANS: [u32; 3] = [1, 10_000, 1_000_000];
/// One rule per ban is not run above this many: the chain is walked rule by
/// rule, and going by the 10 000-rule rows 1 M rules would drop a few
/// hundred packets a second.
const MAX_RULES: u32 = 10_000;
/// How long each flood lasts, and its upper bound in packets.
const FLOOD: Duration = Duration::from_secs(2);
/// The offered load: the same for every filter, so that each one's receive
/// CPU per packet is measured under the same batching; below what the sender
/// manages here, above what a long rule list can take.
const OFFERED_PPS: f64 = 250_000.0;
const MAX_PACKETS: u64 = 20_000_000;
/// Floods per filter and ban count, on the same installed filter; the
/// median is reported.
const RUNS: usize = 3;
/// Frames handed to the kernel per sendmmsg call.
const BATCH: usize = 32;
const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;
/// Makes the kernel count each program's run time (off again afterwards).
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(Clone, Copy, PartialEq)]
enum Filter {
    /// An XDP program that drops everything: what the veth and its NAPI
    /// thread cost by themselves.
    XdpFloor,
    Sipguard(XdpMode),
    /// fail2ban's `iptables-allports` action: a chain of one rule per ban.
    Iptables {
        legacy: bool,
    },
    /// fail2ban's `iptables-ipset` action: one rule matching a `hash:ip` set.
    Ipset,
    /// fail2ban's `nftables-allports` action: one rule matching a set.
    Nftables,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::XdpFloor => "XDP drop-all program (floor; bans unused)",
            Filter::Sipguard(XdpMode::Skb) => "sipguard, XDP skb (generic) mode",
            Filter::Sipguard(_) => "**sipguard, XDP driver mode**",
            Filter::Iptables { legacy: false } => "iptables (nf_tables), one rule per ban",
            Filter::Iptables { legacy: true } => "iptables-legacy, one rule per ban",
            Filter::Ipset => "iptables + ipset hash:ip",
            Filter::Nftables => "nftables set",
        }
    }
}

const SIPGUARD: Filter = Filter::Sipguard(XdpMode::Driver);
const FILTERS: [Filter; 7] = [
    Filter::XdpFloor,
    SIPGUARD,
    Filter::Sipguard(XdpMode::Skb),
    Filter::Iptables { legacy: false },
    Filter::Iptables { legacy: true },
    Filter::Ipset,
    Filter::Nftables,
];

/// What one flood did.
struct Outcome {
    secs: f64,
    sent: u64,
    dropped: u64,
    lost_before: u64,
    got_through: u64,
    /// The NAPI thread's run time, from the flood's start until its queue
    /// was empty.
    napi: Duration,
    /// The XDP program's own run time and runs.
    program: Option<(Duration, u64)>,
}

impl Outcome {
    fn dropped_pps(&self) -> f64 {
        self.dropped as f64 / self.secs
    }

    /// The NAPI thread's run time per dropped packet, in µs.
    fn napi_us(&self) -> f64 {
        self.napi.as_secs_f64() * 1e6 / self.dropped.max(1) as f64
    }

    /// The program's run time per packet it ran on, in ns.
    fn program_ns(&self) -> Option<f64> {
        self.program
            .filter(|(_, runs)| *runs > 0)
            .map(|(t, runs)| t.as_nanos() as f64 / runs as f64)
    }
}

pub fn run(out: &mut Section) -> Result<()> {
    if std::thread::available_parallelism()?.get() < 2 {
        bail!("the drop benchmark needs two CPUs: one sends, the other receives");
    }
    let missing: Vec<_> = ["iptables", "iptables-legacy", "ipset", "nft"]
        .into_iter()
        .filter(|c| !filters::on_path(c))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} missing: `cargo xtask bench` installs them (apt-get install iptables ipset nftables)",
            missing.join(", ")
        );
    }
    say!(
        out,
        "## Drop throughput and receive CPU on a real receive path (veth between namespaces)\n"
    );
    say!(out, "A sender pinned to CPU {SENDER_CPU} offers {:.0} k frames/s for {} s: {}-byte SIP REGISTERs (UDP to port 5060) from N banned sources in turn, through an AF_PACKET socket on one end of a veth pair. On the other end GRO is on (and TSO off on the sending end), which gives a veth a NAPI instance whatever the filter, not only with XDP; its poll runs in a kernel thread of its own (threaded NAPI) pinned to CPU {RECEIVER_CPU}, RPS off. So all that the receive side does with a frame runs in that one thread, for every row alike: the XDP program in driver mode; past GRO, the stack: generic XDP, the netfilter hooks with iptables' and nftables' rules, UDP. The poll is coalesced as a NIC's interrupts are (`gro_flush_timeout` {} µs, `napi_defer_hard_irqs` on): once a poll has found frames the next runs off a timer, so every filter gets the same batches (without it a quicker filter is woken more often per frame, and the drop-all floor measured above sipguard). Each filter is installed once and flooded {RUNS} times; the flood with the median *NAPI per drop* is reported.\n",
        OFFERED_PPS / 1e3, FLOOD.as_secs(), send::frame_len(), cpu::COALESCE.as_micros());
    say!(out, "- *XDP drop-all program*, the floor: what the veth, its NAPI thread and handing a frame to XDP cost. On a veth the frames arrive as skbs that the sender built, with less headroom than XDP's 256 bytes, so before an XDP program runs, in either mode, each frame is copied into a buffer that has it (`veth_convert_skb_to_xdp_buff`; generic XDP: `skb_cow_data_for_xdp`): a copy that a NIC's driver-mode XDP does not make, and that the netfilter rows do not make either.");
    say!(out, "- *sent/s*: frames the sender handed to the kernel, per second of the flood. A filter slower than the offered load holds it back: the frames waiting for the NAPI thread are still charged to the sender's socket buffer, so its sends wait.");
    say!(out, "- *dropped/s*: what the filter dropped, by its own counters (sipguard's per-CPU counters, the rules' counters, nftables' named counter; the floor: what reached it); *× sipguard*: over sipguard in driver mode with the same bans.");
    say!(out, "- *NAPI busy*: the NAPI thread's run time over the flood's wall time; near 100 % the thread, so the filter, is the bottleneck.");
    say!(out, "- *NAPI per drop*: the NAPI thread's run time from the flood's start until its queue is empty (the scheduler's own count in ns, /proc/PID/schedstat; interrupts taken while it runs count in it unless the kernel accounts irq time apart), over *dropped*: the receive CPU a dropped frame costs. *× sipguard* and *× floor*: over sipguard's in driver mode with the same bans, and over the drop-all floor's in the same group.");
    say!(out, "- *program per packet*: the XDP program's own run time per run (run_time_ns / run_cnt with `kernel.bpf_stats_enabled`), a part of *NAPI per drop*.");
    say!(out, "- *lost before*: frames the sending veth dropped because the NAPI's ring was full; *got through*: datagrams that reached UDP.");
    say!(out, "- Not in any column: the sender's CPU {SENDER_CPU} (the same work for every row); nothing is sampled at the timer tick.\n");
    say!(out, "| bans | filter | sent/s | dropped/s | × sipguard | NAPI busy | NAPI per drop | × sipguard | × floor | program per packet | lost before | got through |");
    say!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    // Everything of ours (and the commands we start) stays on the sender's
    // CPU; the receiver's is the NAPI thread's.
    let all_cpus = cpu::affinity()?;
    cpu::set_affinity(0, SENDER_CPU)?;
    let stats_were = std::fs::read_to_string(BPF_STATS)?;
    std::fs::write(BPF_STATS, "1")?;
    let result = table(out);
    std::fs::write(BPF_STATS, stats_were.trim())?;
    cpu::apply_affinity(0, &all_cpus)?;
    result
}

fn table(out: &mut Section) -> Result<()> {
    let mut program_ns = Vec::new();
    let mut repeated = None;
    let mut costliest: Option<(f64, u32, Filter)> = None;
    let mut over_floor = Vec::new();
    // Each chain's figures at the largest count it was run with.
    let mut chains: Vec<(Filter, u32, f64)> = Vec::new();
    for (g, bans) in BANS.into_iter().enumerate() {
        let mut group = Vec::new();
        for filter in FILTERS {
            if matches!(filter, Filter::Iptables { .. }) && bans > MAX_RULES {
                group.push((filter, None));
                continue;
            }
            let last = g + 1 == BANS.len();
            // The very first flood warms up what every later one uses (page
            // pools, the sender's socket, the CPUs' frequency): not kept.
            let (o, one) = measure(
                filter,
                bans,
                g == 0 && group.is_empty(),
                last && filter == SIPGUARD,
            )?;
            if filter == SIPGUARD {
                program_ns.push((bans, o.program_ns().unwrap_or(0.0)));
            }
            if let Some(one) = one {
                repeated = Some((bans, one.program_ns().unwrap_or(0.0)));
            }
            if matches!(filter, Filter::Iptables { .. }) {
                chains.retain(|c| c.0 != filter);
                chains.push((filter, bans, o.napi_us()));
            }
            group.push((filter, Some(o)));
        }
        let find = |f: Filter| group.iter().find(|r| r.0 == f).and_then(|r| r.1.as_ref());
        let (Some(sg), Some(floor)) = (find(SIPGUARD), find(Filter::XdpFloor)) else {
            unreachable!("both are run in every group");
        };
        over_floor.push((bans, (sg.napi_us() - floor.napi_us()) * 1e3));
        for (filter, o) in &group {
            let Some(o) = o else {
                let (_, n, us) = chains.iter().find(|c| c.0 == *filter).expect("run before");
                say!(out, "| {bans} | {} | not run: a chain of one rule per ban is walked rule by rule, and at {n} rules it already cost {us:.1} µs per drop; {bans} is {:.0}× the rules | | | | | | | | | |", filter.name(), f64::from(bans) / f64::from(*n));
                continue;
            };
            row(out, bans, *filter, o, sg, floor);
            let ratio = o.napi_us() / sg.napi_us();
            if !matches!(filter, Filter::XdpFloor | Filter::Sipguard(_))
                && costliest.is_none_or(|c| ratio > c.0)
            {
                costliest = Some((ratio, bans, *filter));
            }
        }
    }
    say!(
        out,
        "\nsipguard in driver mode over the floor, by NAPI per drop: {}.",
        over_floor
            .iter()
            .map(|(b, ns)| format!("{ns:+.0} ns with {b} ban{}", if *b == 1 { "" } else { "s" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let (Some((_, one)), Some((most, last)), Some((_, same))) =
        (program_ns.first(), program_ns.last(), repeated)
    {
        say!(out, "sipguard's program, by its own run time, with {most} bans and the sources in turn: {last:.0} ns per packet, {:.2}× its {one:.0} ns with 1 ban (exact-match hash, not the trie walk). With the same {most} bans and every packet from one of them: {same:.0} ns, {:.2}× the 1-ban figure.", last / one, same / one);
    }
    say!(out, "\nHow to read it: a row whose NAPI busy is near 100 % and whose sent/s fell short of the offered load is bound by its filter, and its dropped/s is what one core can filter; the others dropped all that was offered, and NAPI per drop is the figure to compare. Every row's dropped + lost before + got through is within 1 % of what was sent, or the run fails.");
    if let Some((ratio, bans, filter)) = costliest {
        say!(out, "The costliest baseline run: {} with {bans} bans, {ratio:.0}× sipguard's NAPI time per dropped packet.", filter.name());
    }
    Ok(())
}

/// A ratio, with two significant digits or more.
fn ratio(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

fn row(out: &mut Section, bans: u32, filter: Filter, o: &Outcome, sg: &Outcome, floor: &Outcome) {
    say!(
        out,
        "| {bans} | {} | {:.0} | {:.0} | {} | {:.0} % | {:.2} µs | {} | {} | {} | {:.1} % | {} |",
        filter.name(),
        o.sent as f64 / o.secs,
        o.dropped_pps(),
        ratio(o.dropped_pps() / sg.dropped_pps()),
        o.napi.as_secs_f64() * 100.0 / o.secs,
        o.napi_us(),
        ratio(o.napi_us() / sg.napi_us()),
        ratio(o.napi_us() / floor.napi_us()),
        o.program_ns()
            .map_or(String::new(), |ns| format!("{ns:.0} ns")),
        o.lost_before as f64 * 100.0 / o.sent.max(1) as f64,
        o.got_through
    );
}

/// Builds fresh namespaces, installs `filter` with `bans` banned sources
/// and floods from them `RUNS` times (after a warm-up flood if asked);
/// returns the median flood, and with `one`, the median of `RUNS` more with
/// every packet from the first source.
fn measure(
    filter: Filter,
    bans: u32,
    warm_up: bool,
    one: bool,
) -> Result<(Outcome, Option<Outcome>)> {
    let start = std::time::Instant::now();
    let pair = Pair::new()?;
    cpu::receive_in_napi(&pair)?;
    let installed = filters::install(&pair, filter, bans)?;
    let napi = cpu::napi_threads(&pair)?;
    let set_up = start.elapsed().as_secs_f64();
    let macs = pair.macs()?;
    let median = |templates: &[Vec<u8>], sources: u32| -> Result<Outcome> {
        let mut runs = (0..RUNS)
            .map(|_| flood(&pair, &installed, &napi, templates, sources))
            .collect::<Result<Vec<_>>>()?;
        runs.sort_by(|a, b| a.napi_us().total_cmp(&b.napi_us()));
        Ok(runs.swap_remove(RUNS / 2))
    };
    let all = send::templates(macs, bans)?;
    if warm_up {
        flood(&pair, &installed, &napi, &all, bans)?;
    }
    let outcome = median(&all, bans)?;
    let repeated = one
        .then(|| median(&send::templates(macs, 1)?, 1))
        .transpose()?;
    installed.take_down(&pair.server);
    drop(pair);
    // Not in the table: where the bench's own time goes.
    eprintln!(
        "  ({}, {bans} bans: set up in {set_up:.1} s, all in {:.1} s)",
        filter.name(),
        start.elapsed().as_secs_f64()
    );
    Ok((outcome, repeated))
}

/// The counters a flood is measured with, read before and after.
struct Counts {
    lost: u64,
    udp: u64,
    dropped: Option<u64>,
    napi: Duration,
    program: Option<(Duration, u64)>,
}

impl Counts {
    fn read(pair: &Pair, installed: &filters::Installed, napi: &[i32]) -> Result<Self> {
        Ok(Self {
            lost: tx_dropped(pair)?,
            udp: udp_received(&pair.server)?,
            dropped: installed.dropped(&pair.server)?,
            napi: cpu::run_time(napi)?,
            program: installed.program_runs()?,
        })
    }
}

/// One flood through the installed filter, measured.
fn flood(
    pair: &Pair,
    installed: &filters::Installed,
    napi: &[i32],
    templates: &[Vec<u8>],
    sources: u32,
) -> Result<Outcome> {
    let before = Counts::read(pair, installed, napi)?;
    let (sent, secs) = send::flood(&pair.client, &pair.client_if, templates, sources)?;
    // The thread's work on what was queued is the flood's too.
    cpu::wait_idle(napi)?;
    let after = Counts::read(pair, installed, napi)?;
    let lost_before = after.lost - before.lost;
    let got_through = after.udp - before.udp;
    let outcome = Outcome {
        secs,
        sent,
        // The floor has no counter: everything that reached it was dropped.
        dropped: match (before.dropped, after.dropped) {
            (Some(b), Some(a)) => a - b,
            _ => sent.saturating_sub(lost_before + got_through),
        },
        lost_before,
        got_through,
        napi: after.napi - before.napi,
        program: match (before.program, after.program) {
            (Some((t0, n0)), Some((t1, n1))) => Some((t1 - t0, n1 - n0)),
            _ => None,
        },
    };
    let name = installed.filter.name();
    let accounted = outcome.dropped + outcome.lost_before + outcome.got_through;
    if (accounted as f64 - sent as f64).abs() > sent as f64 * 0.01 {
        bail!(
            "{name}: sent {sent}, but dropped {} + lost {} + through {} = {accounted}",
            outcome.dropped,
            outcome.lost_before,
            outcome.got_through
        );
    }
    // Even the floor's poll costs far more than this per packet: less means
    // the packets went around the NAPI thread.
    if outcome.napi_us() < 0.05 {
        bail!(
            "{name}: the NAPI thread ran {:?} for {} drops: the packets did not go through it",
            outcome.napi,
            outcome.dropped
        );
    }
    Ok(outcome)
}

/// Frames the client's veth dropped because the server side's ring was full.
fn tx_dropped(pair: &Pair) -> Result<u64> {
    let out = pair
        .client
        .ip(&["-j", "-s", "link", "show", "dev", &pair.client_if])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .context("no tx dropped counter in `ip -s link`")
}

/// Datagrams that reached UDP in `ns` (delivered, or to a closed port).
fn udp_received(ns: &Netns) -> Result<u64> {
    let snmp = netns::in_netns_scoped(ns, || {
        Ok(std::fs::read_to_string("/proc/thread-self/net/snmp")?)
    })?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        lines.next().context("no Udp line")?,
        lines.next().context("no Udp values")?,
    );
    let field = |name: &str| -> Result<u64> {
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .context("no such Udp field")?;
        Ok(values
            .split_whitespace()
            .nth(i)
            .context("short Udp line")?
            .parse()?)
    };
    Ok(field("InDatagrams")? + field("NoPorts")? + field("InErrors")?)
}
