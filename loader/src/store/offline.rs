//! Operator changes made while no daemon runs (`sipguard ban`, `unban`,
//! `allow`, `disallow` go straight to the kernel maps then), written to the
//! database so that the next start does not undo them. This replaces the
//! journal and its `flock`.
//!
//! The protocol is the journal's, with SQLite's write lock for the file
//! lock: the CLI takes the lock (`begin`: `BEGIN IMMEDIATE`) *before* it
//! looks for the daemon, and holds it while it changes the maps; the
//! daemon listens on its socket before it takes the same lock to read the
//! state (`Store::restore`). So every change either reaches the running
//! daemon or is in the database when the daemon reads it, never neither.
//! Either side waits for the other's lock up to `schema::BUSY_TIMEOUT`.
//!
//! ```ignore
//! let offline = store::offline::begin(&state_file)?;
//! if daemon_request(&socket, &req)?.is_some() {
//!     return Ok(()); // the daemon took it; dropping `offline` rolls back
//! }
//! in_maps(&mut maps)?;
//! offline.apply(&change)?;
//! offline.commit()
//! ```
use super::{batch, legacy::journal::Change, records::SavedBan, schema, Store};
use anyhow::{Context as _, Result};
use rusqlite::Connection;
use std::path::Path;

/// The store, locked for writing until `commit` (or rolled back when
/// dropped).
pub struct Offline {
    conn: Connection,
    open: bool,
}

/// Opens the store of `state_file` (taking in older state files first, see
/// `import`) and takes its write lock.
pub fn begin(state_file: &Path) -> Result<Offline> {
    let conn = Store::open(state_file)?.into_connection();
    conn.execute_batch("BEGIN IMMEDIATE")
        .context("cannot lock the state (is another sipguard writing it?)")?;
    Ok(Offline { conn, open: true })
}

/// A network as the store keeps it: CIDR text, host bits cleared.
fn net_text(net: &str) -> Result<String> {
    Ok(crate::addr::parse_net(net)?.to_string())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Offline {
    /// A ban by hand: it replaces this box's own ban of `net`; other
    /// origins' bans of it stay.
    pub fn ban(&self, net: &str, expires_at: Option<i64>, all_ports: bool) -> Result<()> {
        ban(&self.conn, net, expires_at, all_ports)
    }

    /// Every ban of `net` goes, whatever its origin.
    pub fn unban(&self, net: &str) -> Result<()> {
        unban(&self.conn, net)
    }

    pub fn allow(&self, net: &str) -> Result<()> {
        allow(&self.conn, net)
    }

    pub fn disallow(&self, net: &str) -> Result<()> {
        disallow(&self.conn, net)
    }

    /// The CLI's change, as the journal spelled it.
    pub fn apply(&self, change: &Change) -> Result<()> {
        apply(&self.conn, change)
    }

    /// Makes the changes durable and lets the lock go.
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        self.conn
            .execute_batch("COMMIT")
            .context("cannot save the change")?;
        Ok(())
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// `Offline::apply` inside the caller's transaction (the import of a
/// journal uses it too).
pub fn apply(conn: &Connection, change: &Change) -> Result<()> {
    match change {
        Change::Ban {
            net,
            expires_at,
            all_ports,
        } => ban(conn, net, *expires_at, *all_ports),
        Change::Unban { net } => unban(conn, net),
        Change::Allow { net } => allow(conn, net),
        Change::Disallow { net } => disallow(conn, net),
    }
}

fn ban(conn: &Connection, net: &str, expires_at: Option<i64>, all_ports: bool) -> Result<()> {
    batch::put_ban(
        conn,
        &SavedBan {
            net: net_text(net)?,
            jail: "manual".into(),
            banned_at: now_ms(),
            expires_at,
            expires_mono: None,
            reason: "banned by hand while the daemon was stopped".into(),
            line: String::new(),
            all_ports,
            ports_only: false,
            origin: None,
            count: 0,
        },
    )
}

fn unban(conn: &Connection, net: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM bans WHERE net = ?1")?
        .execute([net_text(net)?])?;
    Ok(())
}

fn allow(conn: &Connection, net: &str) -> Result<()> {
    batch::allow(conn, &net_text(net)?, Some(now_ms()))?;
    schema::set_meta(conn, "allowlist_kept", 1)
}

fn disallow(conn: &Connection, net: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM allowlist WHERE net = ?1")?
        .execute([net_text(net)?])?;
    schema::set_meta(conn, "allowlist_kept", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_changes_are_kept_and_a_dropped_lock_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let mut store = Store::open(&state).unwrap();
        let mut remote = SavedBan {
            net: "192.0.2.1/32".into(),
            jail: "crowdsec".into(),
            banned_at: 1,
            expires_at: None,
            expires_mono: None,
            reason: "r".into(),
            line: String::new(),
            all_ports: false,
            ports_only: false,
            origin: Some("crowdsec".into()),
            count: 0,
        };
        let mut local = remote.clone();
        (local.jail, local.origin) = ("freeswitch".into(), None);
        remote.net = "192.0.2.2/32".into();
        let mut both = local.clone();
        both.net = "192.0.2.2/32".into();
        store
            .write(&batch::Batch {
                bans: vec![local, remote, both],
                ..Default::default()
            })
            .unwrap();
        drop(store);
        let o = begin(&state).unwrap();
        o.ban("192.0.2.1", Some(99), true).unwrap();
        o.unban("192.0.2.2/32").unwrap();
        o.allow("10.0.8.7/24").unwrap();
        o.commit().unwrap();
        // Taken and dropped without a commit: nothing of it stays.
        let o = begin(&state).unwrap();
        o.unban("192.0.2.1").unwrap();
        drop(o);
        let mut store = Store::open(&state).unwrap();
        let r = store.restore().unwrap();
        let bans: Vec<(String, String, Option<i64>, bool)> = r
            .bans()
            .map(|b| (b.net, b.jail.to_string(), b.expires_at, b.all_ports))
            .collect();
        assert_eq!(
            bans,
            [("192.0.2.1/32".into(), "manual".into(), Some(99), true)]
        );
        assert_eq!(r.header.allowed, Some(vec!["10.0.8.0/24".to_owned()]));
        r.finish().unwrap();
        let o = begin(&state).unwrap();
        o.apply(&Change::Disallow {
            net: "10.0.8.0/24".into(),
        })
        .unwrap();
        o.commit().unwrap();
        let r = store.restore().unwrap();
        assert_eq!(r.header.allowed, Some(vec![]));
        r.finish().unwrap();
        assert!(begin(&state)
            .unwrap()
            .ban("not a net", None, false)
            .is_err());
    }

    /// The CLI holds the lock while it changes the maps: a daemon's
    /// restore waits for it, and then reads the change.
    #[test]
    fn a_restore_waits_for_the_cli_s_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let o = begin(&state).unwrap();
        let reader = {
            let state = state.clone();
            std::thread::spawn(move || {
                let mut store = Store::open(&state).unwrap();
                let r = store.restore().unwrap();
                let nets: Vec<String> = r.bans().map(|b| b.net).collect();
                r.finish().unwrap();
                nets
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        o.ban("203.0.113.9", None, false).unwrap();
        o.commit().unwrap();
        assert_eq!(reader.join().unwrap(), ["203.0.113.9/32"]);
    }
}
