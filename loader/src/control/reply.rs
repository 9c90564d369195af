//! What the daemon answers: one type per request, built by the daemon and
//! read by the CLI, so neither looks fields up by name.
//!
//! The JSON is what `status --json` prints and scripts read, so its shape
//! is kept as it was when these were built with `json!`: the same keys and
//! nesting, null where a value is missing, and the keys of each object in
//! alphabetical order (`json!` objects are sorted maps), which is why
//! fields are declared alphabetically.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One answer line: `data` is the reply when `ok`, null when not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response<T = Reply> {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default = "none")]
    pub data: Option<T>,
}

/// `Option<T>::default` without asking `T: Default` of serde.
fn none<T>() -> Option<T> {
    None
}

impl<T> Response<T> {
    pub fn ok(data: T) -> Self {
        Self {
            ok: true,
            error: None,
            data: Some(data),
        }
    }

    pub fn err(e: &anyhow::Error) -> Self {
        Self {
            ok: false,
            error: Some(format!("{e:#}")),
            data: None,
        }
    }
}

/// Any request's reply, as the daemon sends it: each variant is its own
/// JSON object, with no tag (the client knows what it asked). A status is
/// boxed: the others are a few words each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Box<Status>),
    Banned(Banned),
    Unbanned(Unbanned),
    Allowed(Allowed),
    Disallowed(Disallowed),
    Notes(Notes),
    Reloaded(Reloaded),
    Trusted(Trusted),
    Untrusted(Untrusted),
}

/// `status`: like `fail2ban-client status`, and what the daemon found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Bans in force, every jail and origin.
    pub bans: usize,
    pub dry_run: bool,
    pub fleet: Fleet,
    /// What was read in FreeSWITCH's configuration; null without one.
    pub freeswitch: Option<Freeswitch>,
    pub jails: Vec<JailStatus>,
    pub ports: Vec<u16>,
    /// Bans from elsewhere by origin (the largest few; the rest `other`).
    pub remote: BTreeMap<String, RemoteOrigin>,
    /// Packets dropped over the invalid-message (`invalid`) and per-method
    /// budgets (by `[flood.methods]` name), or would-be drops in a dry run;
    /// null when the kernel's counters could not be read (or an older
    /// daemon answered).
    #[serde(default)]
    pub sip_budget_drops: Option<BTreeMap<String, u64>>,
    /// Trusted sources and overload (made by the daemon's `trust`, above
    /// this floor, and printed whole: JSON, like `fleet`).
    #[serde(default)]
    pub trust: serde_json::Value,
}

/// The fleet's workers. Their reports are made by `fleet` (above this
/// floor) and only ever printed whole, so they stay JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    pub redis: serde_json::Value,
    pub workers: serde_json::Value,
}

/// A FreeSWITCH setting and where it was read (`file: what`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Found<T> {
    pub from: String,
    pub value: T,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Freeswitch {
    pub conf_dir: String,
    pub log: Option<Found<String>>,
    pub ports: Vec<Found<u16>>,
    pub trunks: Vec<Trunk>,
    /// What could not be read or understood.
    pub warnings: Vec<String>,
}

/// A gateway, never banned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trunk {
    pub addresses: Vec<std::net::IpAddr>,
    pub from: String,
    pub gateway: String,
    pub host: String,
}

/// One origin's bans from elsewhere, and what was refused of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteOrigin {
    pub bans: u64,
    pub ipv4_addresses: u64,
    pub ipv6_64s: u64,
    pub over_cap: u64,
    pub refused_never_ban: u64,
}

/// One jail: a log jail has a filter; the pseudo-jails (manual, flood,
/// scanner) have null.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JailStatus {
    pub actions: Actions,
    pub filter: Option<Filter>,
    pub name: String,
}

/// What a log jail read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    pub ambiguous: u64,
    pub currently_failed: usize,
    pub files: Vec<String>,
    pub ignored: u64,
    pub lines: u64,
    pub skewed: u64,
    pub skipped_long_lines: u64,
    pub too_old: u64,
    pub total_failed: u64,
}

/// A jail's bans: the first of them by address, the rest counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Actions {
    pub banned: Vec<BanEntry>,
    pub banned_not_listed: usize,
    pub currently_banned: usize,
    /// Pseudo-jails only: absent from a log jail's actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_never_ban: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_over_budget: Option<u64>,
    pub total_banned: u64,
}

/// One ban as `status` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BanEntry {
    /// As shown: a single host without its prefix.
    pub address: String,
    pub all_ports: bool,
    /// Null: permanent.
    pub expires_in_secs: Option<u64>,
    pub line: String,
    pub ports_only: bool,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Banned {
    pub banned: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unbanned {
    /// Whether it was asked of every box of the fleet.
    pub fleet: bool,
    /// The other origins whose ban of it was lifted too.
    pub origins: Vec<String>,
    pub unbanned: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allowed {
    pub allowed: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Disallowed {
    pub disallowed: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trusted {
    pub trusted: String,
    /// Null: no end.
    pub expires_in_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Untrusted {
    pub untrusted: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    pub reloaded: bool,
}

/// A page of ban notes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notes {
    pub notes: Vec<Note>,
}

/// A ban's jail (or, banned only elsewhere, its origin) and reason. On the
/// wire a row `[address, jail, reason]`, a third the size of an object: a
/// million of them are read by `list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "NoteRow", into = "NoteRow")]
pub struct Note {
    /// As shown: a single host without its prefix.
    pub address: String,
    pub jail: String,
    pub reason: String,
}

type NoteRow = (String, String, String);

impl From<NoteRow> for Note {
    fn from((address, jail, reason): NoteRow) -> Self {
        Self {
            address,
            jail,
            reason,
        }
    }
}

impl From<Note> for NoteRow {
    fn from(n: Note) -> Self {
        (n.address, n.jail, n.reason)
    }
}

#[cfg(test)]
mod tests;
