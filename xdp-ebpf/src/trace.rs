//! `sipguard trace`: a log record (aya-log) for every packet from the traced
//! source, with the verdict the program reached and the ban that decided
//! it. Runs only while someone traces; the source is read again here so the
//! decision path carries nothing for it.
use crate::parse::{self, Source};
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::info;
use common::TraceFilter;

#[inline(always)]
pub fn packet(ctx: &XdpContext, filter: &TraceFilter, verdict: u32, ban_id: u64) {
    match parse::source(ctx) {
        Some(Source::V4(addr)) if filter.family == 4 && within(&addr, filter) => {
            info!(ctx, "trace {:i} verdict {} ban {}", addr, verdict, ban_id);
        }
        Some(Source::V6(addr)) if filter.family == 6 && within(&addr, filter) => {
            info!(ctx, "trace {:i} verdict {} ban {}", addr, verdict, ban_id);
        }
        _ => {}
    }
}

/// True when the first `prefix_len` bits of `addr` are the filter's.
#[inline(always)]
fn within<const N: usize>(addr: &[u8; N], filter: &TraceFilter) -> bool {
    let bits = filter.prefix_len as usize;
    for (i, (got, want)) in addr.iter().zip(filter.addr).enumerate() {
        let mask: u8 = if bits >= (i + 1) * 8 {
            0xff
        } else if bits <= i * 8 {
            0
        } else {
            0xffu8 << (8 - (bits - i * 8))
        };
        if (got ^ want) & mask != 0 {
            return false;
        }
    }
    true
}
