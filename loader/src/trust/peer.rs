//! Who is at the other end of a local event-socket connection, before the
//! password is sent to it: a local unprivileged user can bind FreeSWITCH's
//! port while FreeSWITCH is down or restarting, and would be sent the
//! password on the next reconnect. The kernel's socket tables
//! (`/proc/net/tcp`, `/proc/net/tcp6`, of this thread's network
//! namespace) name the owner of the peer's end of our connection.
use anyhow::{bail, Context as _, Result};
use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// Largest socket table read (a busy box's: ~150 bytes a socket).
const MAX_TABLE: u64 = 64 * 1024 * 1024;

/// One socket of a `/proc/net/tcp{,6}` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub uid: u32,
}

/// The sockets of a table's text; lines that cannot be read are skipped
/// (the header, or a format this parser does not know).
pub fn parse_table(text: &str) -> Vec<Socket> {
    text.lines().skip(1).filter_map(parse_line).collect()
}

/// `  sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt   uid ...`
fn parse_line(line: &str) -> Option<Socket> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let local = parse_endpoint(f.next()?)?;
    let remote = parse_endpoint(f.next()?)?;
    let uid = f.nth(4)?.parse().ok()?;
    Some(Socket { local, remote, uid })
}

/// `ADDR:PORT` in the kernel's hex: the address as the 32-bit words of
/// its network-order bytes, each printed as a number in this machine's
/// byte order (`%08X`); the port as a number.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(w, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// An IPv4-mapped IPv6 address as the IPv4 one (a dual-stack listener's
/// accepted IPv4 connection is in `tcp6` as `::ffff:a.b.c.d`).
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The uid of the socket at `peer` connected to `us`, in `sockets`.
pub fn owner(sockets: &[Socket], us: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let (us, peer) = (canonical(us), canonical(peer));
    sockets
        .iter()
        .find(|s| canonical(s.local) == peer && canonical(s.remote) == us)
        .map(|s| s.uid)
}

fn read_table(path: &str) -> Result<String> {
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => f
            .take(MAX_TABLE)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read {path}"))?,
        // No IPv6 in this kernel: no tcp6 table.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("cannot read {path}")),
    };
    Ok(text)
}

/// What the peer of our connection `us` -> `peer` is.
#[derive(Debug, PartialEq, Eq)]
pub enum Peer {
    /// A socket of this box (this namespace), owned by `uid`.
    Local { uid: u32 },
    /// Not a socket of this box: across the network.
    Remote,
}

/// Looks the peer up in this thread's socket tables. A loopback peer that
/// cannot be found is an error (it is on this box: something is wrong).
pub fn find(us: SocketAddr, peer: SocketAddr) -> Result<Peer> {
    let mut sockets = Vec::new();
    for path in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        sockets.extend(parse_table(&read_table(path)?));
    }
    match owner(&sockets, us, peer) {
        Some(uid) => Ok(Peer::Local { uid }),
        None if canonical(peer).ip().is_loopback() => bail!(
            "the socket at {peer} (connected to {us}) is not in /proc/net/tcp or tcp6: its owner is unknown"
        ),
        None => Ok(Peer::Remote),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F55 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 41235 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F55 0100007F:D431 01 00000000:00000000 00:00000000 00000000   999        0 41240 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100007F:D431 0100007F:1F55 01 00000000:00000000 00:00000000 00000000     0        0 41239 1 0000000000000000 20 4 30 10 -1\n\
   3: 0A00A8C0:0016 6400A8C0:C350 01 00000000:00000000 02:000A7B1C 00000000     0        0 3120 2 0000000000000000 20 4 1 10 -1\n\
   garbage line\n";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:1F55 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 5001 1 0000000000000000 100 0 0 10 0\n\
   1: 00000000000000000000000001000000:1F55 00000000000000000000000001000000:E001 01 00000000:00000000 00:00000000 00000000   106        0 5002 1 0000000000000000 20 4 30 10 -1\n\
   2: 0000000000000000FFFF00000100007F:1F55 0000000000000000FFFF00000100007F:9C40 01 00000000:00000000 00:00000000 00000000   106        0 5003 1 0000000000000000 20 4 30 10 -1\n\
   3: B80D0120000000000000000001000000:13C4 B80D0120000000000000000002000000:C000 01 00000000:00000000 00:00000000 00000000    65534        0 5004 1 0000000000000000 20 4 30 10 -1\n";

    #[test]
    #[cfg(target_endian = "little")]
    fn ipv4_entries_are_read_in_host_byte_order() {
        let s = parse_table(TCP);
        assert_eq!(s.len(), 4, "header and garbage skipped");
        assert_eq!(s[1].local, "127.0.0.1:8021".parse().unwrap());
        assert_eq!(s[1].remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(s[1].uid, 999);
        assert_eq!(s[3].local, "192.168.0.10:22".parse().unwrap());
        assert_eq!(s[3].remote, "192.168.0.100:50000".parse().unwrap());
        // Our connection 127.0.0.1:54321 -> 127.0.0.1:8021: the peer's end
        // is entry 1 (owned by 999), not our own (entry 2, root's), not
        // the listener.
        let us = "127.0.0.1:54321".parse().unwrap();
        let peer = "127.0.0.1:8021".parse().unwrap();
        assert_eq!(owner(&s, us, peer), Some(999));
        assert_eq!(owner(&s, peer, us), Some(0));
        assert_eq!(owner(&s, "127.0.0.1:1".parse().unwrap(), peer), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn ipv6_and_mapped_entries_are_read_word_by_word() {
        let s = parse_table(TCP6);
        assert_eq!(s.len(), 4);
        assert_eq!(s[1].local, "[::1]:8021".parse().unwrap());
        assert_eq!(s[1].remote, "[::1]:57345".parse().unwrap());
        assert_eq!(s[2].local, "[::ffff:127.0.0.1]:8021".parse().unwrap());
        assert_eq!(s[3].local, "[2001:db8::1]:5060".parse().unwrap());
        assert_eq!(s[3].remote, "[2001:db8::2]:49152".parse().unwrap());
        assert_eq!(s[3].uid, 65534);
        assert_eq!(
            owner(
                &s,
                "[::1]:57345".parse().unwrap(),
                "[::1]:8021".parse().unwrap()
            ),
            Some(106)
        );
        // A dual-stack listener's accepted IPv4 connection: we connected
        // over IPv4, its socket is in tcp6 as IPv4-mapped.
        assert_eq!(
            owner(
                &s,
                "127.0.0.1:40000".parse().unwrap(),
                "127.0.0.1:8021".parse().unwrap()
            ),
            Some(106)
        );
    }

    #[test]
    fn bad_endpoints_are_skipped() {
        assert_eq!(parse_endpoint("0100007F"), None);
        assert_eq!(parse_endpoint("0100007G:1F55"), None);
        assert_eq!(parse_endpoint("0100007F:1F5555"), None);
        assert_eq!(parse_endpoint("0100007F0:1F55"), None);
        assert_eq!(parse_line("   0: 0100007F:1F55 00000000:0000 0A"), None);
    }

    #[test]
    fn this_boxs_own_connection_is_found_with_its_owner() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let us = c.local_addr().unwrap();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(
            find(us, l.local_addr().unwrap()).unwrap(),
            Peer::Local { uid }
        );
        assert_eq!(
            find(us, "192.0.2.1:8021".parse().unwrap()).unwrap(),
            Peer::Remote
        );
        assert!(find(us, "127.0.0.1:1".parse().unwrap()).is_err());
    }
}
