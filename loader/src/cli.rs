//! The `sipguard` command line: the daemon (`run`) and the verbs that mirror
//! the maps (ban, unban, allow, disallow, list, stats, detach).
use crate::{addr, clock, daemon, duration, maps::KernelMaps, program};
use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use common::{counter, BAN_ALL_PORTS, CONFIG_ALL_PORTS};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sipguard";
pub const DEFAULT_PORTS: [u16; 3] = [5060, 5066, 7443];

#[derive(Parser)]
#[command(
    name = "sipguard",
    version,
    about = "Line-rate XDP protection for SIP servers"
)]
pub struct Cli {
    /// Where the maps (and XDP links) are pinned; must be on a BPF filesystem.
    #[arg(long, global = true, env = "SIPGUARD_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load and attach the XDP program and keep it running until SIGINT/SIGTERM.
    Run {
        /// Interface to protect (repeat for several). Default: the default route's.
        #[arg(long = "iface", short = 'i')]
        ifaces: Vec<String>,
        /// driver (native), skb (generic), or auto: driver with fallback to skb.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: program::AttachMode,
        /// Protected destination ports, TCP and UDP.
        #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_PORTS)]
        ports: Vec<u16>,
        /// Bans drop every packet of the source, not only the protected ports.
        #[arg(long)]
        all_ports: bool,
    },
    /// Ban an address or network.
    Ban {
        /// ADDRESS or ADDRESS/PREFIX, IPv4 or IPv6.
        net: String,
        /// How long: 30, 10m, 1h30m, 1d, or -1 for permanent.
        #[arg(long = "for", default_value = "-1")]
        duration: String,
        /// Drop all of this source's packets, whatever the port.
        #[arg(long)]
        all_ports: bool,
    },
    /// Remove the ban of exactly ADDRESS[/PREFIX].
    Unban { net: String },
    /// Allow-list an address or network: it is never dropped, whatever the bans say.
    Allow { net: String },
    /// Remove exactly ADDRESS[/PREFIX] from the allowlist.
    Disallow { net: String },
    /// List bans (or the allowlist) with their counters.
    List {
        #[arg(long)]
        json: bool,
        /// List the allowlist instead of the bans.
        #[arg(long)]
        allowed: bool,
    },
    /// Show the program's verdict counters.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Detach the program left attached by a daemon that did not stop cleanly.
    Detach {
        /// Interface (default: every interface with a pinned link).
        #[arg(long = "iface", short = 'i')]
        ifaces: Vec<String>,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    let pin_dir = cli.pin_dir;
    match cli.command {
        Command::Run {
            ifaces,
            xdp_mode,
            ports,
            all_ports,
        } => {
            require_root("run the daemon")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(daemon::run(daemon::RunOptions {
                pin_dir,
                ifaces,
                mode: xdp_mode,
                ports,
                all_ports,
            }))
        }
        Command::Ban {
            net,
            duration,
            all_ports,
        } => {
            let net = addr::parse_ban_net(&net)?;
            let bantime = duration::parse_bantime(&duration)?;
            require_root("change bans")?;
            let mut maps = open(&pin_dir)?;
            let expires = bantime.map_or(0, clock::deadline_ns);
            let flags = if all_ports { BAN_ALL_PORTS } else { 0 };
            maps.ban(net, expires, flags, clock::mono_now_ns())?;
            match bantime {
                Some(d) => println!("banned {} for {}", addr::display(&net), clock::human(d)),
                None => println!("banned {} permanently", addr::display(&net)),
            }
            Ok(())
        }
        Command::Unban { net } => {
            let net = addr::parse_net(&net)?;
            require_root("change bans")?;
            if !open(&pin_dir)?.unban(net)? {
                bail!(
                    "{} is not banned (unban takes the exact address or network that was banned)",
                    addr::display(&net)
                );
            }
            println!("unbanned {}", addr::display(&net));
            Ok(())
        }
        Command::Allow { net } => {
            let net = addr::parse_net(&net)?;
            require_root("change the allowlist")?;
            open(&pin_dir)?.allow(net)?;
            println!("allow-listed {}", addr::display(&net));
            Ok(())
        }
        Command::Disallow { net } => {
            let net = addr::parse_net(&net)?;
            require_root("change the allowlist")?;
            if !open(&pin_dir)?.disallow(net)? {
                bail!("{} is not in the allowlist", addr::display(&net));
            }
            println!("removed {} from the allowlist", addr::display(&net));
            Ok(())
        }
        Command::List { json, allowed } => {
            require_root("read sipguard's maps")?;
            let maps = open(&pin_dir)?;
            if allowed {
                list_allowed(&maps, json)
            } else {
                list_bans(&maps, json)
            }
        }
        Command::Stats { json } => {
            require_root("read sipguard's maps")?;
            stats(&open(&pin_dir)?, json)
        }
        Command::Detach { ifaces } => {
            require_root("detach the program")?;
            let ifaces = if ifaces.is_empty() {
                program::pinned_links(&pin_dir)
            } else {
                ifaces
            };
            if ifaces.is_empty() {
                println!(
                    "nothing attached (no links pinned in {})",
                    pin_dir.display()
                );
            }
            for iface in ifaces {
                if program::detach(&pin_dir, &iface)? {
                    println!("detached from {iface}");
                } else {
                    println!("{iface}: no pinned link");
                }
            }
            Ok(())
        }
    }
}

/// Bans and the allowlist are root's business: the maps are root-only, and a
/// clear message beats the kernel's EPERM.
fn require_root(action: &str) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("only root can {action}: run sipguard as root");
    }
    Ok(())
}

