//! Upgrades over pinned maps: a `layout` map pinned beside the others holds
//! the version of the map layout that made them ([`common::LAYOUT_VERSION`]).
//! When a new sipguard finds another version pinned (or none: every sipguard
//! before the version map existed), it does not refuse to start and does not
//! reinterpret old bytes: it moves the old pins aside, lets the loader make
//! fresh maps, copies the bans and the allowlist into them, and says so. The
//! old program, still attached through its pinned link, keeps dropping with
//! the old maps until the new program replaces it: no gap.
use crate::{kernel::bpffs, kernel::maps::KernelMaps};
use anyhow::{bail, Context as _, Result};
use aya::maps::{lpm_trie::LpmTrie, Array, Map, MapData};
use common::{map_name, AllowEntry, BanEntry, V4Key, LAYOUT_VERSION};
use ipnet::IpNet;
use std::{
    fs,
    mem::size_of,
    path::{Path, PathBuf},
};

/// The maps whose contents outlive an upgrade. The rest (counters, rate
/// state, the ring buffer, settings the daemon writes at start) start anew.
const KEPT: [&str; 4] = [
    map_name::BANNED_V4,
    map_name::BANNED_V6,
    map_name::ALLOWED_V4,
    map_name::ALLOWED_V6,
];

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

/// Before loading: when another layout is pinned, moves its map pins into a
/// folder of their own (same filesystem) and returns it.
pub fn prepare(pin_dir: &Path) -> Result<Option<(u32, PathBuf)>> {
    let Some(version) = pinned_version(pin_dir)? else {
        return Ok(None);
    };
    if version == LAYOUT_VERSION {
        return Ok(None);
    }
    let aside = pin_dir.join(format!("layout-{version}-{}", std::process::id()));
    fs::create_dir_all(&aside).with_context(|| format!("cannot create {}", aside.display()))?;
    for entry in fs::read_dir(pin_dir)? {
        let entry = entry?;
        // Map pins only: the links folder and anything else stay.
        if entry.file_type()?.is_file() {
            fs::rename(entry.path(), aside.join(entry.file_name()))
                .with_context(|| format!("cannot move {} aside", entry.path().display()))?;
        }
    }
    tracing::warn!(
        "maps pinned in {} have layout version {version}, this sipguard uses {LAYOUT_VERSION}: \
         migrating the bans and the allowlist into new maps",
        pin_dir.display()
    );
    Ok(Some((version, aside)))
}

/// What a migration copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub bans: usize,
    pub allowed: usize,
}

/// After loading: copies the bans and the allowlist from the maps moved
/// aside into the new ones, then removes the old pins.
pub fn finish(version: u32, aside: &Path, new: &mut KernelMaps) -> Result<Migrated> {
    let mut done = Migrated::default();
    for name in KEPT {
        let path = aside.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)?;
        let data = MapData::from_pin(&path)?;
        // Every layout so far stores bans and allow entries the same way; a
        // future one that does not adds its decoding here, by version.
        let (key, value) = (info.key_size() as usize, info.value_size() as usize);
        let v4 = name.ends_with("v4");
        let want_key = 4 + if v4 { size_of::<V4Key>() } else { 16 };
        let want_value = if name.starts_with("banned") {
            size_of::<BanEntry>()
        } else {
            size_of::<AllowEntry>()
        };
        if (key, value) != (want_key, want_value) {
            bail!(
                "cannot migrate {} (layout {version}): key/value sizes {key}/{value}, expected {want_key}/{want_value}; \
                 export what you need with an older sipguard's `list --json`",
                path.display()
            );
        }
        match (name.starts_with("banned"), v4) {
            (true, true) => {
                let old: LpmTrie<MapData, V4Key, BanEntry> = LpmTrie::try_from(Map::LpmTrie(data))?;
                for item in old.iter() {
                    let (k, e) = item?;
                    let net = IpNet::V4(crate::kernel::maps::k_v4(&k));
                    new.ban(net, e.expires_at_ns, e.flags, e.banned_at_ns)?;
                    done.bans += 1;
                }
            }
            (true, false) => {
                let old: LpmTrie<MapData, [u8; 16], BanEntry> =
                    LpmTrie::try_from(Map::LpmTrie(data))?;
                for item in old.iter() {
                    let (k, e) = item?;
                    let net = IpNet::V6(crate::kernel::maps::k_v6(&k));
                    new.ban(net, e.expires_at_ns, e.flags, e.banned_at_ns)?;
                    done.bans += 1;
                }
            }
            (false, true) => {
                let old: LpmTrie<MapData, V4Key, AllowEntry> =
                    LpmTrie::try_from(Map::LpmTrie(data))?;
                for item in old.iter() {
                    new.allow(IpNet::V4(crate::kernel::maps::k_v4(&item?.0)))?;
                    done.allowed += 1;
                }
            }
            (false, false) => {
                let old: LpmTrie<MapData, [u8; 16], AllowEntry> =
                    LpmTrie::try_from(Map::LpmTrie(data))?;
                for item in old.iter() {
                    new.allow(IpNet::V6(crate::kernel::maps::k_v6(&item?.0)))?;
                    done.allowed += 1;
                }
            }
        }
    }
    fs::remove_dir_all(aside).with_context(|| format!("cannot remove {}", aside.display()))?;
    tracing::warn!(
        "migrated {} ban(s) and {} allowlist entr(ies) from layout {version} to {LAYOUT_VERSION}",
        done.bans,
        done.allowed
    );
    Ok(done)
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
