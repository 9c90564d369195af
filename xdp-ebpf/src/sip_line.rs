//! What a UDP payload to a SIP port starts with: a request line (and its
//! method class), a response line, a keepalive, or something invalid.
//!
//! Read from the payload's first `READ` bytes alone: two loads under one
//! bounds check. The whole line would need a scan; this test is enough for
//! what it decides. A forger cannot pass it without sending a SIP-looking
//! start (`METHOD sip:`...), which then goes to the limiter, the method
//! budgets and FreeSWITCH's parser like any request; and a miss only lets a
//! packet through to FreeSWITCH as before. What is looked at:
//!
//! * a response starts with `SIP/2.0 `;
//! * a request starts with a method token of 1 to `MAX_METHOD` upper-case
//!   letters, one space, and a URI scheme `sip:`, `sips:`, `tel:` or `urn:`
//!   (emergency calls, RFC 5031), the scheme case-insensitive. Every SIP
//!   method in IANA's registry has at most 9 letters (SUBSCRIBE); a longer
//!   token could not hold its scheme in the bytes read;
//! * keepalives are not invalid: a payload of exactly CRLF or CRLF CRLF
//!   (RFC 5626 section 4.4.1), and STUN (RFC 5389: the first two bits 0,
//!   the magic cookie at byte 4, a length that matches the datagram's);
//! * everything else is invalid, the empty payload and anything shorter
//!   than `READ` bytes included (no SIP message is that short).
//!
//! The payload's length is the UDP header's, not the frame's: a NIC pads a
//! short frame (a 4-byte keepalive arrives with 14 bytes of zeros).
use crate::scanner::launder;
use aya_ebpf::programs::XdpContext;
use common::method;

/// Bytes of payload read: two words.
const READ: usize = 16;
/// The longest method token that leaves room for its scheme in `READ`.
const MAX_METHOD: usize = 11;

/// `classify` results other than a request's `method::*` class.
pub const RESPONSE: u32 = 8;
/// CRLF, CRLF CRLF, or STUN.
pub const KEEPALIVE: u32 = 9;
pub const INVALID: u32 = 10;
/// The frame does not hold what the UDP header says (a short first
/// fragment, a malformed datagram): not judged.
pub const UNKNOWN: u32 = 11;

const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOWS: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const SPACES: u64 = 0x2020_2020_2020_2020;
/// Index of the lowest flagged byte of a `zero_bytes` mask.
const BYTE_INDEX: u64 = 0x0001_0203_0405_0607;

const RESPONSE_START: u64 = u64::from_le_bytes(*b"SIP/2.0 ");
const REGISTER: u64 = u64::from_le_bytes(*b"REGISTER");
const INVITE: u64 = u64::from_le_bytes(*b"INVITE\0\0");
const OPTIONS: u64 = u64::from_le_bytes(*b"OPTIONS\0");
const SUBSCRIB: u64 = u64::from_le_bytes(*b"SUBSCRIB");
/// (scheme as little-endian bytes, its length, its letters' case bits).
const SCHEMES: [(u64, usize, u64); 4] = [
    (u32::from_le_bytes(*b"sip:") as u64, 4, 0x0020_2020),
    (u64::from_le_bytes(*b"sips:\0\0\0"), 5, 0x20_2020_2020),
    (u32::from_le_bytes(*b"tel:") as u64, 4, 0x0020_2020),
    (u32::from_le_bytes(*b"urn:") as u64, 4, 0x0020_2020),
];
const STUN_COOKIE: u32 = u32::from_be_bytes([0x21, 0x12, 0xa4, 0x42]);
const CRLF: u16 = u16::from_le_bytes(*b"\r\n");
const CRLF2: u32 = u32::from_le_bytes(*b"\r\n\r\n");
const UDP_HDR: usize = 8;