fn open(pin_dir: &Path) -> Result<KernelMaps> {
    crate::bpffs::ensure_pin_dir(pin_dir)?;
    KernelMaps::open(pin_dir)
}

fn list_bans(maps: &KernelMaps, json: bool) -> Result<()> {
    let now = clock::mono_now_ns();
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
                    "packets": e.packets,
                    "bytes": e.bytes,
                    "last_seen_secs_ago": (e.last_seen_ns != 0).then(|| clock::age(e.last_seen_ns).as_secs()),
                    "all_ports": e.flags & BAN_ALL_PORTS != 0,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<40} {:>14} {:>10} {:>12} {:>12} PORTS",
        "ADDRESS", "EXPIRES", "PACKETS", "BYTES", "LAST SEEN"
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
        let seen = if e.last_seen_ns == 0 {
            "never".to_owned()
        } else {
            format!("{} ago", clock::human(clock::age(e.last_seen_ns)))
        };
        let ports = if e.flags & BAN_ALL_PORTS != 0 {
            "all"
        } else {
            "protected"
        };
        println!(
            "{:<40} {expires:>14} {:>10} {:>12} {seen:>12} {ports}",
            addr::display(&b.net),
            e.packets,
            e.bytes
        );
    }
    println!("{} ban(s)", bans.len());
    Ok(())
}

fn list_allowed(maps: &KernelMaps, json: bool) -> Result<()> {
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

fn stats(maps: &KernelMaps, json: bool) -> Result<()> {
    let counters = maps.counters()?;
    let bans = maps.bans()?.len();
    let allowed = maps.allowed()?.len();
    let ports = maps.ports()?;
    let all_ports = maps.config()?.flags & CONFIG_ALL_PORTS != 0;
    let attached = program::pinned_links(maps.pin_dir());
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
            "attached": attached,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "attached to: {}",
        if attached.is_empty() {
            "nothing".to_owned()
        } else {
            attached.join(", ")
        }
    );
    println!(
        "protecting:  {}",
        if all_ports {
            "all ports".to_owned()
        } else {
            format!("ports {}", daemon::join_ports(&ports))
        }
    );
    println!("bans:        {bans}");
    println!("allowlist:   {allowed}");
    println!();
    println!("{:<24} {:>14} {:>16}", "COUNTER", "PACKETS", "BYTES");
    for (name, v) in counter::NAMES.iter().zip(&counters) {
        println!("{name:<24} {:>14} {:>16}", v.packets, v.bytes);
    }
    Ok(())
}
