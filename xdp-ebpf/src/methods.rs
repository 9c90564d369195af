//! The budgets on what a UDP packet to a SIP port starts with (see
//! `sip_line`): invalid messages per source, and requests per source and
//! method class. Only packets of a class with a budget are charged: valid
//! traffic pays for the classification (a few loads) and, for a method
//! with a budget, one lookup of its own state.
use crate::{
    allowlisted, key_hash, now_ns, parse::Source, report, sip_line, sketch_count, xdp_action,
    Config, RateKey, TRUSTED,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use common::{
    counter, method, SipBudget, SipLimits, SipRateKey, SipRateState, SketchLine, EVENT_INVALID,
    MAX_SIP_RATE, SIP_INVALID_ON, SIP_METHODS_ON, SKETCH_ADMIT, SKETCH_LINES,
};
use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};

#[map(name = "sip_limits")]
static SIP_LIMITS: Array<SipLimits> = Array::pinned(1, 0);

#[map(name = "sip_rate")]
static SIP_RATE: LruHashMap<SipRateKey, SipRateState> = LruHashMap::pinned(MAX_SIP_RATE, 0);

/// The budgets' first stage, a sketch of their own: the limiter's counts
/// in windows of its own length, and a counter written in another
/// window's numbering reads as 0 to it and is reset by it, so sharing one
/// let a source's limiter counts be reset by forged packets of addresses
/// hashing beside it (it never got state: never limited). A quarter of
/// the limiter's size: only sources sending these classes reach it.
const SIP_SKETCH_LINES: u32 = SKETCH_LINES / 4;

#[map(name = "sip_sketch")]
static SIP_SKETCH: PerCpuArray<SketchLine> = PerCpuArray::with_max_entries(SIP_SKETCH_LINES, 0);

/// The budgets, when any is on: read once per UDP packet to a protected port.
#[inline(always)]
pub fn limits() -> Option<&'static SipLimits> {
    match SIP_LIMITS.get(0) {
        Some(l) if l.flags != 0 => Some(l),
        _ => None,
    }
}

/// The budgets a TCP segment may be charged to, when on: the method
/// budgets alone (see `tcp_first::judge`).
#[inline(always)]
pub fn tcp_limits() -> Option<&'static SipLimits> {
    limits().filter(|l| l.flags & SIP_METHODS_ON != 0)
}

/// The verdict on the UDP packet whose payload is at `payload`, when a
/// budget drops it (or lets it through only for the allowlist). `now` is
/// the limiter's clock, 0 when it read none; `port` the destination port.
#[inline(always)]
pub fn judge(
    ctx: &XdpContext,
    payload: usize,
    key: &RateKey,
    src: &Source,
    limits: &SipLimits,
    cfg: &Config,
    now: u64,
    port: u16,
) -> Option<(u32, u32)> {
    let class = sip_line::classify(ctx, payload);
    let (budget, verdict) = if class == sip_line::INVALID {
        // Judged on the SIP ports only (see `SipLimits::invalid_ports`).
        if limits.flags & SIP_INVALID_ON == 0 || !limits.judges_invalid(port) {
            return None;
        }
        (&limits.invalid, counter::DROP_INVALID)
    } else if class < method::CLASSES as u32 {
        if limits.flags & SIP_METHODS_ON == 0 {
            return None;
        }
        // Bounded for the verifier: `class` indexes the array.
        let budget = limits.methods.get(class as usize)?;
        (budget, counter::DROP_METHOD + class)
    } else {
        return None;
    };
    if !budget.is_on() {
        return None;
    }
    let skey = SipRateKey {
        key: *key,
        class: if class == sip_line::INVALID {
            method::INVALID
        } else {
            class
        },
        _pad: 0,
    };
    // The limiter's reading when it made one: a clock read is a helper
    // call (~19 ns here).
    let now = if now != 0 { now } else { now_ns() };
    // A request under its budget on this CPU's lease: no shared state
    // touched (the clean path of a source that has state).
    if class != sip_line::INVALID && leased(budget) && spend_lease(&skey, now) {
        return None;
    }
    let st = over(&skey, budget, now, class != sip_line::INVALID)?;
    if allowlisted(src, now) {
        return Some((counter::PASS_RATE_ALLOWLISTED, xdp_action::XDP_PASS));
    }
    if class == sip_line::INVALID {
        escalate(st, key, src, now, cfg);
    }
    Some((verdict, xdp_action::XDP_DROP))
}

