//! Typed access to the XDP program's pinned maps. The CLI and the daemon both
//! go through here, so bans work the same with the daemon running or not.
use crate::kernel::batch;

mod host_batch;
mod sip_limits;
use crate::kernel::layout::{self, k_v4, k_v6};
use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::IterableMap as _;
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
};
use common::{
    ban_counter_slot, counter, map_name, v4_key, AllowEntry, BanCounter, BanEntry, BanStats,
    Config, Counter, FloodEvent, RateKey, RateState, V4Key, PORT_WORDS,
};
pub use host_batch::BanWriter;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::os::fd::AsFd as _;
use std::{
    mem::size_of,
    path::{Path, PathBuf},
};

/// One ban as userspace sees it, with its drops summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub net: IpNet,
    pub entry: BanEntry,
    pub stats: BanStats,
}

/// One allow-list range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub net: IpNet,
    pub entry: AllowEntry,
}

pub struct KernelMaps {
    pin_dir: PathBuf,
    banned_v4: LpmTrie<MapData, V4Key, BanEntry>,
    banned_v6: LpmTrie<MapData, [u8; 16], BanEntry>,
    /// Single addresses (/32, /128): the program looks here first.
    host_v4: HashMap<MapData, [u8; 4], BanEntry>,
    host_v6: HashMap<MapData, [u8; 16], BanEntry>,
    allowed_v4: LpmTrie<MapData, V4Key, AllowEntry>,
    allowed_v6: LpmTrie<MapData, [u8; 16], AllowEntry>,
    ports: Array<MapData, u64>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counter>,
    rate: HashMap<MapData, RateKey, RateState>,
    lost_reports: PerCpuArray<MapData, u64>,
    ban_counters: PerCpuArray<MapData, BanCounter>,
    rate_limited: PerCpuHashMap<MapData, RateKey, u64>,
    /// The next ban id this process hands out (see `next_id`).
    next_id: u64,
}

/// The network a rate key stands for: an IPv4 host, or an IPv6 /64.
pub fn rate_key_net(key: &RateKey) -> IpNet {
    if key[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        IpNet::V4(Ipv4Net::new([key[12], key[13], key[14], key[15]].into(), 32).expect("valid"))
    } else {
        IpNet::V6(Ipv6Net::new((*key).into(), 64).expect("valid").trunc())
    }
}

/// Opens the flood ring buffer pinned in `pin_dir` (one reader: the daemon).
pub fn flood_events(pin_dir: &Path) -> Result<aya::maps::RingBuf<MapData>> {
    let path = pin_dir.join(map_name::FLOOD_EVENTS);
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(aya::maps::RingBuf::try_from(Map::RingBuf(data))?)
}

/// The address that sent the reported packet: an IPv4 host, or an IPv6 /128.
pub fn event_source(event: &FloodEvent) -> IpNet {
    let addr = std::net::Ipv6Addr::from(event.src);
    match addr.to_ipv4_mapped() {
        Some(v4) => IpNet::V4(Ipv4Net::from(v4)),
        None => IpNet::V6(Ipv6Net::from(addr)),
    }
}

/// Decodes a ring buffer record.
pub fn flood_event(bytes: &[u8]) -> Option<FloodEvent> {
    (bytes.len() >= size_of::<FloodEvent>())
        // SAFETY: FloodEvent is plain old data and the length was checked;
        // read_unaligned copes with any alignment.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FloodEvent>()) })
}

