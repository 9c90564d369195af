//! Hand-built frames, byte by byte, so that tests can craft exactly the edge
//! cases the parser must survive (VLAN stacks, IPv4 options, fragments,
//! IPv6 extension chains, truncation at every layer). Checksums are not
//! filled in: XDP never looks at them.

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const HOPOPTS: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const DSTOPTS: u8 = 60;

/// IPv4 flags/offset field values.
pub const MORE_FRAGMENTS: u16 = 0x2000;
pub const DONT_FRAGMENT: u16 = 0x4000;

/// Ethernet header, then one VLAN tag per TPID in `vlan_tpids` (outermost first), then `payload`.
pub fn frame(vlan_tpids: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let mut types: Vec<u16> = vlan_tpids.to_vec();
    types.push(ether_type);
    f.extend_from_slice(&types[0].to_be_bytes());
    for (i, inner) in types[1..].iter().enumerate() {
        f.extend_from_slice(&(100 + i as u16).to_be_bytes()); // TCI: VLAN id
        f.extend_from_slice(&inner.to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header with `option_words` 32-bit words of options (NOPs), the
/// given flags/fragment-offset field, then `payload`.
pub fn ipv4(src: [u8; 4], proto: u8, option_words: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let ihl = 5 + option_words;
    let total = usize::from(ihl) * 4 + payload.len();
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend(std::iter::repeat_n(1u8, usize::from(option_words) * 4)); // NOP options
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header (next header `next`), then `payload`.
pub fn ipv6(src: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    let mut dst = [0u8; 16];
    dst[0] = 0xfd;
    dst[15] = 1;
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// An IPv6 extension header of `8 * (len + 1)` bytes (hop-by-hop, routing,
/// destination options), then `payload`.
pub fn v6_ext(next: u8, len: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, len];
    h.extend(std::iter::repeat_n(0u8, usize::from(len) * 8 + 6));
    h.extend_from_slice(payload);
    h
}

/// An IPv6 fragment header (offset in 8-byte units, more-fragments flag), then `payload`.
pub fn v6_frag(next: u8, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1]);
    h.extend_from_slice(payload);
    h
}

/// A UDP header to `dport`, with a SIP-looking payload.
pub fn udp(dport: u16) -> Vec<u8> {
    let body = b"OPTIONS sip:100@example.invalid SIP/2.0\r\n\r\n";
    let mut h = vec![0x13, 0xc4];
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(body);
    h
}

/// A minimal TCP SYN header to `dport`.
pub fn tcp(dport: u16) -> Vec<u8> {
    let mut h = vec![0xc3, 0x50];
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

/// An ICMP/ICMPv6 echo request.
pub fn icmp_echo() -> Vec<u8> {
    vec![8, 0, 0, 0, 0, 1, 0, 1]
}

/// `bytes` cut to `len`.
pub fn truncated(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    bytes.truncate(len);
    bytes
}

/// UDP over IPv4 over Ethernet, no VLAN.
pub fn udp4(src: [u8; 4], dport: u16) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(src, UDP, 0, 0, &udp(dport)))
}

/// TCP over IPv4 over Ethernet, no VLAN.
pub fn tcp4(src: [u8; 4], dport: u16) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(src, TCP, 0, 0, &tcp(dport)))
}

/// UDP over IPv6 over Ethernet, no VLAN.
pub fn udp6(src: [u8; 16], dport: u16) -> Vec<u8> {
    frame(&[], ETH_P_IPV6, &ipv6(src, UDP, &udp(dport)))
}

/// TCP over IPv6 over Ethernet, no VLAN.
pub fn tcp6(src: [u8; 16], dport: u16) -> Vec<u8> {
    frame(&[], ETH_P_IPV6, &ipv6(src, TCP, &tcp(dport)))
}

/// A UDP header to `dport` with `body` as payload.
pub fn udp_with(dport: u16, body: &[u8]) -> Vec<u8> {
    let mut h = vec![0x13, 0xc4];
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(body);
    h
}

/// A SIP OPTIONS request like SIPVicious' svmap sends, with `user_agent` as
/// its User-Agent header line (or no such line when empty) after `padding`
/// extra bytes of headers.
pub fn sip_options(user_agent: &str, padding: usize) -> Vec<u8> {
    let mut m = String::from(
        "OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-1;rport\r\nMax-Forwards: 70\r\n",
    );
    m.push_str(&format!("X-Padding: {}\r\n", "p".repeat(padding)));
    m.push_str(
        "To: \"sipvicious\"<sip:100@10.0.0.1>\r\nFrom: \"sipvicious\"<sip:100@10.0.0.1>;tag=1\r\n",
    );
    if !user_agent.is_empty() {
        m.push_str(user_agent);
        m.push_str("\r\n");
    }
    m.push_str("Call-ID: 1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    m.into_bytes()
}

/// A UDP/IPv4 frame that a real receive path accepts: the given MAC and IP
/// addresses and a valid IPv4 header checksum (the stack drops frames without
/// one before any firewall sees them). The UDP checksum is 0, "none", which
/// IPv4 allows.
pub fn routable_udp4(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + body.len());
    f.extend_from_slice(&macs.1); // destination first
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut ip = ipv4(src, UDP, 0, 0, &udp_with(dport, body));
    ip[16..20].copy_from_slice(&dst);
    let sum = ip[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    ip[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// A MAC address written as `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// TCP flags, for `tcp_with_flags`.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

/// A minimal TCP header to `dport` with the given flags (a SYN, an ACK of
/// an established connection, ...).
pub fn tcp_with_flags(dport: u16, flags: u8) -> Vec<u8> {
    let mut h = tcp(dport);
    h[13] = flags;
    h
}

/// A TCP segment from `sport` to `dport` with `flags` and sequence number
/// `seq`, `option_words` 32-bit words of NOP options after the header, then
/// `payload`.
pub fn tcp_segment(
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    option_words: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = tcp(dport);
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[12] = (5 + option_words) << 4;
    h[13] = flags;
    h.resize(20 + 4 * usize::from(option_words), 1);
    h.extend_from_slice(payload);
    h
}

/// An IPv6 destination-options header whose option bytes are `content`
/// (padded with zeros to a multiple of eight bytes), then `payload`: a long
/// chain in one header, with bytes the test chooses.
pub fn v6_dstopts_with(next: u8, content: &[u8], payload: &[u8]) -> Vec<u8> {
    let total = (content.len() + 2).div_ceil(8) * 8;
    let mut h = vec![next, (total / 8 - 1) as u8];
    h.extend_from_slice(content);
    h.resize(total, 0);
    h.extend_from_slice(payload);
    h
}
