//! SIP scanner signatures: a UDP SIP request whose `User-Agent` value starts
//! with a known scanner's name (case-insensitive).
//!
//! Bounded and verifier-friendly: at most `WINDOW` bytes of the UDP payload are
//! read, one byte at a time with a bounds check, looking for a line that
//! starts with `User-Agent:`; then each signature is compared, once, at the
//! start of the value. A header split across datagrams or beyond the window
//! does not match: a miss, never a false drop.
use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};

/// Bytes of UDP payload inspected. SIP puts the request line and a handful
/// of headers first; scanners' User-Agent comes within the first ~300 bytes.
pub const WINDOW: usize = 512;

const HEADER: &[u8; 11] = b"user-agent:";

/// Scanners only. Left out on purpose: sipsak and SIPp (diagnostic and load
/// tools operators use against their own servers), and softphone SDK names
/// attackers borrow but real users also run.
const SIGNATURES: [&[u8]; 9] = [
    b"friendly-scanner",
    b"sipvicious",
    b"sipcli",
    b"vaxsipuseragent",
    b"pplsip",
    b"sip-scan",
    b"iwar",
    b"sivus",
    b"sundayddr",
];

/// Case folding in one instruction: `b | 0x20` turns 'A'..'Z' into
/// 'a'..'z'. The patterns hold only lower-case letters, digits, '-' and ':';
/// the only other bytes it can fold onto those are control characters (a CR
/// reads as '-'), which cannot make a real SIP header look like a scanner's.
#[inline(always)]
fn lower(b: u8) -> u8 {
    b | 0x20
}

/// One per-CPU scratch word, not pinned: see `launder`.
#[map]
static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Largest packet offset the scan works with. XDP sees at most a page of
/// packet, but a long IPv6 extension-header chain can push the UDP payload
/// past 1 KiB, so the bound is well above any offset a real frame has.
const MAX_OFFSET: u64 = 0x3fff;

/// Returns `value` as the verifier sees a number read from a map: unknown,
/// but bounded. Code after it is then verified once, not once per path that
/// led there (VLAN tags, IPv4 or IPv6, the loop iteration that found the
/// header...). An offset beyond the bound becomes 0, "nothing to scan":
/// never a wrapped offset pointing at some other part of the packet.
#[inline(always)]
pub fn launder(value: usize) -> usize {
    let Some(slot) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    unsafe {
        core::ptr::write_volatile(slot, value as u64);
        let v = core::ptr::read_volatile(slot);
        if v > MAX_OFFSET {
            return 0;
        }
        (v & MAX_OFFSET) as usize
    }
}

/// True if the UDP payload at `off` carries a scanner's User-Agent.
/// Not inlined: one subprogram, verified once for all its callers' states.
#[inline(never)]
pub fn is_scanner(ctx: &XdpContext, off: usize) -> bool {
    let value = user_agent_value(ctx, off);
    if value == 0 {
        return false;
    }
    let value = launder(value);
    value != 0 && value_matches(ctx, value)
}

/// The packet offset of the User-Agent value within the window, or 0.
///
/// Eight bytes per step: a word is searched for '\n' with the has-zero-byte
/// trick on `word ^ 0x0a0a…`, so the ~3 in 4 words of a SIP message that hold
/// no line break cost a handful of instructions. Flagged bytes are then
/// checked exactly (the trick can flag a byte above a real match).
#[inline(always)]
fn user_agent_value(ctx: &XdpContext, off: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    if off == 0 {
        return 0;
    }
    let data = ctx.data();
    let start = data + off;
    let end = ctx.data_end();
    let mut word = 0;
    while word < WINDOW / 8 {
        let p = start + word * 8;
        // Room for the word, and for the header name after its last byte.
        if p + 8 + HEADER.len() > end {
            return 0;
        }
        let w = unsafe { core::ptr::read_unaligned(p as *const u64) };
        let x = w ^ NEWLINES;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            let mut j = 0;
            while j < 8 {
                if (w >> (8 * j)) & 0xff == 0x0a && header_at(p + j + 1) {
                    return p + j + 1 + HEADER.len() - data;
                }
                j += 1;
            }
        }
        word += 1;
    }
    0
}

/// `p` has at least `HEADER.len()` readable bytes (checked by the caller).
/// Branch-free: one verifier path however many bytes differ.
#[inline(always)]
fn header_at(p: usize) -> bool {
    differs(p, HEADER) == 0
}

/// ORed differences between the lower-cased bytes at `p` and `pattern`.
#[inline(always)]
fn differs(p: usize, pattern: &[u8]) -> u8 {
    let mut diff = 0u8;
    let mut k = 0;
    while k < pattern.len() {
        diff |= lower(unsafe { *((p + k) as *const u8) }) ^ pattern[k];
        k += 1;
    }
    diff
}

/// Longest signature, and the most whitespace skipped before the value.
const MAX_SIGNATURE: usize = 16;
const MAX_SPACES: usize = 4;

/// One bounds check covers every read below: the value needs room for the
/// whitespace and the longest signature (a shorter tail cannot be a scanner's
/// header line anyway: SIP headers end with CRLF and a blank line).
#[inline(always)]
fn value_matches(ctx: &XdpContext, off: usize) -> bool {
    let end = ctx.data_end();
    let v = ctx.data() + off;
    if v + MAX_SPACES + MAX_SIGNATURE > end {
        return false;
    }
    let mut skip = 0;
    while skip < MAX_SPACES {
        let b = unsafe { *((v + skip) as *const u8) };
        if b != b' ' && b != b'\t' {
            break;
        }
        skip += 1;
    }
    let mut s = 0;
    while s < SIGNATURES.len() {
        if differs(v + skip, SIGNATURES[s]) == 0 {
            return true;
        }
        s += 1;
    }
    false
}
