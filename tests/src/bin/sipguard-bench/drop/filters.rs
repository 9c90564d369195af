//! The filters compared: installing each with its bans in the server's
//! namespace, and reading its own count of drops.
use super::{send::source, Filter};
use anyhow::{bail, Context as _, Result};
use aya::programs::XdpMode;
use sipguard_tests::{
    kernel::{TestProgram, DROP_FLOOR},
    netns::{self, Netns, Pair},
};
use std::io::{Read as _, Write as _};

/// An installed filter: the XDP program and its maps are held here until
/// it is taken down; the firewalls live in the namespace.
pub struct Installed {
    pub filter: Filter,
    pub program: Option<(TestProgram, &'static str)>,
}

/// Installs `filter` with sources `0..bans` banned.
pub fn install(pair: &Pair, filter: Filter, bans: u32) -> Result<Installed> {
    let program = match filter {
        Filter::XdpFloor | Filter::Sipguard(_) => {
            let mut t = TestProgram::load()?;
            let (name, mode) = match filter {
                Filter::Sipguard(mode) => {
                    // As the daemon writes them at start: in batches.
                    let now = sipguard::kernel::clock::mono_now_ns();
                    let mut writer = t.maps.writer(bans as usize)?;
                    for i in 0..bans {
                        writer.push(net(i), 0, 0, now);
                    }
                    if let Some((net, e)) = writer.finish(&mut t.maps).into_iter().next() {
                        bail!("cannot ban {net}: {e:#}");
                    }
                    (sipguard::kernel::program::PROGRAM, mode)
                }
                // The floor has no bans to look up.
                _ => (DROP_FLOOR, XdpMode::Driver),
            };
            t.attach_in(&pair.server, &pair.server_if, name, mode)?;
            Some((t, name))
        }
        Filter::Iptables { legacy } => {
            iptables(&pair.server, bans, legacy)?;
            None
        }
        Filter::Ipset => {
            ipset(&pair.server, bans)?;
            None
        }
        Filter::Nftables => {
            nftables(&pair.server, bans)?;
            None
        }
    };
    Ok(Installed { filter, program })
}

fn net(i: u32) -> ipnet::IpNet {
    ipnet::IpNet::from(std::net::IpAddr::from(source(i)))
}

impl Installed {
    /// The filter's own count of drops so far (the floor has none).
    pub fn dropped(&self, server: &Netns) -> Result<Option<u64>> {
        let iptables = |cmd: &str, chain: &str| -> Result<u64> {
            Ok(rule_packets(
                &server.exec(cmd, &["-w", "-nvxL", chain], b"")?,
                "DROP",
            ))
        };
        Ok(Some(match self.filter {
            Filter::XdpFloor => return Ok(None),
            Filter::Sipguard(_) => {
                let c = self.program.as_ref().expect("loaded").0.counters()?;
                c[common::counter::DROP_BANNED as usize].packets
            }
            Filter::Iptables { legacy: false } => iptables("iptables", "f2b-sipguard-bench")?,
            Filter::Iptables { legacy: true } => iptables("iptables-legacy", "f2b-sipguard-bench")?,
            Filter::Ipset => iptables("iptables", "INPUT")?,
            Filter::Nftables => nft_counter(server)?,
        }))
    }

    /// The XDP program's own run time and runs so far
    /// (`kernel.bpf_stats_enabled`).
    pub fn program_runs(&self) -> Result<Option<(std::time::Duration, u64)>> {
        self.program
            .as_ref()
            .map(|(t, name)| t.run_stats(name))
            .transpose()
    }

