//! Header parsing with fixed-size, bounds-checked reads the verifier accepts.
//!
//! What we need from a packet is only its source address and, when there is
//! one, its destination port. Anything that is not IP, or whose headers are
//! truncated or invalid, is reported as such and passes untouched.

use aya_ebpf::programs::XdpContext;
use common::counter;
use core::mem;
use network_types::{
    eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr, vlan::VlanHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_QINQ_OLD: u16 = 0x9100;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// How many IPv6 extension headers we walk before giving up on the port.
/// Real SIP traffic carries none; four covers hop-by-hop, routing, two
/// destination-options headers or AH in any legal order.
const MAX_V6_EXT_HEADERS: usize = 4;

pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

pub enum Port {
    /// TCP or UDP destination port.
    Dst(u16),
    /// A protocol without ports (ICMP, ESP, ...).
    NoPorts,
    /// Ports exist but we cannot see them: an IPv4/IPv6 fragment, or an IPv6
    /// extension-header chain longer than we walk.
    Unknown,
}

pub struct Packet {
    pub src: Source,
    pub port: Port,
    /// Offset of the UDP payload in the packet; 0 when not UDP.
    pub udp_payload: usize,
}

/// A pointer to a `T` at `offset` in the packet, or `None` if the packet is too short.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Parses a packet, or returns the pass counter that says why it is not ours.
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Result<Packet, u32> {
    const MALFORMED: u32 = counter::PASS_MALFORMED;
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(MALFORMED)?;
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut off = EthHdr::LEN;
    // Up to two VLAN tags, unrolled: a third one is "not IP" and passes.
    if is_vlan(ether_type) {
        let vlan: *const VlanHdr = ptr_at(ctx, off).ok_or(MALFORMED)?;
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        off += VlanHdr::LEN;
    }
    if is_vlan(ether_type) {
        let vlan: *const VlanHdr = ptr_at(ctx, off).ok_or(MALFORMED)?;
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        off += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        _ => Err(counter::PASS_NOT_IP),
    }
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD || ether_type == ETH_P_QINQ_OLD
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize) -> Result<Packet, u32> {
    const MALFORMED: u32 = counter::PASS_MALFORMED;
    let ip: *const Ipv4Hdr = ptr_at(ctx, off).ok_or(MALFORMED)?;
    let (vihl, proto, frags, src) =
        unsafe { ((*ip).vihl, (*ip).proto, (*ip).frags, (*ip).src_addr) };
    if vihl >> 4 != 4 {
        return Err(MALFORMED);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN {
        return Err(MALFORMED);
    }
    let frags = u16::from_be_bytes(frags);
    // More-fragments flag (0x2000) or a non-zero offset: any fragment. Even the
    // first one is not trusted for its port, as overlapping fragments can
    // rewrite it.
    let (port, udp_payload) = if frags & 0x3fff != 0 {
        (Port::Unknown, 0)
    } else {
        l4_port(ctx, off + ihl, proto)?
    };
    Ok(Packet {
        src: Source::V4(src),
        port,
        udp_payload,
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize) -> Result<Packet, u32> {
    const MALFORMED: u32 = counter::PASS_MALFORMED;
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(MALFORMED)?;
    let (vcf0, mut next, src) = unsafe { ((*ip).vcf[0], (*ip).next_hdr, (*ip).src_addr) };
    if vcf0 >> 4 != 6 {
        return Err(MALFORMED);
    }
    let mut l4 = off + Ipv6Hdr::LEN;
    for _ in 0..MAX_V6_EXT_HEADERS {
        // Every extension header we walk starts with (next header, length).
        let len_unit = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => 8,
            IPPROTO_AH => 4,
            _ => break,
        };
        let ext: *const [u8; 2] = ptr_at(ctx, l4).ok_or(MALFORMED)?;
        let (ext_next, ext_len) = unsafe { ((*ext)[0], (*ext)[1]) };
        // Hop-by-hop/routing/dst-opts: (len + 1) * 8 bytes; AH: (len + 2) * 4.
        let extra = if len_unit == 8 { 1 } else { 2 };
        l4 += (usize::from(ext_len) + extra) * len_unit;
        next = ext_next;
    }
    let (port, udp_payload) = match next {
        IPPROTO_FRAGMENT | IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
            (Port::Unknown, 0)
        }
        _ => l4_port(ctx, l4, next)?,
    };
    Ok(Packet {
        src: Source::V6(src),
        port,
        udp_payload,
    })
}

/// The destination port of a complete TCP or UDP header at `off`, and the
/// UDP payload's offset (0 when not UDP).
#[inline(always)]
fn l4_port(ctx: &XdpContext, off: usize, proto: u8) -> Result<(Port, usize), u32> {
    match proto {
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, off).ok_or(counter::PASS_MALFORMED)?;
            Ok((
                Port::Dst(u16::from_be_bytes(unsafe { (*udp).dst })),
                off + UdpHdr::LEN,
            ))
        }
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, off).ok_or(counter::PASS_MALFORMED)?;
            Ok((Port::Dst(u16::from_be_bytes(unsafe { (*tcp).dest })), 0))
        }
        _ => Ok((Port::NoPorts, 0)),
    }
}
