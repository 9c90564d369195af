//! What is attached to an interface: the XDP programs the kernel reports
//! for it (one rtnetlink RTM_GETLINK, the attributes `ip link` shows as
//! `prog/xdp id N`), with each program's name. libxdp attaches through
//! netlink, not BPF links, so this is the only place its programs (and
//! dispatchers) show up.
use super::netlink;
use anyhow::{bail, Context as _, Result};
use std::fmt;

/// An XDP program attached to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub id: u32,
    /// "driver", "skb" or "hw".
    pub mode: &'static str,
    /// The kernel's name of the program (at most 15 bytes), "?" when the
    /// program could not be looked up (it went away meanwhile).
    pub name: String,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (id {}, {} mode)", self.name, self.id, self.mode)
    }
}

/// `program`, and when it is a libxdp dispatcher, its members in run order.
pub fn describe(ifindex: u32, program: &Attached) -> String {
    match super::state::read(ifindex, program) {
        Ok(Some(d)) => format!("{program}: {d}"),
        Ok(None) => program.to_string(),
        Err(e) => format!("{program}: a dispatcher whose state cannot be read ({e:#})"),
    }
}

/// libxdp's name of its dispatcher program: an interface holding it shares
/// its XDP hook between the programs in the dispatcher's slots.
pub const DISPATCHER: &str = "xdp_dispatcher";

/// The XDP programs attached to the interface with index `ifindex`, in this
/// network namespace: none, one, or one per mode.
pub fn attached(ifindex: u32) -> Result<Vec<Attached>> {
    let reply = getlink(ifindex)?;
    let ids = parse_getlink(&reply)?;
    Ok(ids
        .into_iter()
        .map(|(mode, id)| Attached {
            id,
            mode,
            name: program_name(id).unwrap_or_else(|| "?".to_owned()),
        })
        .collect())
}

/// The program's name, bytes outside printable ASCII replaced (names come
/// from whoever loaded the program).
fn program_name(id: u32) -> Option<String> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)?;
    Some(
        info.name()
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect(),
    )
}

const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;

/// Sends RTM_GETLINK for `ifindex` and returns the kernel's reply.
fn getlink(ifindex: u32) -> Result<Vec<u8>> {
    netlink::roundtrip(&netlink::message(libc::RTM_GETLINK, 0, ifindex, &[])?)
        .context("netlink RTM_GETLINK")
}

/// The (mode, program id) pairs of the IFLA_XDP attribute of an
/// RTM_NEWLINK reply; an error for a netlink error or a malformed reply.
fn parse_getlink(msg: &[u8]) -> Result<Vec<(&'static str, u32)>> {
    let (kind, len) = netlink::check_reply(msg).context("the kernel refused RTM_GETLINK")?;
    if kind != libc::RTM_NEWLINK {
        bail!("unexpected netlink reply type {kind}");
    }
    let hdr = netlink::HEADER;
    let attrs_at = hdr + netlink::IFINFO;
    let Some(xdp) = netlink::attributes(msg.get(attrs_at..len).unwrap_or_default())
        .find(|(t, _)| *t == netlink::IFLA_XDP)
        .map(|(_, v)| v)
    else {
        return Ok(Vec::new());
    };
    let mut attached = 0u8;
    let mut single = None;
    let mut per_mode = Vec::new();
    for (t, v) in netlink::attributes(xdp) {
        let id = (v.len() >= 4).then(|| netlink::u32_at(v, 0));
        match (t, id) {
            (IFLA_XDP_ATTACHED, _) if !v.is_empty() => attached = v[0],
            (IFLA_XDP_PROG_ID, Some(id)) => single = Some(id),
            (IFLA_XDP_DRV_PROG_ID, Some(id)) => per_mode.push(("driver", id)),
            (IFLA_XDP_SKB_PROG_ID, Some(id)) => per_mode.push(("skb", id)),
            (IFLA_XDP_HW_PROG_ID, Some(id)) => per_mode.push(("hw", id)),
            _ => {}
        }
    }
    // One program: the kernel gives its id and mode (ATTACHED); several
    // (one per mode): an id per mode.
    let mode = match attached {
        XDP_ATTACHED_DRV => Some("driver"),
        XDP_ATTACHED_SKB => Some("skb"),
        XDP_ATTACHED_HW => Some("hw"),
        _ => None,
    };
    Ok(match (mode, single) {
        (Some(mode), Some(id)) => vec![(mode, id)],
        _ => per_mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn newlink(attrs: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        let len = (16 + 16 + attrs.len()) as u32;
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(attrs);
        m
    }

    #[test]
    fn one_program_with_its_mode() {
        let mut xdp = attr(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB]);
        xdp.extend(attr(IFLA_XDP_PROG_ID, &7090u32.to_ne_bytes()));
        let mut attrs = attr(3, b"eth0\0"); // IFLA_IFNAME first, as the kernel puts it
        attrs.extend(attr(netlink::IFLA_XDP | netlink::NLA_F_NESTED, &xdp)); // NLA_F_NESTED
        assert_eq!(
            parse_getlink(&newlink(&attrs)).unwrap(),
            vec![("skb", 7090)]
        );
    }

    #[test]
    fn one_program_per_mode() {
        let mut xdp = attr(IFLA_XDP_ATTACHED, &[4]); // XDP_ATTACHED_MULTI
        xdp.extend(attr(IFLA_XDP_DRV_PROG_ID, &1u32.to_ne_bytes()));
        xdp.extend(attr(IFLA_XDP_HW_PROG_ID, &2u32.to_ne_bytes()));
        assert_eq!(
            parse_getlink(&newlink(&attr(netlink::IFLA_XDP, &xdp))).unwrap(),
            vec![("driver", 1), ("hw", 2)]
        );
    }

    #[test]
    fn nothing_attached() {
        let xdp = attr(IFLA_XDP_ATTACHED, &[0]);
        assert!(parse_getlink(&newlink(&attr(netlink::IFLA_XDP, &xdp)))
            .unwrap()
            .is_empty());
        assert!(parse_getlink(&newlink(&[])).unwrap().is_empty());
    }

    #[test]
    fn malformed_replies_are_errors_or_empty_never_panics() {
        assert!(parse_getlink(&[0; 8]).is_err());
        let mut m = newlink(&attr(netlink::IFLA_XDP, &attr(IFLA_XDP_PROG_ID, &[1, 2])));
        assert!(
            parse_getlink(&m).unwrap().is_empty(),
            "a short id is ignored"
        );
        m[0] = 0xff; // length beyond the buffer
        assert!(parse_getlink(&m).is_err());
        // An attribute claiming more than there is stops the walk.
        let mut bad = newlink(&[]);
        bad.extend_from_slice(&[200, 0, 43, 0, 1, 2, 3, 4]);
        let len = bad.len() as u32;
        bad[..4].copy_from_slice(&len.to_ne_bytes());
        assert!(parse_getlink(&bad).unwrap().is_empty());
    }

    #[test]
    fn a_netlink_error_is_reported() {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        let err = format!("{:#}", parse_getlink(&m).unwrap_err());
        assert!(err.contains("No such device"), "{err}");
    }
}