    /// Empties the sets and chains from this process (pinned to the
    /// sender's CPU), so that the namespace's teardown does not free a
    /// million entries on the receiver's CPU during the next flood.
    pub fn take_down(self, server: &Netns) {
        let _ = match self.filter {
            Filter::Iptables { legacy } => {
                let cmd = if legacy {
                    "iptables-legacy"
                } else {
                    "iptables"
                };
                server
                    .exec(cmd, &["-w", "-F"], b"")
                    .and_then(|_| server.exec(cmd, &["-w", "-X"], b""))
            }
            Filter::Ipset => server
                .exec("iptables", &["-w", "-F"], b"")
                .and_then(|_| server.exec("ipset", &["destroy"], b"")),
            Filter::Nftables => server.exec("nft", &["flush", "ruleset"], b""),
            Filter::XdpFloor | Filter::Sipguard(_) => Ok(String::new()),
        };
        drop(self.program);
    }
}

/// The chain fail2ban's `iptables-allports` action builds (`-I INPUT -p udp
/// -j f2b-NAME`, then `-I f2b-NAME 1 -s IP -j DROP` per ban, so the newest
/// ban comes first), loaded at once with iptables-restore. DROP rather than
/// fail2ban's default REJECT: a reject sends a reply per packet, and the
/// comparison is of dropping.
fn iptables(ns: &Netns, bans: u32, legacy: bool) -> Result<()> {
    let mut rules = String::from(
        "*filter\n:f2b-sipguard-bench - [0:0]\n-A INPUT -p udp -j f2b-sipguard-bench\n",
    );
    for i in (0..bans).rev() {
        rules.push_str(&format!(
            "-A f2b-sipguard-bench -s {}/32 -j DROP\n",
            std::net::Ipv4Addr::from(source(i))
        ));
    }
    rules.push_str("-A f2b-sipguard-bench -j RETURN\nCOMMIT\n");
    let cmd = if legacy {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    };
    ns.exec(cmd, &["-w"], rules.as_bytes())?;
    Ok(())
}

/// fail2ban's `iptables-ipset` action: a `hash:ip` set with timeouts, and one
/// rule that drops its members.
fn ipset(ns: &Netns, bans: u32) -> Result<()> {
    // Room for them all (ipset's default is 65 536).
    let mut set = format!(
        "create f2b-sipguard-bench hash:ip timeout 0 maxelem {}\n",
        bans.max(65_536)
    );
    for i in 0..bans {
        set.push_str(&format!(
            "add f2b-sipguard-bench {} timeout 0\n",
            std::net::Ipv4Addr::from(source(i))
        ));
    }
    ns.exec("ipset", &["restore"], set.as_bytes())?;
    ns.exec(
        "iptables",
        &[
            "-w",
            "-I",
            "INPUT",
            "-p",
            "udp",
            "-m",
            "set",
            "--match-set",
            "f2b-sipguard-bench",
            "src",
            "-j",
            "DROP",
        ],
        b"",
    )?;
    Ok(())
}

/// fail2ban's `nftables-allports` action: table `inet f2b-table`, an input
/// chain at priority -1, an `ipv4_addr` set and one rule (with a named
/// counter, so that its drops can be read).
fn nftables(ns: &Netns, bans: u32) -> Result<()> {
    let elements: Vec<String> = (0..bans)
        .map(|i| std::net::Ipv4Addr::from(source(i)).to_string())
        .collect();
    let script = format!(
        "table inet f2b-table {{\n\
         counter f2b-drops {{ }}\n\
         set addr-set-sipguard-bench {{ type ipv4_addr; elements = {{ {} }} }}\n\
         chain f2b-chain {{ type filter hook input priority -1; meta l4proto {{ udp }} ip saddr @addr-set-sipguard-bench counter name f2b-drops drop; }}\n\
         }}\n",
        elements.join(", ")
    );
    ns.exec("nft", &["-f", "-"], script.as_bytes())?;
    Ok(())
}

/// The sum of the packet counters of `iptables -nvxL` rules with `target`.
fn rule_packets(listing: &str, target: &str) -> u64 {
    listing
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() > 2 && cols[2] == target).then(|| cols[0].parse::<u64>().ok())?
        })
        .sum()
}

/// The packets of the named counter `f2b-drops`, asked of nf_tables over
/// netlink (NFT_MSG_GETOBJ): nft 1.0 reads every set element before it
/// lists even a counter, 40 s with a million.
fn nft_counter(server: &Netns) -> Result<u64> {
    const NETLINK_NETFILTER: i32 = 12;
    // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ; NFPROTO_INET.
    const GETOBJ: u16 = 10 << 8 | 19;
    const INET: u8 = 1;
    let attr = |kind: u16, data: &[u8]| -> Vec<u8> {
        let mut a = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    };
    // NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE (NFT_OBJECT_COUNTER).
    let mut body = vec![INET, 0, 0, 0];
    body.extend(attr(1, b"f2b-table\0"));
    body.extend(attr(2, b"f2b-drops\0"));
    body.extend(attr(3, &1u32.to_be_bytes()));
    let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
    msg.extend_from_slice(&GETOBJ.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&[0; 8]);
    msg.extend(body);
    let reply = netns::in_netns_scoped(server, move || {
        // SAFETY: a plain socket, owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_NETFILTER) };
        if fd < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let sock = std::fs::File::from(fd);
        (&sock).write_all(&msg)?;
        let mut buf = vec![0u8; 4096];
        let n = (&sock).read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    })?;
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    if reply.len() < 20 || u16_at(&reply, 4) == libc::NLMSG_ERROR as u16 {
        let errno = reply
            .get(16..20)
            .map_or(0, |e| i32::from_ne_bytes(e.try_into().unwrap()));
        bail!("nf_tables has no counter f2b-drops (errno {})", -errno);
    }
    // The attributes after nlmsghdr and nfgenmsg; NFTA_OBJ_DATA holds
    // NFTA_COUNTER_PACKETS (big-endian).
    let find = |b: &[u8], kind: u16| -> Option<std::ops::Range<usize>> {
        let mut i = 0;
        while i + 4 <= b.len() {
            let len = usize::from(u16_at(b, i));
            if len < 4 || i + len > b.len() {
                return None;
            }
            if u16_at(b, i + 2) & 0x3fff == kind {
                return Some(i + 4..i + len);
            }
            i += len.next_multiple_of(4);
        }
        None
    };
    let attrs = &reply[20..];
    let data = &attrs[find(attrs, 4).context("no NFTA_OBJ_DATA")?];
    let packets = &data[find(data, 2).context("no NFTA_COUNTER_PACKETS")?];
    Ok(u64::from_be_bytes(
        packets.try_into().context("bad counter")?,
    ))
}

pub fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        || std::path::Path::new("/usr/sbin").join(cmd).is_file()
}
