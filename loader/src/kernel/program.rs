//! The embedded XDP object: loading it with pinned maps, attaching it to
//! interfaces, and detaching.
//!
//! Links are pinned under `<pin dir>/links/<interface>`: if the daemon dies
//! without a chance to clean up (SIGKILL, OOM, crash), the program stays attached
//! and the bans keep being enforced, expiring in the kernel on time. A new daemon
//! atomically swaps its program into the pinned link; a clean stop (SIGINT,
//! SIGTERM) or `sipguard detach` removes it.
use crate::kernel::{layout, maps, migrate};
use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use common::map_name;
use std::{
    fs,
    path::{Path, PathBuf},
};

/// The XDP object built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipguard-xdp"));

/// The program's function name in the object.
pub const PROGRAM: &str = "sipguard";

/// The scanner signatures' program, tail-called by `PROGRAM`.
pub const SCANNER: &str = "sipguard_scan";

/// Puts the loaded scanner program in the (pinned) program array. A program
/// of an earlier daemon still attached shares the array and, from here on,
/// this scanner program: both use the same pinned `pending_scan`.
fn set_scanner(ebpf: &mut Ebpf) -> Result<()> {
    let fd = {
        let program: &Xdp = ebpf
            .program(SCANNER)
            .ok_or_else(|| anyhow!("program {SCANNER} missing from the object"))?
            .try_into()?;
        program.fd()?.try_clone()?
    };
    let mut array: aya::maps::ProgramArray<_> = ebpf
        .map_mut(map_name::SCANNER)
        .ok_or_else(|| anyhow!("map {} missing from the object", map_name::SCANNER))?
        .try_into()?;
    array
        .set(0, &fd, 0)
        .context("cannot put the scanner program in its program array")?;
    Ok(())
}

/// How to attach: driver (native) XDP, generic (skb) XDP, or driver with a
/// fallback to skb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Driver,
    Skb,
}

/// Map capacities, per address family. Only used when the maps are created;
/// pinned maps keep the capacity they were made with.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub bans: u32,
    pub allowed: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            bans: common::MAX_BANS,
            allowed: common::MAX_ALLOWED,
        }
    }
}

/// Loads the object, creating its maps in `pin_dir` or re-using the ones
/// already pinned there, and loads the programs into the kernel.
pub fn load(pin_dir: &Path) -> Result<Ebpf> {
    load_with(pin_dir, Capacity::default())
}

pub fn load_with(pin_dir: &Path, capacity: Capacity) -> Result<Ebpf> {
    let mut ebpf = open_with(pin_dir, capacity)?;
    verify(&mut ebpf)?;
    Ok(ebpf)
}

/// The object with its maps made (or the pinned ones taken up, migrated
/// from an older layout), its programs not yet loaded: the maps can be
/// filled while `verify` runs.
pub fn open(pin_dir: &Path) -> Result<Ebpf> {
    open_with(pin_dir, Capacity::default())
}

fn open_with(pin_dir: &Path, capacity: Capacity) -> Result<Ebpf> {
    crate::kernel::bpffs::ensure_pin_dir(pin_dir)?;
    // Maps of another layout version are moved aside and migrated below.
    let migration = migrate::prepare(pin_dir)?;
    layout::check_pinned(pin_dir)?;
    // Counters an older sipguard kept (its program, if still attached,
    // holds the map itself until it is replaced).
    let _ = fs::remove_file(pin_dir.join(map_name::OLD_BAN_STATS));
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .map_max_entries(map_name::BANNED_V4, capacity.bans)
        .map_max_entries(map_name::BANNED_V6, capacity.bans)
        .map_max_entries(map_name::BANNED_HOST_V4, capacity.bans)
        .map_max_entries(map_name::BANNED_HOST_V6, capacity.bans)
        .map_max_entries(map_name::ALLOWED_V4, capacity.allowed)
        .map_max_entries(map_name::ALLOWED_V6, capacity.allowed)
        .load(OBJECT)
        .map_err(|e| explain_bpf_error(anyhow::Error::new(e)))
        .context("loading the XDP object failed")?;
    if let Some((version, aside)) = migration {
        migrate::finish(
            version,
            &aside,
            &mut maps::KernelMaps::open_unversioned(pin_dir)?,
        )?;
    }
    layout::mark(pin_dir)?;
    Ok(ebpf)
}

