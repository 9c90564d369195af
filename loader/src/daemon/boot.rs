//! Start-up: load the configuration and the pinned maps, restore the saved
//! state into them while the kernel verifies the programs, then attach.
use super::{
    configure::{kernel_config, load_config, RunOptions},
    join_ports, Daemon,
};
use crate::{
    bans::state, config::Config, control, fleet::InboundTx, kernel::maps::KernelMaps,
    kernel::program,
};
use anyhow::{Context as _, Result};

/// What `load` prepares (`D`: the daemon's parts, `P`: nothing yet, the
/// programs being verified on a thread) and `attach` completes (`D`: the
/// started daemon, `P`: the verified programs).
pub(super) struct Loaded<D, P = aya::Ebpf> {
    /// The programs (once verified).
    pub(super) ebpf: P,
    pub(super) ifaces: Vec<String>,
    pub(super) listener: tokio::net::UnixListener,
    pub(super) watch: crate::logs::watch::LogWatch,
    pub(super) flood_events: tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    pub(super) daemon: D,
}

/// The daemon's inputs, until the program is attached.
pub(super) struct DaemonParts {
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
pub(super) fn load(opts: &RunOptions) -> Result<Loaded<DaemonParts, ()>> {
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
    // The kernel verifies the programs (~0.2 s) while the daemon restores
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
        daemon: DaemonParts {
            config,
            maps,
            verifying,
            opened,
            pinned,
        },
    })
}

/// Restores the daemon (state, journal, jails, allowlist) into the maps
/// while the kernel verifies the programs, then attaches. A program left
/// attached by the previous daemon (its pinned link) shares the maps and
/// keeps dropping meanwhile, until this one replaces it atomically; after a
/// reboot every saved ban is in the maps the moment the program attaches.
pub(super) fn attach(
    loaded: Loaded<DaemonParts, ()>,
    fleet_tx: InboundTx,
) -> Result<Loaded<Daemon>> {
    let DaemonParts {
        config,
        mut maps,
        verifying,
        opened,
        pinned,
    } = loaded.daemon;
    maps.set_ports(&config.protected_ports())?;
    maps.set_config(kernel_config(&config))?;
    maps.set_sip_limits(config.sip_limits())?;
    let daemon = Daemon::start(config, maps, opened, pinned, fleet_tx)?;
    let mut ebpf = verifying
        .join()
        .map_err(|_| anyhow::anyhow!("verifying the XDP programs panicked"))??;
    let config = &daemon.config;
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
        daemon.bans.len(),
        if jails.is_empty() { "none".to_owned() } else { jails.join(", ") },
        daemon.config.pin_dir.display(),
        daemon.config.socket.display()
    );
    Ok(Loaded {
        ebpf,
        ifaces: loaded.ifaces,
        listener: loaded.listener,
        watch: loaded.watch,
        flood_events: loaded.flood_events,
        daemon,
    })
}

/// The metrics endpoint's socket, when enabled; one that cannot be bound
/// is logged and protection goes on without it. (A new `[metrics]` takes a
/// restart.)
pub(super) fn bind_metrics(c: &crate::config::MetricsConfig) -> Option<std::net::TcpListener> {
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

/// Hands freed memory back to the system: reading or writing the state of a
/// million bans makes a few hundred MB of short-lived copies, which glibc
/// would otherwise keep in the daemon's resident set for good.
pub(super) fn release_freed_memory() {
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
pub(super) fn large_blocks_go_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes where later allocations come from.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
