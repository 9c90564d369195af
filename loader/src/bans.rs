//! The ban manager (fail2ban's banmanager): every ban, whoever made it, with
//! its jail, reason and matched line, written to the kernel map at once and
//! kept across restarts.
//!
//! Restart rule: what the kernel map already holds stays untouched. A ban is
//! only written when it is missing (after a reboot wiped the pinned maps), so
//! a restart never unbans everything and bans it again.
use crate::{
    clock,
    maps::KernelMaps,
    state::{SavedBan, State},
};
use anyhow::Result;
use common::{BAN_ALL_PORTS, BAN_PORTS_ONLY};
use ipnet::IpNet;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

/// Which of the source's packets a ban drops, narrowest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Only packets to the protected ports, even in all-ports mode: bans on
    /// packet evidence, which a forged source address can earn.
    PortsOnly,
    /// The protected ports, or every port in global all-ports mode.
    #[default]
    Ports,
    /// Every packet (fail2ban's `iptables-allports`).
    AllPorts,
}

impl Scope {
    pub fn flags(self) -> u32 {
        match self {
            Scope::PortsOnly => BAN_PORTS_ONLY,
            Scope::Ports => 0,
            Scope::AllPorts => BAN_ALL_PORTS,
        }
    }

    pub fn from_flags(flags: u32) -> Self {
        if flags & BAN_ALL_PORTS != 0 {
            Scope::AllPorts
        } else if flags & BAN_PORTS_ONLY != 0 {
            Scope::PortsOnly
        } else {
            Scope::Ports
        }
    }

