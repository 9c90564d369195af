//! `cargo xtask bench drop`: dropping a flood from banned sources on a real
//! receive path, sipguard against the firewalls fail2ban drives.
//!
//! Two namespaces joined by a veth pair. A sender in the client namespace,
//! pinned to CPU 0, offers a paced flood of SIP-sized UDP to port 5060 from N banned sources
//! through an AF_PACKET socket, for a bounded time and count. A veth runs its
//! receiver in the sender's softirq, so the receive work is moved to CPU 1:
//! RPS on the server's veth (the stack's path) and, with driver-mode XDP, the
//! veth's NAPI in a thread pinned to CPU 1. CPU 1's busy time is then the
//! receive side's cost, whatever the filter does: wall time minus its idle
//! time, which the kernel accounts exactly (cpuidle residency, in µs); the
//! busy columns of /proc/stat are sampled at the tick (4 ms here) and alias
//! with a paced sender's batches. The XDP rows add two exact figures: the
//! NAPI thread's run time (/proc/PID/schedstat) and the program's own run
//! time (`kernel.bpf_stats_enabled`). The sender's batches are spaced with
//! a random jitter, so no pacing can beat with the tick either.
//!
//! Each filter counts its own drops (sipguard's per-CPU counters, iptables'
//! and nftables' rule counters); the packets the veth lost before the filter
//! (queue full) and those that got through to UDP are counted apart, and the
//! three must add up to what was sent.
use crate::report::Section;
use anyhow::{bail, Context as _, Result};
use aya::programs::XdpMode;
use sipguard_tests::{
    kernel::{TestProgram, DROP_FLOOR},
    netns::{self, Netns, Pair, SERVER_V4},
    packet::routable_udp4,
};
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

const BANS: [u32; 3] = [1, 1_000, 10_000];
/// How long each flood lasts, and its upper bound in packets.
const FLOOD: Duration = Duration::from_secs(2);
/// The offered load: the same for every filter, so that each one's receive
/// CPU per packet is measured under the same batching; below what the sender
/// manages here (350–550 k/s flat out), above what a long rule list can take.
const OFFERED_PPS: f64 = 250_000.0;
const MAX_PACKETS: u64 = 20_000_000;
/// Floods per filter and ban count; the median is reported.
const RUNS: usize = 3;
/// Frames handed to the kernel per sendmmsg call.
const BATCH: usize = 32;
const SENDER_CPU: usize = 0;
/// Makes the kernel count each program's run time (off again afterwards).
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const RECEIVER_CPU: usize = 1;

#[derive(Clone, Copy, PartialEq)]
enum Filter {
    /// An XDP program that drops everything: what the veth costs by itself.
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
            Filter::XdpFloor => "XDP drop-all program (floor: the veth itself)",
            Filter::Sipguard(XdpMode::Skb) => "sipguard, XDP skb (generic) mode",
            Filter::Sipguard(_) => "**sipguard, XDP driver mode**",
            Filter::Iptables { legacy: false } => "iptables (nf_tables), one rule per ban",
            Filter::Iptables { legacy: true } => "iptables-legacy, one rule per ban",
            Filter::Ipset => "iptables + ipset hash:ip",
            Filter::Nftables => "nftables set",
        }
    }
}

const FILTERS: [Filter; 6] = [
    Filter::Sipguard(XdpMode::Driver),
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
    /// Busy fraction of the receiver's CPU.
    cpu_rx: f64,
    /// The veth's NAPI thread's run time (driver-mode XDP only).
    napi: Option<Duration>,
    /// The XDP program's own run time and runs.
    program: Option<(Duration, u64)>,
}

impl Outcome {
    fn dropped_pps(&self) -> f64 {
        self.dropped as f64 / self.secs
    }

    /// Receive CPU time per dropped packet, in µs.
    fn rx_us_per_drop(&self) -> f64 {
        self.cpu_rx * self.secs * 1e6 / self.dropped.max(1) as f64
    }

