//! `sipguard run`: load the program, configure it, attach it, keep the maps
//! tidy, and detach cleanly on SIGINT/SIGTERM.
use crate::{addr, clock, maps::KernelMaps, program};
use anyhow::{Context as _, Result};
use common::{Config, CONFIG_ALL_PORTS};
use std::{path::PathBuf, time::Duration};
use tokio::signal::unix::{signal, SignalKind};

/// How often expired bans are deleted from the maps. The kernel already
/// ignores them from the moment they expire; this only frees their slots.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct RunOptions {
    pub pin_dir: PathBuf,
    pub ifaces: Vec<String>,
    pub mode: program::AttachMode,
    pub ports: Vec<u16>,
    pub all_ports: bool,
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let ifaces = if opts.ifaces.is_empty() {
        let iface = program::default_route_iface()?;
        tracing::info!("no --iface given: protecting {iface}, the interface of the default route");
        vec![iface]
    } else {
        opts.ifaces.clone()
    };
    // Fail on a missing interface before touching anything.
    for iface in &ifaces {
        program::if_index(iface)?;
    }

    let mut ebpf = program::load(&opts.pin_dir)?;
    let mut maps = KernelMaps::open(&opts.pin_dir)?;
    maps.set_ports(&opts.ports)?;
    maps.set_config(Config {
        flags: if opts.all_ports { CONFIG_ALL_PORTS } else { 0 },
        ..Default::default()
    })?;
    let restored = maps.bans()?.len();

    let mut attachments = Vec::new();
    for iface in &ifaces {
        let attachment = program::attach(&mut ebpf, &opts.pin_dir, iface, opts.mode)
            .with_context(|| format!("cannot attach to {iface}"))?;
        tracing::info!("attached to {} ({})", attachment.iface, attachment.mode);
        attachments.push(attachment);
    }
    let scope = if opts.all_ports {
        "all ports".to_owned()
    } else {
        format!("ports {}", join_ports(&opts.ports))
    };
    tracing::info!(
        "sipguard running: {} ban(s) in force, protecting {scope}, maps in {}",
        restored,
        opts.pin_dir.display()
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {
                match maps.sweep_expired(clock::mono_now_ns()) {
                    Ok(expired) => for ban in expired {
                        tracing::info!("ban of {} expired after dropping {} packet(s)", addr::display(&ban.net), ban.entry.packets);
                    },
                    Err(e) => tracing::warn!("sweeping expired bans failed: {e:#}"),
                }
            }
        }
    }

    tracing::info!("stopping: detaching from {}", ifaces.join(", "));
    for a in &attachments {
        if a.pin.is_some() {
            program::detach(&opts.pin_dir, &a.iface)?;
        }
    }
    // Dropping the object closes the last link fds, which detaches the program.
    drop(ebpf);
    tracing::info!("detached; bans stay pinned in {}", opts.pin_dir.display());
    Ok(())
}

pub fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
