//! A Redis fleet: sipguard daemons sharing their bans through one Redis.
//!
//! Pub/sub loses what is sent while a node is away, so the fleet keeps, under
//! `prefix`:
//! * `bans`: a sorted set, member `NODE|NET` (one per node and network, so a
//!   replacement is one ZADD), score the end (Unix ms; `+inf` permanent);
//! * `entries`: a hash, field `NODE|NET`, the signed entry of that ban;
//! * `events`: a stream of signed changes (`ban`, `unban`, `fleet-unban`).
//!
//! Every entry is signed with the fleet's key (`entry`): the Redis is often
//! shared, and whoever else writes to it must not be able to ban, unban or
//! widen anything here. A node (re)connecting reads the set and its entries
//! (the snapshot), then follows the stream from the entry it saw last before
//! the snapshot (`reader`); this box's changes leave in one MULTI/EXEC per
//! batch (`writer`). What others can write is read only through small
//! Lua scripts that bound it on the server (`scripts`).
pub mod entry;
mod reader;
mod scripts;
mod writer;

pub use entry::{valid_name, Reject};

use super::{InboundTx, Outbound};
use anyhow::{bail, Context as _, Result};
use std::{
    path::{Path, PathBuf},
    sync::{mpsc, Mutex},
    time::Duration,
};

/// Shortest key accepted (bytes of the trimmed file).
pub const MIN_KEY: usize = 16;
/// Longest key file read.
const MAX_KEY_FILE: u64 = 4096;

/// A key: never shown (`Debug` says `<key>`), compared for reloads.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(b: Vec<u8>) -> Self {
        Self(b)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<key>")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub prefix: String,
    pub node: String,
    /// Signs and verifies.
    pub key: Secret,
    /// Verifies only (during a rotation).
    pub previous_key: Option<Secret>,
    /// Fleet unbans from signed members are applied.
    pub accept_fleet_unban: bool,
    /// A private CA for `rediss://` (PEM), instead of the public roots.
    pub ca_file: Option<PathBuf>,
}

impl Settings {
    fn key_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// Reads a fleet key: a regular file, closed to group and others, its
/// trimmed content at least `MIN_KEY` bytes.
pub fn read_key(path: &Path) -> Result<Secret> {
    let what = || format!("key file {}", path.display());
    let text = read_regular(path, MAX_KEY_FILE, true).with_context(what)?;
    let key = text.trim_ascii();
    if key.len() < MIN_KEY {
        bail!(
            "{} holds {} byte(s): a key needs at least {MIN_KEY} (make one with `openssl rand -hex 32`)",
            what(),
            key.len()
        );
    }
    Ok(Secret(key.to_vec()))
}

/// A regular file's first `max` bytes. Checked before it is opened
/// (a FIFO would block), then opened without blocking or following a link,
/// and checked again (a swap in between).
fn read_regular(path: &Path, max: u64, private: bool) -> Result<Vec<u8>> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let check = |meta: &std::fs::Metadata| -> Result<()> {
        if !meta.is_file() {
            bail!("not a regular file");
        }
        if private && meta.mode() & 0o077 != 0 {
            bail!(
                "open to group or others (mode {:o}): chmod 600 it",
                meta.mode() & 0o777
            );
        }
        Ok(())
    };
    check(&std::fs::metadata(path)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    check(&file.metadata()?)?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, max), &mut text)?;
    Ok(text)
}

/// The fleet's health, for `status` and the metrics: why it is not running,
/// and the entries refused, by reason.
struct Health {
    refused: Option<String>,
    /// The Redis refuses the reader's scripts (fleet started, following
    /// nothing).
    scripts_refused: Option<String>,
    rejected: [u64; Reject::ALL.len()],
}

static HEALTH: Mutex<Health> = Mutex::new(Health {
    refused: None,
    scripts_refused: None,
    rejected: [0; Reject::ALL.len()],
});

/// Records why the fleet is not started (`None`: it is).
pub fn set_refused(why: Option<String>) {
    if let Ok(mut h) = HEALTH.lock() {
        h.refused = why;
        h.scripts_refused = None;
    }
}

/// Records that the Redis refuses the reader's scripts (`None`: it runs
/// them).
fn set_scripts_refused(why: Option<String>) {
    if let Ok(mut h) = HEALTH.lock() {
        h.scripts_refused = why;
    }
}

pub(crate) fn count(r: Reject) {
    if let Ok(mut h) = HEALTH.lock() {
        let i = Reject::ALL.iter().position(|x| *x == r).unwrap_or(0);
        h.rejected[i] += 1;
    }
}

/// Entries refused so far, by reason (every reason, zeros included).
pub fn rejected() -> Vec<(&'static str, u64)> {
    let h = HEALTH.lock().map(|h| h.rejected).unwrap_or_default();
    Reject::ALL.iter().map(|r| r.name()).zip(h).collect()
}

