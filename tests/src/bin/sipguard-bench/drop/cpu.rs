//! Where the receive work runs, and its exact cost: the server veth's NAPI
//! kernel thread, pinned to the receiver's CPU, and its run time as the
//! scheduler counts it.
//!
//! A veth hands each frame to its peer in the sender's context: with no
//! NAPI instance, to `netif_rx` (the backlog, later run in whatever context
//! is on that CPU's softirq); with one, onto a ring that the peer's NAPI poll
//! empties. veth has a NAPI instance only while an XDP program is attached
//! in driver mode or GRO is requested (`veth_gro_requested`), and sends an
//! skb to it only if the sending veth has TSO off
//! (`veth_skb_is_eligible_for_gro`; XDP turns TSO off on the peer itself).
//! So GRO on the server's veth and TSO off on the client's put every
//! filter's packets through the same NAPI poll, and threaded NAPI runs that
//! poll in a kernel thread of its own. The poll runs the XDP program, then
//! GRO, whose list goes to `netif_receive_skb_list`: generic XDP, the IP
//! stack with its netfilter hooks (PREROUTING, INPUT), UDP, all inside the
//! thread. RPS stays off: it would queue the packets to a backlog again.
//!
//! The poll is also coalesced, as a NIC's interrupts are: woken by each
//! frame, a thread that is quicker than the sender goes back to sleep after
//! a few frames and is woken again, so that the quicker the filter, the
//! more wake-ups per frame (the drop-all floor measured above sipguard).
//! With a timer between polls every filter gets the same batches.
use super::RECEIVER_CPU;
use anyhow::{bail, Context as _, Result};
use sipguard_tests::netns::{self, Netns, Pair};
use std::time::{Duration, Instant};

/// Legacy ethtool commands (`struct ethtool_value`), enough for two flags.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// Coalescing (`gro_flush_timeout`, `napi_defer_hard_irqs`): once a poll
/// has found frames, the next one runs off a timer this long after it, not
/// woken by the next frame, until `DEFER_POLLS` polls in a row find none.
pub const COALESCE: Duration = Duration::from_micros(100);
const DEFER_POLLS: u32 = 10;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Sets up the receive path described above, before the filter (an XDP
/// program takes TSO away from the peer, which then refuses to set it).
pub fn receive_in_napi(pair: &Pair) -> Result<()> {
    let (client, client_if) = (&pair.client, &pair.client_if);
    if ethtool(client, client_if, ETHTOOL_STSO, 0).is_err()
        && ethtool(client, client_if, ETHTOOL_GTSO, 0)? != 0
    {
        bail!("cannot turn TSO off on {client_if}");
    }
    ethtool(&pair.server, &pair.server_if, ETHTOOL_SGRO, 1)?;
    if ethtool(&pair.server, &pair.server_if, ETHTOOL_GGRO, 0)? != 1 {
        bail!("GRO did not turn on for {}", pair.server_if);
    }
    let dev = format!("/sys/class/net/{}", pair.server_if);
    pair.server.exec(
        "sh",
        &[
            "-c",
            &format!(
                "echo 0 > {dev}/queues/rx-0/rps_cpus && echo 1 > {dev}/threaded \
                 && echo {} > {dev}/gro_flush_timeout && echo {DEFER_POLLS} > {dev}/napi_defer_hard_irqs",
                COALESCE.as_nanos()
            ),
        ],
        b"",
    )?;
    Ok(())
}

/// The server veth's NAPI threads (one per receive queue; a veth has one),
/// pinned to the receiver's CPU; their ids.
pub fn napi_threads(pair: &Pair) -> Result<Vec<i32>> {
    let prefix = format!("napi/{}-", pair.server_if);
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            set_affinity(pid, RECEIVER_CPU)?;
            threads.push(pid);
        }
    }
    if threads.is_empty() {
        bail!(
            "threaded NAPI is on for {} but no napi/ thread was found",
            pair.server_if
        );
    }
    Ok(threads)
}

/// One legacy ethtool get or set on `iface` in `ns`; returns the value.
fn ethtool(ns: &Netns, iface: &str, cmd: u32, data: u32) -> Result<u32> {
    let iface = iface.to_owned();
    netns::in_netns_scoped(ns, move || {
        let mut value = EthtoolValue { cmd, data };
        // SAFETY: all-zero is a valid ifreq; the name fits (IFNAMSIZ).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: a plain socket, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: ifr points at `value`, alive for the call.
        let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut ifr) };
        let err = std::io::Error::last_os_error();
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        if rc != 0 {
            bail!("ethtool command {cmd:#x} on {iface}: {err}");
        }
        Ok(value.data)
    })
}

/// The threads' run time so far: the scheduler's own count of the time
/// they ran (`se.sum_exec_runtime`, ns, the first field of
/// /proc/PID/schedstat), exact once they are asleep.
pub fn run_time(threads: &[i32]) -> Result<Duration> {
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

/// Waits until the threads have emptied their queue: their run time has not
/// moved for 20 ms (a slow filter can hold a full ring for a while).
pub fn wait_idle(threads: &[i32]) -> Result<()> {
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(50));
    let mut last = run_time(threads)?;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = run_time(threads)?;
        if now == last {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the NAPI thread is still busy 30 s after the flood");
        }
        last = now;
    }
}

/// Pins `pid` (0: the calling thread) to `cpu`.
pub fn set_affinity(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    apply_affinity(pid, &set).with_context(|| format!("cannot pin {pid} to CPU {cpu}"))
}

pub fn apply_affinity(pid: i32, set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: a valid set of the size given.
    if unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(set), set) } != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's CPUs.
pub fn affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: a zeroed set, filled in by the kernel.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(set)
}
