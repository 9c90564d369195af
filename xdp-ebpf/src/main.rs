//! sipguard's XDP program: parse → decide → count, one flat path per packet.
//!
//! * Parse: Ethernet with up to two VLAN tags (802.1Q, 802.1ad, and the old
//!   0x9100 QinQ), IPv4 honouring IHL and fragments, IPv6 with a bounded walk
//!   over extension headers (the fragment header included), then the TCP or
//!   UDP destination port.
//! * Decide: a source in the blocklist (LPM tries, exact or CIDR) whose ban has
//!   not expired is dropped when the packet goes to a protected port, to any port
//!   in all-ports mode, or is a fragment. When the most specific ban has ended or
//!   is for other ports, the bans covering it decide. The allowlist always wins.
//!   Everything else, including anything we cannot parse, passes.
//! * Rate-limit: an unbanned source's packets to a protected port, and its
//!   fragments, go through a per-source limiter (GCRA over a shared LRU map)
//!   when a forger could send them (UDP, TCP SYN, fragments); a source that
//!   keeps exceeding it is reported through a ring buffer, to be banned. A
//!   source with no state yet first goes through a per-CPU sketch, and gets
//!   its state only after a few packets in a window: one-packet forged
//!   sources cost no insert.
//! * Count: every packet lands in exactly one per-CPU verdict counter; a dropped
//!   packet also bumps its ban's own per-CPU packet/byte counters.
#![no_std]
#![no_main]
// `atomic_xadd`: core's atomic types have no RMW methods on the BPF target, but
// the intrinsic lowers to the BPF atomic add instruction.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod floors;
mod methods;
mod parse;
mod scanner;
mod sip_line;
mod tcp_first;
mod trace;

use aya_ebpf::{
    bindings::xdp_action,
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray,
        ProgramArray, RingBuf,
    },
    programs::XdpContext,
};
use common::{
    ban_counter_slot, counter, rate_key_v4, rate_key_v6, v4_key, AllowEntry, BanCounter, BanEntry,
    Config, Counter, FloodEvent, PendingScan, RateKey, RateLease, RateState, SketchLine,
    TraceFilter, TrustConfig, TrustEntry, V4Key, BAN_ALL_PORTS, BAN_COUNTER_SLOTS, BAN_PORTS_ONLY,
    CONFIG_ALL_PORTS, CONFIG_DRY_RUN, CONFIG_OVERLOADED, CONFIG_REPORT_SCANNERS, CONFIG_SCANNERS,
    EVENT_FLOOD, EVENT_SCANNER, FLOOD_RING_BYTES, HOT_LIMITED, LEASE_SLOTS, MAX_ALLOWED, MAX_BANS,
    MAX_RATE_SOURCES, MAX_TRUSTED, PORT_WORDS, REPORTED_FLOOD, REPORTED_SCANNER, SKETCH_LINES,
    SKETCH_SLOTS,
};
use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};
use parse::{Port, Source};

// Every map is pinned by name so that bans outlive the daemon and the CLI can
// work with the daemon stopped; userspace chooses the pin directory.
#[map(name = "banned_v4")]
static BANNED_V4: LpmTrie<V4Key, BanEntry> = LpmTrie::pinned(MAX_BANS, 0);
#[map(name = "banned_v6")]
static BANNED_V6: LpmTrie<[u8; 16], BanEntry> = LpmTrie::pinned(MAX_BANS, 0);
/// Single addresses, looked up before the tries (see `banned`).
#[map(name = "banned_host_v4")]
static BANNED_HOST_V4: HashMap<[u8; 4], BanEntry> = HashMap::pinned(MAX_BANS, 0);
#[map(name = "banned_host_v6")]
static BANNED_HOST_V6: HashMap<[u8; 16], BanEntry> = HashMap::pinned(MAX_BANS, 0);
#[map(name = "allowed_v4")]
static ALLOWED_V4: LpmTrie<V4Key, AllowEntry> = LpmTrie::pinned(MAX_ALLOWED, 0);
#[map(name = "allowed_v6")]
static ALLOWED_V6: LpmTrie<[u8; 16], AllowEntry> = LpmTrie::pinned(MAX_ALLOWED, 0);
#[map(name = "ports")]
static PORTS: Array<u64> = Array::pinned(PORT_WORDS, 0);
#[map(name = "config")]
static CONFIG: Array<Config> = Array::pinned(1, 0);
#[map(name = "counters")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(counter::COUNT, 0);
#[map(name = "rate")]
static RATE: LruHashMap<RateKey, RateState> = LruHashMap::pinned(MAX_RATE_SOURCES, 0);
#[map(name = "flood_events")]
static FLOOD_EVENTS: RingBuf = RingBuf::pinned(FLOOD_RING_BYTES, 0);
#[map(name = "ban_counters")]
static BAN_COUNTERS: PerCpuArray<BanCounter> = PerCpuArray::pinned(BAN_COUNTER_SLOTS, 0);
/// Per-CPU token leases (see `common::RateLease`); not pinned: a new
/// program starts with none, which only costs a shared update each.
#[map]
static LEASES: PerCpuArray<RateLease> = PerCpuArray::with_max_entries(LEASE_SLOTS, 0);
#[map(name = "rate_limited")]
static RATE_LIMITED: LruPerCpuHashMap<RateKey, u64> = LruPerCpuHashMap::pinned(HOT_LIMITED, 0);
#[map(name = "lost_reports")]
static LOST_REPORTS: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

