//! Types shared by the XDP program (`xdp-ebpf`) and userspace (`loader`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree on the
//! layout byte for byte. The `user` feature adds the `aya::Pod` impls userspace needs
//! to read and write these values in maps.
#![no_std]

/// Names of the maps, also their file names under the pin directory
/// (`/sys/fs/bpf/sipguard/` by default). Kept at 15 characters or fewer, the
/// kernel's limit for object names, so the kernel's view matches the pin names.
pub mod map_name {
    /// LPM trie of banned IPv4 sources: `Key<`[`super::V4Key`]`>` → [`super::BanEntry`].
    pub const BANNED_V4: &str = "banned_v4";
    /// LPM trie of banned IPv6 sources: `Key<[u8; 16]>` → [`super::BanEntry`].
    pub const BANNED_V6: &str = "banned_v6";
    /// LPM trie of allow-listed IPv4 sources → [`super::AllowEntry`].
    pub const ALLOWED_V4: &str = "allowed_v4";
    /// LPM trie of allow-listed IPv6 sources → [`super::AllowEntry`].
    pub const ALLOWED_V6: &str = "allowed_v6";
    /// Bitmap of protected destination ports: [`super::PORT_WORDS`] `u64` words.
    pub const PORTS: &str = "ports";
    /// One [`super::Config`] at index 0.
    pub const CONFIG: &str = "config";
    /// Per-CPU [`super::Counter`] per verdict, indexed by [`super::counter`].
    pub const COUNTERS: &str = "counters";
}

/// The data of an IPv4 trie key: the address in the first four bytes, zeros
/// after. Eight bytes, not four, because the kernel stores a trie node's value
/// right after the key data: with four bytes the value's `u64` counters would
/// be misaligned, and the program's atomic adds on them would split cache lines
/// (a bus lock costing ~2 µs per packet on x86, a fault on arm64). Prefix
/// lengths stay IPv4's (0–32).
pub type V4Key = [u8; 8];

/// The `V4Key` of an address.
#[inline(always)]
pub const fn v4_key(addr: [u8; 4]) -> V4Key {
    [addr[0], addr[1], addr[2], addr[3], 0, 0, 0, 0]
}

/// Capacity of each blocklist trie (per address family).
pub const MAX_BANS: u32 = 1 << 20;
/// Capacity of each allowlist trie (per address family).
pub const MAX_ALLOWED: u32 = 1 << 16;
/// The protected-port bitmap: 65 536 bits in 1 024 words.
pub const PORT_WORDS: u32 = 1024;

/// `BanEntry::flags`: this ban drops every packet of the source, not only
/// packets to protected ports (fail2ban's `iptables-allports`).
pub const BAN_ALL_PORTS: u32 = 1;

/// `Config::flags`: every ban applies to all ports (global all-ports mode).
pub const CONFIG_ALL_PORTS: u32 = 1;

/// One ban: the value of the `banned_v4`/`banned_v6` tries.
///
/// Times are `CLOCK_MONOTONIC` nanoseconds, read in the kernel at tick
/// resolution (`bpf_ktime_get_coarse_ns`), so the kernel can end a ban on time
/// with no daemon running. The counters are written by the
/// XDP program; userspace only reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEntry {
    /// When the ban ends; 0 means permanent.
    pub expires_at_ns: u64,
    /// When the ban was written.
    pub banned_at_ns: u64,
    /// Packets dropped by this ban.
    pub packets: u64,
    /// Bytes dropped by this ban (whole frames).
    pub bytes: u64,
    /// Last time a packet from this source was dropped; 0 if never.
    pub last_seen_ns: u64,
    /// `BAN_*` flags.
    pub flags: u32,
    /// The prefix length of the entry's own key. An LPM lookup returns the
    /// longest covering prefix; this tells userspace whether that is the exact
    /// entry it asked for without walking the whole trie.
    pub prefix_len: u32,
}

impl BanEntry {
    /// True when the ban has run out at `now_ns` (`CLOCK_MONOTONIC`).
    #[inline(always)]
    pub fn is_expired(&self, now_ns: u64) -> bool {
        self.expires_at_ns != 0 && now_ns >= self.expires_at_ns
    }
}

/// One allow-list range: the value of the `allowed_v4`/`allowed_v6` tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    /// Packets this entry let through that a ban would otherwise have dropped.
    pub hits: u64,
    /// Last such packet (`CLOCK_MONOTONIC` ns); 0 if never.
    pub last_hit_ns: u64,
}

/// Global settings, written by the daemon at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CONFIG_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// A per-CPU counter of packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Indexes of the `counters` map. Every packet the program sees is counted in
/// exactly one of them, so their sum is the number of packets seen.
pub mod counter {
    /// Not IPv4/IPv6 (ARP, LLDP, a third VLAN tag, ...): passed.
    pub const PASS_NOT_IP: u32 = 0;
    /// Truncated or invalid header at any layer: passed untouched.
    pub const PASS_MALFORMED: u32 = 1;
    /// Source not in the blocklist: passed.
    pub const PASS_NOT_BANNED: u32 = 2;
    /// Source banned but the ban has expired: passed.
    pub const PASS_BAN_EXPIRED: u32 = 3;
    /// Source banned, packet to an unprotected port (ports mode): passed.
    pub const PASS_BANNED_OTHER_PORT: u32 = 4;
    /// Source banned but allow-listed: passed (the allowlist always wins).
    pub const PASS_ALLOWLISTED: u32 = 5;
    /// Source banned, packet to a protected port (or any port in all-ports mode): dropped.
    pub const DROP_BANNED: u32 = 6;
    /// Source banned, destination port unknowable (IP fragment, or an IPv6
    /// extension-header chain too long to walk): dropped so that fragmenting
    /// cannot smuggle SIP past a ban.
    pub const DROP_BANNED_NO_PORT: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;

    /// Display names, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ip",
        "pass_malformed",
        "pass_not_banned",
        "pass_ban_expired",
        "pass_banned_other_port",
        "pass_allowlisted",
        "drop_banned",
        "drop_banned_no_port",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, with explicit padding fields and no
    // pointers, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::BanEntry {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counter {}
}
