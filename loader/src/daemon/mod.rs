//! `sipguard run`: load and attach the program, follow the jails' logs, ban,
//! expire, persist, answer the control socket, and stop on SIGINT/SIGTERM
//! leaving the program attached (restarts have no gap; `sipguard detach`
//! removes it). SIGHUP (or `sipguard reload`) re-reads the configuration
//! without touching bans.
use crate::{
    bans::{changes::ChangeLog, never_ban::NeverBan, packet_bans::PacketBans, sliced},
    bans::{state::Position, BanManager},
    config::Config,
    fleet::{self, InboundTx},
    logs::jail::Jail,
    ops::readiness::Readiness,
};
use anyhow::Result;
use ipnet::IpNet;
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    rc::Rc,
    time::Instant,
};

mod aggregate;
mod announce;
mod assemble;
mod boot;
mod configure;
mod engine;
mod event_loop;
mod evidence;
mod fleet_intake;
mod requests;
mod saving;
mod scrape;
mod trust;
mod views;

pub use configure::{Overrides, RunOptions};

/// The jail name of bans made by the XDP flood limiter.
pub const FLOOD_JAIL: &str = "sip-flood";

/// The jail name of bans of sources with a scanner's User-Agent.
pub const SCANNER_JAIL: &str = "sip-scanner";

/// The jail name of bans of sources that kept sending invalid messages.
pub const INVALID_JAIL: &str = "sip-invalid";

/// Everything the running daemon knows. Its methods live in this folder
/// by concern: `engine` (the ban path), `evidence`, `fleet_intake`,
/// `requests`, `views`, `saving`, `configure`, `boot`.
pub struct Daemon {
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
    /// Metrics, notifications and the fleet, told of every ban and unban.
    announce: announce::Announcer,
    /// CrowdSec, Redis, APIBAN: what they ask for arrives on `fleet_tx`'s
    /// channel (their workers are the announcer's: bans go out through them).
    fleet_plan: fleet::Plan,
    fleet_tx: InboundTx,
    /// Where feeds have read up to (kept in the state).
    cursors: BTreeMap<String, String>,
    /// The feeds' addresses, never banned (see `fleet::Plan::endpoints`).
    feed_addrs: Vec<std::net::IpAddr>,
    /// Ban changes between snapshots of the state (see `changes`).
    changelog: ChangeLog,
    /// The last snapshot failed: the next save is a snapshot again.
    snapshot_due: bool,
    /// The snapshot being written in the background, while one is.
    snapshot: Option<sliced::Sliced>,
    /// The last snapshot's number (its writer's events carry it).
    snapshot_id: u64,
    /// Where the snapshot writers' events go; the loop takes them from
    /// `snapshot_events` (taken out by `run`).
    snapshot_tell: tokio::sync::mpsc::UnboundedSender<crate::store::legacy::sliced::Event>,
    snapshot_events: Option<SnapshotEvents>,
    /// Trusted sources: FreeSWITCH's registrations, the operator's.
    trust: trust::TrustState,
}

type SnapshotEvents = tokio::sync::mpsc::UnboundedReceiver<crate::store::legacy::sliced::Event>;

/// `sipguard run`: load, attach, serve until a signal, shut down. The
/// service manager hears `READY=1` once the program is attached and the
/// saved bans are in force, not before.
pub async fn run(opts: RunOptions, mut readiness: Readiness) -> Result<()> {
    boot::large_blocks_go_back();
    let loaded = boot::load(&opts)?;
    // What CrowdSec, the Redis fleet and APIBAN say; bounded, so a feed
    // with a huge list waits for the loop instead of filling memory.
    let (fleet_tx, fleet_rx) = tokio::sync::mpsc::channel(64);
    let boot::Loaded {
        ebpf,
        ifaces,
        listener,
        watch,
        flood_events,
        daemon,
    } = boot::attach(loaded, fleet_tx)?;
    // Bound before READY=1: a scrape right after start finds it.
    let metrics_listener = boot::bind_metrics(&daemon.config.metrics);
    let mut daemon = daemon;
    let snapshot_events = daemon.snapshot_events.take().expect("made at boot");
    let esl_rx = daemon.trust.rx.take().expect("made at boot");
    readiness.ready(&daemon.status_line());
    let daemon = Rc::new(RefCell::new(daemon));
    let readiness = Rc::new(RefCell::new(readiness));
    let inputs = event_loop::Inputs {
        listener,
        watch,
        flood_events,
        fleet_rx,
        snapshot_events,
        metrics_listener,
        esl_rx,
    };
    let result = event_loop::serve(&daemon, &opts, &readiness, inputs).await;
    readiness.borrow().stopping();
    shutdown(&daemon, ebpf, &ifaces);
    result
}

/// Saves everything and leaves the program attached: the pinned links keep
/// it dropping (bans ending on time, in the kernel) until the next daemon
/// swaps its program in. Only `sipguard detach` leaves the box unprotected.
fn shutdown(daemon: &Rc<RefCell<Daemon>>, ebpf: aya::Ebpf, ifaces: &[String]) {
    let mut daemon = daemon.borrow_mut();
    daemon.announce.second_over();
    tracing::info!("stopping: saving state");
    daemon.save();
    // Nobody will renew it: the normal budgets from now on (it would lapse
    // within a second anyway).
    daemon.end_overload();
    let _ = std::fs::remove_file(&daemon.config.socket);
    drop(ebpf);
    tracing::info!(
        "stopped; the program stays attached to {} with the bans pinned in {} (`sipguard detach` removes it)",
        ifaces.join(", "),
        daemon.config.pin_dir.display()
    );
}

pub fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
