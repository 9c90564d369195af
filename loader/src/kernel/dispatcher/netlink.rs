//! One rtnetlink request about one interface and the kernel's answer: the
//! way libxdp reads and sets an interface's XDP program (not BPF links).
use anyhow::{bail, Context as _, Result};
use std::{
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

pub const IFLA_XDP: u16 = 43;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// A reply to one request is a few kB; more is refused, not grown into.
const REPLY_MAX: usize = 64 << 10;
pub const HEADER: usize = size_of::<libc::nlmsghdr>();
pub const IFINFO: usize = size_of::<libc::ifinfomsg>();

/// A request of `kind` (RTM_GETLINK, RTM_SETLINK) for interface `ifindex`
/// carrying `attrs`, with `flags` beside NLM_F_REQUEST.
pub fn message(kind: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> Result<Vec<u8>> {
    let index = i32::try_from(ifindex).context("interface index out of range")?;
    let len = u32::try_from(HEADER + IFINFO + attrs.len()).context("request too long")?;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    m.push(libc::AF_UNSPEC as u8); // ifi_family
    m.push(0);
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change
    m.extend_from_slice(attrs);
    Ok(m)
}

/// One attribute, padded to 4 bytes.
pub fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + value.len() + 3);
    a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(value);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

/// Sends `request` and returns the kernel's first reply message.
pub fn roundtrip(request: &[u8]) -> Result<Vec<u8>> {
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot open a netlink socket");
    }
    // SAFETY: fd is a new socket no one else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: request is a valid buffer of request.len() bytes.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink request failed");
    }
    let mut buf = vec![0u8; REPLY_MAX];
    // SAFETY: buf is a valid, writable buffer of buf.len() bytes.
    let got = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
        )
    };
    if got < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink reply failed");
    }
    let got = got as usize;
    if got > buf.len() {
        bail!("netlink reply of {got} bytes, more than {REPLY_MAX}");
    }
    buf.truncate(got);
    Ok(buf)
}

/// The reply's header: (message type, its length), checked against the
/// buffer; a netlink error (other than the 0 of an acknowledgement) is
/// returned as the error it carries.
pub fn check_reply(msg: &[u8]) -> Result<(u16, usize)> {
    if msg.len() < HEADER {
        bail!("short netlink reply ({} bytes)", msg.len());
    }
    let len = u32_at(msg, 0) as usize;
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if len < HEADER || len > msg.len() {
        bail!("malformed netlink reply (length {len} of {})", msg.len());
    }
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = if len >= HEADER + 4 {
            -(u32_at(msg, HEADER) as i32)
        } else {
            0
        };
        if errno != 0 {
            return Err(std::io::Error::from_raw_os_error(errno).into());
        }
    }
    Ok((kind, len))
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The (type, payload) netlink attributes of `b`, stopping at the first
/// malformed one.
pub fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        // Attributes are 4-byte aligned; the last one's padding may be cut.
        b = b.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}
