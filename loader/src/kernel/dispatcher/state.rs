//! A libxdp dispatcher found on an interface, read the way libxdp reads it
//! (`xdp_multiprog__fill_from_fd`): its configuration from its frozen
//! `.rodata` map, and, under libxdp's lock, its members from the pinned
//! state `<bpffs>/xdp/dispatch-IFINDEX-ID/progN-prog`.
use super::{config, iface::Attached, lock};
use anyhow::{anyhow, Context as _, Result};
use std::{fmt, os::fd::AsRawFd, path::PathBuf};

/// A dispatcher's configuration and members, in run order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatcher {
    pub id: u32,
    pub version: u8,
    pub frags: bool,
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The member's program name, `None` when nothing is pinned for the slot.
    pub name: Option<String>,
    pub priority: u32,
    /// XDP actions after which the next member runs, by name.
    pub chain: Vec<&'static str>,
}

impl fmt::Display for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "libxdp dispatcher v{} (id {}) running ",
            self.version, self.id
        )?;
        for (i, s) in self.slots.iter().enumerate() {
            let name = s.name.as_deref().unwrap_or("(not pinned)");
            let sep = if i == 0 { "" } else { ", then " };
            write!(
                f,
                "{sep}{name} (priority {}, on to the next after {})",
                s.priority,
                s.chain.join("/")
            )?;
        }
        Ok(())
    }
}

/// Where libxdp pins the dispatcher `id` of interface `ifindex`.
pub fn pin_dir(ifindex: u32, id: u32) -> PathBuf {
    lock::xdp_dir().join(format!("dispatch-{ifindex}-{id}"))
}

/// The dispatcher `program` on interface `ifindex`, or `None` when the
/// program is not a libxdp dispatcher.
pub fn read(ifindex: u32, program: &Attached) -> Result<Option<Dispatcher>> {
    if program.name != super::iface::DISPATCHER {
        return Ok(None);
    }
    let Some(conf) = config_of(program.id)? else {
        return Ok(None);
    };
    let version = conf[1];
    let enabled = usize::from(conf[2]).min(config::SLOTS);
    let word = |array: usize, i: usize| {
        let at = 4 + array * 4 * config::SLOTS + i * 4;
        u32::from_ne_bytes(conf[at..at + 4].try_into().expect("4 bytes"))
    };
    let dir = pin_dir(ifindex, program.id);
    let _lock = lock::acquire(&lock::xdp_dir())?;
    let slots = (0..enabled)
        .map(|i| Slot {
            name: aya::programs::ProgramInfo::from_pin(dir.join(format!("prog{i}-prog")))
                .ok()
                .map(|p| printable(p.name())),
            priority: word(1, i),
            chain: actions(word(0, i)),
        })
        .collect();
    Ok(Some(Dispatcher {
        id: program.id,
        version,
        frags: conf[3] != 0,
        slots,
    }))
}

/// The configuration bytes of dispatcher program `id`: its one-entry array
/// map whose value has a known layout's size and starts with the magic.
fn config_of(id: u32) -> Result<Option<Vec<u8>>> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| anyhow!("program {id} went away"))?;
    for map_id in info.map_ids()?.unwrap_or_default() {
        let map = aya::maps::MapData::from_id(map_id)?;
        let size = map.info()?.value_size() as usize;
        if config::version_of_size(size).is_err() {
            continue;
        }
        let value = lookup(&map, size)?;
        if value.first() == Some(&config::MAGIC) {
            config::version_of_size(size)?;
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// The value at key 0 of an array map (raw BPF_MAP_LOOKUP_ELEM: the value
/// size is known only at run time).
fn lookup(map: &aya::maps::MapData, size: usize) -> Result<Vec<u8>> {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let key = 0u32;
    let mut value = vec![0u8; size];
    let fd = std::os::fd::AsFd::as_fd(map.fd()).as_raw_fd();
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: a valid bpf_attr whose key and value buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the dispatcher's config");
    }
    Ok(value)
}

fn printable(name: &[u8]) -> String {
    name.iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

/// The XDP actions in a chain-actions bitmap (the stubs' 31 left out).
pub fn actions(bits: u32) -> Vec<&'static str> {
    const NAMES: [&str; 5] = ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_actions_by_name() {
        assert_eq!(actions(1 << 2 | 1 << 31), ["PASS"]);
        assert_eq!(actions(0b110), ["DROP", "PASS"]);
    }
}