    /// The NAPI thread's run time per dropped packet, in µs.
    fn napi_us_per_drop(&self) -> Option<f64> {
        self.napi
            .map(|t| t.as_secs_f64() * 1e6 / self.dropped.max(1) as f64)
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
        .filter(|c| !on_path(c))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} missing: `cargo xtask bench` installs them (apt-get install iptables ipset nftables)",
            missing.join(", ")
        );
    }
    say!(
        out,
        "## Drop throughput on a real receive path (veth between namespaces)\n"
    );
    say!(out, "A sender pinned to CPU {SENDER_CPU} offers {:.0} k frames/s for {} s: {}-byte SIP REGISTERs (UDP to port 5060) from N banned sources in turn, through an AF_PACKET socket. The receive side runs on CPU {RECEIVER_CPU} (RPS, threaded NAPI pinned there). *Dropped/s* is what the filter dropped, by its own counters (the floor: what reached it); a filter that cannot keep up holds the sender back through its socket buffer, so *sent/s* falls to what it can take; *rx CPU per drop* is CPU {RECEIVER_CPU}'s busy time (wall time minus its exactly accounted idle time) divided by that; each is also given as a ratio to sipguard in driver mode with the same bans (× sipguard: above 1 means more drops/s, or more CPU per drop). *NAPI per drop* is the veth's NAPI thread's own run time (schedstat) per drop, *program* the XDP program's own run time per packet (`bpf_stats_enabled`), both exact. *Lost before* is what the veth dropped because the receive side's queue was full.\n",
        OFFERED_PPS / 1e3, FLOOD.as_secs(), frame_len());
    say!(out, "| bans | filter | sent/s | dropped/s | × sipguard | rx CPU busy | rx CPU per drop | × sipguard | NAPI per drop | program | lost before | got through |");
    say!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    // Everything of ours but the receive side (NAPI threads, RPS) stays on
    // the sender's CPU, so CPU 1's busy time is the receive path alone.
    let all_cpus = affinity()?;
    set_affinity(0, SENDER_CPU)?;
    let stats_were = std::fs::read_to_string(BPF_STATS)?;
    std::fs::write(BPF_STATS, "1")?;
    let result = table(out);
    std::fs::write(BPF_STATS, stats_were.trim())?;
    apply_affinity(0, &all_cpus)?;
    result
}

fn table(out: &mut Section) -> Result<()> {
    // A first flood warms up what every later one uses (page pools, the
    // sender's socket, the CPUs' frequency); its figures are not kept.
    flood(Filter::XdpFloor, 1, Senders::All)?;
    let floor = median_flood(Filter::XdpFloor, 1, Senders::All)?;
    row(out, 1, Filter::XdpFloor, &floor, None);
    let mut slowest = Vec::new();
    let mut program_ns = Vec::new();
    for bans in BANS {
        let mut reference = None;
        for filter in FILTERS {
            let o = median_flood(filter, bans, Senders::All)?;
            row(out, bans, filter, &o, reference.as_ref());
            if filter == Filter::Sipguard(XdpMode::Driver) {
                program_ns.push((bans, o.program_ns().unwrap_or(0.0)));
            }
            match &reference {
                None => reference = Some(o),
                Some(r) => slowest.push((o.rx_us_per_drop() / r.rx_us_per_drop(), bans, filter)),
            }
        }
    }
    if let (Some((_, one)), Some((most, last))) = (program_ns.first(), program_ns.last()) {
        // The same bans and frames' size, every packet from one of them:
        // what the table's size costs, apart from each new source's lookup
        // missing the cache.
        let repeated = median_flood(Filter::Sipguard(XdpMode::Driver), *most, Senders::One)?
            .program_ns()
            .unwrap_or(0.0);
        say!(out, "\nsipguard's program, by its own run time, with {most} bans and the sources in turn: {last:.0} ns per packet, {:.2}× its {one:.0} ns with 1 ban (exact-match hash, not the trie walk). With the same {most} bans and every packet from one of them: {repeated:.0} ns, {:.2}× the 1-ban figure.", last / one, repeated / one);
    }
    say!(out, "\nHow to read it: a filter whose rx CPU is near 100 % is the bottleneck, and its dropped/s is what one core can filter; the others dropped all that was offered, and the CPU per drop is the figure to compare. Every row's dropped + lost before + got through is within 1 % of what was sent, or the run fails.");
    if let Some((ratio, bans, filter)) = slowest.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0))
    {
        say!(out, "The costliest baseline: {} with {bans} bans, {ratio:.0}× sipguard's receive CPU per dropped packet.", filter.name().trim_matches('*'));
    }
    Ok(())
}

