//! The configuration: options and overrides, the file, FreeSWITCH's own
//! configuration, applied to the jails, the kernel and the feeds; reload.
use super::{announce::ExportPolicy, join_ports, Daemon};
use crate::{
    config::{Config, StartAt},
    fleet::{self, Inbound, Workers},
    freeswitch,
    kernel::program::AttachMode,
    logs::jail::Jail,
    ops::notify::Notifier,
    ops::readiness::Readiness,
};
use anyhow::Result;
use common::{CONFIG_ALL_PORTS, CONFIG_DRY_RUN};
use std::{cell::RefCell, collections::BTreeMap, path::PathBuf, rc::Rc};

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

pub(super) fn load_config(opts: &RunOptions) -> Result<Config> {
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
pub(super) fn discover_freeswitch(c: &mut Config) {
    let Some(dir) = freeswitch::conf_dir(c.freeswitch_conf.as_deref()) else {
        return;
    };
    let d = freeswitch::discover(&dir);
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

impl Daemon {
    /// (Re)builds jails and pushes ports, mode and allowlist to the kernel.
    pub(super) fn apply_config(&mut self, at_startup: bool) -> Result<()> {
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
        maps.set_sip_limits(self.config.sip_limits())?;
        self.apply_trust_config()?;
        self.packet_bans.set_limits(
            self.config.flood.max_bans_per_minute,
            self.config.flood.max_packet_bans,
        );
        self.bans.remote_mut().set_caps(self.config.fleet.caps());
        self.announce.export = ExportPolicy::of(&self.config);
        let plan = fleet_plan(&self.config);
        // The engines' own addresses are never banned, before any of them
        // is heard.
        self.feed_addrs = plan.endpoints();
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
            self.announce.workers = Workers::default();
            self.announce.workers = Workers::start(
                &plan,
                &self.fleet_tx,
                self.cursors.get(fleet::apiban::ORIGIN).cloned(),
            );
            self.fleet_plan = plan;
        }
        // Last, after every step that can fail: a reload refused half-way
        // never lifts anything.
        self.lift_unmade_prefixes();
        Ok(())
    }

    pub(super) fn reload(&mut self, config: Config) -> Result<()> {
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
            self.announce.notifier = Notifier::start(&config.notify.hooks());
        }
        self.config = Config {
            interfaces,
            pin_dir,
            socket,
            ..config
        };
        self.apply_config(false)
    }
}

/// Re-reads the configuration; on any error the running one stays. The
/// service manager hears of it before and after.
pub(super) fn reload(
    engine: &Rc<RefCell<Daemon>>,
    opts: &RunOptions,
    readiness: &Rc<RefCell<Readiness>>,
) -> Result<()> {
    readiness.borrow().reloading();
    let result = load_config(opts).and_then(|config| engine.borrow_mut().reload(config));
    readiness.borrow_mut().ready(&engine.borrow().status_line());
    result
}

/// The engines a configuration asks for. A CrowdSec key file that cannot
/// be read is logged and CrowdSec left out: protection goes on.
pub(super) fn fleet_plan(c: &Config) -> fleet::Plan {
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

/// The program's settings for a configuration.
pub(super) fn kernel_config(config: &Config) -> common::Config {
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
