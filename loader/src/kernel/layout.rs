//! The pinned layout, which both the maps and the migration stand on: what
//! each pinned map must look like for this build, the version pinned beside
//! them (the `layout` map, [`common::LAYOUT_VERSION`]), how a trie key reads
//! back as a network, and what a migration writes into (see [`Restore`]), so
//! that `maps` and `migrate` never need each other.
use crate::kernel::bpffs;
use anyhow::{bail, Context as _, Result};
use aya::maps::{lpm_trie::Key, Array, Map, MapData, MapInfo};
use common::{
    counter, map_name, AllowEntry, BanCounter, BanEntry, Config, Counter, PendingScan, RateKey,
    RateState, SipLimits, SipRateKey, SipRateState, TrustConfig, TrustEntry, V4Key,
    BAN_COUNTER_SLOTS, FLOOD_RING_BYTES, LAYOUT_VERSION, PORT_WORDS,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::{mem::size_of, path::Path};

/// What a pinned map must look like for this build: (name, key size, value
/// size, and the capacity where it is part of the layout). A pin left by an
/// older sipguard with another layout is refused, never reinterpreted. The
/// tries' capacities may differ (see `program::Capacity`).
#[rustfmt::skip]
const MAPS: [(&str, usize, usize, Option<u32>); 21] = [
    (map_name::BANNED_V4, 4 + size_of::<V4Key>(), size_of::<BanEntry>(), None),
    (map_name::BANNED_V6, 4 + 16, size_of::<BanEntry>(), None),
    (map_name::BANNED_HOST_V4, 4, size_of::<BanEntry>(), None),
    (map_name::BANNED_HOST_V6, 16, size_of::<BanEntry>(), None),
    (map_name::ALLOWED_V4, 4 + size_of::<V4Key>(), size_of::<AllowEntry>(), None),
    (map_name::ALLOWED_V6, 4 + 16, size_of::<AllowEntry>(), None),
    (map_name::PORTS, 4, size_of::<u64>(), Some(PORT_WORDS)),
    (map_name::CONFIG, 4, size_of::<Config>(), Some(1)),
    (map_name::COUNTERS, 4, size_of::<Counter>(), Some(counter::COUNT)),
    (map_name::RATE, size_of::<RateKey>(), size_of::<RateState>(), None),
    (map_name::FLOOD_EVENTS, 0, 0, Some(FLOOD_RING_BYTES)),
    (map_name::LOST_REPORTS, 4, size_of::<u64>(), Some(1)),
    (map_name::BAN_COUNTERS, 4, size_of::<BanCounter>(), Some(BAN_COUNTER_SLOTS)),
    (map_name::RATE_LIMITED, size_of::<RateKey>(), size_of::<u64>(), None),
    (map_name::SCANNER, 4, 4, Some(1)),
    (map_name::PENDING_SCAN, 4, size_of::<PendingScan>(), Some(1)),
    (map_name::TRUSTED, size_of::<RateKey>(), size_of::<TrustEntry>(), None),
    (map_name::TRUST_CONFIG, 4, size_of::<TrustConfig>(), Some(1)),
    (map_name::SIP_PACKETS, 4, size_of::<u64>(), Some(1)),
    (map_name::SIP_LIMITS, 4, size_of::<SipLimits>(), Some(1)),
    (map_name::SIP_RATE, size_of::<SipRateKey>(), size_of::<SipRateState>(), None),
];

/// Checks every map already pinned in `pin_dir` against this build's layout.
pub fn check_pinned(pin_dir: &Path) -> Result<()> {
    for (name, key, value, max) in MAPS {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("cannot open pinned map {}", path.display()))?;
        let found = (
            info.key_size() as usize,
            info.value_size() as usize,
            max.map(|_| info.max_entries()),
        );
        if found != (key, value, max) {
            bail!(
                "pinned map {} has key/value sizes and capacity {found:?}, this sipguard expects {:?}: \
                 it was made by another version. Export what you need with `sipguard list --json`, \
                 then remove {} (dropping all bans) and start again",
                path.display(),
                (key, value, max),
                pin_dir.display()
            );
        }
    }
    Ok(())
}

/// The layout version pinned in `pin_dir`: `None` when nothing is pinned,
/// `Some(1)` for maps pinned by a sipguard from before the version map.
pub fn pinned_version(pin_dir: &Path) -> Result<Option<u32>> {
    if !pin_dir.join(map_name::BANNED_V4).exists() {
        return Ok(None);
    }
    let path = pin_dir.join(map_name::LAYOUT);
    if !path.exists() {
        return Ok(Some(1));
    }
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let array: Array<MapData, u32> = Array::try_from(Map::Array(data))?;
    Ok(Some(array.get(&0, 0)?))
}

/// Pins the `layout` map with this build's version (after a fresh load or a
/// migration).
pub fn mark(pin_dir: &Path) -> Result<()> {
    let path = pin_dir.join(map_name::LAYOUT);
    if !path.exists() {
        bpffs::create_pinned_map(&path, bpffs::BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0)?;
    }
    let data = MapData::from_pin(&path)?;
    let mut array: Array<MapData, u32> = Array::try_from(Map::Array(data))?;
    array.set(0, LAYOUT_VERSION, 0)?;
    Ok(())
}

/// Where a migration puts what it reads from the old maps: the new maps
/// (`KernelMaps`), named here so the migration need not know them.
pub trait Restore {
    fn ban(&mut self, net: IpNet, expires_at_ns: u64, flags: u32, banned_at_ns: u64) -> Result<()>;
    fn allow(&mut self, net: IpNet) -> Result<()>;
}

pub(crate) fn k_v4(k: &Key<V4Key>) -> Ipv4Net {
    let d = k.data();
    Ipv4Net::new([d[0], d[1], d[2], d[3]].into(), k.prefix_len() as u8)
        .expect("kernel keys have valid prefixes")
}

pub(crate) fn k_v6(k: &Key<[u8; 16]>) -> Ipv6Net {
    Ipv6Net::new(k.data().into(), k.prefix_len() as u8).expect("kernel keys have valid prefixes")
}
