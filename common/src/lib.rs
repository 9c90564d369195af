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
    /// Hash of banned single IPv4 addresses (/32): `[u8; 4]` → [`super::BanEntry`].
    /// Looked up first: one hash probe instead of a trie walk for the bans
    /// most blocklists are made of; the tries hold the ranges.
    pub const BANNED_HOST_V4: &str = "banned_host_v4";
    /// Hash of banned single IPv6 addresses (/128): `[u8; 16]` → [`super::BanEntry`].
    pub const BANNED_HOST_V6: &str = "banned_host_v6";
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
    /// LRU hash of per-source rate state: [`super::RateKey`] → [`super::RateState`].
    pub const RATE: &str = "rate";
    /// Ring buffer of [`super::FloodEvent`]s: sources to ban for flooding.
    pub const FLOOD_EVENTS: &str = "flood_events";
    /// Per-CPU `u64` at index 0: reports lost because the ring buffer was full
    /// (each is sent again with the source's next offending packet or second).
    pub const LOST_REPORTS: &str = "lost_reports";
    /// Per-CPU LRU hash: a source's [`super::RateKey`] → `u64`, its packets
    /// dropped by the limiter on each CPU (nothing two CPUs write).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Per-CPU array of [`super::BAN_COUNTER_SLOTS`] [`super::BanCounter`]s:
    /// a ban's drops on each CPU, in the slot its `id` picks.
    pub const BAN_COUNTERS: &str = "ban_counters";
    /// Per-CPU LRU hash of ban counters, used up to this version's
    /// `ban_counters`; a pin left by an older sipguard is removed.
    pub const OLD_BAN_STATS: &str = "ban_stats";
    /// `u32` at index 0: the [`super::LAYOUT_VERSION`] of the maps pinned
    /// beside it. Made by userspace, not part of the program.
    pub const LAYOUT: &str = "layout";
    /// Program array, one entry: the scanner signatures' program, which the
    /// main program tail-calls (see [`super::PendingScan`]). Pinned: a
    /// program array is emptied when no process or pin holds it, and the
    /// attached program keeps scanning while no daemon runs.
    pub const SCANNER: &str = "scanner";
    /// Per-CPU [`super::PendingScan`] at index 0: the packet handed to the
    /// scanner program.
    pub const PENDING_SCAN: &str = "pending_scan";
    /// One [`super::TraceFilter`] at index 0: the source `sipguard trace`
    /// follows (off when nobody traces).
    pub const TRACE: &str = "trace";
    /// Hash of trusted sources: [`super::RateKey`] → [`super::TrustEntry`]
    /// (registered phones, the operator's `sipguard trust`, the never-ban set).
    pub const TRUSTED: &str = "trusted";
    /// One [`super::TrustConfig`] at index 0: the trusted and overload budgets.
    pub const TRUST_CONFIG: &str = "trust_config";
    /// Per-CPU `u64` at index 0: packets that went through the limiter (the
    /// SIP packets a forger could send), summed by the daemon for overload.
    pub const SIP_PACKETS: &str = "sip_packets";
    /// One [`super::SipLimits`] at index 0: the invalid-message and
    /// per-method budgets (off when zero).
    pub const SIP_LIMITS: &str = "sip_limits";
    /// LRU hash of per-source, per-class budget state: [`super::SipRateKey`]
    /// → [`super::SipRateState`].
    pub const SIP_RATE: &str = "sip_rate";
}

