//! The records sipguard keeps across restarts, as plain data: what the
//! database holds (see `schema`), what the daemon hands the writer, and
//! what the older state files held. Nothing here reads or writes a file,
//! so every layer that needs a record (the ban manager, the legacy readers,
//! the store) takes it from here and none of them needs another.
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, sync::Arc};

/// A network's ban count and when its last ban began (Unix ms).
pub type Count = (String, u32, i64);

pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The boot that wrote the state: on the same boot, bans end at their
    /// monotonic deadlines (`expires_mono`); after a reboot, by wall time.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// When the state was written (Unix ms).
    #[serde(default)]
    pub saved_at: Option<i64>,
    pub bans: Vec<SavedBan>,
    /// The operator's allowlist (`sipguard allow`), restored after a reboot.
    /// `None` in a state written before sipguard kept it: the entries found
    /// in the kernel are then adopted.
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
    /// Bans so far per network, for `bantime_increment`.
    pub ban_counts: BTreeMap<String, u32>,
    /// When each network's last ban began (Unix ms), to forget old counts.
    #[serde(default)]
    pub ban_counted_at: BTreeMap<String, i64>,
    /// Read position per log path.
    pub positions: BTreeMap<String, Position>,
    /// Where each feed has read up to (APIBAN's last ID).
    #[serde(default)]
    pub cursors: BTreeMap<String, String>,
}

impl State {
    /// The ban counts, each with when its network's last ban began (0:
    /// not known, a count saved without its time).
    pub fn counts(&self) -> impl Iterator<Item = Count> + '_ {
        self.ban_counts.iter().map(|(net, n)| {
            let at = self.ban_counted_at.get(net).copied().unwrap_or(0);
            (net.clone(), *n, at)
        })
    }

    /// Sets a ban count as `counts` hands it out.
    pub fn set_count(&mut self, (net, n, at): Count) {
        if at != 0 {
            self.ban_counted_at.insert(net.clone(), at);
        }
        self.ban_counts.insert(net, n);
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedBan {
    pub net: String,
    /// Shared by every ban of the jail (in memory; each is written once).
    pub jail: Arc<str>,
    /// Unix time in ms.
    pub banned_at: i64,
    /// Unix time in ms; none for permanent bans.
    pub expires_at: Option<i64>,
    /// The same end as a `CLOCK_MONOTONIC` deadline of the boot `boot_id`.
    #[serde(default)]
    pub expires_mono: Option<u64>,
    pub reason: Arc<str>,
    #[serde(default)]
    pub line: String,
    #[serde(default)]
    pub all_ports: bool,
    /// Only the protected ports, even in all-ports mode (packet evidence).
    #[serde(default)]
    pub ports_only: bool,
    /// A ban from elsewhere (`crowdsec`, `apiban`, `redis:NODE`); none for
    /// this box's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Arc<str>>,
    /// The network's ban count, carried with its ban (this box's own), so
    /// a restore sets it in passing; 0: none here (see `ban_counts`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}
