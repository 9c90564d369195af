//! The dispatcher's configuration, `struct xdp_dispatcher_config` of
//! xdp-tools' `headers/xdp/prog_dispatcher.h`, as it sits in the
//! dispatcher object's `.rodata` (the `conf` variable): the kernel freezes
//! it at load, and the verifier drops the calls to the slots past
//! `num_progs_enabled`.
use anyhow::{bail, Result};

/// `XDP_DISPATCHER_MAGIC`: 'X' + 'D' + 'P'.
pub const MAGIC: u8 = 236;
/// The slots of a libxdp dispatcher (`MAX_DISPATCHER_ACTIONS`).
pub const SLOTS: usize = 10;
/// What an empty slot's stub returns (`XDP_DISPATCHER_RETVAL`); libxdp
/// puts it in every slot's chain actions, so a detached member is skipped.
pub const RETVAL: u32 = 31;
/// libxdp's default run priority (`XDP_DEFAULT_RUN_PRIO`); lower runs first.
pub const DEFAULT_PRIORITY: u32 = 50;
/// `BPF_F_XDP_HAS_FRAGS`, kept per member in `program_flags`.
pub const HAS_FRAGS: u32 = 1 << 5;
/// XDP actions, as bits of a chain-actions bitmap.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// One member: its run priority, the actions after which the next member
/// runs (a bitmap of `1 << action`), and whether it was loaded with frags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub priority: u32,
    pub chain_actions: u32,
    pub frags: bool,
}

/// The layout versions libxdp has shipped, told apart by the size of the
/// object's `conf`: version 1 (no magic, no frags), 2 (libxdp 1.2-1.4),
/// 3 (1.5+, `is_xdp_devbound` after the arrays).
pub fn version_of_size(size: usize) -> Result<u8> {
    Ok(match size {
        124 => 2,
        128 => 3,
        84 => bail!(
            "the dispatcher object is of version 1 (libxdp < 1.2), which sipguard does not speak"
        ),
        n => bail!("unknown dispatcher layout ({n}-byte config)"),
    })
}

/// The config bytes for `members`, in run order, for a dispatcher of
/// `version` (2 or 3). The dispatcher runs with frags only when every member
/// has them (`frags_supported`: the kernel knows the flag), as libxdp does.
pub fn encode(version: u8, members: &[Member], frags_supported: bool) -> Result<Vec<u8>> {
    if members.len() > SLOTS {
        bail!(
            "a dispatcher has {SLOTS} slots; {} members asked",
            members.len()
        );
    }
    let size = match version {
        2 => 124,
        3 => 128,
        v => bail!("dispatcher version {v} is not one sipguard speaks (2, 3)"),
    };
    let frags = frags_supported && !members.is_empty() && members.iter().all(|m| m.frags);
    let mut out = vec![0u8; size];
    out[0] = MAGIC;
    out[1] = version;
    out[2] = members.len() as u8;
    out[3] = u8::from(frags);
    for (i, m) in members.iter().enumerate() {
        let put = |out: &mut Vec<u8>, array: usize, v: u32| {
            let at = 4 + array * 4 * SLOTS + i * 4;
            out[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        };
        put(&mut out, 0, m.chain_actions | 1 << RETVAL);
        put(&mut out, 1, m.priority);
        put(&mut out, 2, if m.frags { HAS_FRAGS } else { 0 });
    }
    Ok(out)
}

/// The members in run order: by priority, then by name (the first of
/// libxdp's tie-breaks, `cmp_xdp_programs`; its later ones compare loaded
/// programs' tags and load times, which only matter for equal names).
pub fn order(members: &mut [Member]) {
    members.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, priority: u32) -> Member {
        Member {
            name: name.into(),
            priority,
            chain_actions: 1 << XDP_PASS,
            frags: false,
        }
    }

    #[test]
    fn layout_matches_prog_dispatcher_h() {
        let m = [member("sipguard", 5), member("xdpfilt_alw_all", 10)];
        let c = encode(2, &m, true).unwrap();
        assert_eq!(c.len(), 124);
        assert_eq!(&c[..4], &[MAGIC, 2, 2, 0]);
        let word = |at: usize| u32::from_ne_bytes(c[at..at + 4].try_into().unwrap());
        assert_eq!(
            word(4),
            1 << XDP_PASS | 1 << RETVAL,
            "chain_call_actions[0]"
        );
        assert_eq!(
            word(8),
            1 << XDP_PASS | 1 << RETVAL,
            "chain_call_actions[1]"
        );
        assert_eq!(word(12), 0, "slot 2 unused");
        assert_eq!(word(44), 5, "run_prios[0]");
        assert_eq!(word(48), 10, "run_prios[1]");
        assert_eq!(word(84), 0, "program_flags[0]");
        assert_eq!(encode(3, &m, true).unwrap().len(), 128);
    }

    #[test]
    fn frags_only_when_every_member_and_the_kernel_have_them() {
        let mut m = [member("a", 1), member("b", 2)];
        m[0].frags = true;
        assert_eq!(encode(2, &m, true).unwrap()[3], 0);
        m[1].frags = true;
        assert_eq!(encode(2, &m, true).unwrap()[3], 1);
        assert_eq!(encode(2, &m, false).unwrap()[3], 0);
        let c = encode(2, &m, true).unwrap();
        assert_eq!(u32::from_ne_bytes(c[84..88].try_into().unwrap()), HAS_FRAGS);
    }

    #[test]
    fn bad_requests_are_refused() {
        let eleven: Vec<Member> = (0..11).map(|i| member(&i.to_string(), i)).collect();
        assert!(encode(2, &eleven, true)
            .unwrap_err()
            .to_string()
            .contains("10 slots"));
        assert!(encode(1, &[], true).is_err());
        assert!(version_of_size(84)
            .unwrap_err()
            .to_string()
            .contains("version 1"));
        assert!(version_of_size(100).is_err());
        assert_eq!(version_of_size(124).unwrap(), 2);
    }

    #[test]
    fn run_order_is_priority_then_name() {
        let mut m = [
            member("zeta", 10),
            member("alpha", 10),
            member("sipguard", 5),
        ];
        order(&mut m);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["sipguard", "alpha", "zeta"]);
    }
}
