//! SIP scanner signatures: a UDP SIP request whose `User-Agent` value starts
//! with a known scanner's name (case-insensitive).
//!
//! Bounded and verifier-friendly: at most `WINDOW` bytes of the UDP payload are
//! searched, 32 bytes per step under one bounds check, for a line that
//! starts with `User-Agent:`; then each signature is compared, once, at the
//! start of its value. What is looked at, exactly:
//!
//! * a line whose '\n' lies in the window's first `WINDOW` bytes, with at
//!   least 33 bytes of payload from that '\n' on (the header name and 21
//!   bytes of value and line end: a shorter tail cannot hold a signature);
//! * only the first `User-Agent:` line decides, and at most `LINES_CHECKED`
//!   lines starting with 'U' are looked at (each costs a compare);
//! * a `User-Agent:` line after the blank line that ends the headers is the
//!   message's body, not its sender's header: never a drop.
//!
//! Anything else is a miss, never a false drop: a header split across
//! datagrams, beyond the window, or behind more lines starting with 'U'.
use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};

/// Bytes of UDP payload inspected. SIP puts the request line and a handful
/// of headers first; scanners' User-Agent comes within the first ~300 bytes.
pub const WINDOW: usize = 512;

/// Bytes searched per step: four words under one bounds check.
const BLOCK: usize = 32;

/// "user-agent:" as two little-endian loads, of its bytes 0..8 and 7..11.
const HEADER_LEN: usize = 11;
const HEADER_HEAD: u64 = u64::from_le_bytes(*b"user-age");
const HEADER_TAIL: u32 = u32::from_le_bytes(*b"ent:");

use common::SCANNER_SIGNATURES as SIGNATURES;

/// Longest signature, and the most whitespace skipped before the value.
const MAX_SIGNATURE: usize = 16;
const MAX_SPACES: usize = 4;

/// Lines starting with '\n' and 'u' or 'U' looked at per packet, the
/// User-Agent line included. SIP has three such headers (Unsupported,
/// User-Agent, User-to-User); a packet of many such lines gives up after
/// these: bounded work, a miss.
const LINES_CHECKED: u64 = 4;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOWS: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;
const RETURNS: u64 = 0x0d0d_0d0d_0d0d_0d0d;
/// Case folding in one instruction: `b | 0x20` turns 'A'..'Z' into
/// 'a'..'z'. The patterns hold only lower-case letters, '-' and ':'; the only
/// other bytes it can fold onto those are control characters (a CR reads as
/// '-'), which cannot make a real SIP header look like a scanner's.
const FOLD: u64 = 0x2020_2020_2020_2020;
/// 'u' in every byte.
const US: u64 = 0x7575_7575_7575_7575;

/// Index of the lowest flagged byte of a `zero_bytes` mask (BPF has no
/// count-trailing-zeros): `1 << 8j` times this has `j` in its top byte.
const BYTE_INDEX: u64 = 0x0001_0203_0405_0607;

/// Per-CPU scratch words, not pinned: slot 0 for `launder`, slot `BUDGET`
/// for the lines left to look at.
#[map]
static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The budget of `LINES_CHECKED` lives in a map, not in a register: the
/// verifier then does not tell apart states that differ only in it (held in
/// a register it quadrupled the instructions verified, 70 000 -> 280 000).
const BUDGET: u32 = 1;

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

/// `v` as a value the compiler cannot see through (a round trip through the
/// stack). A packet pointer with a variable offset, checked against the
/// packet's end, is then the very register the loads use: otherwise the
/// compiler may add the offset twice, once for the check and once for the
/// loads, and the verifier knows only the first sum to be in bounds.
#[inline(always)]
fn opaque(v: usize) -> usize {
    unsafe { core::ptr::read_volatile(&v) }
}

/// Eight packet bytes at `p` in one load. `read_unaligned` would be eight
/// byte loads and fourteen shifts and ORs (the BPF backend assumes strict
/// alignment); the verifier accepts a misaligned packet load wherever the
/// kernel has efficient unaligned access (x86-64, arm64, ...). The address
/// is an opaque number to the compiler, which cannot draw anything from the
/// alignment the pointer type claims. The caller has checked the bounds.
#[inline(always)]
fn load64(p: usize) -> u64 {
    unsafe { core::ptr::read(p as *const u64) }
}

/// Four packet bytes at `p` in one load (see `load64`).
#[inline(always)]
fn load32(p: usize) -> u32 {
    unsafe { core::ptr::read(p as *const u32) }
}