/// The class of the UDP payload at packet offset `off`: a request's
/// `method::*`, `RESPONSE`, `KEEPALIVE`, `INVALID` or `UNKNOWN`. Inlined
/// (a call and its return cost ~15-20 ns on this CPU's SRSO mitigation),
/// its offset laundered: what follows is verified alike whatever path led
/// here (VLAN tags, IPv4 or IPv6).
#[inline(always)]
pub fn classify(ctx: &XdpContext, off: usize) -> u32 {
    let off = launder(off);
    if off < UDP_HDR {
        return UNKNOWN;
    }
    let end = ctx.data_end();
    // The header's offset as a number of its own: a pointer the compiler
    // wrote as "payload - 8" has a negative fixed offset, which the
    // verifier refuses whatever the variable part.
    let hdr = opaque(ctx.data() + opaque(off - UDP_HDR));
    if hdr + UDP_HDR > end {
        return UNKNOWN;
    }
    let udp_len = u16::from_be(unsafe { core::ptr::read((hdr + 4) as *const u16) }) as usize;
    let len = udp_len.saturating_sub(UDP_HDR);
    // A register of its own, checked on its own: the verifier accepts no
    // load below the pointer whose bounds it checked.
    let p = opaque(hdr + UDP_HDR);
    if len < READ {
        return short(p, end, len);
    }
    if p + READ > end {
        // The header promises more than the frame holds.
        return UNKNOWN;
    }
    let (lo, hi) = (load64(p), load64(p + 8));
    if lo == RESPONSE_START {
        return RESPONSE;
    }
    let stun_len = u16::from_be_bytes([(lo >> 16) as u8, (lo >> 24) as u8]) as usize;
    if lo & 0xc0 == 0 && (lo >> 32) as u32 == STUN_COOKIE.swap_bytes() && stun_len + 20 == len {
        return KEEPALIVE;
    }
    request(lo, hi)
}

/// The class of what starts at packet address `p` (a TCP connection's
/// first data byte): a request's `method::*`, `RESPONSE` or `INVALID`;
/// `UNKNOWN` when the frame holds fewer than `READ` bytes there (a request
/// line is longer).
#[inline(always)]
pub fn request_at(p: usize, end: usize) -> u32 {
    let p = opaque(p);
    if p + READ > end {
        return UNKNOWN;
    }
    let (lo, hi) = (load64(p), load64(p + 8));
    if lo == RESPONSE_START {
        return RESPONSE;
    }
    request(lo, hi)
}

/// A payload of `len < READ` bytes at `p`: only a keepalive is not invalid.
#[inline(always)]
fn short(p: usize, end: usize, len: usize) -> u32 {
    if len == 2 {
        if p + 2 > end {
            return UNKNOWN;
        }
        if unsafe { core::ptr::read(p as *const u16) } == CRLF {
            return KEEPALIVE;
        }
    }
    if len == 4 {
        if p + 4 > end {
            return UNKNOWN;
        }
        if unsafe { core::ptr::read(p as *const u32) } == CRLF2 {
            return KEEPALIVE;
        }
    }
    INVALID
}