#[map(name = "trace")]
static TRACE: Array<TraceFilter> = Array::pinned(1, 0);

/// Trusted sources (see `common::TrustEntry`); read only for a source over
/// its first budget, at most once a second (cached in its rate state).
#[map(name = "trusted")]
static TRUSTED: HashMap<RateKey, TrustEntry> = HashMap::pinned(MAX_TRUSTED, 0);
#[map(name = "trust_config")]
static TRUST_CONFIG: Array<TrustConfig> = Array::pinned(1, 0);
/// Packets that went through the limiter, per CPU: the daemon sums them to
/// tell overload (no shared line written per packet).
#[map(name = "sip_packets")]
static SIP_PACKETS: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

#[xdp]
pub fn sipguard(ctx: XdpContext) -> u32 {
    run(&ctx, true)
}

/// The same program without the trace switch: the baseline `cargo xtask
/// bench xdp` measures the switch's cost against. Never attached.
#[xdp]
pub fn sipguard_untraced(ctx: XdpContext) -> u32 {
    run(&ctx, false)
}

#[inline(always)]
fn run(ctx: &XdpContext, traced: bool) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (verdict, action, ban_id) = decide(ctx, len);
    if verdict == SCAN {
        // Does not return: the scanner program counts and answers.
        unsafe { SCANNER.tail_call(ctx, 0) };
        // No scanner program in the array (only a loader that did not put
        // it there): the packet passes unscanned, counted as it would be.
        let pass = match PENDING_SCAN.get(0) {
            Some(p) => p.pass,
            None => counter::PASS_NOT_BANNED,
        };
        return finish(ctx, pass, xdp_action::XDP_PASS, 0, len, traced);
    }
    finish(ctx, verdict, action, ban_id, len, traced)
}

/// Counts the verdict, traces the packet when its source is traced, and
/// answers (passing what would be dropped in a dry run).
#[inline(always)]
fn finish(ctx: &XdpContext, verdict: u32, action: u32, ban_id: u64, len: u64, traced: bool) -> u32 {
    count(verdict, len);
    // One read of a one-entry array while nobody traces.
    if traced {
        if let Some(filter) = TRACE.get(0) {
            // The clock only while someone traces: a lease past its
            // deadline (a tracer killed without cleaning up) writes nothing.
            if filter.on != 0 && now_ns() < filter.deadline_ns {
                trace::packet(ctx, filter, verdict, ban_id);
            }
        }
    }
    // Read only on the drop path: passing costs nothing more.
    if action == xdp_action::XDP_DROP && config_flags() & CONFIG_DRY_RUN != 0 {
        return xdp_action::XDP_PASS;
    }
    action
}

/// An empty program: the floor that `cargo xtask bench xdp` measures the real
/// one against, in the same run. Never attached.
#[xdp]
pub fn pass_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every packet: the floor of `cargo xtask bench drop`, attached to a
/// veth in a benchmark's own namespace to measure what the receive path costs
/// before any filtering. Never attached by sipguard itself.
#[xdp]
pub fn drop_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// How many covering prefixes are looked at when the most specific ban is
/// expired or does not cover the packet's port: a /32 that ended, or a
/// ports-only /32, must not hide a live or all-ports /24 around it. Nested
/// bans deeper than this are not something sipguard writes (the daemon
/// deletes ended bans within a second).
const MAX_COVERING: usize = 4;