/// True if the UDP payload at `off` carries a scanner's User-Agent.
/// Not inlined: one subprogram, verified once for all its callers' states
/// (inlined into `sipguard_scan`, 75 000 instructions verified became
/// 530 000, for no time measurably saved).
#[inline(never)]
pub fn is_scanner(ctx: &XdpContext, off: usize) -> bool {
    let value = user_agent_value(ctx, off);
    if value <= STOP {
        return false;
    }
    let value = launder(value);
    value != 0 && value_matches(ctx, value) && in_headers(ctx, off, value)
}

/// Zero in each byte `i` where `p[i]` is '\n' and `p[i + 1]` is 'u' or 'U':
/// where a line may start with `User-Agent:`. Reads `p..p + 9`.
#[inline(always)]
fn pairs(p: usize) -> u64 {
    (load64(p) ^ NEWLINES) | ((load64(p + 1) | FOLD) ^ US)
}

/// Non-zero (in `HIGHS`) if some byte of `v` is zero. May also flag a byte
/// above a zero one: for the "is there any" test only.
#[inline(always)]
fn any_zero(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v
}

/// 0x80 in exactly the bytes of `v` that are zero.
#[inline(always)]
fn zero_bytes(v: u64) -> u64 {
    !(((v & LOWS).wrapping_add(LOWS)) | v | LOWS)
}

/// `user_agent_value`'s "gave up": too many lines starting with U.
const STOP: usize = 1;

/// The packet offset of the first User-Agent value, or 0 (or `STOP`).
///
/// A step tests four words, each for a '\n' followed by 'u' or 'U' at any of
/// its eight bytes (two loads, the has-zero-byte trick), and branches once:
/// a SIP message has one or two lines starting with U, so nearly every step
/// finds none and costs about ten instructions a word, whatever the text.
/// The pairs of a step that has some are then checked exactly.
#[inline(always)]
fn user_agent_value(ctx: &XdpContext, off: usize) -> usize {
    if off == 0 {
        return 0;
    }
    let data = ctx.data();
    let start = data + off;
    let end = ctx.data_end();
    let Some(budget) = SCRATCH.get_ptr_mut(BUDGET) else {
        return 0;
    };
    unsafe { *budget = LINES_CHECKED };
    let mut i = 0;
    while i < WINDOW / BLOCK {
        let p = start + i * BLOCK;
        // Room for the step's pairs: its last '\n' and the byte after it.
        if p + BLOCK + 1 > end {
            return 0;
        }
        let flagged = (any_zero(pairs(p))
            | any_zero(pairs(p + 8))
            | any_zero(pairs(p + 16))
            | any_zero(pairs(p + 24)))
            & HIGHS;
        if flagged != 0 {
            let value = header_in_block(p, end, budget);
            if value == STOP {
                return STOP;
            }
            if value != 0 {
                return value - data;
            }
        }
        i += 1;
    }
    0
}

/// The end of the first `User-Agent:` header name that starts right after a
/// '\n' in `p..p + BLOCK`, 0 when none does, `STOP` when the budget of
/// lines ran out. Pairs in order: a word's lowest first.
#[inline(always)]
fn header_in_block(p: usize, end: usize, budget: *mut u64) -> usize {
    let mut k = 0;
    while k < BLOCK / 8 {
        let word = p + k * 8;
        let mut flags = zero_bytes(pairs(word));
        // A pair takes two bytes that differ: at most four start in a word.
        let mut n = 0;
        while n < 4 && flags != 0 {
            unsafe {
                if *budget == 0 {
                    return STOP;
                }
                *budget -= 1;
            }
            let lowest = flags & flags.wrapping_neg();
            flags ^= lowest;
            let j = ((lowest >> 7).wrapping_mul(BYTE_INDEX) >> 56) as usize & 7;
            let q = opaque(word + j + 1);
            if q + HEADER_LEN <= end && header_at(q) {
                return q + HEADER_LEN;
            }
            n += 1;
        }
        k += 1;
    }
    0
}

/// `p` has at least `HEADER_LEN` readable bytes (checked by the caller).
/// Case-folded like every compare here (see `FOLD`).
#[inline(always)]
fn header_at(p: usize) -> bool {
    (load64(p) | FOLD) == HEADER_HEAD && (load32(p + 7) | FOLD as u32) == HEADER_TAIL
}

/// A signature as two little-endian words and the masks of its bytes.
#[derive(Clone, Copy)]
struct Packed {
    lo: u64,
    hi: u64,
    lo_mask: u64,
    hi_mask: u64,
}

