//! `sipguard run`: load and attach the program, follow the jails' logs, ban,
//! expire, persist, answer the control socket, and stop on SIGINT/SIGTERM
//! leaving the program attached (restarts have no gap; `sipguard detach`
//! removes it). SIGHUP (or `sipguard reload`) re-reads the configuration
//! without touching bans.
use crate::{
    addr,
    bans::background,
    bans::changes::{self, ChangeLog},
    bans::journal,
    bans::never_ban::{NeverBan, Sources, Vetted},
    bans::packet_bans::PacketBans,
    bans::state::{self, Position, State},
    bans::{
        caps::{self, Over},
        now_ms,
        remote::RemoteBan,
        BanManager, Scope,
    },
    config::{Config, StartAt},
    control::{self, Request, Response},
    duration,
    fleet::{self, Inbound, InboundTx, Outbound, Workers},
    freeswitch as discovery,
    kernel::clock,
    kernel::maps::KernelMaps,
    kernel::program::{self, AttachMode},
    logs::jail::{BanRequest, Jail},
    ops::metrics::{self, Metrics},
    ops::notify::{Event, Notifier},
    ops::readiness::Readiness,
};
use anyhow::{bail, Context as _, Result};
use common::{CONFIG_ALL_PORTS, CONFIG_DRY_RUN};
use ipnet::IpNet;
use serde_json::json;
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};
use tokio::signal::unix::{signal, SignalKind};

/// Logs are read as soon as inotify reports a change in their folders, and
/// at least this often (the safety net for missed events).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bans a jail's `status` lists (the rest are counted; `sipguard list`
/// has them all).
const STATUS_BANS: usize = 1000;
/// How often bans are expired and new files matched by globs picked up.
const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// Ban changes reach the state's change log within a tick (one line per
/// changed network, see `changes`); read positions, in their own small
/// file, at most this often (a crash re-reads at most this much log, and
/// lines older than findtime are never counted). Everything is written at exit. A ban made since the last
/// write is in the kernel map already, which a restart adopts (only a crash
/// followed by a reboot within a second loses one).
const POSITIONS_SAVE_INTERVAL: Duration = Duration::from_secs(5);
/// How often the never-ban set is read again (addresses, routes and
/// resolvers change under a running daemon: DHCP, failover, VRRP).
const NEVER_BAN_REFRESH: Duration = Duration::from_secs(10);
/// Networks logged per tick at most: a long remote list is logged over
/// several ticks, none of them holding the loop up for long.
const CHANGES_PER_TICK: usize = 10_000;
/// Change-log lines beyond the table's size before a snapshot replaces the
/// log (so a small table is not rewritten at every change either).
const CHANGELOG_MARGIN: usize = 50_000;
/// A snapshot written in the background that takes longer than this is
/// stopped and tried again (a million bans take about a second).
const SNAPSHOT_TIME_LIMIT: Duration = Duration::from_secs(600);
/// How often old ban counts are forgotten (a walk over all of them).
const COUNT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// The jail name of bans made by the XDP flood limiter.
pub const FLOOD_JAIL: &str = "sip-flood";
/// The jail name of bans of sources with a scanner's User-Agent.
pub const SCANNER_JAIL: &str = "sip-scanner";

/// Command-line settings that override the configuration file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub ifaces: Vec<String>,
    pub mode: Option<AttachMode>,
    pub ports: Option<Vec<u16>>,
    pub all_ports: bool,
    pub dry_run: bool,
    pub pin_dir: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub from_beginning: bool,
}

#[derive(Clone)]
pub struct RunOptions {
    pub config_path: PathBuf,
    pub explicit_config: bool,
    pub overrides: Overrides,
}

fn load_config(opts: &RunOptions) -> Result<Config> {
    let mut c = Config::load(&opts.config_path, opts.explicit_config)?;
    if !opts.config_path.exists() {
        tracing::info!(
            "no {}: using the built-in FreeSWITCH configuration",
            opts.config_path.display()
        );
    }
    let o = &opts.overrides;
    if !o.ifaces.is_empty() {
        c.interfaces = o.ifaces.clone();
    }
    if let Some(m) = o.mode {
        c.xdp_mode = m;
    }
    if let Some(p) = &o.ports {
        c.ports = Some(p.clone());
    }
    c.all_ports |= o.all_ports;
    c.dry_run |= o.dry_run;
    if let Some(p) = &o.pin_dir {
        c.pin_dir = p.clone();
    }
    if let Some(p) = &o.state_file {
        c.state_file = p.clone();
    }
    if let Some(p) = &o.socket {
        c.socket = p.clone();
    }
    if o.from_beginning {
        c.start = StartAt::Beginning;
    }
    discover_freeswitch(&mut c);
    Ok(c)
}

/// Reads FreeSWITCH's configuration (when there is one) for its ports,
/// trunks and log, and points jails on the default log at its real one.
fn discover_freeswitch(c: &mut Config) {
    let Some(dir) = discovery::conf_dir(c.freeswitch_conf.as_deref()) else {
        return;
    };
    let d = discovery::discover(&dir);
    for w in &d.warnings {
        tracing::warn!("FreeSWITCH discovery: {w}");
    }
    let ports = d.port_numbers();
    if c.ports.is_none() && !ports.is_empty() {
        tracing::info!(
            "FreeSWITCH ({}) listens on ports {}: protecting them",
            dir.display(),
            join_ports(&ports)
        );
    }
    for t in &d.trunks {
        for a in &t.addresses {
            tracing::info!(
                "never banned: {a}, FreeSWITCH gateway {} ({})",
                t.gateway,
                t.from
            );
        }
    }
    if let Some(log) = &d.log {
        let default = crate::config::DEFAULT_LOG;
        let real = log.value.display().to_string();
        for (name, jail) in &mut c.jails {
            for path in jail
                .logpath
                .iter_mut()
                .filter(|p| *p == default && real != default)
            {
                tracing::info!(
                    "[{name}] following {real} ({}) instead of {default}",
                    log.from
                );
                path.clone_from(&real);
            }
        }
    }
    c.discovered = Some(d);
}

/// Everything the running daemon knows.
pub struct Engine {
    config: Config,
    jails: Vec<Jail>,
    /// The `log_timezone` the jails were built with.
    jails_timezone: Option<crate::logs::filter::LogTz>,
    bans: BanManager,
    never_ban: NeverBan,
    last_never_ban: Instant,
    last_count_prune: Instant,
    packet_bans: PacketBans,
    /// Automatic bans the never-ban set refused, per jail.
    refused: HashMap<String, u64>,
    /// Read positions from the state file, for files not followed yet.
    positions: BTreeMap<String, Position>,
    /// The operator's allowlist (`sipguard allow`), kept in the state.
    operator_allowed: BTreeSet<IpNet>,
    /// Bans changed since the last save.
    dirty: bool,
    last_positions_save: Instant,
    saved_positions: BTreeMap<String, Position>,
    /// What the daemon counts for Prometheus as it happens.
    metrics: Metrics,
    /// Exec hooks and webhooks, told of bans and unbans off the loop.
    notifier: Notifier,
    /// CrowdSec, Redis, APIBAN: what they ask for arrives on `fleet_tx`'s
    /// channel; this box's own bans go out through them.
    workers: Workers,
    fleet_plan: fleet::Plan,
    fleet_tx: InboundTx,
    /// Where feeds have read up to (kept in the state).
    cursors: BTreeMap<String, String>,
    /// The engines' addresses, never banned (see `fleet::Plan::endpoints`).
    engine_addrs: Vec<std::net::IpAddr>,
    /// Ban changes between snapshots of the state (see `changes`).
    changelog: ChangeLog,
    /// The last snapshot failed: the next save is a snapshot again.
    snapshot_due: bool,
    /// The child writing a snapshot in the background, while one does.
    snapshot_writer: Option<background::Child>,
    ban_log: BanLog,
}

/// The daemon's log line per ban, up to `LOGGED_BANS_PER_SECOND`; past
/// that (a burst of thousands), the rest of the second's bans are counted
/// per jail and told in one line a jail when the second is over. Formatting
/// and writing a line took a third of the loop's time in a burst, and
/// journald drops most of them anyway (10 000 messages in 30 s by default);
/// every ban stays in `sipguard list`, `status`, the state and the metrics.
#[derive(Default)]
struct BanLog {
    this_second: u32,
    unlogged: BTreeMap<String, u64>,
}

