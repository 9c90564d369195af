//! Header parsing with fixed-size, bounds-checked reads the verifier accepts.
//!
//! What we need from a packet is its source address, its destination port
//! when one can be known, whether it is a fragment, and whether it is the
//! kind of packet a forger can send freely (charged to the source's rate
//! budget). Anything that is not IP, or whose headers are truncated or
//! invalid, is reported as such and passes untouched: the kernel's own
//! checks drop it. The one exception is a first fragment, whose headers may
//! continue in the next fragment: its ports are then unknown, not malformed.

use aya_ebpf::programs::XdpContext;
use common::counter;
use core::mem;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, udp::UdpHdr, vlan::VlanHdr};

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

/// TCP flags (byte 13 of the header).
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_HDR_LEN: usize = 20;

/// How many IPv6 extension headers we walk before giving up on the port.
/// Real SIP traffic carries none; five covers hop-by-hop, routing, a
/// fragment header, two destination-options headers or AH in any legal order.
const MAX_V6_EXT_HEADERS: usize = 5;

pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

pub enum Port {
    /// TCP or UDP destination port.
    Dst(u16),
    /// A protocol without ports (ICMP, ESP, ...).
    NoPorts,
    /// Ports exist but we cannot see them: a non-first fragment, a first
    /// fragment too short to hold them, or an IPv6 extension-header chain
    /// longer than we walk.
    Unknown,
}

pub struct Packet {
    pub src: Source,
    pub port: Port,
    /// Part of a fragmented datagram (an IPv6 atomic fragment, offset 0 and
    /// no more fragments, is an ordinary packet and not one).
    pub fragment: bool,
    /// Charged to the source's rate budget: what a forger can send without
    /// a handshake (UDP, a TCP SYN, a fragment whose ports are unknown).
    /// Segments of TCP connections are not: their source proved itself.
    pub charged: bool,
    /// Offset of the UDP payload in the packet; 0 when not UDP.
    pub udp_payload: usize,
    /// Offset of the TCP header in the packet; 0 when not TCP.
    pub tcp: usize,
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
    match l3(ctx)? {
        (ETH_P_IP, off) => ipv4(ctx, off),
        (ETH_P_IPV6, off) => ipv6(ctx, off),
        _ => Err(counter::PASS_NOT_IP),
    }
}

/// The source address alone, also of a packet whose later headers are
/// malformed (for `sipguard trace`).
#[inline(always)]
pub fn source(ctx: &XdpContext) -> Option<Source> {
    match l3(ctx).ok()? {
        (ETH_P_IP, off) => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
            Some(Source::V4(unsafe { (*ip).src_addr }))
        }
        (ETH_P_IPV6, off) => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, off)?;
            Some(Source::V6(unsafe { (*ip).src_addr }))
        }
        _ => None,
    }
}