/// Returns the counter to bump, the XDP action, and the id of the ban that
/// drops the packet (0: none).
#[inline(always)]
fn decide(ctx: &XdpContext, len: u64) -> (u32, u32, u64) {
    let pass = |(verdict, action): (u32, u32)| (verdict, action, 0);
    let pkt = match parse::packet(ctx) {
        Ok(pkt) => pkt,
        Err(verdict) => return (verdict, xdp_action::XDP_PASS, 0),
    };
    let (ban, drop_verdict, now) = match banned(&pkt) {
        Ban::Drop(ban, verdict, now) => (ban, verdict, now),
        Ban::None => return pass(unbanned(ctx, &pkt, counter::PASS_NOT_BANNED)),
        // Ignored from the moment it ends; the daemon deletes it.
        Ban::Expired => return pass(unbanned(ctx, &pkt, counter::PASS_BAN_EXPIRED)),
        Ban::OtherPort => return (counter::PASS_BANNED_OTHER_PORT, xdp_action::XDP_PASS, 0),
    };
    let id = unsafe { (*ban).id };
    if allowlisted(&pkt.src, now) {
        return (counter::PASS_ALLOWLISTED, xdp_action::XDP_PASS, id);
    }
    count_drop(id, len, now);
    (drop_verdict, xdp_action::XDP_DROP, id)
}

/// Counts a drop on this CPU's counters of the ban: nothing another CPU
/// writes, so a flood spread over many receive queues costs each CPU what
/// it costs one; one array slot, so a flood from a million banned sources
/// in turn costs a read, not a hash insert.
#[inline(always)]
fn count_drop(id: u64, len: u64, now: u64) {
    let Some(c) = BAN_COUNTERS.get_ptr_mut(ban_counter_slot(id)) else {
        return;
    };
    // Per-CPU value: no other CPU writes it, no atomics needed.
    unsafe {
        if (*c).id != id {
            *c = BanCounter {
                id,
                ..BanCounter::default()
            };
        }
        (*c).packets += 1;
        (*c).bytes += len;
        (*c).last_seen_ns = now;
    }
}

/// What the blocklist says about a packet's source.
enum Ban {
    /// No ban covers the source.
    None,
    /// The most specific ban has ended, and no covering one drops the packet.
    Expired,
    /// A live ban covers the source but not the packet's port, and no
    /// covering one drops it.
    OtherPort,
    /// This ban drops the packet, with this verdict (clock read at `now`).
    Drop(*const BanEntry, u32, u64),
}

/// The source's own ban (an exact-match hash: one probe, where a trie of a
/// million entries costs a walk of cache misses), then, while nothing drops
/// the packet, the longest-prefix ban in the tries and the bans covering it:
/// a lookup with prefix length `p - 1` returns the longest match shorter
/// than `p`. The tries hold ranges only; an empty one answers at once.
#[inline(always)]
fn banned(pkt: &parse::Packet) -> Ban {
    let mut found = Ban::None;
    let mut now = 0;
    let host = match pkt.src {
        Source::V4(addr) => unsafe { BANNED_HOST_V4.get(addr) },
        Source::V6(addr) => unsafe { BANNED_HOST_V6.get(addr) },
    };
    if let Some(ban) = host {
        now = now_ns();
        if ban.is_expired(now) {
            found = Ban::Expired;
        } else {
            match drops(ban, pkt) {
                Some(verdict) => return Ban::Drop(ban as *const BanEntry, verdict, now),
                None => found = Ban::OtherPort,
            }
        }
    }
    let mut prefix = match pkt.src {
        Source::V4(_) => 32,
        Source::V6(_) => 128,
    };
    for _ in 0..MAX_COVERING {
        let ban = match pkt.src {
            Source::V4(addr) => BANNED_V4.get(Key::new(prefix, v4_key(addr))),
            Source::V6(addr) => BANNED_V6.get(Key::new(prefix, addr)),
        };
        let Some(ban) = ban else {
            break;
        };
        if now == 0 {
            now = now_ns();
        }
        let this = if ban.is_expired(now) {
            Ban::Expired
        } else {
            match drops(ban, pkt) {
                Some(verdict) => return Ban::Drop(ban as *const BanEntry, verdict, now),
                None => Ban::OtherPort,
            }
        };
        // A live ban for other ports says more than an ended one.
        if matches!(found, Ban::None) || matches!(this, Ban::OtherPort) {
            found = this;
        }
        if ban.prefix_len == 0 || ban.prefix_len > prefix {
            break;
        }
        prefix = ban.prefix_len - 1;
    }
    found
}

/// The drop verdict of a live ban for this packet, or `None` when the packet
/// goes to a port the ban does not cover.
#[inline(always)]
fn drops(ban: &BanEntry, pkt: &parse::Packet) -> Option<u32> {
    // Global all-ports mode widens every ban but those scoped to the ports
    // (bans on packet evidence, which a forged source address can earn).
    let all_ports = ban.flags & BAN_ALL_PORTS != 0
        || (ban.flags & BAN_PORTS_ONLY == 0 && config_flags() & CONFIG_ALL_PORTS != 0);
    if pkt.fragment {
        // A banned source must not get through by fragmenting: a fragment's
        // port cannot be trusted, so every fragment is dropped.
        return Some(counter::DROP_BANNED_NO_PORT);
    }
    match pkt.port {
        Port::Dst(port) if all_ports || is_protected(port) => Some(counter::DROP_BANNED),
        Port::NoPorts if all_ports => Some(counter::DROP_BANNED),
        Port::Unknown => Some(counter::DROP_BANNED_NO_PORT),
        _ => None,
    }
}