const LOGGED_BANS_PER_SECOND: u32 = 100;

impl BanLog {
    /// Whether a ban of `jail` gets a line of its own.
    fn one_more(&mut self, jail: &str) -> bool {
        if self.this_second < LOGGED_BANS_PER_SECOND {
            self.this_second += 1;
            return true;
        }
        match self.unlogged.get_mut(jail) {
            Some(n) => *n += 1,
            None => {
                self.unlogged.insert(jail.to_owned(), 1);
            }
        }
        false
    }

    fn second_over(&mut self) {
        for (jail, n) in std::mem::take(&mut self.unlogged) {
            tracing::info!(
                "[{jail}] banned {n} more in the last second, not logged one by one (`sipguard list` has every ban)"
            );
        }
        self.this_second = 0;
    }
}

impl Engine {
    /// `opened`: the state, read as its bans are restored; `pinned`: the
    /// networks the pinned maps held, being read meanwhile.
    fn start(
        config: Config,
        maps: KernelMaps,
        mut opened: state::Opened,
        pinned: crate::bans::InKernel,
        fleet_tx: InboundTx,
    ) -> Result<Self> {
        let mut saved = std::mem::take(&mut opened.state);
        // What changed after the last snapshot, laid over the snapshot's
        // bans as they are read.
        let (replayed, mut over) = changes::read(&config.state_file, &mut saved)?;
        if replayed > 0 {
            tracing::info!("state: {replayed} change(s) replayed from the change log");
        }
        // Changes the operator made while no daemon ran are applied to the
        // saved state before it is restored, so none of them is undone.
        let mut journal = journal::lock(&config.state_file)?;
        let changes = journal.changes()?;
        if !changes.is_empty() {
            tracing::info!(
                "applying {} change(s) made with the CLI while the daemon was stopped",
                changes.len()
            );
            journal::apply_over(&mut saved, &mut over, &changes);
        }
        let operator_allowed = match &saved.allowed {
            Some(list) => list
                .iter()
                .filter_map(|n| crate::addr::parse_net(n).ok())
                .collect(),
            // A state from before the allowlist was kept: what the kernel
            // holds beyond the never-ban set is the operator's.
            None => {
                let protected = NeverBan::discover(
                    config.ignoreip.iter().map(|n| n.0),
                    [],
                    &Sources {
                        resolv_conf: &config.resolv_conf,
                        ..Sources::default()
                    },
                );
                let protected: BTreeSet<IpNet> = protected.nets().collect();
                maps.allowed()?
                    .into_iter()
                    .map(|a| a.net)
                    .filter(|n| !protected.contains(n))
                    .collect()
            }
        };
        let config_hooks = config.notify.hooks();
        let config_state_file = config.state_file.clone();
        let mut bans = BanManager::new(maps);
        let n = opened.bans_left();
        // One reader for both: the counts are taken once every ban is.
        let opened = std::cell::RefCell::new(opened);
        let counts = over.counts(std::iter::from_fn(|| opened.borrow_mut().next_count()));
        let saved_bans = over.bans(std::iter::from_fn(|| opened.borrow_mut().next_ban()));
        let r = bans.restore_from(&saved, (n, saved_bans), counts, pinned)?;
        let damaged = opened.borrow().damaged;
        tracing::info!(
            "bans restored: {} kept in the kernel, {} written again, {} adopted from the kernel, {} expired meanwhile",
            r.kept,
            r.reinstated,
            r.adopted,
            r.expired
        );
        if r.failed > 0 {
            tracing::error!(
                "{} saved ban(s) could not be written to the kernel (see above); the others are in force",
                r.failed
            );
        }
        let mut engine = Self {
            packet_bans: PacketBans::new(
                config.flood.max_bans_per_minute,
                config.flood.max_packet_bans,
            ),
            config,
            jails: Vec::new(),
            jails_timezone: None,
            bans,
            never_ban: NeverBan::default(),
            last_never_ban: Instant::now(),
            last_count_prune: Instant::now(),
            refused: HashMap::new(),
            positions: saved.positions,
            operator_allowed,
            dirty: true,
            last_positions_save: Instant::now(),
            saved_positions: BTreeMap::new(),
            metrics: Metrics::default(),
            notifier: Notifier::start(&config_hooks),
            workers: Workers::default(),
            fleet_plan: fleet::Plan::default(),
            fleet_tx,
            cursors: saved.cursors,
            engine_addrs: Vec::new(),
            changelog: ChangeLog::new(&config_state_file, replayed),
            snapshot_due: false,
            snapshot_writer: None,
            ban_log: BanLog::default(),
        };
        engine.apply_config(true)?;
        // What the journal changed, and what the restore found different
        // from the state (bans adopted from the kernel, bans ended), go to
        // the change log, not into a snapshot: a start costs the change, not
        // the table (a snapshot of a million bans is seconds). Once written,
        // the journal is emptied.
        for change in &changes {
            if let journal::Change::Ban { net, .. } | journal::Change::Unban { net } = change {
                if let Ok(net) = crate::addr::parse_net(net) {
                    engine.bans.mark_changed(net);
                }
            }
        }
        let logged = engine.append_changes(usize::MAX);
        engine.changelog.flush();
        if logged && !engine.changelog.take_failure() {
            journal.clear()?;
        } else {
            engine.snapshot_due = true;
        }
        // A state damaged part way was moved aside: what was restored goes
        // into a new one.
        engine.snapshot_due |= damaged;
        Ok(engine)
    }

    /// (Re)builds jails and pushes ports, mode and allowlist to the kernel.
    fn apply_config(&mut self, at_startup: bool) -> Result<()> {
        // A jail whose configuration did not change is kept as it is, with
        // its offenders, counters and open logs: a reload must not hand an
        // attacker a fresh count.
        let mut old: BTreeMap<String, Jail> = std::mem::take(&mut self.jails)
            .into_iter()
            .map(|j| (j.name.clone(), j))
            .collect();
        let same_timezone = self.jails_timezone == Some(self.config.log_timezone);
        let mut jails = Vec::new();
        for (name, jc) in self.config.jails.iter().filter(|(_, j)| j.enabled) {
            match old.remove(name) {
                Some(jail) if same_timezone && jail.config == *jc => jails.push(jail),
                _ => {
                    let mut jail =
                        Jail::new(name, jc, self.config.start, self.config.log_timezone)?;
                    jail.refresh_files(&self.positions, true);
                    jails.push(jail);
                }
            }
        }
        self.jails_timezone = Some(self.config.log_timezone);
        if !at_startup {
            tracing::info!("configuration reloaded: {} jail(s)", jails.len());
        }
        self.jails = jails;
        let ports = self.config.protected_ports();
        let maps = self.bans.maps();
        maps.set_ports(&ports)?;
        maps.set_config(kernel_config(&self.config))?;
        self.packet_bans.set_limits(
            self.config.flood.max_bans_per_minute,
            self.config.flood.max_packet_bans,
        );
        self.bans.remote_mut().set_caps(self.config.fleet.caps());
        let plan = fleet_plan(&self.config);
        // The engines' own addresses are never banned, before any of them
        // is heard.
        self.engine_addrs = plan.endpoints();
        self.refresh_never_ban()?;
        // An engine taken out of the configuration (also while the daemon
        // was stopped) takes its bans along, as a firewall bouncer removes
        // its set when it stops for good.
        let had = |configured: bool| at_startup || configured;
        let removed: Vec<&str> = [
            (
                "crowdsec",
                had(self.fleet_plan.crowdsec.is_some()) && plan.crowdsec.is_none(),
            ),
            (
                "redis:",
                had(self.fleet_plan.redis.is_some()) && plan.redis.is_none(),
            ),
            (
                "apiban",
                had(self.fleet_plan.apiban.is_some()) && plan.apiban.is_none(),
            ),
        ]
        .into_iter()
        .filter_map(|(o, gone)| gone.then_some(o))
        .collect();
        for prefix in removed {
            self.on_fleet(Inbound::OnlyOrigins {
                prefix: prefix.to_owned(),
                keep: Default::default(),
            });
        }
        if plan != self.fleet_plan || at_startup {
            // The old threads stop as their handles go; the new ones start
            // with a full resynchronisation.
            self.workers = Workers::default();
            self.workers = Workers::start(
                &plan,
                &self.fleet_tx,
                self.cursors.get(fleet::apiban::ORIGIN).cloned(),
            );
            self.fleet_plan = plan;
        }
        Ok(())
    }

