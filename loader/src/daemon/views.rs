//! What the daemon shows: `status`, ban lists, the service manager's
//! status line (the metrics scrape's view is `scrape`).
use super::{Daemon, FLOOD_JAIL, INVALID_JAIL, SCANNER_JAIL};
use crate::{
    addr,
    bans::{now_ms, Scope},
    control::{self, Actions, BanEntry, JailStatus, Status},
    fleet::{self},
    kernel::clock,
};
use anyhow::{bail, Result};
use ipnet::IpNet;
use std::collections::BTreeMap;

/// The jails of bans no log jail made, in the order `status` shows them.
const PSEUDO_JAILS: [&str; 4] = ["manual", FLOOD_JAIL, SCANNER_JAIL, INVALID_JAIL];

/// Bans a jail's `status` lists (the rest are counted; `sipguard list`
/// has them all).
const STATUS_BANS: usize = 1000;

impl Daemon {
    /// A jail's bans for `status`: how many, the first `STATUS_BANS` by
    /// address, and how many are not listed.
    pub(super) fn ban_list(&self, nets: Option<Vec<IpNet>>) -> (usize, Vec<BanEntry>, usize) {
        let mut nets = nets.unwrap_or_default();
        let n = nets.len();
        if n > STATUS_BANS {
            nets.select_nth_unstable(STATUS_BANS);
            nets.truncate(STATUS_BANS);
        }
        nets.sort_unstable();
        let listed = nets
            .iter()
            .filter_map(|net| Some((net, self.bans.get(net)?)))
            .map(|(net, b)| BanEntry {
                address: addr::display(net),
                all_ports: b.scope == Scope::AllPorts,
                expires_in_secs: b.expires_at_ns.map(|e| clock::remaining(e).as_secs()),
                line: b.line.to_owned(),
                ports_only: b.scope == Scope::PortsOnly,
                reason: b.reason.to_owned(),
            })
            .collect();
        (n, listed, n - nets.len())
    }

    /// fail2ban-client-like status: per jail, failures and bans.
    pub(super) fn status(&self, only: Option<&str>) -> Result<Status> {
        if let Some(name) = only {
            let pseudo = PSEUDO_JAILS.contains(&name);
            if !pseudo && !self.jails.iter().any(|j| j.name == name) {
                bail!(
                    "no jail named '{name}' (jails: {})",
                    self.jail_names().join(", ")
                );
            }
        }
        // The networks each jail bans; a status lists the first
        // `STATUS_BANS` of them by address, and counts the rest (a million
        // bans would be hundreds of MB of JSON, built on the loop).
        let mut by_jail: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();
        let bans: Box<dyn Iterator<Item = _>> = match only {
            Some(jail) => Box::new(self.bans.iter_jail(jail)),
            None => Box::new(self.bans.iter()),
        };
        for (net, b) in bans {
            by_jail.entry(b.jail).or_default().push(*net);
        }
        let mut jails = self.log_jails(only, &mut by_jail);
        jails.extend(self.pseudo_jails(only, &mut by_jail));
        let counters = self.bans.kernel().counters().ok();
        Ok(Status {
            bans: self.bans.len(),
            dry_run: self.config.dry_run,
            fleet: control::Fleet {
                redis: fleet::redis::report(),
                workers: fleet::workers_report(),
            },
            freeswitch: self.config.discovered.as_ref().map(discovered),
            jails,
            ports: self.config.protected_ports(),
            remote: self.remote_summary(),
            sip_budget_drops: counters.as_deref().map(sip_budget_drops),
            trust: self.trust_report(counters.as_deref()),
        })
    }

    /// The log jails' status (`only` one of them, if named), their bans
    /// taken from `by_jail`.
    fn log_jails(
        &self,
        only: Option<&str>,
        by_jail: &mut BTreeMap<&str, Vec<IpNet>>,
    ) -> Vec<JailStatus> {
        let now = now_ms();
        let mut jails = Vec::new();
        for j in &self.jails {
            if only.is_some_and(|n| n != j.name) {
                continue;
            }
            let (n, banned, more) = self.ban_list(by_jail.remove(j.name.as_str()));
            jails.push(JailStatus {
                actions: Actions {
                    banned,
                    banned_not_listed: more,
                    currently_banned: n,
                    refused_never_ban: None,
                    skipped_over_budget: None,
                    total_banned: self.bans.total_by_jail.get(&j.name).copied().unwrap_or(0),
                },
                filter: Some(control::Filter {
                    ambiguous: j.stats.ambiguous,
                    currently_failed: j.offenders.currently_failed(now),
                    files: j.files(),
                    ignored: j.stats.ignored_ip + j.stats.ignored_regex,
                    lines: j.stats.lines,
                    skewed: j.stats.skewed,
                    skipped_long_lines: j.skipped_long_lines(),
                    too_old: j.stats.too_old,
                    total_failed: j.stats.total_failed,
                }),
                name: j.name.clone(),
            });
        }
        jails
    }