/// The version of the pinned maps' layout (names, key and value formats).
/// Bump it with every change to a pinned map's layout: a sipguard that finds
/// another version pinned migrates the bans and the allowlist. 1: every
/// sipguard before the version map; 2: `lost_reports`, the ports-only flag,
/// and the reporting packet's address in `FloodEvent`; 3: ban counters per
/// CPU in `ban_stats` (`BanEntry` carries an `id` instead), a source's
/// limited packets per CPU in `rate_limited` (not in `RateState`); 5: the
/// trust tier cached in `RateState`, the `pass_trusted` and `drop_shed`
/// counters, `trusted`, `trust_config`, `sip_packets`; 6: `sip_limits` and
/// `sip_rate` (invalid-message and per-method budgets), counters 14..=19;
/// 7: `SipLimits::invalid_ports`.
pub const LAYOUT_VERSION: u32 = 7;

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
/// Sources whose rate is tracked at once. An LRU map: a spoofed-source flood
/// evicts the least recently seen sources' rate state, never a ban (bans live
/// in their own maps).
pub const MAX_RATE_SOURCES: u32 = 1 << 18;
/// Bytes of the flood ring buffer (a power of two, a multiple of the page size).
pub const FLOOD_RING_BYTES: u32 = 1 << 16;

/// `BanEntry::flags`: this ban drops every packet of the source, not only
/// packets to protected ports (fail2ban's `iptables-allports`).
pub const BAN_ALL_PORTS: u32 = 1;

/// `BanEntry::flags`: this ban drops only packets to the protected ports,
/// even in global all-ports mode: bans on packet evidence, which a forged
/// source address can earn, never cut a peer off entirely.
pub const BAN_PORTS_ONLY: u32 = 2;

/// `Config::flags`: every ban applies to all ports (global all-ports mode).
pub const CONFIG_ALL_PORTS: u32 = 1;
/// `Config::flags`: drop UDP SIP requests with a scanner's User-Agent.
pub const CONFIG_SCANNERS: u32 = 2;

/// The User-Agent values (their start, lower case) the scanner program
/// drops. Scanners only. Left out on purpose: sipsak and SIPp (diagnostic
/// and load tools operators use against their own servers), and softphone
/// SDK names attackers borrow but real users also run.
pub const SCANNER_SIGNATURES: [&[u8]; 9] = [
    b"friendly-scanner",
    b"sipvicious",
    b"sipcli",
    b"vaxsipuseragent",
    b"pplsip",
    b"sip-scan",
    b"iwar",
    b"sivus",
    b"sundayddr",
];
/// `Config::flags`: also report scanning sources, to be banned (off: the
/// packets are dropped and nothing else happens).
pub const CONFIG_REPORT_SCANNERS: u32 = 4;
/// Dry run: every verdict is reached and counted as usual (bans' counters,
/// the limiter, reports), but nothing is dropped: the `drop_*` counters
/// count would-be drops.
pub const CONFIG_DRY_RUN: u32 = 8;
/// Overload: the box receives more SIP packets than `[trust] overload_pps`
/// (the daemon sets and clears it, see `TrustConfig`): sources not trusted
/// are held to the untrusted budget, and what that drops is shed, never
/// escalated to a ban.
pub const CONFIG_OVERLOADED: u32 = 16;

/// `FloodEvent::kind`: the source kept exceeding its rate.
pub const EVENT_FLOOD: u32 = 0;
/// `FloodEvent::kind`: the source sent a scanner's User-Agent.
pub const EVENT_SCANNER: u32 = 1;

/// `FloodEvent::kind`: the source kept sending invalid messages (neither a
/// SIP request or response line nor a keepalive) over its budget.
pub const EVENT_INVALID: u32 = 2;

/// `RateState::reported` bits.
pub const REPORTED_FLOOD: u32 = 1;
pub const REPORTED_SCANNER: u32 = 2;

/// One ban: the value of the `banned_v4`/`banned_v6` tries.
///
/// Times are `CLOCK_MONOTONIC` nanoseconds, read in the kernel at tick
/// resolution (`bpf_ktime_get_coarse_ns`), so the kernel can end a ban on time
/// with no daemon running. The XDP program only reads it: its drop counters
/// live per CPU in `ban_stats`, under `id`, so that CPUs dropping the same
/// source's packets never write one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEntry {
    /// When the ban ends; 0 means permanent.
    pub expires_at_ns: u64,
    /// When the ban was written.
    pub banned_at_ns: u64,
    /// Unique among bans; picks the ban's slot in `ban_counters`.
    pub id: u64,
    /// `BAN_*` flags.
    pub flags: u32,
    /// The prefix length of the entry's own key. An LPM lookup returns the
    /// longest covering prefix; this tells userspace whether that is the exact
    /// entry it asked for without walking the whole trie.
    pub prefix_len: u32,
}