/// Loads the programs into the kernel, which verifies them (~0.2 s), and
/// puts the scanner program in its array.
pub fn verify(ebpf: &mut Ebpf) -> Result<()> {
    let verify = std::time::Instant::now();
    let mut verified = 0;
    for name in [SCANNER, PROGRAM] {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        program
            .load()
            .map_err(|e| explain_bpf_error(anyhow::Error::new(e)))
            .with_context(|| format!("the kernel rejected the XDP program {name}"))?;
        verified += program
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count())
            .unwrap_or(0);
    }
    set_scanner(ebpf)?;
    tracing::info!(
        "XDP programs loaded and verified in {} ms ({verified} instructions verified)",
        verify.elapsed().as_millis(),
    );
    Ok(())
}

pub fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?;
    Ok(prog.try_into()?)
}

fn explain_bpf_error(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        e.context("BPF needs root (CAP_BPF and CAP_NET_ADMIN)")
    } else if text.contains("Function not implemented") || text.contains("ENOSYS") {
        e.context("this kernel has no BPF support (CONFIG_BPF_SYSCALL)")
    } else {
        e
    }
}

/// An interface the program is attached to.
pub struct Attachment {
    pub iface: String,
    /// The pinned link, when the kernel supports BPF links (5.9+); older
    /// kernels attach through netlink, detached when the program is dropped.
    pub pin: Option<PathBuf>,
    pub mode: &'static str,
}

pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join("links").join(iface)
}

/// Returns the interface index, or a clear error naming the interface.
pub fn if_index(iface: &str) -> Result<u32> {
    let c =
        std::ffi::CString::new(iface).map_err(|_| anyhow!("invalid interface name {iface:?}"))?;
    // SAFETY: c is a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no network interface named '{iface}' (see `ip link`)");
    }
    Ok(index)
}

/// Attaches the loaded program to `iface`, taking over a link pinned by an
/// earlier daemon when there is one.
pub fn attach(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    iface: &str,
    mode: AttachMode,
) -> Result<Attachment> {
    if_index(iface)?;
    let pin = link_pin_path(pin_dir, iface);
    let prog = program_mut(ebpf)?;
    if pin.exists() {
        match take_over(prog, &pin) {
            Ok(()) => {
                return Ok(Attachment {
                    iface: iface.to_owned(),
                    pin: Some(pin),
                    mode: "existing link",
                })
            }
            Err(e) => {
                tracing::warn!(
                    "cannot take over the link pinned at {}: {e:#}; attaching anew",
                    pin.display()
                );
                fs::remove_file(&pin)
                    .with_context(|| format!("cannot remove stale link {}", pin.display()))?;
            }
        }
    }
    let (link_id, mode_name) =
        attach_link(prog, iface, mode).map_err(|e| explain_occupied(iface, e))?;
    let link = prog.take_link(link_id)?;
    let pinned = match FdLink::try_from(link) {
        Ok(fd_link) => {
            fs::create_dir_all(pin.parent().expect("link pins have a parent"))?;
            fd_link
                .pin(&pin)
                .with_context(|| format!("cannot pin link at {}", pin.display()))?;
            Some(pin)
        }
        Err(_) => {
            // Netlink attachment (kernel < 5.9): nothing to pin, and it stays
            // attached after we exit.
            tracing::warn!(
                "kernel has no XDP links (5.9+): the program stays on {iface} after sipguard exits; \
                 remove it with `ip link set dev {iface} xdp off`"
            );
            None
        }
    };
    Ok(Attachment {
        iface: iface.to_owned(),
        pin: pinned,
        mode: mode_name,
    })
}

/// Attaches `prog` to `iface` through a BPF link, in `mode`.
fn attach_link(
    prog: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(aya::programs::xdp::XdpLinkId, &'static str)> {
    Ok(match mode {
        AttachMode::Driver => (prog.attach(iface, XdpMode::Driver)?, "driver"),
        AttachMode::Skb => (prog.attach(iface, XdpMode::Skb)?, "skb"),
        AttachMode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "driver"),
            Err(e) => {
                tracing::warn!("driver-mode XDP failed on {iface} ({e}); falling back to skb mode, which is slower");
                (
                    prog.attach(iface, XdpMode::Skb)
                        .with_context(|| format!("cannot attach XDP to {iface}"))?,
                    "skb",
                )
            }
        },
    })
}