    /// Reads the never-ban set again (with the operator's allowlist) and,
    /// when it changed, makes the XDP allowlist hold exactly it.
    fn refresh_never_ban(&mut self) -> Result<()> {
        let trunks = self
            .config
            .discovered
            .as_ref()
            .map(discovery::Discovered::trunk_addresses)
            .unwrap_or_default();
        let sources = Sources {
            resolv_conf: &self.config.resolv_conf,
            trunks: &trunks,
            engines: &self.engine_addrs,
            ..Sources::default()
        };
        let set = NeverBan::discover(
            self.config.ignoreip.iter().map(|n| n.0),
            self.operator_allowed.iter().copied(),
            &sources,
        );
        self.last_never_ban = Instant::now();
        if set == self.never_ban {
            return Ok(());
        }
        for (net, why) in set.entries() {
            if !self.never_ban.entries().iter().any(|(n, _)| n == net) {
                tracing::info!("never banned: {} ({why})", addr::display(net));
            }
        }
        self.never_ban = set;
        self.reconcile_allowlist()
    }

    /// The kernel allowlist becomes exactly the never-ban set: an entry no
    /// longer wanted (a network removed from `ignoreip`, an old gateway) is
    /// removed, also when a daemon before this one wrote it.
    fn reconcile_allowlist(&mut self) -> Result<()> {
        let wanted: BTreeSet<IpNet> = self.never_ban.nets().collect();
        let maps = self.bans.maps();
        let mut present = BTreeSet::new();
        for entry in maps.allowed()? {
            if wanted.contains(&entry.net) {
                present.insert(entry.net);
            } else {
                tracing::info!("no longer allow-listed: {}", addr::display(&entry.net));
                maps.disallow(entry.net)?;
            }
        }
        // Only what is missing: an entry in place keeps its hit counters.
        for net in wanted.difference(&present) {
            maps.allow(*net)?;
        }
        Ok(())
    }

    fn reload(&mut self, config: Config) -> Result<()> {
        if config.interfaces != self.config.interfaces || config.pin_dir != self.config.pin_dir {
            tracing::warn!(
                "reload: interfaces and pin_dir changes need a restart; keeping the current ones"
            );
        }
        // Keep reading each file where we are.
        for jail in &self.jails {
            self.positions.extend(jail.positions());
        }
        let (interfaces, pin_dir, socket) = (
            self.config.interfaces.clone(),
            self.config.pin_dir.clone(),
            self.config.socket.clone(),
        );
        if config.notify != self.config.notify {
            // The old dispatcher sends what it holds and ends.
            self.notifier = Notifier::start(&config.notify.hooks());
        }
        self.config = Config {
            interfaces,
            pin_dir,
            socket,
            ..config
        };
        self.apply_config(false)
    }

    /// Reads the logs and bans what they call for; true when a log has
    /// more to read than one poll takes (the loop comes back at once).
    fn poll_logs(&mut self) -> bool {
        let read_at = Instant::now();
        let now = now_ms();
        let mut requests = Vec::new();
        for jail in &mut self.jails {
            let bans = &self.bans;
            requests.extend(jail.poll(
                &self.never_ban,
                &|n| bans.is_banned(n),
                &|n| bans.ban_count(n),
                now,
            ));
        }
        for r in requests {
            let Some(r) = self.vet(r) else {
                continue;
            };
            let net = r.net;
            if self.enforce(r, "log") {
                self.metrics.ban_latency(read_at.elapsed());
                // Proven by the log: no longer a ban on packet evidence.
                self.packet_bans.forget(&net);
            }
        }
        self.jails.iter().any(|j| j.behind())
    }

    /// An automatic ban, checked against the never-ban set: as asked,
    /// narrowed to the offender's address, or refused (logged and counted).
    fn vet(&mut self, mut r: BanRequest) -> Option<BanRequest> {
        match self.never_ban.vet(r.net, r.host) {
            Vetted::Ban(_) => Some(r),
            Vetted::Narrowed {
                net,
                protected,
                why,
            } => {
                tracing::warn!(
                    "[{}] narrowed the ban of {} to {}: it would cover {} ({why})",
                    r.jail,
                    addr::display(&r.net),
                    addr::display(&net),
                    addr::display(&protected)
                );
                r.net = net;
                Some(r)
            }
            Vetted::Refused { protected, why } => {
                tracing::warn!(
                    "[{}] refused to ban {}: it lies in {} ({why}), which is never banned",
                    r.jail,
                    addr::display(&r.net),
                    addr::display(&protected)
                );
                *self.refused.entry(r.jail).or_default() += 1;
                None
            }
        }
    }

    /// A source the XDP program reported: for flooding, or for a scanner's
    /// User-Agent. Its packets are dropped in XDP whatever happens here; a
    /// ban on this evidence (a source address anyone can forge) is vetted
    /// against the never-ban set, within the jail's budget, scoped to the
    /// protected ports, and never takes the room of other bans.
    fn on_flood(&mut self, event: &common::FloodEvent) {
        let flood = &self.config.flood;
        let (jail, bantime, reason, cause) = if event.kind == common::EVENT_SCANNER {
            if !flood.scanner_bans {
                return;
            }
            (
                SCANNER_JAIL,
                flood.scanner_bantime,
                "a SIP scanner's User-Agent".to_owned(),
                "scanner",
            )
        } else {
            (
                FLOOD_JAIL,
                flood.bantime,
                format!(
                    "over {} packets/s during {} s ({} packets dropped by the limiter)",
                    flood.rate,
                    event.over_secs,
                    // Summed over CPUs; the event carries its CPU's alone.
                    self.bans
                        .maps()
                        .limited(&event.key)
                        .unwrap_or(event.limited)
                        .max(event.limited)
                ),
                "flood",
            )
        };
        let request = BanRequest {
            net: crate::kernel::maps::rate_key_net(&event.key),
            host: crate::kernel::maps::event_source(event).addr(),
            jail: jail.to_owned(),
            duration: bantime,
            reason,
            line: String::new(),
            scope: Scope::PortsOnly,
        };
        let Some(request) = self.vet(request) else {
            return;
        };
        if self.bans.is_banned(&request.net) || !self.packet_bans.admit(jail, Instant::now()) {
            return;
        }
        if let Some(oldest) = self.packet_bans.make_room() {
            let jail_of_oldest = self.bans.jail_of(&oldest);
            match self.bans.unban(oldest) {
                Ok(_) => {
                    tracing::info!(
                        "lifted the oldest packet ban, {}, to make room ({} packet bans at most)",
                        addr::display(&oldest),
                        self.config.flood.max_packet_bans
                    );
                    self.on_unban(oldest, jail_of_oldest.as_deref().unwrap_or(jail), "evicted");
                }
                Err(e) => tracing::warn!("cannot lift {}: {e:#}", addr::display(&oldest)),
            }
            self.dirty = true;
        }
        let net = request.net;
        if self.enforce(request, cause) {
            self.packet_bans.record(net);
        }
    }