/// A ban's drop counters, summed over CPUs (read from `ban_counters`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanStats {
    /// Packets dropped by the ban.
    pub packets: u64,
    /// Bytes dropped by the ban (whole frames).
    pub bytes: u64,
    /// Last time a packet was dropped; 0 if never.
    pub last_seen_ns: u64,
}

/// One slot of the per-CPU `ban_counters`: the drops of the ban `id` on
/// this CPU. A ban's slot is its `id` modulo the slots: one array read per
/// drop, cache-cold or not, where an LRU hash of a million bans in turn
/// cost an insert and an eviction (~0.5 µs) per drop. Another ban dropping
/// on the same CPU with the same slot takes it over (its counts start
/// anew): exact while fewer than `BAN_COUNTER_SLOTS` bans drop at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanCounter {
    /// The ban these counts are of (0: none yet).
    pub id: u64,
    pub packets: u64,
    pub bytes: u64,
    pub last_seen_ns: u64,
}

/// Slots of `ban_counters` (a power of two): memory stays 2 MiB per CPU
/// however many bans there are.
pub const BAN_COUNTER_SLOTS: u32 = 1 << 16;

/// The slot of ban `id` in `ban_counters`.
#[inline(always)]
pub fn ban_counter_slot(id: u64) -> u32 {
    (id as u32) & (BAN_COUNTER_SLOTS - 1)
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

/// What `sipguard trace` follows: every packet from `addr/prefix_len`
/// gets a log record with its verdict. Read once per packet; `on == 0`
/// (nobody tracing) costs that one read.
///
/// A lease: no record is written past `deadline_ns`, which the tracer
/// pushes forward while it runs, so a tracer killed without cleaning up
/// stops costing anything on its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    pub on: u32,
    /// 4 or 6.
    pub family: u32,
    pub prefix_len: u32,
    /// The tracing process, so a second `trace` does not take over a live one.
    pub owner_pid: u32,
    /// IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// `CLOCK_MONOTONIC` ns (the program's coarse clock) after which the
    /// trace is over even if still on.
    pub deadline_ns: u64,
}

/// A packet the main program hands to the scanner program (tail call),
/// which reads its payload for scanner signatures. Per CPU, valid only for
/// the packet being processed; pinned with the program array, so a program
/// still attached during a restart and the new scanner program agree.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingScan {
    /// Packet offset of the UDP payload.
    pub payload: u64,
    /// The coarse clock when the packet was judged; 0 when the limiter is off
    /// (no clock read then). The scan reads its own on a match, so this is
    /// kept only for the map's layout (pinned, a version of its own).
    pub now: u64,
    pub key: RateKey,
    /// The source address; IPv4 in the first four bytes.
    pub src: [u8; 16],
    /// 1 for IPv6.
    pub v6: u32,
    /// The verdict counter when no signature matches.
    pub pass: u32,
}

/// Global settings, written by the daemon at start and on reload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CONFIG_*` flags.
    pub flags: u32,
    /// Per-source packet rate limit on the protected ports, packets per
    /// second; 0 turns the limiter off.
    pub rate_pps: u32,
    /// Packets a source may send at once above its rate (the bucket depth).
    pub burst: u32,
    /// A source limited during this many distinct seconds within
    /// `escalate_window_secs` is reported for a ban; 0: never.
    pub escalate_secs: u32,
    pub escalate_window_secs: u32,
    /// Tokens a CPU takes from a source's budget at once and spends alone
    /// (1: every packet touches the shared budget). See `RateLease`.
    pub lease: u32,
    /// `1e9 / rate_pps` and `burst * interval_ns`, computed by userspace
    /// (`Config::with_rate`) so the program never divides.
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}