/// An attach that failed because another program holds the interface's
/// XDP hook: the error names that program and says why sipguard cannot
/// share the interface with it on this kernel.
fn explain_occupied(iface: &str, e: anyhow::Error) -> anyhow::Error {
    use crate::kernel::dispatcher::{iface as hook, probe};
    let Ok(index) = if_index(iface) else {
        return e;
    };
    let Ok(others) = hook::attached(index) else {
        return e;
    };
    if others.is_empty() {
        return e;
    }
    let list: Vec<String> = others.iter().map(|p| hook::describe(index, p)).collect();
    let why = match probe::probe() {
        Ok(probe::Freplace::Refused(reason)) => format!(
            "this kernel refuses the freplace (BPF_PROG_TYPE_EXT) programs that libxdp's \
             multi-program dispatcher puts in its slots ({reason}), so no program can share \
             the interface here (xdp-loader and xdp-filter also attach alone on this kernel)"
        ),
        Ok(probe::Freplace::Allowed) => "sipguard attaches exclusively: joining libxdp's \
             multi-program dispatcher is not implemented yet"
            .to_owned(),
        Err(p) => format!("sipguard attaches exclusively ({p:#})"),
    };
    e.context(format!(
        "another XDP program is attached to {iface}: {}; {why}. Remove it (`xdp-loader status {iface}` \
         shows it; `xdp-loader unload {iface} --all`, or the tool that loaded it) to attach sipguard",
        list.join(", ")
    ))
}

fn take_over(prog: &mut Xdp, pin: &Path) -> Result<()> {
    let link: FdLink = PinnedLink::from_pin(pin)?.into();
    let link = aya::programs::xdp::XdpLink::try_from(link)?;
    // Atomic replace: no packet goes unfiltered between the old program and the new.
    let id = prog.attach_to_link(link)?;
    // Dropping our handle only closes an fd; the pin keeps the link alive.
    drop(prog.take_link(id)?);
    Ok(())
}

/// Removes the pinned link of `iface`, which detaches the program from it.
pub fn detach(pin_dir: &Path, iface: &str) -> Result<bool> {
    let pin = link_pin_path(pin_dir, iface);
    match fs::remove_file(&pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", pin.display())),
    }
}

/// The id of the program attached through the pinned links in `pin_dir`
/// (the same program on every interface), with its first interface.
pub fn attached_program(pin_dir: &Path) -> Result<Option<(String, u32)>> {
    let Some(iface) = pinned_links(pin_dir).into_iter().next() else {
        return Ok(None);
    };
    let link: FdLink = PinnedLink::from_pin(link_pin_path(pin_dir, &iface))?.into();
    let id = link.info()?.program_id();
    Ok(Some((iface, id)))
}

/// The id of the program behind `iface`'s pinned link, if there is one.
pub fn link_program_id(pin_dir: &Path, iface: &str) -> Option<u32> {
    let link: FdLink = PinnedLink::from_pin(link_pin_path(pin_dir, iface))
        .ok()?
        .into();
    Some(link.info().ok()?.program_id())
}

/// Interfaces with a pinned link in `pin_dir`.
pub fn pinned_links(pin_dir: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The interface of the IPv4 (else IPv6) default route.
pub fn default_route_iface() -> Result<String> {
    if let Ok(table) = fs::read_to_string("/proc/net/route") {
        // Iface Destination Gateway ... ; destination 00000000 is the default route.
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 2 && cols[1] == "00000000" {
                return Ok(cols[0].to_owned());
            }
        }
    }
    if let Ok(table) = fs::read_to_string("/proc/net/ipv6_route") {
        for line in table.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() == 10 && cols[0] == "0".repeat(32) && cols[1] == "00" && cols[9] != "lo" {
                return Ok(cols[9].to_owned());
            }
        }
    }
    bail!("no default route: name the interface to protect with --iface")
}