/// The method class of a request line starting with the bytes `lo`, `hi`
/// (little-endian), or `INVALID`.
#[inline(always)]
fn request(lo: u64, hi: u64) -> u32 {
    // What phones and trunks send nearly always, as they write it (the
    // method, one space, "sip:"): a compare or two each, before the
    // general test below, which decides the same for these bytes.
    if let Some(class) = common_start(lo, hi) {
        return class;
    }
    // The first space: its index is the method's length.
    let (sl, sh) = (zero_bytes(lo ^ SPACES), zero_bytes(hi ^ SPACES));
    let sp = if sl != 0 {
        first_flagged(sl)
    } else if sh != 0 {
        8 + first_flagged(sh)
    } else {
        return INVALID;
    };
    if sp == 0 || sp > MAX_METHOD {
        return INVALID;
    }
    // Every byte before it an upper-case letter.
    let (want_lo, want_hi) = if sp >= 8 {
        (HIGHS, HIGHS & ((1u64 << (8 * (sp - 8))) - 1))
    } else {
        (HIGHS & ((1u64 << (8 * sp)) - 1), 0)
    };
    if upper(lo) & want_lo != want_lo || upper(hi) & want_hi != want_hi {
        return INVALID;
    }
    // The scheme's bytes, from `sp + 1` on (at most 12: within `hi`'s reach).
    let k = sp + 1;
    let scheme = if k < 8 {
        (lo >> (8 * k)) | (hi << (64 - 8 * k))
    } else if k == 8 {
        hi
    } else {
        hi >> (8 * (k - 8))
    };
    let mut ok = false;
    let mut i = 0;
    while i < SCHEMES.len() {
        let (want, n, case) = SCHEMES[i];
        let mask = (1u64 << (8 * n)) - 1;
        if k + n <= READ && (scheme | case) & mask == want {
            ok = true;
        }
        i += 1;
    }
    if !ok {
        return INVALID;
    }
    match sp {
        8 if lo == REGISTER => method::REGISTER,
        6 if lo & 0xffff_ffff_ffff == INVITE => method::INVITE,
        7 if lo & 0x00ff_ffff_ffff_ffff == OPTIONS => method::OPTIONS,
        9 if lo == SUBSCRIB && hi & 0xff == u64::from(b'E') => method::SUBSCRIBE,
        _ => method::OTHER,
    }
}

/// The class of the most common request starts, exactly; `None` for any
/// other (the general test decides those).
#[inline(always)]
fn common_start(lo: u64, hi: u64) -> Option<u32> {
    let class = match lo {
        REGISTER if hi & 0xff_ffff_ffff == SP_SIP => method::REGISTER,
        OPTIONS_SP if hi & 0xffff_ffff == SIP => method::OPTIONS,
        INVITE_S if hi & 0xff_ffff == IP => method::INVITE,
        ACK_SIP | BYE_SIP => method::OTHER,
        _ => return None,
    };
    Some(class)
}

const SP_SIP: u64 = u64::from_le_bytes(*b" sip:\0\0\0");
const SIP: u64 = u32::from_le_bytes(*b"sip:") as u64;
const IP: u64 = u64::from_le_bytes(*b"ip:\0\0\0\0\0");
const OPTIONS_SP: u64 = u64::from_le_bytes(*b"OPTIONS ");
const INVITE_S: u64 = u64::from_le_bytes(*b"INVITE s");
const ACK_SIP: u64 = u64::from_le_bytes(*b"ACK sip:");
const BYE_SIP: u64 = u64::from_le_bytes(*b"BYE sip:");

/// 0x80 in each byte of `x` that is 'A'..='Z'.
#[inline(always)]
fn upper(x: u64) -> u64 {
    let y = x | HIGHS;
    // No borrow crosses a byte: each is at least 0x80 before the subtraction.
    let at_least_a = y.wrapping_sub(0x4141_4141_4141_4141);
    let past_z = y.wrapping_sub(0x5b5b_5b5b_5b5b_5b5b);
    at_least_a & !past_z & !x & HIGHS
}

/// 0x80 in exactly the bytes of `v` that are zero.
#[inline(always)]
fn zero_bytes(v: u64) -> u64 {
    !(((v & LOWS).wrapping_add(LOWS)) | v | LOWS)
}

/// The index of the lowest flagged byte of a non-zero `zero_bytes` mask.
#[inline(always)]
fn first_flagged(flags: u64) -> usize {
    let lowest = flags & flags.wrapping_neg();
    ((lowest >> 7).wrapping_mul(BYTE_INDEX) >> 56) as usize & 7
}

/// Eight packet bytes at `p` in one load (see `scanner::load64`); the
/// caller has checked the bounds.
#[inline(always)]
fn load64(p: usize) -> u64 {
    unsafe { core::ptr::read(p as *const u64) }
}

/// `v` as a value the compiler cannot see through (see `scanner::opaque`):
/// the bounds check and the loads then use the same register.
#[inline(always)]
pub(crate) fn opaque(v: usize) -> usize {
    unsafe { core::ptr::read_volatile(&v) }
}