    /// Bans that no log jail made: by hand, and by the XDP flood limiter
    /// and scanner check. Shown when asked for, or when they did anything.
    fn pseudo_jails(
        &self,
        only: Option<&str>,
        by_jail: &mut BTreeMap<&str, Vec<IpNet>>,
    ) -> Vec<JailStatus> {
        let mut jails = Vec::new();
        for name in PSEUDO_JAILS {
            if only.is_some_and(|n| n != name) {
                continue;
            }
            let (n, banned, more) = self.ban_list(by_jail.remove(name));
            let total = self.bans.total_by_jail.get(name).copied().unwrap_or(0);
            let quiet = total == 0
                && self.packet_bans.skipped(name) == 0
                && !self.refused.contains_key(name);
            if banned.is_empty() && quiet && only.is_none() {
                continue;
            }
            jails.push(JailStatus {
                actions: Actions {
                    banned,
                    banned_not_listed: more,
                    currently_banned: n,
                    refused_never_ban: Some(self.refused.get(name).copied().unwrap_or(0)),
                    skipped_over_budget: Some(self.packet_bans.skipped(name)),
                    total_banned: total,
                },
                filter: None,
                name: name.to_owned(),
            });
        }
        jails
    }

    /// One line for `systemctl status`: bans in force and what was dropped.
    pub(super) fn status_line(&self) -> String {
        let dropped: u64 = self
            .bans
            .kernel()
            .counters()
            .map(|c| {
                common::counter::DROPS
                    .iter()
                    .map(|&i| c[i as usize].packets)
                    .sum()
            })
            .unwrap_or(0);
        if self.config.dry_run {
            format!(
                "DRY RUN, dropping nothing; {} ban(s) recorded, {dropped} packet(s) would have been dropped",
                self.bans.len()
            )
        } else {
            format!(
                "protecting; {} ban(s) in force, {dropped} packet(s) dropped",
                self.bans.len()
            )
        }
    }

    pub(super) fn jail_names(&self) -> Vec<String> {
        self.jails.iter().map(|j| j.name.clone()).collect()
    }
}

/// FreeSWITCH's discovery as `status` shows it. JSON strings are UTF-8:
/// a path that is not is shown lossily.
fn discovered(d: &crate::freeswitch::Discovered) -> control::Freeswitch {
    let found = |f: &crate::freeswitch::Found<std::path::PathBuf>| control::Found {
        from: f.from.clone(),
        value: f.value.to_string_lossy().into_owned(),
    };
    control::Freeswitch {
        conf_dir: d.conf_dir.to_string_lossy().into_owned(),
        log: d.log.as_ref().map(found),
        ports: d
            .ports
            .iter()
            .map(|p| control::Found {
                from: p.from.clone(),
                value: p.value,
            })
            .collect(),
        trunks: d
            .trunks
            .iter()
            .map(|t| control::Trunk {
                addresses: t.addresses.clone(),
                from: t.from.clone(),
                gateway: t.gateway.clone(),
                host: t.host.clone(),
            })
            .collect(),
        warnings: d.warnings.clone(),
    }
}

/// `status`'s `sip_budget_drops`: the packets each budget dropped, named
/// as `top` names them (`invalid`, and the `[flood.methods]` classes).
fn sip_budget_drops(c: &[common::Counter]) -> BTreeMap<String, u64> {
    use common::{counter, method};
    let mut out = BTreeMap::from([(
        "invalid".to_owned(),
        c[counter::DROP_INVALID as usize].packets,
    )]);
    for (class, name) in method::NAMES.iter().enumerate() {
        let i = counter::DROP_METHOD as usize + class;
        out.insert((*name).to_owned(), c[i].packets);
    }
    out
}