    /// A trace whose tracer is gone (SIGKILL, a lost session) or whose
    /// lease ran out is turned off now, not only at its deadline.
    fn end_orphan_trace(&mut self) {
        match crate::kernel::trace_lease::end_orphan(&self.config.pin_dir) {
            Ok(Some(pid)) => {
                tracing::info!(
                    "trace by process {pid} turned off: the process is gone or its lease ran out"
                )
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("trace switch: {e:#}"),
        }
    }

    fn tick(&mut self) {
        self.ban_log.second_over();
        self.end_orphan_trace();
        match self.bans.sweep() {
            Ok(ended) => {
                for (net, jail) in &ended {
                    tracing::info!("[{jail}] ban of {} ended", addr::display(net));
                    self.packet_bans.forget(net);
                    self.on_unban(*net, jail, "expired");
                }
                self.dirty |= !ended.is_empty();
            }
            Err(e) => tracing::warn!("expiring bans failed: {e:#}"),
        }
        match self.bans.sweep_remote() {
            Ok(ended) => {
                for (_, origin) in &ended {
                    self.remote_unbanned(origin, "expired");
                }
                self.dirty |= !ended.is_empty();
            }
            Err(e) => tracing::warn!("expiring remote bans failed: {e:#}"),
        }
        if self.last_count_prune.elapsed() >= COUNT_PRUNE_INTERVAL {
            self.last_count_prune = Instant::now();
            let forgotten = self
                .bans
                .prune_counts(clock::mono_now_ns(), crate::bans::BAN_COUNT_MEMORY);
            self.dirty |= forgotten > 0;
        }
        if self.last_never_ban.elapsed() >= NEVER_BAN_REFRESH {
            if let Err(e) = self.refresh_never_ban() {
                tracing::warn!("updating the never-ban set failed: {e:#}");
            }
        }
        let now = now_ms();
        for jail in &mut self.jails {
            jail.refresh_files(&self.positions, false);
            jail.offenders.prune(now);
        }
        let positions_due = self.last_positions_save.elapsed() >= POSITIONS_SAVE_INTERVAL
            && self.current_positions() != self.saved_positions;
        self.reap_snapshot();
        if self.dirty || self.snapshot_wanted() {
            self.log_changes();
        }
        if positions_due {
            self.save_positions();
        }
    }

    fn current_positions(&self) -> BTreeMap<String, Position> {
        let mut positions = self.positions.clone();
        for jail in &self.jails {
            positions.extend(jail.positions());
        }
        positions
    }

    /// Read positions alone, into their own small file.
    fn save_positions(&mut self) {
        let positions = self.current_positions();
        match state::save_positions(&self.config.state_file, &positions) {
            Ok(()) => {
                self.last_positions_save = Instant::now();
                self.saved_positions = positions;
            }
            Err(e) => tracing::error!("saving read positions failed: {e:#}"),
        }
    }

    /// Everything of the state but its bans and counts.
    fn snapshot_header(&self) -> State {
        State {
            version: state::VERSION,
            cursors: self.cursors.clone(),
            allowed: Some(
                self.operator_allowed
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A snapshot written by a forked child while the loop goes on (see
    /// `background`); written here, on the loop, when the child cannot be
    /// made.
    fn start_snapshot(&mut self) {
        // The log holds every change up to now (the writer thread writes
        // it in order), and the snapshot covers exactly that log: it
        // becomes the older log, and later changes start a new one.
        if !self.append_changes(usize::MAX) || self.changelog.rotate().is_err() {
            return self.save_bans();
        }
        let header = self.snapshot_header();
        let (bans, path) = (&mut self.bans, &self.config.state_file);
        match background::spawn(|| {
            state::write_atomically(path, |out| bans.write_snapshot(out, &header))
        }) {
            Ok(child) => {
                self.snapshot_writer = Some(child);
                self.snapshot_due = false;
                // The log took every change above: none is left to write.
                self.dirty = false;
            }
            Err(e) => {
                tracing::warn!("{e:#}: writing the state on the loop instead");
                self.save_bans();
            }
        }
    }

    /// Takes in the background snapshot's outcome, once it has one.
    fn reap_snapshot(&mut self) {
        let Some(child) = &mut self.snapshot_writer else {
            return;
        };
        let Some(done) = child.poll(SNAPSHOT_TIME_LIMIT) else {
            return;
        };
        let paused = child.paused;
        self.snapshot_writer = None;
        match done {
            Ok(took) => {
                tracing::info!(
                    "state written in the background in {} ms (the loop paused {:.1} ms to start it)",
                    took.as_millis(),
                    paused.as_secs_f64() * 1e3
                );
                if let Err(e) = self.changelog.drop_older() {
                    tracing::error!("removing the older change log failed: {e:#}");
                }
            }
            Err(e) => {
                // Both logs stay: what they hold is safe, the next tick tries again.
                tracing::error!("saving state failed: {e:#}");
                self.snapshot_due = true;
                self.dirty = true;
            }
        }
    }

    /// Bans and ban counts, written on the loop (at stop, or when no child
    /// can be made); read positions go to their own file.
    fn save_bans(&mut self) {
        // A snapshot being written in the background is of an older table.
        if let Some(child) = self.snapshot_writer.take() {
            child.kill();
        }
        // The log first holds every change up to now, written: a crash
        // between the snapshot and the log's removal then replays lines
        // that say what the snapshot says.
        self.append_changes(usize::MAX);
        self.changelog.flush();
        let header = self.snapshot_header();
        let bans = &mut self.bans;
        match state::write_atomically(&self.config.state_file, |out| {
            bans.write_snapshot(out, &header)
        }) {
            Ok(()) => {
                // The log took every change above: none is left to write.
                self.dirty = false;
                self.snapshot_due = false;
                if let Err(e) = self.changelog.clear() {
                    tracing::error!("emptying the change log failed: {e:#}");
                }
            }
            Err(e) => {
                tracing::error!("saving state failed: {e:#}");
                self.snapshot_due = true;
            }
        }
        // The sorted index and the records made for writing are gone: give
        // their memory back.
        release_freed_memory();
    }

    /// The tick's ban changes, appended to the change log: the cost of
    /// what changed, not of the table. Once the log is as long as the table
    /// (plus a margin), a snapshot replaces both.
    fn log_changes(&mut self) {
        if self.changelog.take_failure() {
            self.snapshot_due = true;
        }
        if self.snapshot_wanted() {
            return self.start_snapshot();
        }
        if self.append_changes(CHANGES_PER_TICK) && !self.bans.has_changes() {
            self.dirty = false;
        }
    }

    /// A snapshot is due (the last one failed, or the log outgrew the
    /// table) and none is being written: while one is, changes go on into
    /// the new log.
    fn snapshot_wanted(&self) -> bool {
        self.snapshot_writer.is_none()
            && (self.snapshot_due || self.changelog.lines > CHANGELOG_MARGIN + self.bans.len())
    }

    /// Hands what changed to the change log's writer; false (and a
    /// snapshot due) when it cannot take them.
    fn append_changes(&mut self, limit: usize) -> bool {
        let clock = clock::System;
        let mut lines = vec![changes::Change::Clock {
            boot_id: crate::kernel::clock::Clock::boot_id(&clock),
            saved_at: crate::kernel::clock::Clock::wall_ms(&clock),
        }];
        lines.extend(self.bans.take_changes(limit));
        lines.push(changes::Change::Meta {
            allowed: self
                .operator_allowed
                .iter()
                .map(|n| n.to_string())
                .collect(),
            cursors: self.cursors.clone(),
        });
        match self.changelog.append(&lines) {
            Ok(()) => true,
            Err(e) => {
                // What was taken is not in the log: a snapshot next.
                tracing::error!(
                    "appending to the change log failed: {e:#}; writing a snapshot next"
                );
                self.snapshot_due = true;
                false
            }
        }
    }

    /// Everything, at exit.
    fn save(&mut self) {
        self.save_bans();
        // The log's removal done before the process ends.
        self.changelog.flush();
        self.save_positions();
    }

    fn handle(&mut self, req: Request) -> Result<serde_json::Value> {
        match req {
            Request::Status { jail } => self.status(jail.as_deref()),
            Request::Ban {
                net,
                duration,
                all_ports,
            } => {
                let net = addr::parse_ban_net(&net)?;
                let bantime = duration::parse_bantime(&duration)?;
                self.bans.unban(net)?; // a manual ban replaces whatever was there
                self.packet_bans.forget(&net);
                let r = BanRequest {
                    net,
                    host: net.addr(),
                    jail: "manual".into(),
                    duration: bantime,
                    reason: "banned by hand".into(),
                    line: String::new(),
                    scope: if all_ports {
                        Scope::AllPorts
                    } else {
                        Scope::Ports
                    },
                };
                self.bans
                    .ban(net, &r.jail, bantime, &r.reason, &r.line, r.scope)?;
                self.on_ban(&r, "manual");
                for jail in &mut self.jails {
                    jail.offenders.forget(&net);
                }
                self.dirty = true;
                Ok(json!({ "banned": addr::display(&net) }))
            }
            Request::Unban { net, fleet } => {
                let net = addr::parse_net(&net)?;
                if fleet && !self.workers.publishes() {
                    bail!("`unban --fleet` needs a fleet: configure [redis]");
                }
                self.packet_bans.forget(&net);
                let jail = self.bans.jail_of(&net);
                // The operator's unban lifts every origin's ban on this box.
                let (any, origins) = self.bans.unban_all(net)?;
                if !any && !fleet {
                    bail!("{} is not banned (unban takes the exact address or network that was banned)", addr::display(&net));
                }
                for jail in &mut self.jails {
                    jail.offenders.forget(&net);
                }
                if any {
                    self.on_unban(net, jail.as_deref().unwrap_or("manual"), "operator");
                }
                for origin in &origins {
                    tracing::info!(
                        "unbanned {} (also lifted: {}'s ban)",
                        addr::display(&net),
                        crate::text::escape(origin)
                    );
                    self.remote_unbanned(origin, "operator");
                }
                self.workers.publish(&Outbound::Unban { net, fleet });
                self.dirty = true;
                Ok(json!({ "unbanned": addr::display(&net), "origins": origins, "fleet": fleet }))
            }
            Request::Allow { net } => {
                let net = addr::parse_net(&net)?;
                self.operator_allowed.insert(net);
                self.dirty = true;
                self.refresh_never_ban()?;
                Ok(json!({ "allowed": addr::display(&net) }))
            }
            Request::Disallow { net } => {
                let net = addr::parse_net(&net)?;
                if !self.operator_allowed.remove(&net) {
                    if let Some((_, why)) = self.never_ban.entries().iter().find(|(n, _)| *n == net)
                    {
                        bail!(
                            "{} is not yours to remove: it is never banned as {why}",
                            addr::display(&net)
                        );
                    }
                    bail!("{} is not in the allowlist", addr::display(&net));
                }
                self.dirty = true;
                self.refresh_never_ban()?;
                Ok(json!({ "disallowed": addr::display(&net) }))
            }
            Request::Notes { offset, limit } => {
                // This box's own bans, then the networks only other
                // origins ban (named by their origin).
                let local = self
                    .bans
                    .iter()
                    .map(|(net, b)| json!([addr::display(net), b.jail, b.reason]));
                let remote = self
                    .bans
                    .remote()
                    .iter()
                    .filter(|(net, _)| self.bans.get(net).is_none())
                    .map(|(net, b)| json!([addr::display(net), b.origin, b.reason]));
                let notes: Vec<serde_json::Value> = local
                    .chain(remote)
                    .skip(offset)
                    .take(limit.min(100_000))
                    .collect();
                Ok(json!({ "notes": notes }))
            }
            Request::Reload => unreachable!("handled by the socket handler, which has the options"),
        }
    }

    /// A jail's bans for `status`: how many, the first `STATUS_BANS` by
    /// address, and how many are not listed.
    fn ban_list(&self, nets: Option<Vec<IpNet>>) -> (usize, Vec<serde_json::Value>, usize) {
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
            .map(|(net, b)| {
                json!({
                    "address": addr::display(net),
                    "expires_in_secs": b.expires_at_ns.map(|e| clock::remaining(e).as_secs()),
                    "reason": b.reason,
                    "line": b.line,
                    "all_ports": b.scope == Scope::AllPorts,
                    "ports_only": b.scope == Scope::PortsOnly,
                })
            })
            .collect();
        (n, listed, n - nets.len())
    }

    /// fail2ban-client-like status: per jail, failures and bans.
    fn status(&self, only: Option<&str>) -> Result<serde_json::Value> {
        if let Some(name) = only {
            let pseudo = ["manual", FLOOD_JAIL, SCANNER_JAIL].contains(&name);
            if !pseudo && !self.jails.iter().any(|j| j.name == name) {
                bail!(
                    "no jail named '{name}' (jails: {})",
                    self.jail_names().join(", ")
                );
            }
        }
        let now = now_ms();
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
        let mut jails = Vec::new();
        for j in &self.jails {
            if only.is_some_and(|n| n != j.name) {
                continue;
            }
            let (n, banned, more) = self.ban_list(by_jail.remove(j.name.as_str()));
            jails.push(json!({
                "name": j.name,
                "filter": {
                    "currently_failed": j.offenders.currently_failed(now),
                    "total_failed": j.stats.total_failed,
                    "files": j.files(),
                    "lines": j.stats.lines,
                    "ignored": j.stats.ignored_ip + j.stats.ignored_regex,
                    "too_old": j.stats.too_old,
                    "skewed": j.stats.skewed,
                    "ambiguous": j.stats.ambiguous,
                    "skipped_long_lines": j.skipped_long_lines(),
                },
                "actions": {
                    "currently_banned": n,
                    "total_banned": self.bans.total_by_jail.get(&j.name).copied().unwrap_or(0),
                    "banned": banned,
                    "banned_not_listed": more,
                },
            }));
        }
        // Bans that no log jail made: by hand, and by the XDP flood limiter.
        for name in ["manual", FLOOD_JAIL, SCANNER_JAIL] {
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
            jails.push(json!({
                "name": name,
                "filter": null,
                "actions": {
                    "currently_banned": n,
                    "total_banned": total,
                    "skipped_over_budget": self.packet_bans.skipped(name),
                    "refused_never_ban": self.refused.get(name).copied().unwrap_or(0),
                    "banned": banned,
                    "banned_not_listed": more,
                },
            }));
        }
        Ok(json!({
            "jails": jails,
            "bans": self.bans.len(),
            "dry_run": self.config.dry_run,
            "ports": self.config.protected_ports(),
            "freeswitch": self.config.discovered,
            "remote": self.remote_summary(),
            "fleet": { "redis": fleet::redis::report(), "workers": fleet::workers_report() },
        }))
    }

    /// Writes a ban a jail or the XDP program asked for (`cause`: log,
    /// flood, scanner), and logs it; true when written. A ban already in
    /// force that lasts as long is left alone (nothing to log).
    fn enforce(&mut self, r: BanRequest, cause: &str) -> bool {
        match self
            .bans
            .ban(r.net, &r.jail, r.duration, &r.reason, &r.line, r.scope)
        {
            Ok(true) => {
                self.dirty = true;
                if self.ban_log.one_more(&r.jail) {
                    let how = r.duration.map_or("permanently".to_owned(), |d| {
                        format!("for {}", clock::human(d))
                    });
                    // Jail (an engine's origin) and reason may come from outside.
                    tracing::info!(
                        "[{}] banned {} {how}: {}",
                        crate::text::escape(&r.jail),
                        addr::display(&r.net),
                        crate::text::escape(&r.reason)
                    );
                }
                self.on_ban(&r, cause);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!("[{}] cannot ban {}: {e:#}", r.jail, addr::display(&r.net));
                false
            }
        }
    }

    /// Every ban written, whatever made it: counted and announced.
    fn on_ban(&mut self, r: &BanRequest, cause: &str) {
        self.metrics.banned(&r.jail, cause);
        self.notifier.send(|| {
            Event::new(
                "ban",
                r.net,
                &r.jail,
                cause,
                &r.reason,
                Some(r.duration),
                &r.line,
            )
        });
        if !self.exported(&r.jail, cause) {
            return;
        }
        self.workers.publish(&Outbound::Ban {
            net: r.net,
            jail: r.jail.clone(),
            cause: cause.to_owned(),
            left: r.duration,
            reason: r.reason.clone(),
            scope: r.scope,
        });
    }

    /// Whether a ban leaves this box for the fleet. A ban on packet
    /// evidence (a flood, a scanner's packet: a source address anyone can
    /// forge) stays here unless its jail says `export = true`, and then it
    /// leaves as what it is (`PortsOnly`, its own short duration). Log jails
    /// export unless `export = false`; manual bans go as the operator made
    /// them (the engines decide whether they take manual bans).
    fn exported(&self, jail: &str, cause: &str) -> bool {
        match cause {
            "flood" => self.config.flood.export,
            "scanner" => self.config.flood.scanner_export,
            "log" => self.config.jails.get(jail).is_none_or(|j| j.export),
            _ => true,
        }
    }

    /// Every ban lifted: expired, by the operator, evicted to make room.
    fn on_unban(&mut self, net: IpNet, jail: &str, cause: &str) {
        self.metrics.unbanned(jail, cause);
        self.notifier
            .send(|| Event::new("unban", net, jail, cause, "", None, ""));
    }

    /// What an engine (CrowdSec, the Redis fleet, APIBAN) says. The
    /// never-ban set wins over every origin; each origin's record is its
    /// own, so its expiry or deletion leaves every other ban of the network.
    fn on_fleet(&mut self, msg: Inbound) {
        match msg {
            Inbound::Bans { origin, bans } => {
                // Refusals (never-ban set, `[fleet]` caps) are counted and
                // logged once a minute per origin, not once per entry.
                let label = self.bans.remote_mut().label(&origin);
                for d in bans {
                    if let Some((protected, why)) = self.never_ban.covering(&d.net) {
                        let detail =
                            format!(" ({} is never banned: {why})", addr::display(&protected));
                        self.bans
                            .remote_mut()
                            .refuse(&origin, &d.net, Over::NeverBan, &detail);
                        continue;
                    }
                    let ban = RemoteBan {
                        origin: origin.clone(),
                        expires_at_ns: d.left.map(clock::deadline_ns),
                        scope: d.scope,
                        reason: d.reason,
                    };
                    match self.bans.remote_ban(d.net, ban) {
                        Ok(true) => {
                            self.dirty = true;
                            self.metrics.banned(&label, origin_kind(&origin));
                        }
                        Ok(false) => {}
                        Err(e) => tracing::error!(
                            "[{}] cannot ban {}: {e:#}",
                            crate::text::escape(&origin),
                            addr::display(&d.net)
                        ),
                    }
                }
            }
            Inbound::Unbans { origin, nets } => {
                for net in nets {
                    match self.bans.remote_unban(net, &origin) {
                        Ok(true) => {
                            self.dirty = true;
                            self.remote_unbanned(&origin, "deleted");
                        }
                        Ok(false) => {}
                        Err(e) => tracing::error!(
                            "[{}] cannot unban {}: {e:#}",
                            crate::text::escape(&origin),
                            addr::display(&net)
                        ),
                    }
                }
            }
            Inbound::Complete { origin, nets } => self.retain_origin(&origin, &nets),
            Inbound::OnlyOrigins { prefix, keep } => {
                let gone: BTreeSet<String> = self
                    .bans
                    .remote()
                    .iter()
                    .map(|(_, b)| b.origin.to_owned())
                    .filter(|o| o.starts_with(&prefix) && !keep.contains(o))
                    .collect();
                for origin in gone {
                    self.retain_origin(&origin, &Default::default());
                }
            }
            Inbound::FleetUnban { net, node } => match self.bans.unban_all(net) {
                Ok((true, _)) => {
                    tracing::info!(
                        "unbanned {} on every box, as the operator of {} asked",
                        addr::display(&net),
                        crate::text::escape(&node)
                    );
                    self.packet_bans.forget(&net);
                    for jail in &mut self.jails {
                        jail.offenders.forget(&net);
                    }
                    self.remote_unbanned(&format!("redis:{node}"), "fleet");
                    self.dirty = true;
                    // This box's own entry leaves the fleet's list too, or a
                    // member reconnecting would take the ban again.
                    self.workers.publish(&Outbound::Unban { net, fleet: false });
                }
                Ok((false, _)) => {}
                Err(e) => tracing::error!("fleet unban of {}: {e:#}", addr::display(&net)),
            },
            Inbound::Cursor { feed, value } => {
                self.cursors.insert(feed, value);
                self.dirty = true;
            }
        }
    }

    /// `origin`'s complete list is `keep`: its other bans are lifted.
    fn retain_origin(&mut self, origin: &str, keep: &std::collections::HashSet<IpNet>) {
        match self.bans.remote_retain(origin, keep) {
            Ok(gone) => {
                if !gone.is_empty() {
                    tracing::info!(
                        "[{}] {} ban(s) no longer in its list, lifted",
                        crate::text::escape(origin),
                        gone.len()
                    );
                    self.dirty = true;
                }
                for _ in &gone {
                    self.remote_unbanned(origin, "deleted");
                }
            }
            Err(e) => tracing::error!("[{}] resynchronising: {e:#}", crate::text::escape(origin)),
        }
    }

    /// A remote ban lifted, counted under its origin's bounded label (a
    /// shared Redis can name thousands of nodes).
    fn remote_unbanned(&mut self, origin: &str, cause: &str) {
        let label = self.bans.remote_mut().label(origin);
        self.metrics.unbanned(&label, cause);
    }

    /// What Prometheus reads beyond the live counters.
    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let maps = self.bans.kernel();
        let verdicts = maps
            .counters()
            .map(|c| {
                c.iter()
                    .zip(common::counter::NAMES)
                    .map(|(c, name)| (name, c.packets, c.bytes))
                    .collect()
            })
            .unwrap_or_default();
        // Kept counted as bans change: jails and origins, not bans.
        let mut by_jail: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for (jail, family, n) in self.bans.counts_by_jail() {
            *by_jail.entry((jail.to_owned(), family)).or_default() += n;
        }
        // Bans from elsewhere, under their origin: the largest few, the
        // rest as `other` (anyone writing to a shared Redis names nodes).
        let remote = self.bans.remote();
        let tallies = remote.tallies().map(|(o, t)| (o, *t)).collect();
        for (origin, t) in caps::top(tallies, caps::METRIC_ORIGINS, |t| t.total()) {
            for (f, family) in crate::bans::FAMILIES.iter().enumerate() {
                if t.bans[f] > 0 {
                    *by_jail.entry((origin.clone(), family)).or_default() += t.bans[f];
                }
            }
        }
        let refused = |pick: fn(&caps::Refusals) -> u64| {
            let all = remote.refused().iter().map(|(o, r)| (o, pick(r))).collect();
            caps::top(all, caps::METRIC_ORIGINS, |n| *n)
                .into_iter()
                .filter(|(_, n)| *n > 0)
        };
        let never_ban: Vec<(String, u64)> = refused(|r| r.never_ban).collect();
        let over_cap: Vec<(String, u64)> = refused(|r| r.over_cap).collect();
        let family_total = |f: &str| {
            by_jail
                .iter()
                .filter(|((_, g), _)| *g == f)
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        let allowed_v4 = self.never_ban.nets().filter(|n| n.addr().is_ipv4()).count() as u64;
        let allowed_v6 = self.never_ban.nets().count() as u64 - allowed_v4;
        let mut log_lines = Vec::new();
        for j in &self.jails {
            let s = &j.stats;
            for (result, n) in [
                ("read", s.lines),
                ("matched", s.total_failed),
                ("ignored", s.ignored_ip + s.ignored_regex),
                ("too_old", s.too_old),
                ("skewed", s.skewed),
                ("ambiguous", s.ambiguous),
                ("too_long", j.skipped_long_lines()),
            ] {
                log_lines.push((j.name.clone(), result, n));
            }
        }
        metrics::Snapshot {
            verdicts,
            maps: vec![
                (
                    "banned_v4",
                    family_total("ipv4"),
                    u64::from(common::MAX_BANS),
                ),
                (
                    "banned_v6",
                    family_total("ipv6"),
                    u64::from(common::MAX_BANS),
                ),
                ("allowed_v4", allowed_v4, u64::from(common::MAX_ALLOWED)),
                ("allowed_v6", allowed_v6, u64::from(common::MAX_ALLOWED)),
            ],
            bans: by_jail
                .into_iter()
                .map(|((jail, family), n)| (jail, family, n))
                .collect(),
            log_lines,
            lost_reports: maps.lost_reports().unwrap_or(0),
            refused: self
                .refused
                .iter()
                .map(|(j, n)| (j.clone(), *n))
                .chain(never_ban)
                .collect(),
            over_cap,
            dry_run: self.config.dry_run,
            notifications_dropped: self.notifier.dropped,
            fleet_rejected: fleet::redis::rejected(),
            worker_restarts: fleet::restarts(),
        }
    }

    /// Bans from elsewhere, by origin (the largest `caps::STATUS_ORIGINS`, the
    /// rest as `other`), with the address space they hold and what was
    /// refused: never-ban set, caps. Kept counted: O(origins).
    fn remote_summary(&self) -> serde_json::Value {
        self.bans
            .remote()
            .summary(caps::STATUS_ORIGINS)
            .into_iter()
            .map(|(o, s)| {
                let v = json!({
                    "bans": s.held.total(),
                    "ipv4_addresses": s.held.space[0],
                    "ipv6_64s": s.held.space[1],
                    "refused_never_ban": s.never_ban,
                    "over_cap": s.over_cap,
                });
                (crate::text::escape(&o).into_owned(), v)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// One line for `systemctl status`: bans in force and what was dropped.
    fn status_line(&self) -> String {
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

    fn jail_names(&self) -> Vec<String> {
        self.jails.iter().map(|j| j.name.clone()).collect()
    }
}

/// `sipguard run`: load, attach, serve until a signal, shut down. The
/// service manager hears `READY=1` once the program is attached and the
/// saved bans are in force, not before.
pub async fn run(opts: RunOptions, mut readiness: Readiness) -> Result<()> {
    large_blocks_go_back();
    let loaded = load(&opts)?;
    // What CrowdSec, the Redis fleet and APIBAN say; bounded, so an engine
    // with a huge list waits for the loop instead of filling memory.
    let (fleet_tx, fleet_rx) = tokio::sync::mpsc::channel(64);
    let Loaded {
        ebpf,
        ifaces,
        listener,
        watch,
        flood_events,
        engine,
    } = attach(loaded, fleet_tx)?;
    // Bound before READY=1: a scrape right after start finds it.
    let metrics_listener = bind_metrics(&engine.config.metrics);
    readiness.ready(&engine.status_line());
    let engine = Rc::new(RefCell::new(engine));
    let readiness = Rc::new(RefCell::new(readiness));
    let inputs = Inputs {
        listener,
        watch,
        flood_events,
        fleet_rx,
        metrics_listener,
    };
    let result = serve(&engine, &opts, &readiness, inputs).await;
    readiness.borrow().stopping();
    shutdown(&engine, ebpf, &ifaces);
    result
}

/// What the event loop listens to: the control socket, the logs, the
/// program's reports, the engines, the metrics endpoint.
struct Inputs {
    listener: tokio::net::UnixListener,
    watch: crate::logs::watch::LogWatch,
    flood_events: tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    fleet_rx: tokio::sync::mpsc::Receiver<Inbound>,
    metrics_listener: Option<std::net::TcpListener>,
}

/// What `load` prepares (`E`: the engine's parts, `P`: nothing yet, the
/// programs being verified on a thread) and `attach` completes (`E`: the
/// started engine, `P`: the verified programs).
struct Loaded<E, P = aya::Ebpf> {
    /// The programs (once verified).
    ebpf: P,
    ifaces: Vec<String>,
    listener: tokio::net::UnixListener,
    watch: crate::logs::watch::LogWatch,
    flood_events: tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    engine: E,
}

/// The engine's inputs, until the program is attached.
struct EngineParts {
    config: Config,
    maps: KernelMaps,
    /// The programs, being verified by the kernel meanwhile.
    verifying: std::thread::JoinHandle<Result<aya::Ebpf>>,
    /// The saved state, being read meanwhile.
    opened: state::Opened,
    /// The networks the pinned maps hold, being read meanwhile.
    pinned: crate::bans::InKernel,
}

/// Reads the configuration, checks the interfaces, makes (or takes up) the
/// pinned maps, opens the state, starts the programs' verification and the
/// pinned bans' reading on threads of their own, and opens what the
/// daemon listens to. The control socket is bound here, before the journal
/// is read (see `journal`).
fn load(opts: &RunOptions) -> Result<Loaded<EngineParts, ()>> {
    let config = load_config(opts)?;
    let ifaces = if config.interfaces.is_empty() {
        let iface = program::default_route_iface()?;
        tracing::info!(
            "no interface configured: protecting {iface}, the interface of the default route"
        );
        vec![iface]
    } else {
        config.interfaces.clone()
    };
    // Fail on a missing interface before touching anything.
    for iface in &ifaces {
        program::if_index(iface)?;
    }
    // The state's header now; its bans as they are restored (see
    // `state::Opened`).
    let opened = state::open_with_positions(&config.state_file)?;
    let mut ebpf = program::open(&config.pin_dir)?;
    let maps = KernelMaps::open(&config.pin_dir)?;
    // What the pinned maps still hold (a restart over a million bans), read
    // in batches meanwhile too.
    let pin_dir = config.pin_dir.clone();
    let pinned = if maps.holds_bans() {
        let reading = std::thread::Builder::new()
            .name("sipguard-pinned".into())
            .spawn(move || {
                Ok(crate::bans::pinned(
                    KernelMaps::open(&pin_dir)?.banned_nets()?,
                ))
            })?;
        crate::bans::InKernel::Reading(Box::new(move || {
            reading
                .join()
                .map_err(|_| anyhow::anyhow!("reading the pinned bans panicked"))?
        }))
    } else {
        crate::bans::InKernel::Empty
    };
    // The kernel verifies the programs (~0.2 s) while the engine restores
    // the saved bans into the maps, which exist already.
    let verifying = std::thread::Builder::new()
        .name("sipguard-verify".into())
        .spawn(move || program::verify(&mut ebpf).map(|()| ebpf))?;
    let listener = control::bind(&config.socket)?;
    let logpaths: Vec<String> = config
        .jails
        .values()
        .filter(|j| j.enabled)
        .flat_map(|j| j.logpath.clone())
        .collect();
    let watch = crate::logs::watch::LogWatch::new(&logpaths)?;
    // SAFETY: the ring buffer's fd stays open and the same for the AsyncFd's life.
    let flood_events = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            crate::kernel::maps::flood_events(&config.pin_dir)?,
            tokio::io::Interest::READABLE,
        )
    }
    .map_err(std::io::Error::from)?;
    Ok(Loaded {
        ebpf: (),
        ifaces,
        listener,
        watch,
        flood_events,
        engine: EngineParts {
            config,
            maps,
            verifying,
            opened,
            pinned,
        },
    })
}

/// Restores the engine (state, journal, jails, allowlist) into the maps
/// while the kernel verifies the programs, then attaches. A program left
/// attached by the previous daemon (its pinned link) shares the maps and
/// keeps dropping meanwhile, until this one replaces it atomically; after a
/// reboot every saved ban is in the maps the moment the program attaches.
fn attach(loaded: Loaded<EngineParts, ()>, fleet_tx: InboundTx) -> Result<Loaded<Engine>> {
    let EngineParts {
        config,
        mut maps,
        verifying,
        opened,
        pinned,
    } = loaded.engine;
    maps.set_ports(&config.protected_ports())?;
    maps.set_config(kernel_config(&config))?;
    let engine = Engine::start(config, maps, opened, pinned, fleet_tx)?;
    let mut ebpf = verifying
        .join()
        .map_err(|_| anyhow::anyhow!("verifying the XDP programs panicked"))??;
    let config = &engine.config;
    for iface in &loaded.ifaces {
        let attachment = program::attach(&mut ebpf, &config.pin_dir, iface, config.xdp_mode)
            .with_context(|| format!("cannot attach to {iface}"))?;
        tracing::info!("attached to {} ({})", attachment.iface, attachment.mode);
    }
    let scope = if config.all_ports {
        "all ports".to_owned()
    } else {
        format!("ports {}", join_ports(&config.protected_ports()))
    };
    let jails: Vec<String> = config
        .jails
        .iter()
        .filter(|(_, j)| j.enabled)
        .map(|(n, _)| n.clone())
        .collect();
    if config.dry_run {
        tracing::warn!(
            "DRY RUN: bans are made and recorded as usual, but nothing is dropped; `sipguard stats` counts would-be drops"
        );
    }
    release_freed_memory();
    tracing::info!(
        "sipguard running, protection active: {} ban(s) in force, protecting {scope}, jails: {}, maps in {}, control socket {}",
        engine.bans.len(),
        if jails.is_empty() { "none".to_owned() } else { jails.join(", ") },
        engine.config.pin_dir.display(),
        engine.config.socket.display()
    );
    Ok(Loaded {
        ebpf,
        ifaces: loaded.ifaces,
        listener: loaded.listener,
        watch: loaded.watch,
        flood_events: loaded.flood_events,
        engine,
    })
}

/// The event loop: the control socket, signals, log wake-ups, reports from
/// the program, and the once-a-second tick; until SIGTERM or SIGINT.
async fn serve(
    engine: &Rc<RefCell<Engine>>,
    opts: &RunOptions,
    readiness: &Rc<RefCell<Readiness>>,
    inputs: Inputs,
) -> Result<()> {
    let Inputs {
        listener,
        mut watch,
        mut flood_events,
        mut fleet_rx,
        metrics_listener,
    } = inputs;
    let local = tokio::task::LocalSet::new();
    let (handler_engine, handler_opts, handler_readiness) =
        (engine.clone(), opts.clone(), readiness.clone());
    local.spawn_local(control::serve(listener, move |req| {
        let result = match req {
            Request::Reload => reload(&handler_engine, &handler_opts, &handler_readiness)
                .map(|()| json!({ "reloaded": true })),
            req => handler_engine.borrow_mut().handle(req),
        };
        match result {
            Ok(data) => Response::ok(data),
            Err(e) => Response::err(&e),
        }
    }));
    if let Some(listener) = metrics_listener {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let scrape_engine = engine.clone();
        local.spawn_local(metrics::serve(listener, move || {
            let engine = scrape_engine.borrow();
            metrics::render(&engine.metrics, &engine.metrics_snapshot())
        }));
    }
    local
        .run_until(async {
            let mut sigterm = signal(SignalKind::terminate())?;
            let mut sigint = signal(SignalKind::interrupt())?;
            let mut sighup = signal(SignalKind::hangup())?;
            let mut poll = tokio::time::interval(POLL_INTERVAL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tick = tokio::time::interval(TICK_INTERVAL);
            // Without a watchdog this ticks once a day and sends nothing.
            let watchdog_every = readiness.borrow().watchdog();
            let mut watchdog =
                tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(86_400)));
            // A log has more to read than one poll took.
            let mut behind = false;
            loop {
                tokio::select! {
                    _ = sigterm.recv() => break,
                    _ = sigint.recv() => break,
                    _ = sighup.recv() => {
                        if let Err(e) = reload(engine, opts, readiness) {
                            tracing::error!("reload failed, keeping the running configuration: {e:#}");
                        }
                    }
                    _ = watch.changed() => behind = engine.borrow_mut().poll_logs(),
                    // The rest of a burst, after whatever else is ready.
                    () = std::future::ready(()), if behind => behind = engine.borrow_mut().poll_logs(),
                    guard = flood_events.readable_mut() => {
                        let mut guard = guard?;
                        let ring = guard.get_inner_mut();
                        while let Some(item) = ring.next() {
                            if let Some(event) = crate::kernel::maps::flood_event(&item) {
                                engine.borrow_mut().on_flood(&event);
                            }
                        }
                        guard.clear_ready();
                    }
                    // One batch (at most fleet::BATCH bans) per turn: log
                    // lines are read between the batches of a long list.
                    Some(msg) = fleet_rx.recv() => timed("a batch from an engine", || engine.borrow_mut().on_fleet(msg)),
                    _ = poll.tick() => behind = engine.borrow_mut().poll_logs(),
                    _ = tick.tick() => timed("the once-a-second tick", || {
                        let mut engine = engine.borrow_mut();
                        engine.tick();
                        readiness.borrow_mut().status(&engine.status_line());
                    }),
                    _ = watchdog.tick() => {
                        // Pinged from the loop itself: a stuck loop misses it.
                        if watchdog_every.is_some() {
                            readiness.borrow().watchdog_ping();
                        }
                    }
                }
            }
            anyhow::Ok(())
        })
        .await
}

/// A turn of the event loop longer than this is logged: log lines wait
/// behind it.
const SLOW_TURN: Duration = Duration::from_millis(100);

/// Runs one turn's work, and says so when it held the loop up.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    if took > SLOW_TURN {
        tracing::warn!("{what} held the event loop for {} ms", took.as_millis());
    }
    out
}

/// Saves everything and leaves the program attached: the pinned links keep
/// it dropping (bans ending on time, in the kernel) until the next daemon
/// swaps its program in. Only `sipguard detach` leaves the box unprotected.
fn shutdown(engine: &Rc<RefCell<Engine>>, ebpf: aya::Ebpf, ifaces: &[String]) {
    let mut engine = engine.borrow_mut();
    engine.ban_log.second_over();
    tracing::info!("stopping: saving state");
    engine.save();
    let _ = std::fs::remove_file(&engine.config.socket);
    drop(ebpf);
    tracing::info!(
        "stopped; the program stays attached to {} with the bans pinned in {} (`sipguard detach` removes it)",
        ifaces.join(", "),
        engine.config.pin_dir.display()
    );
}

/// The metrics endpoint's socket, when enabled; one that cannot be bound
/// is logged and protection goes on without it. (A new `[metrics]` takes a
/// restart.)
fn bind_metrics(c: &crate::config::MetricsConfig) -> Option<std::net::TcpListener> {
    if !c.enabled {
        return None;
    }
    match std::net::TcpListener::bind(c.listen).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
        Ok(l) => {
            tracing::info!("metrics on http://{}/metrics", c.listen);
            Some(l)
        }
        Err(e) => {
            tracing::error!(
                "cannot serve metrics on {}: {e} (set [metrics] listen, or enabled = false)",
                c.listen
            );
            None
        }
    }
}

/// The engines a configuration asks for. A CrowdSec key file that cannot
/// be read is logged and CrowdSec left out: protection goes on.
fn fleet_plan(c: &Config) -> fleet::Plan {
    fleet::Plan {
        crowdsec: c.crowdsec.as_ref().and_then(|cs| match cs.settings() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("CrowdSec left out: {e:#}");
                None
            }
        }),
        redis: c.redis.as_ref().and_then(|r| match r.settings() {
            Ok(s) => Some(s),
            Err(e) => {
                // Unsigned entries would let anyone who writes to the Redis
                // ban or unban here: no fleet rather than that.
                let why = format!("{e:#}");
                tracing::error!("Redis fleet NOT started: {why}");
                fleet::redis::set_refused(Some(why));
                None
            }
        }),
        apiban: c.apiban.as_ref().map(crate::config::ApibanConfig::settings),
    }
}

/// The kind of an origin (`redis:box2` → `redis`), for metrics.
fn origin_kind(origin: &str) -> &str {
    origin.split(':').next().unwrap_or(origin)
}

/// The program's settings for a configuration.
fn kernel_config(config: &Config) -> common::Config {
    let mut flags = 0;
    if config.all_ports {
        flags |= CONFIG_ALL_PORTS;
    }
    if config.dry_run {
        flags |= CONFIG_DRY_RUN;
    }
    config.flood.apply(common::Config {
        flags,
        ..Default::default()
    })
}

/// Hands freed memory back to the system: reading or writing the state of a
/// million bans makes a few hundred MB of short-lived copies, which glibc
/// would otherwise keep in the daemon's resident set for good.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; no pointers change.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks of 256 KiB and more (a log read's buffer, a table's vector as it
/// grows) are mapped on their own and unmapped when freed. glibc would
/// otherwise raise that threshold to the size of the first such block
/// freed, then serve later ones from its heap and keep them once freed: a
/// burst of log lines left ~40 MB resident that nothing used.
fn large_blocks_go_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes where later allocations come from.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Re-reads the configuration; on any error the running one stays. The
/// service manager hears of it before and after.
fn reload(
    engine: &Rc<RefCell<Engine>>,
    opts: &RunOptions,
    readiness: &Rc<RefCell<Readiness>>,
) -> Result<()> {
    readiness.borrow().reloading();
    let result = load_config(opts).and_then(|config| engine.borrow_mut().reload(config));
    readiness.borrow_mut().ready(&engine.borrow().status_line());
    result
}

pub fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
