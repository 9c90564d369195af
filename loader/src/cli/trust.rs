//! `sipguard list --trusted` (and, with the daemon, `trust`/`untrust`):
//! the kernel's trusted map, read as it is.
use crate::{
    addr,
    kernel::{
        clock,
        trust::{trust_net, TrustMaps},
    },
};
use anyhow::Result;
use common::{TRUST_OPERATOR, TRUST_REGISTERED};
use serde_json::json;
use std::path::Path;

fn origin(o: u32) -> &'static str {
    match o {
        TRUST_REGISTERED => "registered",
        TRUST_OPERATOR => "operator",
        _ => "?",
    }
}

/// Prints the trusted sources in force (entries past their end are left
/// out: the program ignores them too).
pub fn list_trusted(pin_dir: &Path, json: bool) -> Result<()> {
    let maps = TrustMaps::open(pin_dir)?;
    let now = clock::mono_now_ns();
    let mut rows: Vec<_> = maps
        .entries()?
        .into_iter()
        .filter(|(_, e)| !e.is_expired(now))
        .map(|(k, e)| (trust_net(&k), e))
        .collect();
    rows.sort_by_key(|(n, _)| *n);
    let left = |e: &common::TrustEntry| {
        (e.expires_at_ns != 0).then(|| e.expires_at_ns.saturating_sub(now) / 1_000_000_000)
    };
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|(n, e)| {
                json!({
                    "address": addr::display(n),
                    "origin": origin(e.origin),
                    "expires_in_secs": left(e),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{:<40} {:<11} {:>12}", "TRUSTED", "ORIGIN", "EXPIRES IN");
    for (n, e) in &rows {
        let expires = match left(e) {
            None => "never".to_owned(),
            Some(s) => humantime::format_duration(std::time::Duration::from_secs(s)).to_string(),
        };
        println!(
            "{:<40} {:<11} {:>12}",
            addr::display(n),
            origin(e.origin),
            expires
        );
    }
    println!(
        "{} trusted source{} (the never-ban set is allow-listed: never limited at all)",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `sipguard trust ADDR [--for DURATION]` and `untrust ADDR`: asked of the
/// daemon; with none running, written into the kernel's map and the
/// operator's file under the journal's lock (a daemon starting meanwhile
/// waits for it, then reads the file).
pub fn change(cli: &super::Cli, net: &str, duration: Option<&str>, trust: bool) -> Result<()> {
    use crate::{
        control::{BanTime, Net, Request},
        trust::operator,
    };
    let checked: Net = net.parse()?;
    let addr = operator::trust_addr(checked.get())?;
    let duration: BanTime = duration.unwrap_or("-1").parse()?;
    super::require_root("change the trusted sources")?;
    let req = if trust {
        Request::Trust {
            net: checked,
            duration,
        }
    } else {
        Request::Untrust { net: checked }
    };
    let key = crate::kernel::trust::trust_key(addr);
    let shown = addr::display(&trust_net(&key));
    let p = super::paths(cli);
    let done = |via: &str| {
        if trust {
            println!("trusted {shown}{via}");
        } else {
            println!("untrusted {shown}{via}");
        }
    };
    if super::daemon_request::<serde::de::IgnoredAny>(&p.socket, &req)?.is_some() {
        done("");
        return Ok(());
    }
    let journal = crate::bans::journal::lock(&p.state_file)?;
    if std::os::unix::net::UnixStream::connect(&p.socket).is_ok() {
        drop(journal);
        super::running_daemon::<serde::de::IgnoredAny>(&p.socket, &req)?;
        done("");
        return Ok(());
    }
    let file = operator::path(&p.state_file);
    let mut entries = operator::load(&file)?;
    entries.retain(|e| crate::kernel::trust::trust_key(e.addr) != key);
    if trust {
        // The daemon's cap. Ended entries are dropped (as the daemon does
        // on reading the file): neither counted nor written back, so the
        // file never holds more than the daemon can read.
        let now_unix = operator::unix_now();
        entries.retain(|e| operator::live(e, now_unix));
        operator::check_room(entries.len())?;
    }
    let mut maps = TrustMaps::open(&p.pin_dir)?;
    if trust {
        let now = clock::mono_now_ns();
        let (until, until_ns) = match duration.get() {
            None => (None, 0),
            Some(d) => (
                Some(operator::until_unix(d)?),
                now.saturating_add(d.as_secs().saturating_mul(1_000_000_000)),
            ),
        };
        entries.push(operator::Entry { addr, until });
        maps.trust(
            key,
            common::TrustEntry {
                expires_at_ns: until_ns,
                trusted_at_ns: now,
                origin: TRUST_OPERATOR,
                _pad: 0,
            },
        )?;
    } else {
        let before = operator::load(&file)?.len();
        if entries.len() == before {
            anyhow::bail!("{shown} is not trusted by `sipguard trust`");
        }
        maps.untrust(&key)?;
    }
    operator::save(&file, &entries)?;
    done(" (no daemon running: written to the kernel and kept for its start)");
    Ok(())
}