impl Config {
    /// Sets the rate limit; `rate_pps = 0` turns it off.
    pub fn with_rate(mut self, rate_pps: u32, burst: u32) -> Self {
        self.rate_pps = rate_pps;
        self.burst = burst;
        self.interval_ns = if rate_pps == 0 {
            0
        } else {
            1_000_000_000 / u64::from(rate_pps)
        };
        self.tolerance_ns = self.interval_ns * u64::from(burst);
        // A lease of 1/64 of the burst (at most 32 tokens): a source spread
        // over CPUs writes its shared budget once per lease, not per packet,
        // and small bursts stay exact (a lease of 1).
        self.lease = (burst / 64).clamp(1, 32);
        self
    }
}

/// Tokens one CPU leased from a source's budget (a per-CPU slot chosen by
/// hashing the source): spent without touching the shared rate state, for
/// at most a second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLease {
    pub key: RateKey,
    pub tokens: u32,
    pub _pad: u32,
    pub valid_until_ns: u64,
}

/// Lease slots per CPU (a power of two).
pub const LEASE_SLOTS: u32 = 4096;

/// The rate limiter's first stage: a per-CPU count-min sketch that lets a
/// source with no rate state send `SKETCH_ADMIT` packets per window before
/// it gets one, so a forged-source storm (every packet from a new address)
/// costs two counters in a cache line, not an insert into the shared LRU map.
///
/// A window is `SKETCH_ADMIT + 1` rate intervals: a source that never gets
/// state sends fewer packets than its rate allows. Counters only ever
/// overestimate (collisions), and an overestimate only gives a source its
/// rate state early, which is what every source got before. What a source
/// gains is at most `SKETCH_ADMIT` packets per window per CPU before its
/// state exists (twice that across a window's edge): the stage is on only
/// when the burst is at least `SKETCH_MIN_BURST`, so that this is a small
/// part of it; smaller bursts keep the exact limiter.
pub const SKETCH_ADMIT: u32 = 3;
pub const SKETCH_MIN_BURST: u32 = 48;
/// Cache lines of counters per CPU (a power of two): 512 KiB per CPU.
pub const SKETCH_LINES: u32 = 1 << 13;
/// Counters in a line; a source has two of them, in one line.
pub const SKETCH_SLOTS: usize = 32;

/// One line of the sketch. A counter is `window << 8 | count`, the window's
/// low 8 bits beside a count of up to 255: a counter last written in another
/// window reads as 0 (a window 256 apart reads as its own, an overestimate).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SketchLine(pub [u16; SKETCH_SLOTS]);

impl Config {
    /// Packets the first stage lets a source without rate state send per
    /// window (0: the stage is off).
    #[inline(always)]
    pub fn sketch_admit(&self) -> u32 {
        if self.burst >= SKETCH_MIN_BURST && self.interval_ns != 0 {
            SKETCH_ADMIT
        } else {
            0
        }
    }

    /// The first stage's window, in ns.
    #[inline(always)]
    pub fn sketch_window_ns(&self) -> u64 {
        u64::from(SKETCH_ADMIT + 1) * self.interval_ns
    }
}

/// The key of the rate map: an IPv6 /64 (the rest zeroed), or an IPv4
/// address mapped into IPv6 (`::ffff:a.b.c.d`).
pub type RateKey = [u8; 16];

/// The `RateKey` of an IPv4 address.
#[inline(always)]
pub const fn rate_key_v4(a: [u8; 4]) -> RateKey {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The `RateKey` of an IPv6 address: its /64.
#[inline(always)]
pub const fn rate_key_v6(a: [u8; 16]) -> RateKey {
    [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], 0, 0, 0, 0, 0, 0, 0, 0,
    ]
}

/// Capacity of the trusted map.
pub const MAX_TRUSTED: u32 = 1 << 16;

/// `TrustEntry::origin`: why a source is trusted.
pub const TRUST_REGISTERED: u32 = 1;
pub const TRUST_OPERATOR: u32 = 2;
pub const TRUST_NEVER_BAN: u32 = 3;