    fn from_saved(all_ports: bool, ports_only: bool) -> Self {
        match (all_ports, ports_only) {
            (true, _) => Scope::AllPorts,
            (false, true) => Scope::PortsOnly,
            (false, false) => Scope::Ports,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanInfo {
    pub jail: String,
    /// Unix ms.
    pub banned_at_ms: i64,
    /// Unix ms; `None` is permanent.
    pub expires_at_ms: Option<i64>,
    pub reason: String,
    pub line: String,
    pub scope: Scope,
}

/// What `restore` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Saved bans the kernel still had (left untouched).
    pub kept: usize,
    /// Saved bans missing from the kernel (after a reboot), written again.
    pub reinstated: usize,
    /// Kernel bans nobody had saved (e.g. `sipguard ban` while the daemon was
    /// stopped), now tracked as jail `manual`.
    pub adopted: usize,
    /// Saved bans that ran out while the daemon was down.
    pub expired: usize,
}

pub struct BanManager {
    maps: KernelMaps,
    bans: HashMap<IpNet, BanInfo>,
    counts: HashMap<IpNet, u32>,
    /// Bans made so far per jail (for `status`).
    pub total_by_jail: HashMap<String, u64>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl BanManager {
    pub fn new(maps: KernelMaps) -> Self {
        Self {
            maps,
            bans: HashMap::new(),
            counts: HashMap::new(),
            total_by_jail: HashMap::new(),
        }
    }

    pub fn maps(&mut self) -> &mut KernelMaps {
        &mut self.maps
    }

    pub fn restore(&mut self, state: &State) -> Result<Restored> {
        let now = now_ms();
        let mut report = Restored::default();
        self.bans.reserve(state.bans.len());
        let in_kernel: HashSet<IpNet> = self.maps.banned_nets()?.into_iter().collect();
        for saved in &state.bans {
            let Ok(net) = crate::addr::parse_net(&saved.net) else {
                tracing::warn!("state: skipping unreadable ban {:?}", saved.net);
                continue;
            };
            if saved.expires_at.is_some_and(|e| e <= now) {
                report.expired += 1;
                if in_kernel.contains(&net) {
                    self.maps.unban(net)?;
                }
                continue;
            }
            let info = BanInfo {
                jail: saved.jail.clone(),
                banned_at_ms: saved.banned_at,
                expires_at_ms: saved.expires_at,
                reason: saved.reason.clone(),
                line: saved.line.clone(),
                scope: Scope::from_saved(saved.all_ports, saved.ports_only),
            };
            if in_kernel.contains(&net) {
                report.kept += 1;
            } else {
                self.write_kernel(net, &info, now)?;
                report.reinstated += 1;
            }
            self.bans.insert(net, info);
        }
        let mono_now = clock::mono_now_ns();
        for net in in_kernel {
            if self.bans.contains_key(&net) {
                continue;
            }
            let Some(entry) = self.maps.ban_entry(net)? else {
                continue;
            };
            if entry.is_expired(mono_now) {
                // Ended while no daemon ran; the program already ignores it.
                self.maps.unban(net)?;
                continue;
            }
            let expires_at_ms = (entry.expires_at_ns != 0)
                .then(|| now + (entry.expires_at_ns.saturating_sub(mono_now) / 1_000_000) as i64);
            self.bans.insert(
                net,
                BanInfo {
                    jail: "manual".into(),
                    banned_at_ms: now
                        - (mono_now.saturating_sub(entry.banned_at_ns) / 1_000_000) as i64,
                    expires_at_ms,
                    reason: "found in the kernel map (banned while the daemon was not running)"
                        .into(),
                    line: String::new(),
                    scope: Scope::from_flags(entry.flags),
                },
            );
            report.adopted += 1;
        }
        for (net, n) in &state.ban_counts {
            if let Ok(net) = crate::addr::parse_net(net) {
                self.counts.insert(net, *n);
            }
        }
        Ok(report)
    }

    fn write_kernel(&mut self, net: IpNet, info: &BanInfo, now_ms: i64) -> Result<()> {
        let expires_ns = match info.expires_at_ms {
            None => 0,
            Some(at) => clock::mono_now_ns() + (at - now_ms).max(1) as u64 * 1_000_000,
        };
        self.maps
            .ban(net, expires_ns, info.scope.flags(), clock::mono_now_ns())
    }

    /// Bans `net` for `duration` (`None`: permanently). A ban already in force
    /// that lasts at least as long is left as it is; returns whether anything changed.
    pub fn ban(
        &mut self,
        net: IpNet,
        jail: &str,
        duration: Option<Duration>,
        reason: String,
        line: String,
        scope: Scope,
    ) -> Result<bool> {
        let now = now_ms();
        let expires_at_ms = duration.map(|d| now.saturating_add(duration_ms(d)));
        if let Some(current) = self.bans.get(&net) {
            let covers = match (current.expires_at_ms, expires_at_ms) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a >= b,
            };
            if covers && current.scope >= scope {
                return Ok(false);
            }
        }
        let info = BanInfo {
            jail: jail.to_owned(),
            banned_at_ms: now,
            expires_at_ms,
            reason,
            line,
            scope,
        };
        self.write_kernel(net, &info, now)?;
        self.bans.insert(net, info);
        *self.counts.entry(net).or_default() += 1;
        *self.total_by_jail.entry(jail.to_owned()).or_default() += 1;
        Ok(true)
    }

    pub fn unban(&mut self, net: IpNet) -> Result<bool> {
        let in_kernel = self.maps.unban(net)?;
        Ok(self.bans.remove(&net).is_some() || in_kernel)
    }

    /// Removes bans that have ended; returns them. Only the bans known here
    /// are looked at: walking a kernel trie of a million bans every second
    /// would keep the daemon busy (two system calls per entry). Every ban
    /// goes through this manager while the daemon runs; strays found in the
    /// kernel at start are adopted or, when expired, deleted by `restore`.
    pub fn sweep(&mut self) -> Result<Vec<(IpNet, BanInfo)>> {
        let now = now_ms();
        let ended: Vec<IpNet> = self
            .bans
            .iter()
            .filter(|(_, b)| b.expires_at_ms.is_some_and(|e| e <= now))
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::new();
        for net in ended {
            self.maps.unban(net)?;
            if let Some(info) = self.bans.remove(&net) {
                out.push((net, info));
            }
        }
        Ok(out)
    }

    pub fn get(&self, net: &IpNet) -> Option<&BanInfo> {
        self.bans.get(net)
    }

    pub fn is_banned(&self, net: &IpNet) -> bool {
        self.bans.contains_key(net)
    }

    /// How many times `net` was banned before.
    pub fn ban_count(&self, net: &IpNet) -> u32 {
        self.counts.get(net).copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &BanInfo)> {
        self.bans.iter()
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// The bans and ban counts, for the state file.
    pub fn save_into(&self, state: &mut State) {
        state.bans = self
            .bans
            .iter()
            .map(|(net, b)| SavedBan {
                net: net.to_string(),
                jail: b.jail.clone(),
                banned_at: b.banned_at_ms,
                expires_at: b.expires_at_ms,
                reason: b.reason.clone(),
                line: b.line.clone(),
                all_ports: b.scope == Scope::AllPorts,
                ports_only: b.scope == Scope::PortsOnly,
            })
            .collect();
        state.bans.sort_by(|a, b| a.net.cmp(&b.net));
        state.ban_counts = self
            .counts
            .iter()
            .map(|(n, c)| (n.to_string(), *c))
            .collect::<BTreeMap<_, _>>();
    }
}