impl KernelMaps {
    /// Opens the maps pinned in `pin_dir` by a daemon (running or not).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        match layout::pinned_version(pin_dir)? {
            Some(v) if v != common::LAYOUT_VERSION => bail!(
                "the maps in {} were made by another sipguard version (layout {v}, this one uses {}): \
                 start `sipguard run` once, which migrates the bans and the allowlist",
                pin_dir.display(),
                common::LAYOUT_VERSION
            ),
            _ => Self::open_unversioned(pin_dir),
        }
    }

    /// Opens the maps without looking at the layout version: for the
    /// loader, which has just made them (and writes the version next).
    pub(crate) fn open_unversioned(pin_dir: &Path) -> Result<Self> {
        if !pin_dir.join(map_name::BANNED_V4).exists() {
            bail!(
                "no sipguard maps pinned in {}: start the daemon once with `sipguard run` (it creates them)",
                pin_dir.display()
            );
        }
        layout::check_pinned(pin_dir)?;
        let open = |name: &str| -> Result<MapData> {
            let path = pin_dir.join(name);
            MapData::from_pin(&path).map_err(|e| match &e {
                MapError::SyscallError(s)
                    if s.io_error.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    anyhow!(
                        "permission denied opening {}: sipguard's maps need root",
                        path.display()
                    )
                }
                _ => anyhow::Error::new(e)
                    .context(format!("cannot open pinned map {}", path.display())),
            })
        };
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            banned_v4: LpmTrie::try_from(Map::LpmTrie(open(map_name::BANNED_V4)?))?,
            banned_v6: LpmTrie::try_from(Map::LpmTrie(open(map_name::BANNED_V6)?))?,
            host_v4: HashMap::try_from(Map::HashMap(open(map_name::BANNED_HOST_V4)?))?,
            host_v6: HashMap::try_from(Map::HashMap(open(map_name::BANNED_HOST_V6)?))?,
            allowed_v4: LpmTrie::try_from(Map::LpmTrie(open(map_name::ALLOWED_V4)?))?,
            allowed_v6: LpmTrie::try_from(Map::LpmTrie(open(map_name::ALLOWED_V6)?))?,
            ports: Array::try_from(Map::Array(open(map_name::PORTS)?))?,
            config: Array::try_from(Map::Array(open(map_name::CONFIG)?))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(map_name::COUNTERS)?))?,
            rate: HashMap::try_from(Map::LruHashMap(open(map_name::RATE)?))?,
            lost_reports: PerCpuArray::try_from(Map::PerCpuArray(open(map_name::LOST_REPORTS)?))?,
            ban_counters: PerCpuArray::try_from(Map::PerCpuArray(open(map_name::BAN_COUNTERS)?))?,
            rate_limited: PerCpuHashMap::try_from(Map::PerCpuLruHashMap(open(
                map_name::RATE_LIMITED,
            )?))?,
            next_id: first_id(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Bans `net` until `expires_at_ns` (monotonic clock; 0 = permanent). Re-banning
    /// an address updates its expiry and flags and keeps its id (and so its counters).
    pub fn ban(&mut self, net: IpNet, expires_at_ns: u64, flags: u32, now_ns: u64) -> Result<()> {
        let fresh = new_entry(net, expires_at_ns, flags, now_ns, self.next_id);
        // A new ban (the usual case, and a million of them at start after a
        // reboot) is one system call; only an existing one is read first.
        match self.insert_ban(net, fresh, BPF_NOEXIST) {
            Ok(()) => {
                self.next_id = self.next_id.wrapping_add(1);
                Ok(())
            }
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                let mut entry = self.ban_entry(net)?.unwrap_or(fresh);
                entry.expires_at_ns = expires_at_ns;
                entry.flags = flags;
                self.insert_ban(net, entry, 0)
            }
            Err(e) => Err(e),
        }
        .map_err(|e| full_or(e, "blocklist", net))
    }

    /// A ban's drops, summed over CPUs: the slots its id picks that hold
    /// its counts (none yet, or taken over by another ban: zeros).
    pub fn ban_stats(&self, entry: &BanEntry) -> Result<BanStats> {
        let per_cpu = self.ban_counters.get(&ban_counter_slot(entry.id), 0)?;
        Ok(per_cpu
            .iter()
            .filter(|c| c.id == entry.id)
            .fold(BanStats::default(), |acc, c| BanStats {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
                last_seen_ns: acc.last_seen_ns.max(c.last_seen_ns),
            }))
    }

    fn insert_ban(&mut self, net: IpNet, entry: BanEntry, flags: u64) -> Result<(), MapError> {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                self.host_v4.insert(n.addr().octets(), entry, flags)
            }
            IpNet::V6(n) if n.prefix_len() == 128 => {
                self.host_v6.insert(n.addr().octets(), entry, flags)
            }
            IpNet::V4(n) => self.banned_v4.insert(&key_v4(n), entry, flags),
            IpNet::V6(n) => self.banned_v6.insert(&key_v6(n), entry, flags),
        }
    }

    /// The entry banning exactly `net`, if any (a covering wider prefix is not it).
    pub fn ban_entry(&self, net: IpNet) -> Result<Option<BanEntry>> {
        let found = match net {
            IpNet::V4(n) if n.prefix_len() == 32 => self.host_v4.get(&n.addr().octets(), 0),
            IpNet::V6(n) if n.prefix_len() == 128 => self.host_v6.get(&n.addr().octets(), 0),
            IpNet::V4(n) => self.banned_v4.get(&key_v4(n), 0),
            IpNet::V6(n) => self.banned_v6.get(&key_v6(n), 0),
        };
        match found {
            Ok(entry) if entry.prefix_len == u32::from(net.prefix_len()) => Ok(Some(entry)),
            Ok(_) | Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the ban of exactly `net`; false if there was none.
    pub fn unban(&mut self, net: IpNet) -> Result<bool> {
        let result = match net {
            IpNet::V4(n) if n.prefix_len() == 32 => self.host_v4.remove(&n.addr().octets()),
            IpNet::V6(n) if n.prefix_len() == 128 => self.host_v6.remove(&n.addr().octets()),
            IpNet::V4(n) => self.banned_v4.remove(&key_v4(n)),
            IpNet::V6(n) => self.banned_v6.remove(&key_v6(n)),
        };
        not_found_is_false(result)
    }

    /// True when any ban map holds a ban (a key read from each: a start
    /// after a reboot knows at once that it has every ban to write).
    pub fn holds_bans(&self) -> bool {
        self.host_v4.keys().next().is_some()
            || self.host_v6.keys().next().is_some()
            || self.banned_v4.keys().next().is_some()
            || self.banned_v6.keys().next().is_some()
    }

    /// The banned networks alone, for a daemon restarting over a million
    /// pinned bans: the single addresses in batches (see `batch`), the
    /// ranges one system call each (an LPM trie has no batch lookup). In
    /// runs, each sorted (each family's ranges, then its single addresses):
    /// a million addresses sort as integers, several times faster than as
    /// networks, and the runs then merge in one pass (see `bans::pinned`).
    pub fn banned_nets(&self) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        let mut hosts_v4: Vec<u32> = self
            .host_entries_v4()?
            .into_iter()
            .map(|(key, _)| u32::from_be_bytes(key))
            .collect();
        hosts_v4.sort_unstable();
        let mut hosts_v6: Vec<u128> = self
            .host_entries_v6()?
            .into_iter()
            .map(|(key, _)| u128::from_be_bytes(key))
            .collect();
        hosts_v6.sort_unstable();
        out.reserve(hosts_v4.len() + hosts_v6.len());
        for key in self.banned_v4.keys() {
            out.push(IpNet::V4(k_v4(&key?)));
        }
        let ranges = out.len();
        out[..ranges].sort_unstable();
        out.extend(
            hosts_v4
                .into_iter()
                .map(|a| IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(a)))),
        );
        let v6_from = out.len();
        for key in self.banned_v6.keys() {
            out.push(IpNet::V6(k_v6(&key?)));
        }
        out[v6_from..].sort_unstable();
        out.extend(
            hosts_v6
                .into_iter()
                .map(|a| IpNet::from(std::net::IpAddr::from(std::net::Ipv6Addr::from(a)))),
        );
        Ok(out)
    }

    fn host_entries_v4(&self) -> Result<Vec<([u8; 4], BanEntry)>> {
        batch::entries(self.host_v4.map().fd().as_fd())
            .context("cannot read the banned IPv4 addresses")
    }

    fn host_entries_v6(&self) -> Result<Vec<([u8; 16], BanEntry)>> {
        batch::entries(self.host_v6.map().fd().as_fd())
            .context("cannot read the banned IPv6 addresses")
    }

    pub fn bans(&self) -> Result<Vec<Ban>> {
        let mut all = entries(&self.banned_v4, &self.banned_v6)?;
        for (k, entry) in self.host_entries_v4()? {
            all.push((IpNet::from(std::net::IpAddr::from(k)), entry));
        }
        for (k, entry) in self.host_entries_v6()? {
            all.push((IpNet::from(std::net::IpAddr::from(k)), entry));
        }
        all.into_iter()
            .map(|(net, entry)| {
                Ok(Ban {
                    net,
                    stats: self.ban_stats(&entry)?,
                    entry,
                })
            })
            .collect()
    }

    /// Deletes bans that ended before `now_ns`; returns them.
    pub fn sweep_expired(&mut self, now_ns: u64) -> Result<Vec<Ban>> {
        let expired: Vec<Ban> = self
            .bans()?
            .into_iter()
            .filter(|b| b.entry.is_expired(now_ns))
            .collect();
        for ban in &expired {
            self.unban(ban.net)?;
        }
        Ok(expired)
    }

    pub fn allow(&mut self, net: IpNet) -> Result<()> {
        let result = match net {
            IpNet::V4(n) => self.allowed_v4.insert(&key_v4(n), AllowEntry::default(), 0),
            IpNet::V6(n) => self.allowed_v6.insert(&key_v6(n), AllowEntry::default(), 0),
        };
        result.map_err(|e| full_or(e, "allowlist", net))
    }

    pub fn disallow(&mut self, net: IpNet) -> Result<bool> {
        let result = match net {
            IpNet::V4(n) => self.allowed_v4.remove(&key_v4(n)),
            IpNet::V6(n) => self.allowed_v6.remove(&key_v6(n)),
        };
        not_found_is_false(result)
    }

    pub fn allowed(&self) -> Result<Vec<Allowed>> {
        Ok(entries(&self.allowed_v4, &self.allowed_v6)?
            .into_iter()
            .map(|(net, entry)| Allowed { net, entry })
            .collect())
    }

    /// Replaces the set of protected destination ports.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<()> {
        let mut words = [0u64; PORT_WORDS as usize];
        for &p in ports {
            words[usize::from(p >> 6)] |= 1 << (p & 63);
        }
        for (i, w) in words.iter().enumerate() {
            self.ports.set(i as u32, w, 0)?;
        }
        Ok(())
    }

    pub fn ports(&self) -> Result<Vec<u16>> {
        let mut out = Vec::new();
        for i in 0..PORT_WORDS {
            let w = self.ports.get(&i, 0)?;
            for bit in 0..64 {
                if w & (1 << bit) != 0 {
                    out.push((i * 64 + bit) as u16);
                }
            }
        }
        Ok(out)
    }

    pub fn set_config(&mut self, config: Config) -> Result<()> {
        Ok(self.config.set(0, config, 0)?)
    }

    pub fn config(&self) -> Result<Config> {
        Ok(self.config.get(&0, 0)?)
    }

    /// The rate state of every tracked source, with its packets dropped by
    /// the limiter (summed over CPUs).
    pub fn rate_states(&self) -> Result<Vec<(IpNet, RateState, u64)>> {
        let mut out = Vec::new();
        for item in self.rate.iter() {
            let (k, v) = item?;
            out.push((rate_key_net(&k), v, self.limited(&k)?));
        }
        Ok(out)
    }

    /// Packets of the source `key` the limiter dropped, summed over CPUs
    /// (0 once its counters are forgotten).
    pub fn limited(&self, key: &RateKey) -> Result<u64> {
        match self.rate_limited.get(key, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().sum()),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Reports the program could not send because the ring buffer was full
    /// (each was sent again later), summed over CPUs.
    pub fn lost_reports(&self) -> Result<u64> {
        Ok(self.lost_reports.get(&0, 0)?.iter().sum())
    }

    /// The verdict counters, summed over CPUs, by `common::counter` index.
    pub fn counters(&self) -> Result<Vec<Counter>> {
        (0..counter::COUNT)
            .map(|i| {
                let per_cpu = self.counters.get(&i, 0)?;
                Ok(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                }))
            })
            .collect()
    }
}