/// A source that is not banned: packets to a protected port (and fragments,
/// whose port may be one) go first through the rate limiter (cheap, so a
/// flood is dropped before any payload is read), then the scanner
/// signatures on what conforms. Allow-listed sources pass both.
#[inline(always)]
fn unbanned(ctx: &XdpContext, pkt: &parse::Packet, pass: u32) -> (u32, u32) {
    let Some(cfg) = CONFIG.get(0) else {
        return (pass, xdp_action::XDP_PASS);
    };
    let (protected, scanners) = match pkt.port {
        Port::Dst(port) => (
            is_protected(port),
            cfg.flags & CONFIG_SCANNERS != 0 && pkt.udp_payload != 0,
        ),
        Port::Unknown => (true, false),
        Port::NoPorts => (false, false),
    };
    let limit = cfg.interval_ns != 0 && pkt.charged;
    // Invalid-message and per-method budgets: UDP to a protected port,
    // and TCP's first requests there (see `tcp_first`); RTP and the rest
    // never pay the lookup. Tested field by field: each is 0 on the paths
    // of the other protocol.
    let sip = if !protected {
        None
    } else if pkt.tcp != 0 {
        methods::tcp_limits()
    } else if pkt.udp_payload != 0 {
        methods::limits()
    } else {
        None
    };
    if !protected || (!limit && !scanners && sip.is_none()) {
        return (pass, xdp_action::XDP_PASS);
    }
    let key = match pkt.src {
        Source::V4(a) => rate_key_v4(a),
        Source::V6(a) => rate_key_v6(a),
    };
    // The clock only for the limiter: a scan that finds no scanner (nearly
    // every packet) needs none, and a read costs ~19 ns here (a helper
    // call); `scan` reads it itself on a match.
    let now = if limit { now_ns() } else { 0 };
    let mut pass = pass;
    if limit {
        // Under overload only a lease of the trusted tier is spent: overload
        // holds every other source to the overload budget.
        let overloaded = cfg.flags & CONFIG_OVERLOADED != 0 && overload_in_force(now);
        let leased = spend_lease(&key, now, overloaded);
        let admit = if leased == NO_LEASE {
            conforms(&key, &pkt.src, now, cfg, overloaded)
        } else {
            leased
        };
        // A trusted pass says so, unless the packet had more to say (a ban
        // that ended).
        if admit == counter::PASS_TRUSTED {
            if pass == counter::PASS_NOT_BANNED {
                pass = admit;
            }
        } else if admit != ADMIT {
            // Checked only for packets over the limit: the common path stays cheap.
            if allowlisted(&pkt.src, now) {
                return (counter::PASS_RATE_ALLOWLISTED, xdp_action::XDP_PASS);
            }
            return (admit, xdp_action::XDP_DROP);
        }
    }
    if let Some(limits) = sip {
        if pkt.tcp != 0 {
            let drop = tcp_first::judge(ctx, pkt.tcp, &key);
            if drop != tcp_first::PASS {
                let now = now_ns();
                if allowlisted(&pkt.src, now) {
                    return (counter::PASS_RATE_ALLOWLISTED, xdp_action::XDP_PASS);
                }
                // A forger can spend a source's method budget (forged UDP
                // requests, or a forged SYN and its first segment): a
                // trusted phone's new connections are never held for it.
                if unsafe { TRUSTED.get(&key) }.is_some_and(|e| !e.is_expired(now)) {
                    return (counter::PASS_TRUSTED, xdp_action::XDP_PASS);
                }
                return (drop, xdp_action::XDP_DROP);
            }
        } else if let Some(verdict) = methods::judge(
            ctx,
            pkt.udp_payload,
            &key,
            &pkt.src,
            limits,
            cfg,
            now,
            match pkt.port {
                Port::Dst(port) => port,
                _ => 0,
            },
        ) {
            return verdict;
        }
    }
    if scanners && set_aside(pkt, &key, now, pass) {
        return (SCAN, xdp_action::XDP_PASS);
    }
    (pass, xdp_action::XDP_PASS)
}

/// The verdict `unbanned` gives a packet whose payload the scanner
/// signatures must still read (see `scan`); never counted.
const SCAN: u32 = u32::MAX;

/// The packet `unbanned` set aside for the scanner program.
#[map(name = "pending_scan")]
static PENDING_SCAN: PerCpuArray<PendingScan> = PerCpuArray::pinned(1, 0);

