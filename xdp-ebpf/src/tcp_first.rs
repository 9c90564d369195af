//! The first request of a TCP connection, where it is in the connection's
//! first data segment: the only place a stream is sure to start a message,
//! so the only TCP payload the per-method budgets read.
//!
//! A connection's SYN (to a protected port, the budgets on) notes in a slot
//! of a shared table, indexed by a hash of the flow, the sequence number its
//! first data byte will carry (the SYN's plus one). A segment carrying that
//! sequence number on that flow starts the first request; every other
//! segment is never read. So an established connection's later segments
//! cannot be charged by a forger (off the path, it cannot know their
//! sequence numbers), the same cost UDP always has is paid only once per
//! connection, and a retransmission of a first segment is read again (a
//! request held by its budget stays held until the budget has room).
//!
//! The table is a fixed array, not a map with inserts: a storm of forged
//! SYNs only overwrites slots, and a first request whose slot was
//! overwritten (or that came on another flow hashing there) is not judged:
//! it passes to FreeSWITCH as before. Shared by all CPUs (a flow's SYN and
//! data may be taken on different ones); a torn race between two flows'
//! slots fails the same way.
use crate::{key_hash, methods, now_ns, sip_line, RateKey};
use aya_ebpf::{macros::map, maps::Array, programs::XdpContext};
use common::{counter, method, SipRateKey};

/// Slots: 2^16, 512 KiB. A box opening more TCP connections than this in
/// the time between a SYN and its first data segment misses some.
const SLOTS: u32 = 1 << 16;

/// Per slot: the flow's tag (high 32 bits, never 0) and the expected
/// sequence number (low 32 bits), written and read as one word.
#[map(name = "tcp_first")]
static TCP_FIRST: Array<u64> = Array::with_max_entries(SLOTS, 0);

const TCP_HDR_LEN: usize = 20;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;

/// `judge`'s answer when no budget holds the segment.
pub const PASS: u32 = 0;

/// The counter (`DROP_METHOD` + class) of the segment whose TCP header is
/// at packet offset `tcp` when it is a connection's first request and over
/// its method's budget, else `PASS`; the caller checks the allowlist. `key`
/// is the source's limiter key. Inlined: `parse` launders a TCP header's
/// offset, so the TCP paths reaching it are verified alike (a subprogram
/// saved nothing, and its call and return cost ~15-20 ns on this CPU).
#[inline(always)]
pub fn judge(ctx: &XdpContext, tcp: usize, key: &RateKey) -> u32 {
    let class = first_request(ctx, tcp, key);
    let Some(limits) = methods::tcp_limits() else {
        return PASS;
    };
    // Bounded for the verifier: `class` indexes the array.
    let Some(budget) = limits.methods.get(class as usize) else {
        return PASS;
    };
    if class >= method::CLASSES as u32 || !budget.is_on() {
        return PASS;
    }
    let skey = SipRateKey {
        key: *key,
        class,
        _pad: 0,
    };
    let now = now_ns();
    match methods::over(&skey, budget, now, false) {
        Some(_) => counter::DROP_METHOD + class,
        None => PASS,
    }
}

/// The method class (`common::method::*`) of the first request of a TCP
/// connection when the segment whose header is at packet offset `tcp`
/// holds it; else `sip_line::UNKNOWN` (a SYN, which is noted, included).
#[inline(always)]
fn first_request(ctx: &XdpContext, tcp: usize, key: &RateKey) -> u32 {
    // Laundered by `parse` already: a bounded unknown to the verifier.
    let end = ctx.data_end();
    // A register of its own, checked and loaded from (see `sip_line`).
    let h = sip_line::opaque(ctx.data() + tcp);
    if h + TCP_HDR_LEN > end {
        return sip_line::UNKNOWN;
    }
    // Three loads: the ports, the sequence number, data offset and flags
    // (misaligned packet loads are accepted, see `scanner::load64`).
    let (ports, seq, off_flags) = unsafe {
        (
            core::ptr::read(h as *const u32),
            u32::from_be(core::ptr::read((h + 4) as *const u32)),
            core::ptr::read((h + 12) as *const [u8; 2]),
        )
    };
    let (doff, flags) = (usize::from(off_flags[0] >> 4) * 4, off_flags[1]);
    // The flow: the source's key and both ports.
    let ports = u64::from(ports);
    let mix = (key_hash(key) ^ ports.wrapping_mul(0xff51_afd7_ed55_8ccd))
        .wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    let Some(slot) = TCP_FIRST.get_ptr_mut((mix >> 48) as u32 & (SLOTS - 1)) else {
        return sip_line::UNKNOWN;
    };
    let tag = ((mix as u32) | 1) as u64;
    // A SYN that opens a connection (with FIN or RST it opens none).
    if flags & (SYN | ACK | RST | FIN) == SYN {
        unsafe { core::ptr::write_volatile(slot, tag << 32 | u64::from(seq.wrapping_add(1))) };
        return sip_line::UNKNOWN;
    }
    if unsafe { core::ptr::read_volatile(slot) } != tag << 32 | u64::from(seq) {
        return sip_line::UNKNOWN;
    }
    // The payload after the header and its options.
    if doff < TCP_HDR_LEN {
        return sip_line::UNKNOWN;
    }
    let p = h + (doff & 0x3c);
    match sip_line::request_at(p, end) {
        class if class < common::method::CLASSES as u32 => class,
        _ => sip_line::UNKNOWN,
    }
}
