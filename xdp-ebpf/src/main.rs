//! sipguard's XDP program: parse → decide → count, one flat path per packet.
//!
//! * Parse: Ethernet with up to two VLAN tags (802.1Q, 802.1ad, and the old
//!   0x9100 QinQ), IPv4 honouring IHL, IPv6 with a bounded walk over extension
//!   headers, then the TCP or UDP destination port.
//! * Decide: a source in the blocklist (LPM tries, exact or CIDR) whose ban has
//!   not expired is dropped when the packet goes to a protected port, to any port
//!   in all-ports mode, or to a port we cannot know (fragments). The allowlist
//!   always wins. Everything else, including anything we cannot parse, passes.
//! * Count: every packet lands in exactly one per-CPU verdict counter; a dropped
//!   packet also bumps its ban's own packet/byte counters.
#![no_std]
#![no_main]
// `atomic_xadd`: core's atomic types have no RMW methods on the BPF target, but
// the intrinsic lowers to the BPF atomic add instruction.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use common::{
    counter, v4_key, AllowEntry, BanEntry, Config, Counter, V4Key, BAN_ALL_PORTS, CONFIG_ALL_PORTS,
    MAX_ALLOWED, MAX_BANS, PORT_WORDS,
};
use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};
use parse::{Port, Source};

// Every map is pinned by name so that bans outlive the daemon and the CLI can
// work with the daemon stopped; userspace chooses the pin directory.
#[map(name = "banned_v4")]
static BANNED_V4: LpmTrie<V4Key, BanEntry> = LpmTrie::pinned(MAX_BANS, 0);
#[map(name = "banned_v6")]
static BANNED_V6: LpmTrie<[u8; 16], BanEntry> = LpmTrie::pinned(MAX_BANS, 0);
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

#[xdp]
pub fn sipguard(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (verdict, action) = decide(&ctx, len);
    count(verdict, len);
    action
}

/// An empty program: the floor that `cargo xtask bench xdp` measures the real
/// one against, in the same run. Never attached.
#[xdp]
pub fn pass_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Returns the counter to bump and the XDP action.
#[inline(always)]
fn decide(ctx: &XdpContext, len: u64) -> (u32, u32) {
    let pkt = match parse::packet(ctx) {
        Ok(pkt) => pkt,
        Err(verdict) => return (verdict, xdp_action::XDP_PASS),
    };
    let ban = match pkt.src {
        Source::V4(addr) => BANNED_V4.get(Key::new(32, v4_key(addr))),
        Source::V6(addr) => BANNED_V6.get(Key::new(128, addr)),
    };
    let Some(ban) = ban else {
        return (counter::PASS_NOT_BANNED, xdp_action::XDP_PASS);
    };
    // The coarse clock (tick resolution) costs a few ns where the precise
    // one costs ~60; bans need no better than milliseconds.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if ban.is_expired(now) {
        // The daemon deletes expired entries; until then the kernel ignores them.
        return (counter::PASS_BAN_EXPIRED, xdp_action::XDP_PASS);
    }
    let all_ports = ban.flags & BAN_ALL_PORTS != 0 || config_flags() & CONFIG_ALL_PORTS != 0;
    let drop_verdict = match pkt.port {
        Port::Dst(port) if all_ports || is_protected(port) => counter::DROP_BANNED,
        Port::NoPorts if all_ports => counter::DROP_BANNED,
        // A banned source must not get through by fragmenting: without a port we
        // cannot tell SIP from anything else, so it is dropped.
        Port::Unknown => counter::DROP_BANNED_NO_PORT,
        _ => return (counter::PASS_BANNED_OTHER_PORT, xdp_action::XDP_PASS),
    };
    if allowlisted(&pkt.src, now) {
        return (counter::PASS_ALLOWLISTED, xdp_action::XDP_PASS);
    }
    // The trie hands out a pointer into its node; the counters are updated with
    // atomic adds because several CPUs may drop packets of one source at once.
    let ban = ban as *const BanEntry as *mut BanEntry;
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*ban).packets, 1);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*ban).bytes, len);
        (*ban).last_seen_ns = now;
    }
    (drop_verdict, xdp_action::XDP_DROP)
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