/// The scanner program, tail-called (see `scan`).
#[map(name = "scanner")]
static SCANNER: ProgramArray = ProgramArray::pinned(1, 0);

#[inline(always)]
fn set_aside(pkt: &parse::Packet, key: &RateKey, now: u64, pass: u32) -> bool {
    let Some(p) = PENDING_SCAN.get_ptr_mut(0) else {
        return false;
    };
    let (src, v6) = match pkt.src {
        Source::V4(a) => (
            [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            0,
        ),
        Source::V6(a) => (a, 1),
    };
    unsafe {
        *p = PendingScan {
            payload: pkt.udp_payload as u64,
            now,
            key: *key,
            src,
            v6,
            pass,
        };
    }
    true
}

/// The scanner signatures, on a packet `unbanned` set aside: a program of
/// their own, tail-called, with what it needs in a map. The verifier checks
/// the payload scan once, on its own; inlined into each parse and ban path
/// that reaches it, it was verified ~20 times (770 000 instructions, 1.2 s
/// of every start before a single ban was enforced).
#[xdp]
pub fn sipguard_scan(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (verdict, action) = scan(&ctx);
    finish(&ctx, verdict, action, 0, len, true)
}

#[inline(always)]
fn scan(ctx: &XdpContext) -> (u32, u32) {
    let Some(p) = PENDING_SCAN.get_ptr(0) else {
        return (counter::PASS_NOT_BANNED, xdp_action::XDP_PASS);
    };
    // Read in place: a copy would add its size to the stack of every frame.
    let p = unsafe { &*p };
    if !scanner::is_scanner(ctx, scanner::launder(p.payload as usize)) {
        return (p.pass, xdp_action::XDP_PASS);
    }
    let src = if p.v6 != 0 {
        Source::V6(p.src)
    } else {
        Source::V4([p.src[0], p.src[1], p.src[2], p.src[3]])
    };
    // Its own clock, read only on a match: `p.now` is 0 when the limiter is
    // off (`unbanned` read none), and a choice between the two here made
    // LLVM spill an unset register, which the verifier refuses.
    let now = now_ns();
    if allowlisted(&src, now) {
        return (counter::PASS_SCANNER_ALLOWLISTED, xdp_action::XDP_PASS);
    }
    if config_flags() & CONFIG_REPORT_SCANNERS != 0 {
        report_scanner(&p.key, &src, now);
    }
    (counter::DROP_SCANNER, xdp_action::XDP_DROP)
}

/// Reports a scanning source once (until its rate state is forgotten); a
/// report lost to a full ring buffer is tried again with its next packet.
#[inline(always)]
fn report_scanner(key: &RateKey, src: &Source, now: u64) {
    let Some(st) = rate_state(key, now) else {
        return;
    };
    unsafe {
        if (*st).reported & REPORTED_SCANNER != 0 {
            return;
        }
        if report(key, src, EVENT_SCANNER, 0, 0) {
            (*st).reported |= REPORTED_SCANNER;
        }
    }
}

/// Sends a source to the daemon, to be banned. False when the ring buffer
/// is full: the report is counted as lost (`lost_reports`) and the caller
/// leaves the source unmarked, so that it is reported again.
#[inline(always)]
fn report(key: &RateKey, src: &Source, kind: u32, over_secs: u32, limited: u64) -> bool {
    let Some(mut entry) = FLOOD_EVENTS.reserve::<FloodEvent>(0) else {
        if let Some(lost) = LOST_REPORTS.get_ptr_mut(0) {
            // Per-CPU slot: no other CPU writes it.
            unsafe { *lost += 1 };
        }
        return false;
    };
    entry.write(FloodEvent {
        key: *key,
        over_secs,
        kind,
        limited,
        src: match src {
            Source::V4(a) => rate_key_v4(*a),
            Source::V6(a) => *a,
        },
    });
    entry.submit(0);
    true
}

/// The rate state of `key`, created when missing (see `new_rate_state`).
#[inline(always)]
fn rate_state(key: &RateKey, now: u64) -> Option<*mut RateState> {
    if let Some(st) = RATE.get_ptr_mut(key) {
        return Some(st);
    }
    new_rate_state(key, now)
}

/// Creates the rate state of `key` as a source idle until now (another CPU
/// may create it meanwhile: either way one entry results).
#[inline(always)]
fn new_rate_state(key: &RateKey, now: u64) -> Option<*mut RateState> {
    let fresh = RateState {
        tat_ns: now,
        ..RateState::default()
    };
    let _ = RATE.insert(key, fresh, u64::from(BPF_NOEXIST));
    RATE.get_ptr_mut(key)
}

/// A 64-bit hash of `key`: the high bits are the well mixed ones.
#[inline(always)]
fn key_hash(key: &RateKey) -> u64 {
    let (a, b) = unsafe {
        (
            core::ptr::read_unaligned(key.as_ptr() as *const u64),
            core::ptr::read_unaligned(key.as_ptr().add(8) as *const u64),
        )
    };
    (a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// This CPU's lease slot for `key`.
#[inline(always)]
fn lease_slot(key: &RateKey) -> Option<*mut RateLease> {
    let h = key_hash(key) >> 52;
    LEASES.get_ptr_mut((h as u32) & (LEASE_SLOTS - 1))
}

/// The limiter's first stage (see `common::SKETCH_ADMIT`): per CPU, two
/// counters of the source in one cache line, read and raised as a
/// count-min sketch with conservative update (only the counters at the
/// minimum go up, which keeps collisions' overestimates low).
#[map]
static SKETCH: PerCpuArray<SketchLine> = PerCpuArray::with_max_entries(SKETCH_LINES, 0);

/// True if the first stage lets this packet of a source without rate state
/// through: the source has sent fewer than `sketch_admit` packets in this
/// window on this CPU. False (give it its state) otherwise, the stage off
/// included.
#[inline(always)]
fn unseen_admitted(key: &RateKey, now: u64, cfg: &Config) -> bool {
    let (admit, window_ns) = (cfg.sketch_admit() as u16, cfg.sketch_window_ns());
    // (A window of 0 ns only with the limiter off; the test spares a
    // division by zero, which Rust would turn into a panic path.)
    if admit == 0 || window_ns == 0 {
        return false;
    }
    let window = ((now / window_ns) as u16 & 0xff) << 8;
    let h = key_hash(key);
    let Some(line) = SKETCH.get_ptr_mut((h >> 51) as u32 & (SKETCH_LINES - 1)) else {
        return false;
    };
    sketch_count(line, h, window, admit)
}

/// Counts one packet of the source hashed `h` in its sketch `line` (two
/// counters of it, conservative update, each tagged with `window`): true
/// while fewer than `admit` were counted for it in this window.
#[inline(always)]
pub(crate) fn sketch_count(line: *mut SketchLine, h: u64, window: u16, admit: u16) -> bool {
    let i = (h >> 8) as usize & (SKETCH_SLOTS - 1);
    // Never the same counter twice: j differs from i in at least one bit.
    let j = (i ^ ((h >> 13) as usize | 1)) & (SKETCH_SLOTS - 1);
    let read = |c: u16| if c & 0xff00 == window { c & 0xff } else { 0 };
    unsafe {
        let slots = &mut (*line).0;
        let (a, b) = (read(slots[i]), read(slots[j]));
        let seen = if a < b { a } else { b };
        if seen >= admit {
            return false;
        }
        if a == seen {
            slots[i] = window | (seen + 1);
        }
        if b == seen {
            slots[j] = window | (seen + 1);
        }
    }
    true
}

/// Puts `extra` tokens of `key` in this CPU's lease slot, unless a live
/// lease of another source is there: its tokens were charged to that
/// source (a collision costs speed, never tokens). `lease` as `charge`'s.
#[inline(always)]
fn take_lease(key: &RateKey, st: *mut RateState, extra: u64, lease: u32, now: u64) -> bool {
    let Some(slot) = lease_slot(key) else {
        return false;
    };
    unsafe {
        if (*slot).tokens != 0 && now < (*slot).valid_until_ns && (*slot).key != *key {
            return false;
        }
        let trusted = lease & LEASE_OF_TRUSTED != 0;
        let until = now + 1_000_000_000;
        (*slot).key = *key;
        (*slot).tokens = extra as u32;
        (*slot)._pad = if trusted { LEASE_TRUSTED } else { 0 };
        // Trusted tokens never outlive the trust the state holds.
        (*slot).valid_until_ns = if trusted && (*st).trust_until_ns < until {
            (*st).trust_until_ns
        } else {
            until
        };
    }
    true
}

/// `RateLease::_pad` of a lease granted at the trusted tier.
const LEASE_TRUSTED: u32 = 1;
/// In `charge`'s `lease`: the tokens are the trusted tier's.
const LEASE_OF_TRUSTED: u32 = 1 << 31;

/// Tokens leased at once at the trusted tier: 1/64 of its burst, at most
/// 32 (as `Config::lease` for the normal one).
#[inline(always)]
fn trusted_lease(t: &TrustConfig) -> u32 {
    let burst = t.trusted_tolerance_ns / t.trusted_interval_ns.max(1);
    (burst / 64).clamp(1, 32) as u32
}

/// `spend_lease`'s answer when no token was spent.
const NO_LEASE: u32 = u32::MAX - 2;

/// Spends one token this CPU leased for `key`, if it holds one: a
/// conforming packet that touches nothing another CPU writes. Answers as
/// `conforms` would (`ADMIT`, or `PASS_TRUSTED` for the trusted tier's
/// tokens), else `NO_LEASE`.
#[inline(always)]
fn spend_lease(key: &RateKey, now: u64, overloaded: bool) -> u32 {
    let Some(lease) = lease_slot(key) else {
        return NO_LEASE;
    };
    unsafe {
        if (*lease).tokens == 0 || now >= (*lease).valid_until_ns || (*lease).key != *key {
            return NO_LEASE;
        }
        let trusted = (*lease)._pad == LEASE_TRUSTED;
        // Overload holds every source to its tier's budget: only tokens of
        // the trusted tier are spent then.
        if overloaded && !trusted {
            return NO_LEASE;
        }
        (*lease).tokens -= 1;
        if trusted {
            counter::PASS_TRUSTED
        } else {
            ADMIT
        }
    }
}

/// `conforms`: the packet is within the budget it was charged to (the
/// normal one, or the overload one), and keeps the caller's pass verdict.
const ADMIT: u32 = u32::MAX - 1;

/// GCRA on the source's budget; returns `ADMIT`, `PASS_TRUSTED` (within
/// the trusted budget), `DROP_RATE_LIMITED` or `DROP_SHED`. With room for
/// it at the normal budget, a whole lease is taken from the budget at
/// once: this packet, and `lease - 1` tokens this CPU spends alone.
///
/// The budget: the trusted one for a source known trusted within the last
/// second, else the overload one while overloaded, else the normal one.
/// Only a packet over that budget looks the source up in `trusted` (at
/// most once a second per source): a clean packet pays nothing for trust.
#[inline(always)]
fn conforms(key: &RateKey, src: &Source, now: u64, cfg: &Config, overloaded: bool) -> u32 {
    // Counted here, off the lease's fast path (a lease's tokens are counted
    // when it is granted, see `charge`): the box's SIP packets for overload.
    count_sip_packets(1);
    let st = match RATE.get_ptr_mut(key) {
        Some(st) => st,
        // A source without state: no insert while it has sent only a few
        // packets in the window (a forged source sends one).
        None if unseen_admitted(key, now, cfg) => return ADMIT,
        None => match new_rate_state(key, now) {
            Some(st) => st,
            // The map refused a new entry: let the packet through rather than guess.
            None => return ADMIT,
        },
    };
    let tiers = TRUST_CONFIG.get(0);
    let (mut interval, mut tolerance) = (cfg.interval_ns, cfg.tolerance_ns);
    // Tokens leased at once: none under overload but at the trusted tier.
    let mut lease = if overloaded { 1 } else { cfg.lease };
    let mut admit = ADMIT;
    let mut trusted = false;
    unsafe {
        if let Some(t) = tiers {
            if now < (*st).trust_until_ns && t.trusted_interval_ns != 0 {
                (interval, tolerance, lease, admit) = (
                    t.trusted_interval_ns,
                    t.trusted_tolerance_ns,
                    trusted_lease(t) | LEASE_OF_TRUSTED,
                    counter::PASS_TRUSTED,
                );
                trusted = true;
            } else if overloaded && t.untrusted_interval_ns != 0 {
                (interval, tolerance) = (t.untrusted_interval_ns, t.untrusted_tolerance_ns);
            }
        }
        if charge(st, key, now, interval, tolerance, lease) {
            return admit;
        }
        // Over its budget: is the source trusted? Asked once a second.
        if let Some(t) = tiers {
            if !trusted && t.trusted_interval_ns != 0 && (*st).trust_checked_ns <= now {
                (*st).trust_checked_ns = now + 1_000_000_000;
                if let Some(entry) = TRUSTED.get(key) {
                    if !entry.is_expired(now) {
                        let until = now + 1_000_000_000;
                        (*st).trust_until_ns =
                            if entry.expires_at_ns != 0 && entry.expires_at_ns < until {
                                entry.expires_at_ns
                            } else {
                                until
                            };
                        trusted = true;
                        let (i, tol) = (t.trusted_interval_ns, t.trusted_tolerance_ns);
                        if charge(st, key, now, i, tol, trusted_lease(t) | LEASE_OF_TRUSTED) {
                            return counter::PASS_TRUSTED;
                        }
                    }
                }
            }
        }
        if overloaded && !trusted {
            // Shed: held to the overload budget, not flooding by its own
            // budget as far as the program knows; never escalated.
            return counter::DROP_SHED;
        }
        let limited = count_limited(key);
        // A trusted source over its budget is limited, never banned on
        // packet evidence: a forger who knows a registered phone's address
        // could otherwise get it banned by sending as it. Log bans still
        // ban it.
        if !trusted {
            escalate(st, key, src, now, cfg, limited);
        }
    }
    counter::DROP_RATE_LIMITED
}

/// Charges one packet to the budget (`interval`, `tolerance`) of the rate
/// state `st`; false when over it (nothing written then).
#[inline(always)]
unsafe fn charge(
    st: *mut RateState,
    key: &RateKey,
    now: u64,
    interval: u64,
    tolerance: u64,
    lease: u32,
) -> bool {
    unsafe {
        let tat = (*st).tat_ns;
        if tat <= now {
            // Idle long enough to have a full bucket (or new): restart the schedule.
            (*st).tat_ns = now + interval;
            return true;
        }
        let ahead = tat - now;
        if ahead > tolerance {
            return false;
        }
        let extra = u64::from((lease & !LEASE_OF_TRUSTED).saturating_sub(1));
        if extra > 0
            && ahead + extra * interval <= tolerance
            && take_lease(key, st, extra, lease, now)
        {
            atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*st).tat_ns, (extra + 1) * interval);
            // The lease's packets, counted now rather than one by one on
            // the fast path (a lease cut short, or not spent under an
            // overload, overcounts a little).
            count_sip_packets(extra);
        } else {
            atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*st).tat_ns, interval);
        }
        true
    }
}

