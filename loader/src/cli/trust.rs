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
