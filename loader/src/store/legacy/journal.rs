//! Operator changes made while the daemon is stopped (`sipguard ban`,
//! `unban`, `allow`, `disallow` go straight to the kernel maps then), kept so
//! that the next start does not undo them: without this, a start would
//! write back a ban the operator lifted, because the state file still held
//! it, and forget an allowlist entry after a reboot.
//!
//! The journal is a file of JSON lines beside the state file
//! (`state.journal` for `state.json`), appended under an exclusive `flock`.
//! The CLI takes the lock *before* it looks for the daemon; the daemon
//! listens on its socket before it takes the lock to read the journal. So
//! every change either reaches the running daemon or is in the journal when
//! the daemon reads it, never neither.
use super::changes::Overrides;
use crate::store::records::{SavedBan, State};
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// One change, as the CLI made it in the kernel maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Ban {
        net: String,
        /// Unix ms; none: permanent.
        expires_at: Option<i64>,
        all_ports: bool,
    },
    Unban {
        net: String,
    },
    Allow {
        net: String,
    },
    Disallow {
        net: String,
    },
}

pub fn path(state: &Path) -> PathBuf {
    state.with_extension("journal")
}

/// The journal, locked for as long as this lives.
pub struct Locked {
    file: File,
    path: PathBuf,
}

/// Opens (creating it, mode 0600) and locks the journal of `state`.
pub fn lock(state: &Path) -> Result<Locked> {
    let path = path(state);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot lock {}", path.display()));
    }
    // Under the lock: nobody else is writing, so an unfinished last line is torn.
    super::torn::cut_torn_tail(&file, &path)?;
    Ok(Locked { file, path })
}

impl Locked {
    /// Appends one change, durably.
    pub fn append(&mut self, change: &Change) -> Result<()> {
        let mut line = serde_json::to_vec(change)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// The changes in order. A line that cannot be read (a CLI killed
    /// mid-write) is skipped and logged; the others still apply.
    pub fn changes(&self) -> Result<Vec<Change>> {
        parse(&self.path)
    }

    /// Empties the journal once its changes are in the saved state.
    pub fn clear(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .with_context(|| format!("cannot truncate {}", self.path.display()))
    }
}

/// The journal's changes, read without its lock and without repairing
/// it (`sipguard export`: a reader that writes nothing of the daemon's);
/// a line being written is skipped as unreadable.
pub fn read_changes(state: &Path) -> Result<Vec<Change>> {
    match parse(&path(state)) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
        {
            Ok(Vec::new())
        }
        r => r,
    }
}

fn parse(path: &Path) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!("{}: skipping unreadable line ({e})", path.display()),
        }
    }
    Ok(out)
}

/// Applies the changes to a loaded state, before it is restored: an unban
/// removes the saved ban (so it is not written back), a ban is saved, an
/// allow or disallow changes the operator's allowlist.
pub fn apply(state: &mut State, changes: &[Change]) {
    let mut over = Overrides::default();
    apply_over(state, &mut over, changes);
    let snapshot = std::mem::take(&mut state.bans);
    state.bans = over.bans(snapshot.into_iter()).collect();
}

/// `apply` to a state being read: the allowlist in `header`, the bans and
/// unbans in `over` (laid over the bans as they are read).
pub fn apply_over(header: &mut State, over: &mut Overrides, changes: &[Change]) {
    let same = |a: &str, b: &str| crate::addr::parse_net(a).ok() == crate::addr::parse_net(b).ok();
    let allowed = header.allowed.get_or_insert_with(Vec::new);
    for change in changes {
        match change {
            Change::Ban {
                net,
                expires_at,
                all_ports,
            } => {
                let Ok(parsed) = crate::addr::parse_net(net) else {
                    continue;
                };
                // A manual ban replaces this box's own; other origins' stay.
                over.by_hand(
                    parsed,
                    Some(SavedBan {
                        net: net.clone(),
                        jail: "manual".into(),
                        banned_at: chrono::Utc::now().timestamp_millis(),
                        expires_at: *expires_at,
                        expires_mono: None,
                        reason: "banned by hand while the daemon was stopped".into(),
                        line: String::new(),
                        all_ports: *all_ports,
                        ports_only: false,
                        origin: None,
                        count: 0,
                    }),
                );
            }
            Change::Unban { net } => {
                if let Ok(parsed) = crate::addr::parse_net(net) {
                    over.by_hand(parsed, None);
                }
            }
            Change::Allow { net } => {
                if !allowed.iter().any(|a| same(a, net)) {
                    allowed.push(net.clone());
                }
            }
            Change::Disallow { net } => allowed.retain(|a| !same(a, net)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(net: &str) -> SavedBan {
        SavedBan {
            net: net.into(),
            jail: "freeswitch".into(),
            banned_at: 0,
            expires_at: None,
            expires_mono: None,
            reason: "".into(),
            line: String::new(),
            all_ports: false,
            ports_only: false,
            origin: None,
            count: 0,
        }
    }

    #[test]
    fn changes_survive_in_order_and_apply_to_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.json");
        {
            let mut j = lock(&state_path).unwrap();
            j.append(&Change::Unban {
                net: "192.0.2.1".into(),
            })
            .unwrap();
            j.append(&Change::Allow {
                net: "10.0.8.0/24".into(),
            })
            .unwrap();
        }
        // A CLI killed mid-write leaves half a line: it is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(&state_path))
            .unwrap()
            .write_all(b"{\"op\":\"disal")
            .unwrap();
        let mut j = lock(&state_path).unwrap();
        let changes = j.changes().unwrap();
        assert_eq!(changes.len(), 2);
        let mut st = State {
            bans: vec![saved("192.0.2.1/32"), saved("192.0.2.2/32")],
            ..Default::default()
        };
        apply(&mut st, &changes);
        assert_eq!(st.bans.len(), 1);
        assert_eq!(st.bans[0].net, "192.0.2.2/32");
        assert_eq!(st.allowed, Some(vec!["10.0.8.0/24".to_owned()]));
        apply(
            &mut st,
            &[Change::Disallow {
                net: "10.0.8.0/24".into(),
            }],
        );
        assert_eq!(st.allowed, Some(vec![]));
        j.clear().unwrap();
        assert!(j.changes().unwrap().is_empty());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path(&state_path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