const fn pack(s: &[u8]) -> Packed {
    let mut p = Packed {
        lo: 0,
        hi: 0,
        lo_mask: 0,
        hi_mask: 0,
    };
    let mut k = 0;
    while k < s.len() {
        if k < 8 {
            p.lo |= (s[k] as u64) << (8 * k);
            p.lo_mask |= 0xff << (8 * k);
        } else {
            p.hi |= (s[k] as u64) << (8 * (k - 8));
            p.hi_mask |= 0xff << (8 * (k - 8));
        }
        k += 1;
    }
    p
}

const PACKED: [Packed; SIGNATURES.len()] = {
    let mut out = [Packed {
        lo: 0,
        hi: 0,
        lo_mask: 0,
        hi_mask: 0,
    }; SIGNATURES.len()];
    let mut s = 0;
    while s < SIGNATURES.len() {
        assert!(SIGNATURES[s].len() <= MAX_SIGNATURE);
        out[s] = pack(SIGNATURES[s]);
        s += 1;
    }
    out
};

/// Bit `b & 31` set for the first byte `b` of each signature.
const FIRST_LETTERS: u64 = {
    let mut bits = 0;
    let mut s = 0;
    while s < SIGNATURES.len() {
        bits |= 1 << (SIGNATURES[s][0] & 31);
        s += 1;
    }
    bits
};

/// The value needs room for the whitespace, the longest signature and one
/// byte more (a shorter tail cannot be a scanner's header line anyway: SIP
/// headers end with CRLF and a blank line). Two loads then hold the first 16
/// bytes of the value: the first letter rules out most agents, and each
/// signature is two masked compares.
#[inline(always)]
fn value_matches(ctx: &XdpContext, off: usize) -> bool {
    let end = ctx.data_end();
    let v = ctx.data() + off;
    if v + MAX_SPACES + MAX_SIGNATURE + 1 > end {
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
    let s = opaque(v + skip);
    if s + MAX_SIGNATURE > end {
        return false;
    }
    let lo = load64(s) | FOLD;
    if FIRST_LETTERS >> (lo & 31) & 1 == 0 {
        return false;
    }
    let hi = load64(s + 8) | FOLD;
    let mut k = 0;
    while k < PACKED.len() {
        let p = PACKED[k];
        if ((lo ^ p.lo) & p.lo_mask) | ((hi ^ p.hi) & p.hi_mask) == 0 {
            return true;
        }
        k += 1;
    }
    false
}

/// False if a blank line ends the headers before the User-Agent line whose
/// value is at packet offset `value` (the payload starts at `off`): that
/// line is in the body, text the message carries (a `message/sipfrag`, a
/// chat), not its sender's header. A blank line is a '\n' followed by '\r'
/// or '\n'. Read only once a signature matched: only a packet about to be
/// dropped pays for it.
#[inline(always)]
fn in_headers(ctx: &XdpContext, off: usize, value: usize) -> bool {
    // The '\n' that starts the User-Agent line, from the payload's start.
    let Some(line) = value.checked_sub(off + HEADER_LEN + 1) else {
        return false;
    };
    if line >= WINDOW {
        return false;
    }
    let data = ctx.data();
    // Read anew: the compiler would drop the bounds checks below as implied
    // by `value_matches`'s, which the verifier cannot relate to these.
    let end = unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) } as usize;
    let start = data + off;
    // Whole steps before the line: any blank line in them comes before it.
    let mut i = 0;
    while i < WINDOW / BLOCK {
        if (i + 1) * BLOCK > line {
            break;
        }
        let p = start + i * BLOCK;
        if p + BLOCK + 1 > end {
            return false;
        }
        let blank =
            (blank_lines(p) | blank_lines(p + 8) | blank_lines(p + 16) | blank_lines(p + 24))
                & HIGHS;
        if blank != 0 {
            return false;
        }
        i += 1;
    }
    // The words of the line's own step, up to its '\n', exactly.
    let mut k = 0;
    while k < BLOCK / 8 {
        let at = i * BLOCK + k * 8;
        if at >= line {
            break;
        }
        let p = start + at;
        if p + 9 > end {
            return false;
        }
        let x = load64(p) ^ NEWLINES;
        let n = load64(p + 1);
        let mut blank = zero_bytes(x | (n ^ RETURNS)) | zero_bytes(x | (n ^ NEWLINES));
        let before = line - at;
        if before < 8 {
            blank &= (1u64 << (8 * before)) - 1;
        }
        if blank != 0 {
            return false;
        }
        k += 1;
    }
    true
}

/// Non-zero (in `HIGHS`) if a '\n' in `p..p + 8` is followed by '\r' or '\n'.
#[inline(always)]
fn blank_lines(p: usize) -> u64 {
    let x = load64(p) ^ NEWLINES;
    let n = load64(p + 1);
    any_zero(x | (n ^ RETURNS)) | any_zero(x | (n ^ NEWLINES))
}