fn row(out: &mut Section, bans: u32, filter: Filter, o: &Outcome, reference: Option<&Outcome>) {
    // The floor has no ratio; sipguard's own row is the reference (1.00).
    let (pps_ratio, cpu_ratio) = match (filter, reference) {
        (Filter::XdpFloor, _) => (String::new(), String::new()),
        (_, None) => ("1.00".into(), "1.00".into()),
        (_, Some(r)) => (
            format!("{:.2}", o.dropped_pps() / r.dropped_pps()),
            format!("{:.1}", o.rx_us_per_drop() / r.rx_us_per_drop()),
        ),
    };
    say!(
        out,
        "| {bans} | {} | {:.0} | {:.0} | {pps_ratio} | {:.0} % | {:.2} µs | {cpu_ratio} | {} | {} | {:.1} % | {} |",
        filter.name(),
        o.sent as f64 / o.secs,
        o.dropped_pps(),
        o.cpu_rx * 100.0,
        o.rx_us_per_drop(),
        o.napi_us_per_drop()
            .map_or(String::new(), |us| format!("{us:.2} µs")),
        o.program_ns().map_or(String::new(), |ns| format!("{ns:.0} ns")),
        o.lost_before as f64 * 100.0 / o.sent.max(1) as f64,
        o.got_through
    );
}

/// Which banned sources send.
#[derive(Clone, Copy)]
enum Senders {
    /// Each in turn.
    All,
    /// The first, every packet.
    One,
}

/// The median (by receive CPU per drop) of `RUNS` floods: single floods on
/// a VM vary by ±20 %.
fn median_flood(filter: Filter, bans: u32, senders: Senders) -> Result<Outcome> {
    let mut runs = (0..RUNS)
        .map(|_| flood(filter, bans, senders))
        .collect::<Result<Vec<_>>>()?;
    runs.sort_by(|a, b| a.rx_us_per_drop().total_cmp(&b.rx_us_per_drop()));
    Ok(runs.swap_remove(RUNS / 2))
}

