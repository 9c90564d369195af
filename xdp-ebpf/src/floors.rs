//! Floors for `cargo xtask bench xdp`: programs that do only part of what
//! sipguard does, so that each sipguard figure stands beside what any
//! program doing that much must cost on this machine. Never attached.
use crate::{parse, BANNED_HOST_V4, BANNED_HOST_V6};
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use parse::Source;

/// Parses exactly as sipguard does (VLAN tags, IPv4 options, the IPv6
/// extension-header chain, fragments, ports), then drops what it parsed.
#[xdp]
pub fn floor_parse(ctx: XdpContext) -> u32 {
    match parse::packet(&ctx) {
        Ok(_) => xdp_action::XDP_DROP,
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// The parse floor, then one hash lookup of the source in sipguard's own
/// table of single addresses (the same size and fill): drops what it finds.
#[xdp]
pub fn floor_lookup(ctx: XdpContext) -> u32 {
    let Ok(pkt) = parse::packet(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let found = match pkt.src {
        Source::V4(addr) => unsafe { BANNED_HOST_V4.get(&addr) }.is_some(),
        Source::V6(addr) => unsafe { BANNED_HOST_V6.get(&addr) }.is_some(),
    };
    if found {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}