/// `status`'s `fleet.redis`: why it is not running or follows nothing (or
/// null), the entries refused by reason, its workers' restarts.
pub fn report() -> serde_json::Value {
    let refused = HEALTH
        .lock()
        .ok()
        .and_then(|h| h.refused.clone().or_else(|| h.scripts_refused.clone()));
    let rejected: serde_json::Map<String, serde_json::Value> = rejected()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    // Its workers' restarts (a lost connection, a hostile answer).
    let restarts: serde_json::Map<String, serde_json::Value> = super::restarts()
        .into_iter()
        .filter(|(n, ..)| n.starts_with("redis-"))
        .map(|(n, errors, panics)| {
            (
                n.to_owned(),
                serde_json::json!({ "errors": errors, "panics": panics }),
            )
        })
        .collect();
    serde_json::json!({ "refused": refused, "rejected": rejected, "restarts": restarts })
}

/// The host of a `redis://` / `rediss://` URL, for the never-ban set.
pub fn host_of(url: &str) -> Option<String> {
    match redis::IntoConnectionInfo::into_connection_info(url)
        .ok()?
        .addr()
    {
        redis::ConnectionAddr::Tcp(h, _) => Some(h.clone()),
        redis::ConnectionAddr::TcpTls { host, .. } => Some(host.clone()),
        _ => None,
    }
}

fn host_is_loopback(url: &str) -> bool {
    host_of(url).is_some_and(|h| {
        h == "localhost"
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
    })
}

/// Checks a URL (without ever echoing it: it may hold a password).
pub fn check_url(url: &str) -> Result<()> {
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        bail!(
            "`{}`: expected redis://[user:password@]host[:port][/db] or rediss://",
            crate::text::redact_url(url)
        );
    }
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url) {
        bail!("{}", crate::text::redact_in(&e.to_string(), url));
    }
    host_of(url).map(|_| ()).context("no host")
}

/// A connection with bounded waits.
fn connect(s: &Settings, read_timeout: Duration) -> Result<redis::Connection> {
    let client = match &s.ca_file {
        Some(ca) => {
            let pem = read_regular(ca, 1 << 20, false)
                .with_context(|| format!("ca_file {}", ca.display()))?;
            redis::Client::build_with_tls(
                s.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        None => redis::Client::open(s.url.as_str()),
    };
    let con = client
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .map_err(|e| redacted(&e, &s.url))?;
    con.set_read_timeout(Some(read_timeout))
        .and_then(|()| con.set_write_timeout(Some(Duration::from_secs(10))))
        .map_err(|e| redacted(&e, &s.url))?;
    Ok(con)
}

/// A Redis error as it may be logged: the URL and its password removed.
fn redacted(e: &dyn std::fmt::Display, url: &str) -> anyhow::Error {
    anyhow::anyhow!("{}", crate::text::redact_in(&e.to_string(), url))
}

/// Starts the reader and the writer, each supervised (restarted with
/// backoff after an error or a panic).
pub fn start(
    s: Settings,
    tx: InboundTx,
    out: mpsc::Receiver<Outbound>,
    stop: mpsc::Receiver<()>,
) -> Result<()> {
    check_url(&s.url)?;
    set_refused(None);
    if s.url.starts_with("redis://") && !host_is_loopback(&s.url) {
        // Entries are signed, but the server's replies are not: whoever sits
        // between this box and Redis can make a reply as large as it likes
        // (the client reads a reply whole) and see the fleet's password.
        tracing::warn!(
            "Redis fleet over plain redis:// to another host: use rediss:// (TLS) unless the path to Redis is trusted"
        );
    }
    let mut r = reader::Reader::new(s.clone(), tx);
    super::supervise("redis-in", stop, move |stop| r.run(stop));
    let mut w = writer::Writer::new(s);
    // The writer stops when its queue's sender (the daemon's outlet) goes,
    // not on a signal: its own stop channel is held open by the closure.
    let (keep, writer_stop) = mpsc::channel::<()>();
    super::supervise("redis-out", writer_stop, move |_| {
        let _ = &keep;
        w.run(&out)
    });
    Ok(())
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn key_files_must_be_private_regular_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "  0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_key(&p).unwrap().bytes(),
            b"0123456789abcdef0123456789abcdef"
        );
        assert_eq!(format!("{:?}", read_key(&p).unwrap()), "<key>");
        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = format!("{:#}", read_key(&p).unwrap_err());
            assert!(e.contains("group or others"), "{e}");
        }
        std::fs::write(&p, "short\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key(&p)
            .unwrap_err()
            .to_string()
            .contains("at least 16"));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(format!("{:#}", read_key(&fifo).unwrap_err()).contains("regular"));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(read_key(&dir.path().join("none")).is_err());
    }

    #[test]
    fn urls_are_checked_without_showing_their_password() {
        assert_eq!(
            host_of("rediss://user:p%40ss@redis.example:6380/2").as_deref(),
            Some("redis.example")
        );
        assert_eq!(host_of("redis://[::1]:7000").as_deref(), Some("::1"));
        check_url("redis://:secret@127.0.0.1").unwrap();
        for bad in ["http://x", "redis://:hunter2pw@h:port"] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2pw"), "{e}");
        }
    }

    #[test]
    fn health_counts_every_reason() {
        count(Reject::BadMac);
        let r = report();
        assert!(r["rejected"]["bad_mac"].as_u64().unwrap() >= 1, "{r}");
        assert_eq!(r["rejected"].as_object().unwrap().len(), Reject::ALL.len());
    }
}