/// The ether type after up to two VLAN tags, and where its header starts.
#[inline(always)]
fn l3(ctx: &XdpContext) -> Result<(u16, usize), u32> {
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
    Ok((ether_type, off))
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
    // A non-zero offset: a later fragment, no ports. More-fragments (0x2000)
    // with offset 0: the first fragment, whose ports are read like any
    // packet's (so the limiter and the scanner see it).
    let fragment = frags & 0x3fff != 0;
    let l4 = if frags & 0x1fff != 0 {
        L4::UNKNOWN
    } else {
        l4(ctx, off + ihl, proto, fragment)?
    };
    Ok(l4.packet(Source::V4(src), fragment))
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize) -> Result<Packet, u32> {
    const MALFORMED: u32 = counter::PASS_MALFORMED;
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(MALFORMED)?;
    let (vcf0, mut next, src) = unsafe { ((*ip).vcf[0], (*ip).next_hdr, (*ip).src_addr) };
    if vcf0 >> 4 != 6 {
        return Err(MALFORMED);
    }
    let mut pos = off + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_V6_EXT_HEADERS {
        if !is_v6_ext(next) {
            break;
        }
        // Every extension header starts with (next header, length) and is
        // at least eight bytes long.
        let Some(ext) = ptr_at::<[u8; 4]>(ctx, pos) else {
            // Cut short: in a first fragment the rest is in the next one.
            if fragment {
                return Ok(L4::UNKNOWN.packet(Source::V6(src), true));
            }
            return Err(MALFORMED);
        };
        let (ext_next, ext_len, frag_hi, frag_lo) =
            unsafe { ((*ext)[0], (*ext)[1], (*ext)[2], (*ext)[3]) };
        pos += match next {
            IPPROTO_FRAGMENT => {
                let offset_flags = u16::from_be_bytes([frag_hi, frag_lo]);
                if offset_flags & 0xfff8 != 0 {
                    // A later fragment: no ports.
                    return Ok(L4::UNKNOWN.packet(Source::V6(src), true));
                }
                // Offset 0: with M set the first fragment, without it an
                // atomic fragment, which is an ordinary packet.
                fragment |= offset_flags & 1 != 0;
                8
            }
            // AH: (len + 2) * 4 bytes.
            IPPROTO_AH => (usize::from(ext_len) + 2) * 4,
            // Hop-by-hop, routing, destination options: (len + 1) * 8.
            _ => (usize::from(ext_len) + 1) * 8,
        };
        next = ext_next;
    }
    let l4 = if is_v6_ext(next) {
        // A chain longer than we walk.
        L4::UNKNOWN
    } else {
        l4(ctx, pos, next, fragment)?
    };
    Ok(l4.packet(Source::V6(src), fragment))
}

#[inline(always)]
fn is_v6_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH | IPPROTO_DSTOPTS
    )
}

/// What the transport header says.
struct L4 {
    port: Port,
    charged: bool,
    udp_payload: usize,
    tcp: usize,
}

impl L4 {
    /// Ports unknown: charged, so that fragments cannot flood past the limiter.
    const UNKNOWN: L4 = L4 {
        port: Port::Unknown,
        charged: true,
        udp_payload: 0,
        tcp: 0,
    };

    #[inline(always)]
    fn packet(self, src: Source, fragment: bool) -> Packet {
        Packet {
            src,
            port: self.port,
            fragment,
            charged: self.charged,
            udp_payload: self.udp_payload,
            tcp: self.tcp,
        }
    }
}

/// The transport header at `off`. A truncated one is malformed, except in a
/// first fragment, where it may continue in the next fragment (the tiny
/// fragment attack): there the ports are unknown.
#[inline(always)]
fn l4(ctx: &XdpContext, off: usize, proto: u8, fragment: bool) -> Result<L4, u32> {
    let truncated = if fragment {
        Ok(L4::UNKNOWN)
    } else {
        Err(counter::PASS_MALFORMED)
    };
    match proto {
        IPPROTO_UDP => {
            let Some(udp) = ptr_at::<UdpHdr>(ctx, off) else {
                return truncated;
            };
            Ok(L4 {
                port: Port::Dst(u16::from_be_bytes(unsafe { (*udp).dst })),
                charged: true,
                udp_payload: off + UdpHdr::LEN,
                tcp: 0,
            })
        }
        IPPROTO_TCP => {
            let Some(tcp) = ptr_at::<[u8; TCP_HDR_LEN]>(ctx, off) else {
                return truncated;
            };
            let (dst_hi, dst_lo, flags) = unsafe { ((*tcp)[2], (*tcp)[3], (*tcp)[13]) };
            Ok(L4 {
                port: Port::Dst(u16::from_be_bytes([dst_hi, dst_lo])),
                // Only a connection attempt costs the source nothing to forge.
                charged: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
                udp_payload: 0,
                // Laundered here (a bounded unknown to the verifier, ~2 ns
                // for a TCP packet): carried as the exact offset of each
                // parse path, it kept the paths apart to the end and the
                // program took 550 000 instructions to verify, not 230 000.
                tcp: crate::scanner::launder(off),
            })
        }
        _ => Ok(L4 {
            port: Port::NoPorts,
            charged: false,
            udp_payload: 0,
            tcp: 0,
        }),
    }
}