/// Counts `n` packets that went through the limiter, on this CPU's slot.
#[inline(always)]
fn count_sip_packets(n: u64) {
    if let Some(c) = SIP_PACKETS.get_ptr_mut(0) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += n };
    }
}

/// The overload flag holds only while the daemon renews it (see
/// `TrustConfig::overload_until_ns`); read only when the flag is set.
#[inline(always)]
fn overload_in_force(now: u64) -> bool {
    TRUST_CONFIG
        .get(0)
        .is_some_and(|t| now < t.overload_until_ns)
}

/// Counts a packet of `key` dropped by the limiter on this CPU; returns this
/// CPU's count. Per CPU: a flood over many queues writes no shared line.
#[inline(always)]
fn count_limited(key: &RateKey) -> u64 {
    let count = match RATE_LIMITED.get_ptr_mut(key) {
        Some(c) => c,
        None => {
            let _ = RATE_LIMITED.insert(key, 0, u64::from(BPF_NOEXIST));
            match RATE_LIMITED.get_ptr_mut(key) {
                Some(c) => c,
                None => return 0,
            }
        }
    };
    unsafe {
        *count += 1;
        *count
    }
}

/// Counts the distinct seconds a source is over its limit; after
/// `escalate_secs` of them with no gap longer than `escalate_window_secs`,
/// reports it once through the ring buffer. Runs once per second per
/// limited source, not per packet.
#[inline(always)]
unsafe fn escalate(
    st: *mut RateState,
    key: &RateKey,
    src: &Source,
    now: u64,
    cfg: &Config,
    limited: u64,
) {
    let sec = now / 1_000_000_000;
    unsafe {
        let last = (*st).last_over_sec;
        if last == sec {
            return;
        }
        if sec - last > u64::from(cfg.escalate_window_secs) {
            (*st).over_secs = 0;
            (*st).reported &= !REPORTED_FLOOD;
        }
        (*st).last_over_sec = sec;
        (*st).over_secs += 1;
        if cfg.escalate_secs == 0
            || (*st).over_secs < cfg.escalate_secs
            || (*st).reported & REPORTED_FLOOD != 0
        {
            return;
        }
        // Marked only once the report is on its way: a lost one is sent
        // again the next second the source is over its limit.
        if report(key, src, EVENT_FLOOD, (*st).over_secs, limited) {
            (*st).reported |= REPORTED_FLOOD;
        }
    }
}

/// The coarse clock (tick resolution) costs a few ns where the precise one
/// costs ~60; bans and rates need no better than milliseconds. Read only on
/// the paths that need it.
#[inline(always)]
fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn is_protected(port: u16) -> bool {
    match PORTS.get(u32::from(port >> 6)) {
        Some(word) => word & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

#[inline(always)]
fn config_flags() -> u32 {
    match CONFIG.get(0) {
        Some(cfg) => cfg.flags,
        None => 0,
    }
}

#[inline(always)]
fn allowlisted(src: &Source, now: u64) -> bool {
    let entry = match src {
        Source::V4(addr) => ALLOWED_V4.get(Key::new(32, v4_key(*addr))),
        Source::V6(addr) => ALLOWED_V6.get(Key::new(128, *addr)),
    };
    let Some(entry) = entry else {
        return false;
    };
    let entry = entry as *const AllowEntry as *mut AllowEntry;
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*entry).hits, 1);
        (*entry).last_hit_ns = now;
    }
    true
}

#[inline(always)]
fn count(verdict: u32, len: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(verdict) {
        // Per-CPU slot: no other CPU writes it, no atomics needed.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