/// Builds fresh namespaces, installs `filter` with `bans` banned sources,
/// floods from them and measures.
fn flood(filter: Filter, bans: u32, senders: Senders) -> Result<Outcome> {
    let pair = Pair::new()?;
    let sources: Vec<[u8; 4]> = (0..bans)
        .map(|i| (0x6440_0000u32 + i).to_be_bytes())
        .collect();
    // Held until the flood is over: the XDP program and its maps.
    let mut program = None;
    match filter {
        Filter::XdpFloor | Filter::Sipguard(_) => {
            let mut t = TestProgram::load()?;
            let now = sipguard::kernel::clock::mono_now_ns();
            for s in &sources {
                t.maps
                    .ban(ipnet::IpNet::from(std::net::IpAddr::from(*s)), 0, 0, now)?;
            }
            let (name, mode) = match filter {
                Filter::Sipguard(mode) => (sipguard::kernel::program::PROGRAM, mode),
                _ => (DROP_FLOOR, XdpMode::Driver),
            };
            t.attach_in(&pair.server, &pair.server_if, name, mode)?;
            program = Some((t, name));
        }
        Filter::Iptables { legacy } => iptables(&pair.server, &sources, legacy)?,
        Filter::Ipset => ipset(&pair.server, &sources)?,
        Filter::Nftables => nftables(&pair.server, &sources)?,
    }
    let napi_threads = receive_on_other_cpu(&pair)?;

    let macs = pair.macs()?;
    let server: [u8; 4] = SERVER_V4.parse::<std::net::Ipv4Addr>()?.octets();
    let sending = match senders {
        Senders::All => sources.len(),
        Senders::One => 1,
    };
    let frames: Vec<Vec<u8>> = sources[..sending]
        .iter()
        .enumerate()
        .map(|(i, s)| routable_udp4(macs, *s, server, 5060, &register(i)))
        .collect();

    let lost_at_start = tx_dropped(&pair)?;
    let udp_at_start = udp_received(&pair.server)?;
    let run_stats = || -> Result<Option<(Duration, u64)>> {
        program
            .as_ref()
            .map(|(t, name)| t.run_stats(name))
            .transpose()
    };
    let napi_start = run_time(&napi_threads)?;
    let program_start = run_stats()?;
    let idle_start = idle_us(RECEIVER_CPU)?;
    let window_start = Instant::now();
    let (sent, secs) = send_flood(&pair.client, &pair.client_if, &frames)?;
    // Let the receive side finish what is queued; its work is counted.
    std::thread::sleep(Duration::from_millis(200));
    let idle = idle_us(RECEIVER_CPU)? - idle_start;
    let window = window_start.elapsed().as_secs_f64();
    let napi = (!napi_threads.is_empty()).then(|| run_time(&napi_threads).map(|t| t - napi_start));
    let program_run = match (program_start, run_stats()?) {
        (Some((t0, n0)), Some((t1, n1))) => Some((t1 - t0, n1 - n0)),
        _ => None,
    };
    let busy = (1.0 - idle as f64 / 1e6 / window).clamp(0.0, 1.0);
    let dropped = match filter {
        Filter::Sipguard(_) => {
            let c = program.as_ref().expect("loaded").0.counters()?;
            c[common::counter::DROP_BANNED as usize].packets
        }
        // The floor has no counter: everything that reached it was dropped.
        Filter::XdpFloor => sent.saturating_sub(tx_dropped(&pair)? - lost_at_start),
        Filter::Iptables { legacy } => {
            let cmd = if legacy {
                "iptables-legacy"
            } else {
                "iptables"
            };
            rule_packets(
                &pair
                    .server
                    .exec(cmd, &["-w", "-nvxL", "f2b-sipguard-bench"], b"")?,
                "DROP",
            )
        }
        Filter::Ipset => rule_packets(
            &pair
                .server
                .exec("iptables", &["-w", "-nvxL", "INPUT"], b"")?,
            "DROP",
        ),
        Filter::Nftables => nft_counter(&pair.server.exec(
            "nft",
            &["list", "table", "inet", "f2b-table"],
            b"",
        )?)?,
    };
    let outcome = Outcome {
        // CPU fractions are over the flood and its drain; rates over the flood.
        secs,
        sent,
        dropped,
        lost_before: tx_dropped(&pair)? - lost_at_start,
        got_through: udp_received(&pair.server)? - udp_at_start,
        cpu_rx: busy * window / secs,
        napi: napi.transpose()?,
        program: program_run,
    };
    let accounted = outcome.dropped + outcome.lost_before + outcome.got_through;
    if (accounted as f64 - sent as f64).abs() > sent as f64 * 0.01 {
        bail!(
            "{} with {bans} bans: sent {sent}, but dropped {} + lost {} + through {} = {accounted}",
            filter.name(),
            outcome.dropped,
            outcome.lost_before,
            outcome.got_through
        );
    }
    drop(program);
    Ok(outcome)
}

/// RPS sends the stack's receive work to the receiver CPU; with driver-mode
/// XDP the veth also has a NAPI instance, run as a thread pinned there.
/// Returns those threads' ids.
fn receive_on_other_cpu(pair: &Pair) -> Result<Vec<i32>> {
    let dev = format!("/sys/class/net/{}", pair.server_if);
    let mask = 1u32 << RECEIVER_CPU;
    pair.server.exec(
        "sh",
        &["-c", &format!("echo {mask:x} > {dev}/queues/rx-0/rps_cpus")],
        b"",
    )?;
    // Only devices with NAPI instances accept `threaded` (veth: with XDP).
    let mut pinned = Vec::new();
    if pair
        .server
        .exec("sh", &["-c", &format!("echo 1 > {dev}/threaded")], b"")
        .is_ok()
    {
        let prefix = format!("napi/{}-", pair.server_if);
        for entry in std::fs::read_dir("/proc")? {
            let entry = entry?;
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end().starts_with(&prefix) {
                set_affinity(pid, RECEIVER_CPU)?;
                pinned.push(pid);
            }
        }
        if pinned.is_empty() {
            bail!(
                "threaded NAPI is on for {} but no napi/ thread was found",
                pair.server_if
            );
        }
    }
    Ok(pinned)
}