/// GCRA (as `conforms`): the state of `skey` when its packet at `now` is
/// over `budget`, `None` when it conforms. With `lease`, a conforming
/// packet may take more of the budget at once for this CPU (see
/// `grant_lease`).
#[inline(always)]
pub(crate) fn over(
    skey: &SipRateKey,
    budget: &SipBudget,
    now: u64,
    lease: bool,
) -> Option<*mut SipRateState> {
    let st = match SIP_RATE.get_ptr_mut(skey) {
        Some(st) => st,
        None => {
            if unseen(skey, budget, now) {
                return None;
            }
            let fresh = SipRateState {
                tat_ns: now,
                ..SipRateState::default()
            };
            let _ = SIP_RATE.insert(skey, &fresh, u64::from(BPF_NOEXIST));
            // The map refused a new entry: let the packet through.
            SIP_RATE.get_ptr_mut(skey)?
        }
    };
    let interval = budget.interval_ns;
    unsafe {
        let tat = (*st).tat_ns;
        // Idle long enough to have a full bucket (or new): restart the
        // schedule from now.
        if tat <= now {
            // A plain store, so no lease here: another CPU's add in between
            // would be overwritten (one packet's worth at most this way).
            (*st).tat_ns = now + interval;
            return None;
        }
        let ahead = tat - now;
        if ahead > budget.tolerance_ns {
            return Some(st);
        }
        let extra = if lease { lease_size(budget) - 1 } else { 0 };
        if extra > 0
            && ahead + extra * interval <= budget.tolerance_ns
            && grant_lease(skey, extra, now)
        {
            atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*st).tat_ns, (extra + 1) * interval);
        } else {
            atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*st).tat_ns, interval);
        }
    }
    None
}

/// Tokens of one (source, class) budget leased to this CPU, as the
/// limiter's leases (`RateLease`): a source's requests then touch no
/// shared state until they are spent (or a second has passed). Per CPU, so
/// no other CPU writes a slot; a slot taken over by another pair holds
/// that pair's tokens, and the first pair's requests go to their state.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SipLease {
    key: RateKey,
    class: u32,
    tokens: u32,
    valid_until_ns: u64,
}

const SIP_LEASE_SLOTS: u32 = 4096;

#[map]
static SIP_LEASES: PerCpuArray<SipLease> = PerCpuArray::with_max_entries(SIP_LEASE_SLOTS, 0);

/// True if `budget` is leased at all (a burst of 128 or more): the others
/// never look at a lease slot.
#[inline(always)]
fn leased(budget: &SipBudget) -> bool {
    budget.tolerance_ns >= 128 * budget.interval_ns
}

/// A lease's tokens, as the limiter's: 1/64 of the burst, at most 32, so
/// that small bursts stay exact (a lease of 1 is no lease).
#[inline(always)]
fn lease_size(budget: &SipBudget) -> u64 {
    let burst = budget.tolerance_ns / budget.interval_ns.max(1);
    (burst / 64).clamp(1, 32)
}

#[inline(always)]
fn lease_slot(skey: &SipRateKey) -> Option<*mut SipLease> {
    let mut key = skey.key;
    key[8] ^= 0x3c ^ (skey.class as u8);
    SIP_LEASES.get_ptr_mut((key_hash(&key) >> 52) as u32 & (SIP_LEASE_SLOTS - 1))
}