/// A trusted source: the value of `trusted`, keyed like the limiter keys
/// sources (an IPv4 address, an IPv6 /64), since the budget trust raises is
/// the one the limiter charges to that key. Read only for a source already
/// over its first budget (at most once a second, cached in its `RateState`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrustEntry {
    /// When the trust ends (`CLOCK_MONOTONIC` ns, the coarse clock); 0:
    /// never. A stale entry is ignored by the program even with no daemon.
    pub expires_at_ns: u64,
    /// When it was written.
    pub trusted_at_ns: u64,
    /// `TRUST_*`.
    pub origin: u32,
    pub _pad: u32,
}

impl TrustEntry {
    #[inline(always)]
    pub fn is_expired(&self, now_ns: u64) -> bool {
        self.expires_at_ns != 0 && now_ns >= self.expires_at_ns
    }
}

/// The budgets beside the normal one (`Config`): a trusted source's, and
/// an untrusted source's while the box is overloaded. Interval 0: that
/// tier is off (a trusted source keeps the normal budget; overload holds
/// nobody tighter). Like `Config`, precomputed so the program never divides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrustConfig {
    pub trusted_interval_ns: u64,
    pub trusted_tolerance_ns: u64,
    pub untrusted_interval_ns: u64,
    pub untrusted_tolerance_ns: u64,
    pub trusted_rate: u32,
    pub trusted_burst: u32,
    pub untrusted_rate: u32,
    pub untrusted_burst: u32,
    /// `CONFIG_OVERLOADED` holds only until then (`CLOCK_MONOTONIC` ns, the
    /// coarse clock): the daemon renews it every sample while overloaded,
    /// so a daemon stopped or killed during an overload does not leave
    /// every untrusted source shed with nobody to clear it.
    pub overload_until_ns: u64,
}

impl TrustConfig {
    /// Budgets from rates (packets/s, 0: off) and bursts (packets).
    pub fn new(trusted: (u32, u32), untrusted: (u32, u32)) -> Self {
        let gcra = |rate: u32, burst: u32| {
            if rate == 0 {
                (0, 0)
            } else {
                let i = 1_000_000_000 / u64::from(rate);
                (i, i * u64::from(burst))
            }
        };
        let (ti, tt) = gcra(trusted.0, trusted.1);
        let (ui, ut) = gcra(untrusted.0, untrusted.1);
        Self {
            trusted_interval_ns: ti,
            trusted_tolerance_ns: tt,
            untrusted_interval_ns: ui,
            untrusted_tolerance_ns: ut,
            trusted_rate: trusted.0,
            trusted_burst: trusted.1,
            untrusted_rate: untrusted.0,
            untrusted_burst: untrusted.1,
            overload_until_ns: 0,
        }
    }
}

/// Per-source rate state, shared by all CPUs (one LRU hash entry per source,
/// not per CPU: a source spread over many RX queues gets one budget).
///
/// The limiter is GCRA (a token bucket expressed as one timestamp): `tat_ns`
/// is the theoretical arrival time of the next packet. A packet conforms when
/// `tat_ns - now <= burst * interval`; a conforming packet moves `tat_ns` on
/// by one interval with an atomic add, so concurrent CPUs never lose each
/// other's packets. Only the reset of an idle source's `tat_ns` to now is a
/// plain store; racing it can admit one extra packet per CPU. A packet over
/// the limit only reads it (its count goes to the per-CPU `rate_limited`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub tat_ns: u64,
    /// The second (`now / 1e9`) of the last limited packet.
    pub last_over_sec: u64,
    /// Distinct seconds with limited packets in the current window.
    pub over_secs: u32,
    /// `REPORTED_*` bits: what this source was reported for (flooding: in
    /// the current window).
    pub reported: u32,
    /// Until when this source is known trusted (its `TrustEntry` was read
    /// then, and the answer is kept at most a second): its packets are
    /// charged to the trusted budget without a lookup.
    pub trust_until_ns: u64,
    /// Until when the trusted map is not looked at again for this source
    /// (a source over its budget looks at most once a second).
    pub trust_checked_ns: u64,
}