/// The threads' run time so far (exact: /proc/PID/schedstat, ns on CPU).
fn run_time(threads: &[i32]) -> Result<Duration> {
    let mut ns = 0u64;
    for pid in threads {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("unreadable schedstat")?;
    }
    Ok(Duration::from_nanos(ns))
}

/// `cpu`'s idle time so far, µs: the cpuidle residencies, which the kernel
/// accounts exactly; without cpuidle, the idle and iowait columns of
/// /proc/stat (exact too on a tickless kernel, in 10 ms units).
fn idle_us(cpu: usize) -> Result<u64> {
    let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle");
    if let Ok(states) = std::fs::read_dir(&dir) {
        let mut us = 0;
        for state in states {
            let path = state?.path().join("time");
            if let Ok(t) = std::fs::read_to_string(&path) {
                us += t.trim().parse::<u64>().context("unreadable cpuidle time")?;
            }
        }
        return Ok(us);
    }
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{cpu} ")))
        .context("no such CPU in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // USER_HZ is 100 on Linux.
    Ok((v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0)) * 10_000)
}

/// Pins `pid` (0: the calling thread) to `cpu`.
fn set_affinity(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    apply_affinity(pid, &set).with_context(|| format!("cannot pin {pid} to CPU {cpu}"))
}

fn apply_affinity(pid: i32, set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: a valid set of the size given.
    if unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(set), set) } != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's CPUs.
fn affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: a zeroed set, filled in by the kernel.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(set)
}

/// Floods `frames` in turn out of `iface` in `ns` from a thread pinned to the
/// sender CPU, for `FLOOD` or `MAX_PACKETS`; returns packets sent and seconds.
fn send_flood(ns: &Netns, iface: &str, frames: &[Vec<u8>]) -> Result<(u64, f64)> {
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let path = ns.path();
    let secs = std::thread::scope(|scope| -> Result<f64> {
        let sender = scope.spawn(|| -> Result<()> {
            netns::enter(&path)?;
            set_affinity(0, SENDER_CPU)?;
            let sock = netns::RawSocket::bind(iface)?;
            let mut iovs: Vec<libc::iovec> = frames
                .iter()
                .map(|f| libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                })
                .collect();
            // Enough messages to send a batch from any starting frame.
            let mut msgs: Vec<libc::mmsghdr> = (0..frames.len() + BATCH)
                .map(|i| {
                    // SAFETY: all-zero is a valid, empty msghdr.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = &mut iovs[i % frames.len()];
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let mut next = 0;
            let mut due = Instant::now();
            let mut total = 0u64;
            // Jitter: each batch's gap is 0.5–1.5× the mean, at random, so
            // the batches cannot beat with the receiver's timer tick.
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
            let mut jitter = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                0.5 + (rng >> 11) as f64 / (1u64 << 53) as f64
            };
            while !stop.load(Ordering::Relaxed) && total < MAX_PACKETS {
                // Paced: wait (spinning, on the sender's own CPU) until this
                // batch is due.
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                // SAFETY: BATCH valid messages starting at `next`, each
                // pointing at a live frame.
                let n = unsafe {
                    libc::sendmmsg(sock.fd(), msgs[next..].as_mut_ptr(), BATCH as u32, 0)
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS) {
                        continue;
                    }
                    return Err(e).context("sendmmsg");
                }
                total += n as u64;
                due += Duration::from_secs_f64(n as f64 / OFFERED_PPS * jitter());
                sent.store(total, Ordering::Relaxed);
                next = (next + n as usize) % frames.len();
            }
            Ok(())
        });
        let start = Instant::now();
        while start.elapsed() < FLOOD && !sender.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        sender.join().expect("sender thread")?;
        Ok(secs)
    })?;
    Ok((sent.load(Ordering::Relaxed), secs))
}

