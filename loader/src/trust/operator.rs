//! The operator's trusted sources (`sipguard trust`), kept in a file of
//! their own beside the state (`STATE.trusted`): a JSON list of addresses
//! (an IPv6 one standing for its /64) and when each trust ends (Unix
//! seconds; null: never). Written whole, atomically, root-only; read
//! within bounds.
use anyhow::{bail, Context as _, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

/// Most entries the file may hold (room kept for them in the kernel's
/// trusted map, beside `[trust] max_entries` registrations), and its
/// largest size.
pub const MAX_ENTRIES: usize = 8_192;
const MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub addr: IpAddr,
    /// Unix seconds; `None`: no end.
    pub until: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    trusted: Vec<Entry>,
}

/// Where the operator's trusted sources are kept.
pub fn path(state_file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.trusted", state_file.display()))
}

/// Longest `sipguard trust --for` (leave it out for no end): the end is
/// kept in Unix seconds and in the kernel's nanoseconds, both far from
/// overflowing within it.
pub const MAX_FOR: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// When trust given now for `d` ends (Unix seconds); a `d` over `MAX_FOR`
/// is refused.
pub fn until_unix(d: std::time::Duration) -> Result<i64> {
    if d > MAX_FOR {
        bail!(
            "--for {}: at most {} days (leave --for out for a trust with no end)",
            humantime::format_duration(d),
            MAX_FOR.as_secs() / 86_400
        );
    }
    // Below MAX_FOR: fits an i64 with room.
    Ok(unix_now().saturating_add(d.as_secs() as i64))
}

/// What `sipguard trust` takes: one address (an IPv6 one trusts its /64,
/// the unit the limiter counts), or an IPv6 /64 written as such.
pub fn trust_addr(net: IpNet) -> Result<IpAddr> {
    match net {
        IpNet::V4(n) if n.prefix_len() == 32 => Ok(IpAddr::V4(n.addr())),
        IpNet::V6(n) if n.prefix_len() == 128 || n.prefix_len() == 64 => Ok(IpAddr::V6(n.network())),
        _ => bail!(
            "trust takes one address ({net} is a range): the limiter counts an IPv4 address, or an IPv6 /64, as one source"
        ),
    }
}

/// Refuses a new entry when `held` entries (ended ones left out) fill the
/// file: the same words whether the daemon or, with none running, the CLI
/// refuses.
pub fn check_room(held: usize) -> Result<()> {
    if held >= MAX_ENTRIES {
        bail!("{MAX_ENTRIES} operator-trusted sources already: untrust some first");
    }
    Ok(())
}

/// Whether an entry's trust has not ended at `now_unix` (an ended one is
/// dropped when the daemon reads the file).
pub fn live(e: &Entry, now_unix: i64) -> bool {
    e.until.is_none_or(|u| u > now_unix)
}

/// The entries in the file (none when it does not exist).
pub fn load(path: &Path) -> Result<Vec<Entry>> {
    // Opened without blocking and within bounds (a FIFO or a huge file
    // there is an error, not a hang).
    let bytes = match crate::files::read_small(path, MAX_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let text =
        String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", path.display()))?;
    let file: File = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a trusted-sources file", path.display()))?;
    if file.trusted.len() > MAX_ENTRIES {
        bail!("{}: more than {MAX_ENTRIES} entries", path.display());
    }
    Ok(file.trusted)
}

/// Replaces the file with `entries` (a temporary file renamed over it).
pub fn save(path: &Path, entries: &[Entry]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let text = serde_json::to_string_pretty(&File {
        version: 1,
        trusted: entries.to_vec(),
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_refuses_and_ended_entries_are_not_counted() {
        assert!(check_room(MAX_ENTRIES - 1).is_ok());
        let e = check_room(MAX_ENTRIES).unwrap_err().to_string();
        assert_eq!(
            e,
            "8192 operator-trusted sources already: untrust some first"
        );
        let now = unix_now();
        let entry = |until| Entry {
            addr: "192.0.2.1".parse().unwrap(),
            until,
        };
        assert!(live(&entry(None), now));
        assert!(live(&entry(Some(now + 1)), now));
        assert!(!live(&entry(Some(now)), now));
    }

    #[test]
    fn a_huge_for_is_refused_not_overflowed() {
        let now = unix_now();
        let u = until_unix(std::time::Duration::from_secs(3600)).unwrap();
        assert!((now + 3599..=now + 3601).contains(&u));
        assert!(until_unix(MAX_FOR).is_ok());
        let e = until_unix(std::time::Duration::MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 3650 days"), "{e}");
        assert!(until_unix(MAX_FOR + std::time::Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_fifo_in_place_of_the_file_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(&dir.path().join("state.db"));
        crate::files::mkfifo(&p);
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("a FIFO"), "{e}");
    }

    #[test]
    fn entries_round_trip_and_ranges_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(&dir.path().join("state.db"));
        assert_eq!(load(&p).unwrap(), vec![]);
        let e = vec![
            Entry {
                addr: "192.0.2.1".parse().unwrap(),
                until: None,
            },
            Entry {
                addr: "2001:db8::".parse().unwrap(),
                until: Some(1_900_000_000),
            },
        ];
        save(&p, &e).unwrap();
        assert_eq!(load(&p).unwrap(), e);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, "{garbage").unwrap();
        assert!(load(&p).is_err());
        let net = |s: &str| crate::addr::parse_net(s).unwrap();
        assert_eq!(
            trust_addr(net("192.0.2.1")).unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trust_addr(net("2001:db8:1:2::/64")).unwrap(),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert!(trust_addr(net("192.0.2.0/24")).is_err());
    }
}