/// Sources whose limited packets are counted at once (per CPU, in
/// `rate_limited`): an LRU of the sources being limited.
pub const HOT_LIMITED: u32 = 1 << 16;

/// A source that kept exceeding its rate: read by the daemon from the
/// `flood_events` ring buffer and banned in the `sip-flood` jail.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodEvent {
    pub key: RateKey,
    pub over_secs: u32,
    /// `EVENT_*`.
    pub kind: u32,
    /// Packets the limiter dropped on the reporting CPU (the daemon reads
    /// the total over CPUs from `rate_limited`).
    pub limited: u64,
    /// The packet's own source address (IPv4 mapped into IPv6), so that a
    /// ban the never-ban set narrows can be narrowed to this one address.
    pub src: [u8; 16],
}

/// A per-source packet budget, GCRA like the limiter's (see `RateState`):
/// `interval_ns = 1e9 / rate`, `tolerance_ns = burst * interval_ns`; an
/// interval of 0 is no budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipBudget {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}

impl SipBudget {
    /// `rate` packets/s with a bucket of `burst` packets; rate 0: none.
    pub fn new(rate: u32, burst: u32) -> Self {
        if rate == 0 {
            return Self::default();
        }
        let interval_ns = (1_000_000_000 / u64::from(rate)).max(1);
        Self {
            interval_ns,
            tolerance_ns: interval_ns * u64::from(burst),
        }
    }

    #[inline(always)]
    pub fn is_on(&self) -> bool {
        self.interval_ns != 0
    }
}

/// SIP request method classes (`SipRateKey::class`, `SipLimits::methods`).
pub mod method {
    pub const REGISTER: u32 = 0;
    pub const INVITE: u32 = 1;
    pub const OPTIONS: u32 = 2;
    pub const SUBSCRIBE: u32 = 3;
    /// Every other method.
    pub const OTHER: u32 = 4;
    /// Number of classes.
    pub const CLASSES: usize = 5;
    /// `SipRateKey::class` of the invalid-message budget.
    pub const INVALID: u32 = 5;
    /// Names, by class, as `[flood.methods]` spells them.
    pub const NAMES: [&str; CLASSES] = ["REGISTER", "INVITE", "OPTIONS", "SUBSCRIBE", "other"];
}

/// `SipLimits::flags`: the invalid-message budget is on.
pub const SIP_INVALID_ON: u32 = 1;
/// `SipLimits::flags`: at least one method class has a budget.
pub const SIP_METHODS_ON: u32 = 2;

/// The invalid-message and per-method budgets, written by the daemon (the
/// `sip_limits` map). With `flags == 0` the program reads no payload for them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipLimits {
    /// `SIP_*_ON`.
    pub flags: u32,
    pub _pad: u32,
    /// Invalid UDP payloads to a protected port, per source.
    pub invalid: SipBudget,
    /// Requests of each `method` class, per source.
    pub methods: [SipBudget; method::CLASSES],
    /// The UDP ports whose payloads the invalid-message budget judges: the
    /// SIP ports, not the ports a jail adds (a TURN or IAX2 port there is
    /// not SIP). All 0: every protected port (more SIP ports than fit).
    pub invalid_ports: [u16; MAX_INVALID_PORTS],
}

/// Most ports `SipLimits::invalid_ports` names.
pub const MAX_INVALID_PORTS: usize = 16;

