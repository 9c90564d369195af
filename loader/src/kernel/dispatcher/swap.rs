//! Putting a dispatcher on an interface's XDP hook, through netlink as
//! libxdp does (protocol.org, "Locking and pinning", "Atomic replace and
//! retry"): a first dispatcher only if the hook is empty
//! (`XDP_FLAGS_UPDATE_IF_NOEXIST`), a new one in place of the one that is
//! there (`XDP_FLAGS_REPLACE` with `IFLA_XDP_EXPECTED_FD`: the kernel swaps
//! atomically, and refuses if the hook changed meanwhile, which is the
//! caller's cue to start over), and removal of exactly the expected one.
use super::netlink;
use anyhow::{Context as _, Result};
use std::os::fd::{AsRawFd as _, BorrowedFd};

const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// The hook: driver (native) or generic (skb) XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Driver,
    Skb,
}

impl Mode {
    fn flag(self) -> u32 {
        match self {
            Mode::Skb => 1 << 1,
            Mode::Driver => 1 << 2,
        }
    }
}

fn setlink(ifindex: u32, fd: i32, flags: u32, expected: Option<i32>) -> Result<()> {
    let mut xdp = netlink::attr(IFLA_XDP_FD, &fd.to_ne_bytes());
    xdp.extend(netlink::attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes()));
    if let Some(e) = expected {
        xdp.extend(netlink::attr(IFLA_XDP_EXPECTED_FD, &e.to_ne_bytes()));
    }
    let attrs = netlink::attr(netlink::IFLA_XDP | netlink::NLA_F_NESTED, &xdp);
    let msg = netlink::message(libc::RTM_SETLINK, libc::NLM_F_ACK as u16, ifindex, &attrs)?;
    netlink::check_reply(&netlink::roundtrip(&msg)?)?;
    Ok(())
}

/// Attaches `program` to an empty hook; fails (EBUSY/EEXIST) if any program
/// is there.
pub fn attach_new(ifindex: u32, program: BorrowedFd<'_>, mode: Mode) -> Result<()> {
    setlink(
        ifindex,
        program.as_raw_fd(),
        mode.flag() | XDP_FLAGS_UPDATE_IF_NOEXIST,
        None,
    )
    .context("attaching a dispatcher to an empty XDP hook")
}

/// Replaces `old` by `new` on the hook in one step; fails if `old` is no
/// longer the program there.
pub fn replace(ifindex: u32, new: BorrowedFd<'_>, old: BorrowedFd<'_>, mode: Mode) -> Result<()> {
    setlink(
        ifindex,
        new.as_raw_fd(),
        mode.flag() | XDP_FLAGS_REPLACE,
        Some(old.as_raw_fd()),
    )
    .context("replacing the dispatcher on the XDP hook")
}

/// Removes `old` from the hook, only if it is still the program there.
pub fn remove(ifindex: u32, old: BorrowedFd<'_>, mode: Mode) -> Result<()> {
    setlink(
        ifindex,
        -1,
        mode.flag() | XDP_FLAGS_REPLACE,
        Some(old.as_raw_fd()),
    )
    .context("removing the dispatcher from the XDP hook")
}
