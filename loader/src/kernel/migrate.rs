//! Upgrades over pinned maps: a `layout` map pinned beside the others holds
//! the version of the map layout that made them (see `layout`).
//! When a new sipguard finds another version pinned (or none: every sipguard
//! before the version map existed), it does not refuse to start and does not
//! reinterpret old bytes: it moves the old pins aside, lets the loader make
//! fresh maps, copies the bans and the allowlist into them, and says so. The
//! old program, still attached through its pinned link, keeps dropping with
//! the old maps until the new program replaces it: no gap.
use crate::kernel::layout::{k_v4, k_v6, pinned_version, Restore};
use anyhow::{bail, Context as _, Result};
use aya::maps::{lpm_trie::LpmTrie, Map, MapData};
use common::{map_name, AllowEntry, BanEntry, V4Key, LAYOUT_VERSION};
use ipnet::IpNet;
use std::{
    fs,
    mem::size_of,
    path::{Path, PathBuf},
};

/// A ban as layouts 1 and 2 stored it: counters in the entry itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct BanEntryV2 {
    expires_at_ns: u64,
    banned_at_ns: u64,
    packets: u64,
    bytes: u64,
    last_seen_ns: u64,
    flags: u32,
    prefix_len: u32,
}

// SAFETY: repr(C), Copy, no padding, no pointers: any bits are a value.
unsafe impl aya::Pod for BanEntryV2 {}

/// What an old ban entry says: (end, start, flags); its counters start anew.
trait OldBan: aya::Pod {
    fn decode(&self) -> (u64, u64, u32);
}

impl OldBan for BanEntryV2 {
    fn decode(&self) -> (u64, u64, u32) {
        (self.expires_at_ns, self.banned_at_ns, self.flags)
    }
}

impl OldBan for BanEntry {
    fn decode(&self) -> (u64, u64, u32) {
        (self.expires_at_ns, self.banned_at_ns, self.flags)
    }
}

/// The maps whose contents outlive an upgrade. The rest (counters, rate
/// state, the ring buffer, settings the daemon writes at start) start anew.
const KEPT: [&str; 4] = [
    map_name::BANNED_V4,
    map_name::BANNED_V6,
    map_name::ALLOWED_V4,
    map_name::ALLOWED_V6,
];

/// Before loading: when another layout is pinned, moves its map pins into a
/// folder of their own (same filesystem) and returns it.
pub fn prepare(pin_dir: &Path) -> Result<Option<(u32, PathBuf)>> {
    drop_stale_trace(pin_dir)?;
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

/// The trace switch holds nothing worth keeping: pinned by a sipguard with
/// another `TraceFilter` (before the lease), it is unpinned so the loader
/// makes a new one. A program still attached keeps its own until replaced.
fn drop_stale_trace(pin_dir: &Path) -> Result<()> {
    let path = pin_dir.join(map_name::TRACE);
    if !path.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if info.value_size() as usize != size_of::<common::TraceFilter>() {
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        tracing::info!("the trace switch pinned by an older sipguard is made anew");
    }
    Ok(())
}

/// What a migration copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub bans: usize,
    pub allowed: usize,
}

/// After loading: copies the bans and the allowlist from the maps moved
/// aside into the new ones, then removes the old pins.
pub fn finish(version: u32, aside: &Path, new: &mut dyn Restore) -> Result<Migrated> {
    let mut done = Migrated::default();
    for name in KEPT {
        let path = aside.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)?;
        let data = MapData::from_pin(&path)?;
        // Allow entries have not changed; bans carried their counters in
        // the entry up to layout 2. A future change adds its decoding here.
        let (key, value) = (info.key_size() as usize, info.value_size() as usize);
        let v4 = name.ends_with("v4");
        let banned = name.starts_with("banned");
        let want_key = 4 + if v4 { size_of::<V4Key>() } else { 16 };
        let want_value = match (banned, version) {
            (true, 1 | 2) => size_of::<BanEntryV2>(),
            (true, _) => size_of::<BanEntry>(),
            (false, _) => size_of::<AllowEntry>(),
        };
        if (key, value) != (want_key, want_value) {
            bail!(
                "cannot migrate {} (layout {version}): key/value sizes {key}/{value}, expected {want_key}/{want_value}; \
                 export what you need with an older sipguard's `list --json`",
                path.display()
            );
        }
        match (banned, v4, version) {
            (true, true, 1 | 2) => done.bans += copy_bans::<V4Key, BanEntryV2>(data, new, v4_net)?,
            (true, true, _) => done.bans += copy_bans::<V4Key, BanEntry>(data, new, v4_net)?,
            (true, false, 1 | 2) => {
                done.bans += copy_bans::<[u8; 16], BanEntryV2>(data, new, v6_net)?
            }
            (true, false, _) => done.bans += copy_bans::<[u8; 16], BanEntry>(data, new, v6_net)?,
            (false, true, _) => {
                let old: LpmTrie<MapData, V4Key, AllowEntry> =
                    LpmTrie::try_from(Map::LpmTrie(data))?;
                for item in old.iter() {
                    new.allow(v4_net(&item?.0))?;
                    done.allowed += 1;
                }
            }
            (false, false, _) => {
                let old: LpmTrie<MapData, [u8; 16], AllowEntry> =
                    LpmTrie::try_from(Map::LpmTrie(data))?;
                for item in old.iter() {
                    new.allow(v6_net(&item?.0))?;
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

fn v4_net(k: &aya::maps::lpm_trie::Key<V4Key>) -> IpNet {
    IpNet::V4(k_v4(k))
}

fn v6_net(k: &aya::maps::lpm_trie::Key<[u8; 16]>) -> IpNet {
    IpNet::V6(k_v6(k))
}

/// Copies every ban of an old trie into the new maps; returns how many.
fn copy_bans<K: aya::Pod, V: OldBan>(
    data: MapData,
    new: &mut dyn Restore,
    net: fn(&aya::maps::lpm_trie::Key<K>) -> IpNet,
) -> Result<usize> {
    let old: LpmTrie<MapData, K, V> = LpmTrie::try_from(Map::LpmTrie(data))?;
    let mut n = 0;
    for item in old.iter() {
        let (k, e) = item?;
        let (expires, banned_at, flags) = e.decode();
        new.ban(net(&k), expires, flags, banned_at)?;
        n += 1;
    }
    Ok(n)
}
