//! What the CLI prints: bans, the allowlist, counters, and jail status.
use crate::{
    addr,
    control::{self, JailStatus, Status},
    daemon,
    kernel::clock,
    kernel::dispatcher,
    kernel::maps::KernelMaps,
    kernel::program,
    text::escape,
};
use anyhow::Result;
use common::{counter, BAN_ALL_PORTS, BAN_PORTS_ONLY, CONFIG_ALL_PORTS, CONFIG_DRY_RUN};
use serde_json::json;
use std::fmt::Write as _;

/// A ban's jail and reason, from the daemon, by address as displayed.
pub type BanNotes = std::collections::HashMap<String, (String, String)>;

/// Adds one page of the daemon's `notes` answer; returns how many it held.
pub fn add_notes(notes: &mut BanNotes, page: control::Notes) -> usize {
    let n = page.notes.len();
    for note in page.notes {
        notes.insert(note.address, (note.jail, note.reason));
    }
    n
}

/// Bans from the kernel maps, with their jail and reason when the daemon
/// runs (`notes`; empty otherwise).
pub fn list_bans(maps: &KernelMaps, notes: &BanNotes, json: bool) -> Result<()> {
    let now = clock::mono_now_ns();
    let dry_run = maps.config()?.flags & CONFIG_DRY_RUN != 0;
    let mut bans = maps.bans()?;
    bans.sort_by_key(|b| b.net);
    if json {
        let rows: Vec<_> = bans
            .iter()
            .map(|b| {
                let e = &b.entry;
                json!({
                    "address": b.net.addr().to_string(),
                    "prefix": b.net.prefix_len(),
                    "permanent": e.expires_at_ns == 0,
                    "expired": e.is_expired(now),
                    "expires_in_secs": (e.expires_at_ns != 0).then(|| clock::remaining(e.expires_at_ns).as_secs()),
                    "packets": b.stats.packets,
                    "bytes": b.stats.bytes,
                    "last_seen_secs_ago": (b.stats.last_seen_ns != 0).then(|| clock::age(b.stats.last_seen_ns).as_secs()),
                    "all_ports": e.flags & BAN_ALL_PORTS != 0,
                    "ports_only": e.flags & BAN_PORTS_ONLY != 0,
                    "jail": notes.get(&addr::display(&b.net)).map(|n| n.0.clone()),
                    "reason": notes.get(&addr::display(&b.net)).map(|n| n.1.clone()),
                    "dry_run": dry_run,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if dry_run {
        println!(
            "DRY RUN: nothing is dropped; PACKETS and BYTES are what these bans would have dropped"
        );
    }
    println!(
        "{:<40} {:>14} {:>10} {:>12} {:>12} {:<9} {:<12} REASON",
        "ADDRESS", "EXPIRES", "PACKETS", "BYTES", "LAST SEEN", "PORTS", "JAIL"
    );
    for b in &bans {
        let e = &b.entry;
        let expires = if e.expires_at_ns == 0 {
            "permanent".to_owned()
        } else if e.is_expired(now) {
            "expired".to_owned()
        } else {
            format!("in {}", clock::human(clock::remaining(e.expires_at_ns)))
        };
        let seen = if b.stats.last_seen_ns == 0 {
            "never".to_owned()
        } else {
            format!("{} ago", clock::human(clock::age(b.stats.last_seen_ns)))
        };
        let ports = if e.flags & BAN_ALL_PORTS != 0 {
            "all"
        } else if e.flags & BAN_PORTS_ONLY != 0 {
            "protected-only"
        } else {
            "protected"
        };
        let (jail, reason) = shown_note(notes, &addr::display(&b.net));
        println!(
            "{:<40} {expires:>14} {:>10} {:>12} {seen:>12} {ports:<9} {:<12} {reason}",
            addr::display(&b.net),
            b.stats.packets,
            b.stats.bytes,
            if jail.is_empty() { "-" } else { &jail }
        );
    }
    println!("{} ban(s)", bans.len());
    Ok(())
}

/// A ban's jail and reason as the table shows them: they come from logs
/// and engines, so control characters are escaped (JSON escapes its own).
fn shown_note(notes: &BanNotes, address: &str) -> (String, String) {
    notes.get(address).map_or_else(Default::default, |(j, r)| {
        (escape(j).into_owned(), escape(r).into_owned())
    })
}

pub fn list_allowed(maps: &KernelMaps, json: bool) -> Result<()> {
    let mut allowed = maps.allowed()?;
    allowed.sort_by_key(|a| a.net);
    if json {
        let rows: Vec<_> = allowed
            .iter()
            .map(|a| json!({"address": a.net.addr().to_string(), "prefix": a.net.prefix_len(), "hits": a.entry.hits}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<40} {:>10}", "ALLOWED", "HITS");
    for a in &allowed {
        println!("{:<40} {:>10}", addr::display(&a.net), a.entry.hits);
    }
    println!(
        "{} allow-list entr{}",
        allowed.len(),
        if allowed.len() == 1 { "y" } else { "ies" }
    );
    Ok(())
}

pub fn stats(maps: &KernelMaps, json: bool) -> Result<()> {
    let counters = maps.counters()?;
    let bans = maps.banned_nets()?.len();
    let allowed = maps.allowed()?.len();
    let ports = maps.ports()?;
    let cfg = maps.config()?;
    let all_ports = cfg.flags & CONFIG_ALL_PORTS != 0;
    let dry_run = cfg.flags & CONFIG_DRY_RUN != 0;
    let attached = program::pinned_links(maps.pin_dir());
    let hooks: Vec<(String, Result<Vec<Hooked>>)> = attached
        .iter()
        .map(|i| (i.clone(), hooked(maps.pin_dir(), i)))
        .collect();
    let sip = maps.sip_limits()?;
    if json {
        let mut c = serde_json::Map::new();
        for (name, v) in counter::NAMES.iter().zip(&counters) {
            c.insert(
                (*name).to_owned(),
                json!({"packets": v.packets, "bytes": v.bytes}),
            );
        }
        let out = json!({
            "counters": c,
            "bans": bans,
            "allowed": allowed,
            "ports": ports,
            "all_ports": all_ports,
            "dry_run": dry_run,
            "rate_pps": cfg.rate_pps,
            "burst": cfg.burst,
            "lost_reports": maps.lost_reports()?,
            "attached": attached,
            "attach": "exclusive",
            "xdp_hooks": hooks.iter().map(|(iface, on)| (iface.clone(), match on {
                Ok(on) => on.iter().map(|h| json!({
                    "id": h.program.id,
                    "name": h.program.name,
                    "mode": h.program.mode,
                    "sipguard": h.ours,
                    "description": h.text,
                })).collect::<serde_json::Value>(),
                Err(e) => json!({"error": format!("{e:#}")}),
            })).collect::<serde_json::Map<_, _>>(),
            "sip_budgets": super::sip_budgets::json(&sip),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "attached to: {}",
        if attached.is_empty() {
            "nothing".to_owned()
        } else {
            escape(&attached.join(", ")).into_owned()
        }
    );
    for (iface, on) in &hooks {
        let what = match on {
            Ok(on) if on.is_empty() => "nothing".to_owned(),
            Ok(on) => on
                .iter()
                .map(|h| format!("{}{}", h.text, if h.ours { " [sipguard]" } else { "" }))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("unknown ({e:#})"),
        };
        println!(
            "xdp on {}: {what} (sipguard attaches exclusively)",
            escape(iface)
        );
    }
    println!(
        "protecting:  {}",
        if all_ports {
            "all ports".to_owned()
        } else {
            format!("ports {}", daemon::join_ports(&ports))
        }
    );
    if dry_run {
        println!("DRY RUN:     nothing is dropped; the drop_* counters are would-be drops");
    }
    println!("rate limit:  {}", rate_limit(&cfg));
    for line in super::sip_budgets::text(&sip) {
        println!("{line}");
    }
    println!("bans:        {bans}");
    println!("allowlist:   {allowed}");
    println!(
        "lost reports: {} (ring buffer full; each sent again)",
        maps.lost_reports()?
    );
    println!();
    println!("{:<24} {:>14} {:>16}", "COUNTER", "PACKETS", "BYTES");
    for (name, v) in counter::NAMES.iter().zip(&counters) {
        println!("{name:<24} {:>14} {:>16}", v.packets, v.bytes);
    }
    Ok(())
}

/// A program on an interface's XDP hook, whether it is sipguard's, and
/// what it runs when it is a libxdp dispatcher.
struct Hooked {
    program: dispatcher::iface::Attached,
    ours: bool,
    text: String,
}

/// What the kernel has on `iface`'s XDP hook (one program per mode at
/// most): the program behind sipguard's pinned link is marked. An error
/// when the interface is not in this network namespace.
fn hooked(pin_dir: &std::path::Path, iface: &str) -> Result<Vec<Hooked>> {
    let ours = program::link_program_id(pin_dir, iface);
    let index = program::if_index(iface)?;
    Ok(dispatcher::iface::attached(index)?
        .into_iter()
        .map(|program| Hooked {
            ours: Some(program.id) == ours,
            text: dispatcher::iface::describe(index, &program),
            program,
        })
        .collect())
}

/// Text from a `status` answer, escaped: file names, jail and origin
/// names and warnings may come from outside.
fn txt(text: &str) -> String {
    escape(text).into_owned()
}

/// What the daemon read in FreeSWITCH's configuration, and from where.
fn freeswitch(out: &mut String, d: Option<&control::Freeswitch>) {
    let Some(d) = d else {
        let _ = writeln!(
            out,
            "|- FreeSWITCH:          no configuration found (freeswitch_conf)"
        );
        return;
    };
    let _ = writeln!(out, "|- FreeSWITCH:          {}", txt(&d.conf_dir));
    for p in &d.ports {
        let _ = writeln!(out, "|  |- port {:<6}       {}", p.value, txt(&p.from));
    }
    for t in &d.trunks {
        let addrs: Vec<String> = t.addresses.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "|  |- trunk {} = {} never banned ({})",
            txt(&t.host),
            if addrs.is_empty() {
                "unresolved".to_owned()
            } else {
                addrs.join(" ")
            },
            txt(&t.from)
        );
    }
    if let Some(log) = &d.log {
        let _ = writeln!(out, "|  |- log {} ({})", txt(&log.value), txt(&log.from));
    }
    for w in &d.warnings {
        let _ = writeln!(out, "|  |- warning: {}", txt(w));
    }
}

/// `status` like `fail2ban-client status [JAIL]`.
pub fn status(data: &Status, one_jail: bool) {
    print!("{}", status_text(data, one_jail));
}

fn status_text(data: &Status, one_jail: bool) -> String {
    let mut out = String::new();
    if !one_jail {
        overview(&mut out, data);
    }
    for j in &data.jails {
        jail(&mut out, j);
    }
    out
}

/// The head of `status` without a jail: counts, ports, origins, FreeSWITCH.
fn overview(out: &mut String, data: &Status) {
    let names: Vec<String> = data.jails.iter().map(|j| txt(&j.name)).collect();
    let _ = writeln!(out, "Status");
    let _ = writeln!(out, "|- Number of jail:      {}", names.len());
    let _ = writeln!(out, "|- Bans in force:       {}", data.bans);
    if data.dry_run {
        let _ = writeln!(
            out,
            "|- DRY RUN:             bans are recorded, nothing is dropped"
        );
    }
    let ports: Vec<String> = data.ports.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "|- Protected ports:     {}", ports.join(","));
    if !data.remote.is_empty() {
        let parts: Vec<String> = data
            .remote
            .iter()
            .map(|(o, r)| format!("{} {}", escape(o), r.bans))
            .collect();
        let _ = writeln!(out, "|- From elsewhere:      {}", parts.join(", "));
    }
    freeswitch(out, data.freeswitch.as_ref());
    trust(out, &data.trust);
    budget_drops(out, data);
    let _ = writeln!(out, "`- Jail list:           {}", names.join(", "));
}

/// The trust part of `status` (absent from an older daemon's answer):
/// everything `status --json` has under `trust`.
fn trust(out: &mut String, t: &serde_json::Value) {
    if t.is_null() {
        return;
    }
    let esl = &t["esl"];
    let state = esl["state"].as_str().unwrap_or("?");
    let mut line = format!("event socket {}", txt(state));
    if let Some(a) = esl["address"].as_str() {
        line.push_str(&format!(" ({})", txt(a)));
    }
    let _ = writeln!(
        out,
        "|- Trusted:             {} source(s); {line}",
        t["trusted"]
    );
    let _ = writeln!(
        out,
        "|  |- registered:       {} address(es) of {} registration(s); {} refused (over max_entries)",
        t["registered_addresses"], t["registrations"], t["registrations_refused"]
    );
    let _ = writeln!(
        out,
        "|  |- operator:         {} (sipguard trust)",
        t["operator"]
    );
    if state != "off" {
        let from = esl["from"]
            .as_str()
            .map_or_else(String::new, |f| format!("from {}; ", txt(f)));
        let _ = writeln!(
            out,
            "|  |- event socket:     {from}{} connect(s), {} event(s), {} bad, {} refused peer(s)",
            esl["connects"], esl["events"], esl["bad_events"], esl["refused_peers"]
        );
    }
    if let Some(e) = esl["last_error"].as_str() {
        let _ = writeln!(out, "|  |- last error:       {}", txt(e));
    }
    let _ = writeln!(out, "|  `- map writes failed: {}", t["map_write_failures"]);
    let o = &t["overload"];
    let shed = match o["shed"].as_u64() {
        Some(n) => format!("; {n} packet(s) shed"),
        None => String::new(),
    };
    if o["overload_pps"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "|- Overload:            {} ({} SIP packets/s, threshold {}, entered {} time(s)){shed}",
            if o["overloaded"] == true {
                "YES: untrusted sources shed"
            } else {
                "no"
            },
            o["sip_packets_per_second"],
            o["overload_pps"],
            o["entered"]
        );
    } else {
        let _ = writeln!(out, "|- Overload:            off (overload_pps = 0){shed}");
    }
}

/// The packets the invalid-message and per-method budgets dropped.
fn budget_drops(out: &mut String, data: &Status) {
    let Some(d) = &data.sip_budget_drops else {
        return;
    };
    // `invalid` first, then the classes in `[flood.methods]` order.
    let names = std::iter::once("invalid").chain(common::method::NAMES);
    let parts: Vec<String> = names
        .filter_map(|n| d.get(n).map(|v| format!("{n} {v}")))
        .collect();
    let _ = writeln!(
        out,
        "|- Over budget:         {}{}",
        parts.join(", "),
        if data.dry_run {
            " (would-be drops)"
        } else {
            " dropped"
        }
    );
}

/// One jail's part of `status`.
fn jail(out: &mut String, j: &JailStatus) {
    let a = &j.actions;
    let banned: Vec<String> = a.banned.iter().map(|b| txt(&b.address)).collect();
    let _ = writeln!(out, "Status for the jail: {}", txt(&j.name));
    if let Some(f) = &j.filter {
        let files: Vec<String> = f.files.iter().map(|f| txt(f)).collect();
        let _ = writeln!(out, "|- Filter");
        let _ = writeln!(out, "|  |- Currently failed: {}", f.currently_failed);
        let _ = writeln!(out, "|  |- Total failed:     {}", f.total_failed);
        let _ = writeln!(out, "|  `- File list:        {}", files.join(" "));
    }
    let _ = writeln!(out, "`- Actions");
    let _ = writeln!(out, "   |- Currently banned: {}", a.currently_banned);
    let _ = writeln!(out, "   |- Total banned:     {}", a.total_banned);
    let more = a.banned_not_listed;
    if more > 0 {
        let _ = writeln!(
            out,
            "   `- Banned IP list:   {} ... and {more} more (`sipguard list` has them all)",
            banned.join(" ")
        );
    } else {
        let _ = writeln!(out, "   `- Banned IP list:   {}", banned.join(" "));
    }
}

/// `top`: samples the rate map twice, `interval` apart, and shows the sources
/// over their limit: packets dropped per second by the limiter, and whether
/// they were reported for a ban.
pub fn top(maps: &KernelMaps, interval: std::time::Duration, json: bool) -> Result<()> {
    let first: std::collections::HashMap<_, _> = maps
        .rate_states()?
        .into_iter()
        .map(|(net, _, limited)| (net, limited))
        .collect();
    let counted = maps.counters()?;
    std::thread::sleep(interval);
    let second = maps.rate_states()?;
    let classes =
        super::sip_budgets::drop_rates(&counted, &maps.counters()?, interval.as_secs_f64());
    let now_sec = clock::mono_now_ns() / 1_000_000_000;
    let cfg = maps.config()?;
    let mut rows: Vec<(ipnet::IpNet, f64, common::RateState, u64)> = second
        .iter()
        .filter(|(_, st, _)| st.last_over_sec + 2 >= now_sec)
        .map(|(net, st, limited)| {
            let before = first.get(net).copied().unwrap_or(0);
            (
                *net,
                limited.saturating_sub(before) as f64 / interval.as_secs_f64(),
                *st,
                *limited,
            )
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let escalated = second.iter().filter(|(_, st, _)| st.reported != 0).count();
    if json {
        let out = json!({
            "tracked": second.len(),
            "over_limit": rows.len(),
            "escalated": escalated,
            "rate_pps": cfg.rate_pps,
            "burst": cfg.burst,
            "sources": rows.iter().map(|(n, pps, st, limited)| json!({
                "source": addr::display(n), "limited_pps": pps, "limited_total": limited,
                "seconds_over": st.over_secs, "reported": st.reported != 0,
            })).collect::<Vec<_>>(),
            "budget_drops": classes.iter().map(|(n, pps, total)| (n.to_string(),
                json!({"dropped_pps": pps, "dropped_total": total}))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("rate limit: {}", rate_limit(&cfg));
    println!(
        "sources tracked: {}, over their limit now: {}, reported for a ban: {escalated}",
        second.len(),
        rows.len()
    );
    println!(
        "{:<40} {:>14} {:>14} {:>9} REPORTED",
        "SOURCE", "LIMITED PKT/S", "LIMITED TOTAL", "SECS OVER"
    );
    for (net, pps, st, limited) in rows.iter().take(50) {
        println!(
            "{:<40} {pps:>14.0} {limited:>14} {:>9} {}",
            addr::display(net),
            st.over_secs,
            if st.reported != 0 { "yes" } else { "no" }
        );
    }
    let shown: Vec<String> = classes
        .iter()
        .map(|(n, pps, total)| format!("{n} {pps:.0}/s ({total})"))
        .collect();
    println!("dropped over budget, all sources: {}", shown.join(", "));
    Ok(())
}

/// The rate limit the kernel applies, in words.
fn rate_limit(cfg: &common::Config) -> String {
    if cfg.rate_pps == 0 {
        "off".to_owned()
    } else {
        format!("{} packets/s per source, burst {}", cfg.rate_pps, cfg.burst)
    }
}

#[cfg(test)]
mod tests;