/// A REGISTER of a realistic size, different per source.
fn register(i: usize) -> Vec<u8> {
    format!(
        "REGISTER sip:{SERVER_V4} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 100.64.0.1:5060;branch=z9hG4bK-{i:08};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{i}@{SERVER_V4}>;tag=a73kszlfl{i:08}\r\n\
         To: <sip:{i}@{SERVER_V4}>\r\n\
         Call-ID: 1j9FpLxk3uxtm8tn@100.64.0.1-{i:08}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{i}@100.64.0.1:5060>\r\n\
         User-Agent: Grandstream GXP2170 1.0.11.3\r\n\
         Authorization: Digest username=\"{i}\", realm=\"{SERVER_V4}\", nonce=\"1f6c3e9a\", uri=\"sip:{SERVER_V4}\", response=\"0123456789abcdef0123456789abcdef\"\r\n\
         Expires: 3600\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn frame_len() -> usize {
    routable_udp4(([0; 6], [0; 6]), [0; 4], [0; 4], 5060, &register(0)).len()
}

/// Frames the client's veth dropped because the server side's queue was full.
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

/// The chain fail2ban's `iptables-allports` action builds (`-I INPUT -p udp
/// -j f2b-NAME`, then `-I f2b-NAME 1 -s IP -j DROP` per ban, so the newest
/// ban comes first), loaded at once with iptables-restore. DROP rather than
/// fail2ban's default REJECT: a reject sends a reply per packet, and the
/// comparison is of dropping.
fn iptables(ns: &Netns, sources: &[[u8; 4]], legacy: bool) -> Result<()> {
    let mut rules = String::from(
        "*filter\n:f2b-sipguard-bench - [0:0]\n-A INPUT -p udp -j f2b-sipguard-bench\n",
    );
    for s in sources.iter().rev() {
        rules.push_str(&format!(
            "-A f2b-sipguard-bench -s {}/32 -j DROP\n",
            std::net::Ipv4Addr::from(*s)
        ));
    }
    rules.push_str("-A f2b-sipguard-bench -j RETURN\nCOMMIT\n");
    let cmd = if legacy {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    };
    ns.exec(cmd, &["-w"], rules.as_bytes())?;
    Ok(())
}

/// fail2ban's `iptables-ipset` action: a `hash:ip` set with timeouts, and one
/// rule that drops its members.
fn ipset(ns: &Netns, sources: &[[u8; 4]]) -> Result<()> {
    let mut set = String::from("create f2b-sipguard-bench hash:ip timeout 0\n");
    for s in sources {
        set.push_str(&format!(
            "add f2b-sipguard-bench {} timeout 0\n",
            std::net::Ipv4Addr::from(*s)
        ));
    }
    ns.exec("ipset", &["restore"], set.as_bytes())?;
    ns.exec(
        "iptables",
        &[
            "-w",
            "-I",
            "INPUT",
            "-p",
            "udp",
            "-m",
            "set",
            "--match-set",
            "f2b-sipguard-bench",
            "src",
            "-j",
            "DROP",
        ],
        b"",
    )?;
    Ok(())
}

/// fail2ban's `nftables-allports` action: table `inet f2b-table`, an input
/// chain at priority -1, an `ipv4_addr` set and one rule (with a counter, so
/// that its drops can be read).
fn nftables(ns: &Netns, sources: &[[u8; 4]]) -> Result<()> {
    let elements: Vec<String> = sources
        .iter()
        .map(|s| std::net::Ipv4Addr::from(*s).to_string())
        .collect();
    let script = format!(
        "table inet f2b-table {{\n\
         set addr-set-sipguard-bench {{ type ipv4_addr; elements = {{ {} }} }}\n\
         chain f2b-chain {{ type filter hook input priority -1; meta l4proto {{ udp }} ip saddr @addr-set-sipguard-bench counter drop; }}\n\
         }}\n",
        elements.join(", ")
    );
    ns.exec("nft", &["-f", "-"], script.as_bytes())?;
    Ok(())
}

/// The sum of the packet counters of `iptables -nvxL` rules with `target`.
fn rule_packets(listing: &str, target: &str) -> u64 {
    listing
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() > 2 && cols[2] == target).then(|| cols[0].parse::<u64>().ok())?
        })
        .sum()
}

/// The packets of the `counter packets N bytes M` in an nft listing.
fn nft_counter(listing: &str) -> Result<u64> {
    let at = listing
        .find("counter packets ")
        .context("no counter in the nft rule")?;
    listing[at + "counter packets ".len()..]
        .split_whitespace()
        .next()
        .context("no packet count")?
        .parse()
        .context("bad packet count")
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        || std::path::Path::new("/usr/sbin").join(cmd).is_file()
}