/// The entry of a new ban of `net` (`ban` and `BanWriter` alike).
fn new_entry(net: IpNet, expires_at_ns: u64, flags: u32, banned_at_ns: u64, id: u64) -> BanEntry {
    BanEntry {
        banned_at_ns,
        prefix_len: u32::from(net.prefix_len()),
        expires_at_ns,
        flags,
        id,
    }
}

/// Every entry of a pair of IPv4/IPv6 tries, as networks.
fn entries<V: aya::Pod>(
    v4: &LpmTrie<MapData, V4Key, V>,
    v6: &LpmTrie<MapData, [u8; 16], V>,
) -> Result<Vec<(IpNet, V)>> {
    let mut out = Vec::new();
    for item in v4.iter() {
        let (k, entry) = item?;
        out.push((IpNet::V4(k_v4(&k)), entry));
    }
    for item in v6.iter() {
        let (k, entry) = item?;
        out.push((IpNet::V6(k_v6(&k)), entry));
    }
    Ok(out)
}

fn key_v4(n: Ipv4Net) -> Key<V4Key> {
    Key::new(u32::from(n.prefix_len()), v4_key(n.network().octets()))
}

fn key_v6(n: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(n.prefix_len()), n.network().octets())
}

fn not_found_is_false(result: Result<(), MapError>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The first ban id of this process: ids only need to differ between live
/// bans, which the daemon and a CLI run while it is stopped may both make;
/// the clock and the process id set them far apart.
fn first_id() -> u64 {
    crate::kernel::clock::mono_now_ns().rotate_left(20) ^ (u64::from(std::process::id()) << 44)
}

/// BPF_NOEXIST: fail with EEXIST instead of replacing an entry.
const BPF_NOEXIST: u64 = 1;

fn full_or(e: MapError, what: &str, net: IpNet) -> anyhow::Error {
    if let MapError::SyscallError(s) = &e {
        if matches!(
            s.io_error.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::E2BIG)
        ) {
            return anyhow!(
                "the {what} is full: cannot add {net} (remove entries, or ban a covering prefix)"
            );
        }
    }
    anyhow::Error::new(e).context(format!("cannot add {net} to the {what}"))
}

impl layout::Restore for KernelMaps {
    fn ban(&mut self, net: IpNet, expires_at_ns: u64, flags: u32, banned_at_ns: u64) -> Result<()> {
        KernelMaps::ban(self, net, expires_at_ns, flags, banned_at_ns)
    }

    fn allow(&mut self, net: IpNet) -> Result<()> {
        KernelMaps::allow(self, net)
    }
}
