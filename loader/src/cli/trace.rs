//! `sipguard trace ADDR[/PREFIX]`: why is this phone blocked? One line per
//! packet from the source, with the verdict the XDP program reached and the
//! ban that decided it, until Ctrl-C (or `--count` packets).
//!
//! The program reads a one-entry `trace` map per packet; while it is on and
//! a packet's source is within the traced prefix, the program writes an
//! aya-log record to its own ring buffer, which this command reads
//! (`aya_log::EbpfLogger::init_from_id`). A daemon restart swaps in a new
//! program: the trace follows it.
use crate::{
    addr,
    kernel::{maps::KernelMaps, program},
};
use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, Map, MapData};
use common::{counter, map_name, TraceFilter};
use ipnet::IpNet;
use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The source to follow: ADDRESS or ADDRESS/PREFIX, IPv4 or IPv6.
    pub net: String,
    /// Stop after this many packets.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The records the program sent, as aya-log formats them.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

pub fn run(args: &Args, pin_dir: &Path) -> Result<()> {
    let net = addr::parse_net(&args.net)?;
    let path = pin_dir.join(map_name::TRACE);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open {}: the attached program predates `trace` (restart the daemon once)",
            path.display()
        )
    })?;
    let mut switch: Array<MapData, TraceFilter> = Array::try_from(Map::Array(data))?;
    let current = switch.get(&0, 0)?;
    // SAFETY: kill(pid, 0) only checks that the process exists.
    if current.on != 0
        && current.owner_pid != std::process::id()
        && unsafe { libc::kill(current.owner_pid as i32, 0) } == 0
    {
        bail!(
            "process {} is tracing already (one trace at a time); stop it first",
            current.owner_pid
        );
    }
    let maps = KernelMaps::open(pin_dir)?;
    let mut filter = TraceFilter {
        on: 1,
        family: if net.addr().is_ipv4() { 4 } else { 6 },
        prefix_len: u32::from(net.prefix_len()),
        owner_pid: std::process::id(),
        addr: [0; 16],
    };
    match net.network() {
        std::net::IpAddr::V4(a) => filter.addr[..4].copy_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => filter.addr = a.octets(),
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    switch.set(0, filter, 0)?;
    eprintln!(
        "tracing {} (Ctrl-C to stop): time, source, verdict, and the ban that decided it",
        addr::display(&net)
    );
    let result = follow(args, pin_dir, &maps);
    // Off again, unless another trace has taken over meanwhile.
    if switch
        .get(&0, 0)
        .is_ok_and(|f| f.owner_pid == std::process::id())
    {
        switch.set(0, TraceFilter::default(), 0)?;
    }
    let seen = result?;
    eprintln!("{seen} packet(s) traced");
    Ok(())
}

/// Prints records until stopped; returns how many.
fn follow(args: &Args, pin_dir: &Path, maps: &KernelMaps) -> Result<u64> {
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s.clamp(0.0, 86_400.0 * 365.0)));
    let records = Collect::default();
    let mut logger: Option<(u32, aya_log::EbpfLogger<Collect>)> = None;
    let mut last_look = Instant::now() - Duration::from_secs(10);
    let mut bans: HashMap<u64, IpNet> = HashMap::new();
    let mut seen = 0u64;
    loop {
        if STOP.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| Instant::now() >= d)
            || args.count.is_some_and(|c| seen >= c)
        {
            return Ok(seen);
        }
        // The program attached now: a restarted daemon attaches a new one.
        if last_look.elapsed() >= Duration::from_secs(1) {
            last_look = Instant::now();
            let Some((iface, id)) = program::attached_program(pin_dir)? else {
                bail!(
                    "no program attached (no links pinned in {})",
                    pin_dir.display()
                );
            };
            if logger.as_ref().is_none_or(|(current, _)| *current != id) {
                let l = aya_log::EbpfLogger::init_from_id_with_logger(id, records.clone())
                    .with_context(|| {
                        format!("cannot read the log records of program {id} on {iface}")
                    })?;
                logger = Some((id, l));
            }
        }
        let Some((_, l)) = logger.as_mut() else {
            continue;
        };
        let mut poll = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a signal interrupts it (EINTR), fine.
        unsafe { libc::poll(&mut poll, 1, 200) };
        l.flush();
        let batch = std::mem::take(&mut *records.0.lock().expect("not poisoned"));
        for text in batch {
            if args.count.is_some_and(|c| seen >= c) {
                break;
            }
            if let Some(line) = describe(&text, &mut bans, maps) {
                println!("{line}");
                seen += 1;
            }
        }
    }
}

/// `trace ADDR verdict N ban ID` → one readable line.
fn describe(text: &str, bans: &mut HashMap<u64, IpNet>, maps: &KernelMaps) -> Option<String> {
    let mut words = text.split_whitespace();
    if words.next()? != "trace" {
        return None;
    }
    let src = words.next()?;
    let verdict: u32 = words.nth(1)?.parse().ok()?;
    let id: u64 = words.nth(1)?.parse().ok()?;
    let name = counter::NAMES.get(verdict as usize).copied().unwrap_or("?");
    let mut line = format!(
        "{} {src:<39} {name:<24} {}",
        chrono::Local::now().format("%H:%M:%S%.3f"),
        meaning(verdict)
    );
    if id != 0 {
        if !bans.contains_key(&id) {
            if let Ok(all) = maps.bans() {
                bans.extend(all.into_iter().map(|b| (b.entry.id, b.net)));
            }
        }
        match bans.get(&id) {
            Some(net) => line.push_str(&format!(" by the ban of {}", addr::display(net))),
            None => line.push_str(&format!(" by ban #{id} (lifted since)")),
        }
    }
    Some(line)
}

fn meaning(verdict: u32) -> &'static str {
    match verdict {
        counter::PASS_NOT_IP => "passed: not IP",
        counter::PASS_MALFORMED => "passed: malformed headers (the kernel drops them)",
        counter::PASS_NOT_BANNED => "passed: not banned",
        counter::PASS_BAN_EXPIRED => "passed: the ban has ended",
        counter::PASS_BANNED_OTHER_PORT => "passed: banned, but not on this port",
        counter::PASS_ALLOWLISTED => "passed: banned, but allow-listed",
        counter::DROP_BANNED => "DROPPED: banned",
        counter::DROP_BANNED_NO_PORT => "DROPPED: banned (a fragment)",
        counter::DROP_RATE_LIMITED => "DROPPED: over its packet rate",
        counter::PASS_RATE_ALLOWLISTED => "passed: over its rate, but allow-listed",
        counter::DROP_SCANNER => "DROPPED: a scanner's User-Agent",
        counter::PASS_SCANNER_ALLOWLISTED => "passed: a scanner's User-Agent, but allow-listed",
        _ => "",
    }
}