impl SipLimits {
    /// True if the invalid-message budget judges UDP payloads to `port`.
    #[inline(always)]
    pub fn judges_invalid(&self, port: u16) -> bool {
        if self.invalid_ports[0] == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_INVALID_PORTS {
            if self.invalid_ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The key of `sip_rate`: a source (as the limiter keys it) and a class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipRateKey {
    pub key: RateKey,
    /// `method::*`.
    pub class: u32,
    pub _pad: u32,
}

/// A source's state for one budget: GCRA as in `RateState`; the over-budget
/// seconds drive the escalation of invalid messages (`EVENT_INVALID`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipRateState {
    pub tat_ns: u64,
    pub last_over_sec: u64,
    pub over_secs: u32,
    /// 1 once reported in the current window.
    pub reported: u32,
}

/// Sources × classes whose budget state is kept at once (an LRU: a storm
/// of forged sources evicts old state, never a ban).
pub const MAX_SIP_RATE: u32 = 1 << 17;

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
    /// Source over its packet rate on a protected port: dropped.
    pub const DROP_RATE_LIMITED: u32 = 8;
    /// Source over its rate but allow-listed: passed.
    pub const PASS_RATE_ALLOWLISTED: u32 = 9;
    /// UDP SIP request with a scanner's User-Agent: dropped.
    pub const DROP_SCANNER: u32 = 10;
    /// Scanner's User-Agent from an allow-listed source: passed.
    pub const PASS_SCANNER_ALLOWLISTED: u32 = 11;
    /// A trusted source's packet passed on the trusted budget (the source
    /// was over its normal, or overload, budget once in the last second).
    pub const PASS_TRUSTED: u32 = 12;
    /// Overload: an untrusted source over the untrusted budget: dropped,
    /// never escalated to a ban.
    pub const DROP_SHED: u32 = 13;
    /// UDP payload to a protected port that is neither a SIP request or
    /// response line nor a keepalive, over the source's invalid budget:
    /// dropped. (Over it but allow-listed: `PASS_RATE_ALLOWLISTED`.)
    pub const DROP_INVALID: u32 = 14;
    /// A request over its source's budget for its method class: dropped,
    /// one counter per class (`DROP_METHOD + method::*`). (Allow-listed:
    /// `PASS_RATE_ALLOWLISTED`.)
    pub const DROP_METHOD: u32 = 15;
    pub const DROP_REGISTER: u32 = DROP_METHOD + super::method::REGISTER;
    pub const DROP_INVITE: u32 = DROP_METHOD + super::method::INVITE;
    pub const DROP_OPTIONS: u32 = DROP_METHOD + super::method::OPTIONS;
    pub const DROP_SUBSCRIBE: u32 = DROP_METHOD + super::method::SUBSCRIBE;
    pub const DROP_OTHER_METHOD: u32 = DROP_METHOD + super::method::OTHER;
    /// Number of counters.
    pub const COUNT: u32 = 20;
    /// The counters of dropped packets.
    pub const DROPS: [u32; 11] = [
        DROP_BANNED,
        DROP_BANNED_NO_PORT,
        DROP_RATE_LIMITED,
        DROP_SCANNER,
        DROP_SHED,
        DROP_INVALID,
        DROP_REGISTER,
        DROP_INVITE,
        DROP_OPTIONS,
        DROP_SUBSCRIBE,
        DROP_OTHER_METHOD,
    ];

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
        "drop_rate_limited",
        "pass_rate_allowlisted",
        "drop_scanner",
        "pass_scanner_allowlisted",
        "pass_trusted",
        "drop_shed",
        "drop_invalid",
        "drop_method_register",
        "drop_method_invite",
        "drop_method_options",
        "drop_method_subscribe",
        "drop_method_other",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, with explicit padding fields and no
    // pointers, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::BanEntry {}
    unsafe impl aya::Pod for super::BanStats {}
    unsafe impl aya::Pod for super::BanCounter {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::TraceFilter {}
    unsafe impl aya::Pod for super::PendingScan {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::FloodEvent {}
    unsafe impl aya::Pod for super::TrustEntry {}
    unsafe impl aya::Pod for super::TrustConfig {}
    unsafe impl aya::Pod for super::SipLimits {}
    unsafe impl aya::Pod for super::SipRateKey {}
    unsafe impl aya::Pod for super::SipRateState {}
}