/// Puts `tokens` of `skey` in this CPU's lease slot, unless a live lease
/// of another pair is there: its tokens were charged to that pair (a
/// collision costs speed, never tokens). Not inlined: once per lease, not
/// per packet, and verified once.
#[inline(never)]
fn grant_lease(skey: &SipRateKey, tokens: u64, now: u64) -> bool {
    let Some(l) = lease_slot(skey) else {
        return false;
    };
    unsafe {
        if (*l).tokens != 0
            && now < (*l).valid_until_ns
            && ((*l).class != skey.class || (*l).key != skey.key)
        {
            return false;
        }
        (*l).key = skey.key;
        (*l).class = skey.class;
        (*l).tokens = tokens as u32;
        (*l).valid_until_ns = now + 1_000_000_000;
    }
    true
}

/// True if this CPU's lease for `skey` had a token, now spent.
#[inline(always)]
fn spend_lease(skey: &SipRateKey, now: u64) -> bool {
    let Some(l) = lease_slot(skey) else {
        return false;
    };
    unsafe {
        if (*l).tokens == 0
            || now >= (*l).valid_until_ns
            || (*l).class != skey.class
            || (*l).key != skey.key
        {
            return false;
        }
        (*l).tokens -= 1;
    }
    true
}

/// As the limiter's `escalate`: after `escalate_secs` distinct seconds over
/// the invalid budget with no gap longer than the window, the source is
/// reported once (`EVENT_INVALID`), to be banned in `sip-invalid`.
#[inline(always)]
fn escalate(st: *mut SipRateState, key: &RateKey, src: &Source, now: u64, cfg: &Config) {
    let sec = now / 1_000_000_000;
    unsafe {
        let last = (*st).last_over_sec;
        if last == sec {
            return;
        }
        if sec - last > u64::from(cfg.escalate_window_secs) {
            (*st).over_secs = 0;
            (*st).reported = 0;
        }
        (*st).last_over_sec = sec;
        (*st).over_secs += 1;
        if cfg.escalate_secs == 0 || (*st).over_secs < cfg.escalate_secs || (*st).reported != 0 {
            return;
        }
        // Never a trusted source (a registered phone, the operator's): its
        // address is known, so a forger could send garbage as it and get it
        // banned. Looked up once a second at most, over the budget only.
        if TRUSTED.get(key).is_some_and(|e| !e.is_expired(now)) {
            return;
        }
        if report(key, src, EVENT_INVALID, (*st).over_secs, 0) {
            (*st).reported = 1;
        }
    }
}

/// The limiter's first stage (`unseen_admitted`, the same per-CPU sketch)
/// for a budget: true if a source without state for `skey` has sent fewer
/// than `SKETCH_ADMIT` packets of its class in this window (`SKETCH_ADMIT +
/// 1` of the budget's intervals, so a source under its rate may never need
/// state). A storm of forged sources then costs two counters, not an
/// insert, per packet. On only for a burst of at least `2 * SKETCH_ADMIT`:
/// what a source gains before its state exists stays a part of its burst.
#[inline(always)]
fn unseen(skey: &SipRateKey, budget: &SipBudget, now: u64) -> bool {
    let window_ns = u64::from(SKETCH_ADMIT + 1) * budget.interval_ns;
    if window_ns == 0 || budget.tolerance_ns < u64::from(2 * SKETCH_ADMIT) * budget.interval_ns {
        return false;
    }
    let window = ((now / window_ns) as u16 & 0xff) << 8;
    // One source, one count per class.
    let mut key = skey.key;
    key[8] ^= 0xa5 ^ (skey.class as u8);
    let h = key_hash(&key);
    let Some(line) = SIP_SKETCH.get_ptr_mut((h >> 51) as u32 & (SIP_SKETCH_LINES - 1)) else {
        return false;
    };
    sketch_count(line, h, window, SKETCH_ADMIT as u16)
}
