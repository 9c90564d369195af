//! `sipguard trace ADDR[/PREFIX]`: why is this phone blocked? One line per
//! packet from the source, with the verdict the XDP program reached and the
//! ban that decided it, until Ctrl-C (or `--count` packets).
//!
//! The program reads a one-entry `trace` map per packet; while it is on and
//! a packet's source is within the traced prefix, the program writes an
//! aya-log record to its own ring buffer, which this command reads
//! (`aya_log::EbpfLogger::init_from_id`). A daemon restart swaps in a new
//! program: the trace follows it. The switch is a lease (see
//! `kernel::trace_lease`): renewed while this runs, over on its own soon
//! after it is killed.
use crate::{
    addr,
    kernel::{clock, maps::KernelMaps, program, trace_lease},
};
use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, MapData};
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
    #[arg(long, value_parser = seconds)]
    pub seconds: Option<f64>,
    /// Trace a very wide prefix (IPv4 shorter than /16, IPv6 shorter than
    /// /48): every packet from it pays for a record.
    #[arg(long)]
    pub force: bool,
}

/// `--seconds`: a finite, non-negative number (NaN would panic later).
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a number of seconds")),
    }
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
    if too_wide(&net) && !args.force {
        bail!(
            "{} is very wide: every packet from it would pay for a log record. \
             Trace a narrower prefix (IPv4 /16 or longer, IPv6 /48 or longer), or add --force",
            addr::display(&net)
        );
    }
    let Some(mut switch) = trace_lease::open(pin_dir)? else {
        bail!(
            "no {} in {}: the attached program predates `trace` (restart the daemon once)",
            map_name::TRACE,
            pin_dir.display()
        );
    };
    // A lease whose tracer is gone or whose time is up is taken over.
    if let Some(pid) = trace_lease::holder(&switch.get(&0, 0)?, clock::mono_now_ns()) {
        if pid != std::process::id() {
            bail!(
                "process {pid} ({}) is tracing already (one trace at a time); stop it first",
                process_name(pid)
            );
        }
    }
    let maps = KernelMaps::open(pin_dir)?;
    let mut filter = TraceFilter {
        on: 1,
        family: if net.addr().is_ipv4() { 4 } else { 6 },
        prefix_len: u32::from(net.prefix_len()),
        owner_pid: std::process::id(),
        addr: [0; 16],
        deadline_ns: trace_lease::deadline(),
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
    let mut lease = Lease {
        switch,
        filter,
        renewed: Instant::now(),
    };
    let result = follow(args, pin_dir, &maps, &mut lease);
    // Off again, unless another trace has taken over meanwhile.
    if lease
        .switch
        .get(&0, 0)
        .is_ok_and(|f| f.owner_pid == std::process::id())
    {
        lease.switch.set(0, TraceFilter::default(), 0)?;
    }
    let seen = result?;
    eprintln!("{seen} packet(s) traced");
    Ok(())
}

/// Prefixes so wide that tracing them is a flood of records: IPv4 shorter
/// than /16, IPv6 shorter than /48 (0.0.0.0/0 and ::/0 among them).
fn too_wide(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() < 16,
        IpNet::V6(n) => n.prefix_len() < 48,
    }
}

/// What `ps` would call the process, escaped ("?" if unknown).
fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or_else(
        |_| "?".to_owned(),
        |c| crate::text::escape(crate::text::bounded(c.trim_end(), 64)).into_owned(),
    )
}

/// This tracer's lease on the switch, renewed while it runs.
struct Lease {
    switch: Array<MapData, TraceFilter>,
    filter: TraceFilter,
    renewed: Instant,
}

impl Lease {
    /// Pushes the deadline forward every `RENEW`. A switch turned off
    /// meanwhile (this tracer was stopped past its deadline) is taken again;
    /// one another tracer holds now is theirs: this trace ends.
    fn renew(&mut self) -> Result<()> {
        if self.renewed.elapsed() < trace_lease::RENEW {
            return Ok(());
        }
        self.renewed = Instant::now();
        let current = self.switch.get(&0, 0)?;
        if current.on != 0 && current.owner_pid != self.filter.owner_pid {
            bail!(
                "process {} ({}) has taken the trace over",
                current.owner_pid,
                process_name(current.owner_pid)
            );
        }
        self.filter.deadline_ns = trace_lease::deadline();
        self.switch.set(0, self.filter, 0)?;
        Ok(())
    }
}

/// Prints records until stopped; returns how many.
fn follow(args: &Args, pin_dir: &Path, maps: &KernelMaps, lease: &mut Lease) -> Result<u64> {
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
        lease.renew()?;
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
        counter::PASS_RATE_ALLOWLISTED => {
            "passed: over its rate (or an invalid-message or method budget), but allow-listed"
        }
        counter::DROP_SCANNER => "DROPPED: a scanner's User-Agent",
        counter::PASS_SCANNER_ALLOWLISTED => "passed: a scanner's User-Agent, but allow-listed",
        counter::PASS_TRUSTED => {
            "passed: a trusted source (registered with FreeSWITCH or trusted by the operator), \
             on the trusted budget (trusted_rate)"
        }
        counter::DROP_SHED => {
            "DROPPED: shed during overload (an untrusted source over untrusted_rate)"
        }
        counter::DROP_INVALID => "DROPPED: over the invalid-message budget (invalid_rate)",
        counter::DROP_REGISTER => "DROPPED: over the REGISTER budget ([flood.methods] REGISTER)",
        counter::DROP_INVITE => "DROPPED: over the INVITE budget ([flood.methods] INVITE)",
        counter::DROP_OPTIONS => "DROPPED: over the OPTIONS budget ([flood.methods] OPTIONS)",
        counter::DROP_SUBSCRIBE => "DROPPED: over the SUBSCRIBE budget ([flood.methods] SUBSCRIBE)",
        counter::DROP_OTHER_METHOD => {
            "DROPPED: over the budget of other methods ([flood.methods] other)"
        }
        // A newer program's verdict this build does not know.
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use common::{counter, method};

    /// Every verdict the program can reach reads as a sentence: a counter
    /// added to `common::counter` without one here fails.
    #[test]
    fn every_verdict_has_a_meaning() {
        for verdict in 0..counter::COUNT {
            let m = super::meaning(verdict);
            assert!(
                !m.is_empty(),
                "{} has no meaning",
                counter::NAMES[verdict as usize]
            );
            let drop = counter::DROPS.contains(&verdict);
            assert_eq!(m.starts_with("DROPPED"), drop, "{m}");
        }
    }

    /// A method budget's drop names its class as `[flood.methods]` does.
    #[test]
    fn a_method_drop_names_its_budget() {
        for class in 0..method::CLASSES as u32 {
            let name = method::NAMES[class as usize];
            let m = super::meaning(counter::DROP_METHOD + class);
            assert!(m.contains(&format!("[flood.methods] {name})")), "{m}");
        }
    }

    #[test]
    fn seconds_are_finite_and_not_negative() {
        assert_eq!(super::seconds("2.5"), Ok(2.5));
        for bad in ["NaN", "inf", "-1", "x"] {
            assert!(super::seconds(bad).is_err(), "{bad}");
        }
    }
}
