//! The `sipguard` command line: the daemon (`run`), the verbs that mirror the
//! maps (ban, unban, allow, disallow, list, stats, detach), the daemon's own
//! (status, reload), and the tools (test-filter, import-fail2ban).
pub mod import;
pub mod show;
pub mod sip_budgets;
pub mod test_filter;
pub mod trace;
pub mod trust;

use crate::{
    addr,
    bans::journal,
    config::{self, Config},
    control::{self, BanNet, BanTime, Net, Request},
    daemon, defaults,
    kernel::clock,
    kernel::maps::KernelMaps,
    kernel::program,
};
use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use common::BAN_ALL_PORTS;
use serde::de::{DeserializeOwned, IgnoredAny};
use std::path::{Path, PathBuf};

pub use crate::defaults::{PIN_DIR as DEFAULT_PIN_DIR, PORTS as DEFAULT_PORTS};

#[derive(Parser)]
#[command(
    name = "sipguard",
    version,
    about = "Line-rate XDP protection for SIP servers"
)]
pub struct Cli {
    /// Configuration file (a missing default file means the built-in FreeSWITCH setup).
    #[arg(long, global = true, env = "SIPGUARD_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Where the maps (and XDP links) are pinned, on a BPF filesystem [default: from the config, else /sys/fs/bpf/sipguard].
    #[arg(long, global = true, env = "SIPGUARD_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// The daemon's control socket [default: from the config, else /run/sipguard/sipguard.sock].
    #[arg(long, global = true, env = "SIPGUARD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// State file (bans, ban counts, the operator's allowlist, read positions); changes made
    /// while the daemon is stopped are journaled beside it [default: config, else /var/lib/sipguard/state.json].
    #[arg(long, global = true, env = "SIPGUARD_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: attach XDP, follow the jails' logs, ban, until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Ban an address or network (through the daemon when it runs).
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
    /// Remove the ban of exactly ADDRESS[/PREFIX] (every origin's, on this box).
    Unban {
        net: String,
        /// On every box of the Redis fleet (needs the running daemon and [redis]).
        #[arg(long)]
        fleet: bool,
    },
    /// Allow-list an address or network: it is never dropped, whatever the bans say.
    Allow { net: String },
    /// Remove exactly ADDRESS[/PREFIX] from the allowlist.
    Disallow { net: String },
    /// Trust a source: it keeps its own, higher budget ([trust] trusted_rate),
    /// also under overload; it is still limited over it, and still banned by
    /// a jail. An IPv6 address trusts its /64.
    Trust {
        net: String,
        /// How long (`30m`, `1h`, `-1`: until untrusted).
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// End the trust `sipguard trust` gave a source.
    Untrust { net: String },
    /// List bans (or the allowlist) with their counters, from the kernel maps.
    List {
        #[arg(long)]
        json: bool,
        /// List the allowlist instead of the bans.
        #[arg(long, conflicts_with = "trusted")]
        allowed: bool,
        /// List the trusted sources instead (registered phones, `trust`).
        #[arg(long)]
        trusted: bool,
    },
    /// Write the saved state (bans, ban counts, read positions, the allowlist)
    /// into a new SQLite database at PATH, to read with sqlite3.
    Export {
        /// The database to write (replaced if it exists).
        path: PathBuf,
    },
    /// Show the program's verdict counters.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Sources the rate limiter is holding back now, with their rates.
    Top {
        /// Sampling interval in seconds.
        #[arg(long, default_value = "1")]
        interval: f64,
        #[arg(long)]
        json: bool,
    },
    /// Jails: failures, bans and banned addresses, like `fail2ban-client status`.
    Status {
        jail: Option<String>,
        #[arg(long)]
        json: bool,
        /// Wait up to SECONDS for a daemon with protection active (program
        /// attached, saved bans in force); exit 1 if there is none by then.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
    /// Re-read the configuration; bans stay.
    Reload,
    /// Detach the program left attached by a daemon that did not stop cleanly.
    Detach {
        /// Interface (default: every interface with a pinned link).
        #[arg(long = "iface", short = 'i')]
        ifaces: Vec<String>,
    },
    /// Why is this phone blocked? Each packet from ADDR[/PREFIX] as the XDP program sees it, live.
    Trace(trace::Args),
    /// Run a filter over a log file, like fail2ban-regex.
    TestFilter(test_filter::Args),
    /// Translate a fail2ban configuration into sipguard's.
    ImportFail2ban(import::Args),
}

// `sipguard run`'s flags: each overrides the configuration file's.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Interface to protect (repeat for several) [default: config, else the default route's].
    #[arg(long = "iface", short = 'i')]
    pub ifaces: Vec<String>,
    /// driver (native), skb (generic), or auto: driver with fallback to skb.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<program::AttachMode>,
    /// Protected destination ports, TCP and UDP [default: config, else what FreeSWITCH listens on, else 5060,5061,5066,5080,5081,7443].
    #[arg(long, value_delimiter = ',')]
    pub ports: Option<Vec<u16>>,
    /// Bans drop every packet of the source, not only the protected ports.
    #[arg(long)]
    pub all_ports: bool,
    /// Read logs seen for the first time from their beginning, not their end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Decide and record as usual but drop nothing: the program counts
    /// would-be drops (`stats`, `list`, metrics). For trying sipguard on a live box.
    #[arg(long)]
    pub dry_run: bool,
}

/// Ban notes asked of the daemon per request: each page costs it a few ms.
const NOTES_PAGE: usize = 20_000;

/// Where the CLI finds the daemon's things: each the flag, else the config
/// file's, else the default.
struct Paths {
    pin_dir: PathBuf,
    socket: PathBuf,
    state_file: PathBuf,
}

fn paths(cli: &Cli) -> Paths {
    let config = match Config::load(&cli.config, false) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("ignoring {}: {e:#}", cli.config.display());
            None
        }
    };
    let pick = |flag: &Option<PathBuf>, from: fn(&Config) -> &PathBuf, default: &str| {
        flag.clone()
            .or_else(|| config.as_ref().map(|c| from(c).clone()))
            .unwrap_or_else(|| default.into())
    };
    Paths {
        pin_dir: pick(&cli.pin_dir, |c| &c.pin_dir, DEFAULT_PIN_DIR),
        socket: pick(&cli.socket, |c| &c.socket, defaults::SOCKET),
        state_file: pick(&cli.state_file, |c| &c.state_file, defaults::STATE_FILE),
    }
}

/// A change the operator makes: through the daemon when it runs; else
/// straight into the maps, and journaled so the next start keeps it. The
/// journal is locked only once no daemon answers, and the socket looked at
/// again under the lock: a daemon binds its socket before it reads the
/// journal, so one starting meanwhile is either asked (the lock let go
/// first: it waits for it) or reads the journal only once the change is
/// in it. Nothing waits for a daemon while holding the lock, which a
/// starting daemon waits for.
fn operator_change(
    cli: &Cli,
    req: &Request,
    change: journal::Change,
    in_maps: impl FnOnce(&mut KernelMaps) -> Result<()>,
) -> Result<()> {
    let p = paths(cli);
    // What the daemon answers is not shown: it did what was asked.
    if daemon_request::<IgnoredAny>(&p.socket, req)?.is_some() {
        return Ok(());
    }
    let mut journal = journal::lock(&p.state_file)?;
    if std::os::unix::net::UnixStream::connect(&p.socket).is_ok() {
        drop(journal);
        running_daemon::<IgnoredAny>(&p.socket, req)?;
        return Ok(());
    }
    in_maps(&mut open(&p.pin_dir)?)?;
    journal.append(&change)
}

/// Runs the verb: one `do_<verb>` each.
pub fn run(cli: Cli) -> Result<()> {
    let cli = &cli;
    match &cli.command {
        Command::Run(args) => do_run(cli, args),
        Command::Ban {
            net,
            duration,
            all_ports,
        } => do_ban(cli, net, duration, *all_ports),
        Command::Unban { net, fleet } => do_unban(cli, net, *fleet),
        Command::Allow { net } => do_allow(cli, net),
        Command::Disallow { net } => do_disallow(cli, net),
        Command::Trust { net, duration } => trust::change(cli, net, duration.as_deref(), true),
        Command::Untrust { net } => trust::change(cli, net, None, false),
        Command::List {
            json,
            allowed,
            trusted,
        } => {
            if *trusted {
                require_root("read sipguard's maps")?;
                trust::list_trusted(&paths(cli).pin_dir, *json)
            } else {
                do_list(cli, *json, *allowed)
            }
        }
        Command::Export { path } => do_export(cli, path),
        Command::Stats { json } => do_stats(cli, *json),
        Command::Top { interval, json } => do_top(cli, *interval, *json),
        Command::Status { jail, json, wait } => do_status(cli, jail.as_deref(), *json, *wait),
        Command::Reload => do_reload(cli),
        Command::Detach { ifaces } => do_detach(cli, ifaces),
        Command::Trace(args) => do_trace(cli, args),
        Command::TestFilter(args) => test_filter::run(args, &cli.config),
        Command::ImportFail2ban(args) => import::run(args),
    }
}

fn do_run(cli: &Cli, args: &RunArgs) -> Result<()> {
    require_root("run the daemon")?;
    let opts = daemon::RunOptions {
        explicit_config: cli.config.as_os_str() != config::DEFAULT_PATH,
        config_path: cli.config.clone(),
        overrides: daemon::Overrides {
            ifaces: args.ifaces.clone(),
            mode: args.xdp_mode,
            ports: args.ports.clone(),
            all_ports: args.all_ports,
            dry_run: args.dry_run,
            pin_dir: cli.pin_dir.clone(),
            state_file: cli.state_file.clone(),
            socket: cli.socket.clone(),
            from_beginning: args.from_beginning,
        },
    };
    // Read (and cleared) before any thread starts.
    let readiness = crate::ops::readiness::Readiness::from_env();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(opts, readiness))
}

fn do_ban(cli: &Cli, net: &str, duration: &str, all_ports: bool) -> Result<()> {
    let checked: BanNet = net.parse()?;
    let duration: BanTime = duration.parse()?;
    require_root("change bans")?;
    let req = Request::Ban {
        net: checked,
        duration,
        all_ports,
    };
    let (net, bantime) = (checked.get(), duration.get());
    let change = journal::Change::Ban {
        net: net.to_string(),
        expires_at: bantime
            .map(|d| crate::bans::now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
        all_ports,
    };
    operator_change(cli, &req, change, |maps| {
        let expires = bantime.map_or(0, clock::deadline_ns);
        let flags = if all_ports { BAN_ALL_PORTS } else { 0 };
        maps.ban(net, expires, flags, clock::mono_now_ns())
    })?;
    match bantime {
        Some(d) => println!("banned {} for {}", addr::display(&net), clock::human(d)),
        None => println!("banned {} permanently", addr::display(&net)),
    }
    Ok(())
}

fn do_unban(cli: &Cli, net: &str, fleet: bool) -> Result<()> {
    let checked: Net = net.parse()?;
    require_root("change bans")?;
    let req = Request::Unban {
        net: checked,
        fleet,
    };
    let net = checked.get();
    if fleet {
        running_daemon::<control::Unbanned>(&paths(cli).socket, &req)?;
        println!("unbanned {} on every box", addr::display(&net));
        return Ok(());
    }
    let change = journal::Change::Unban {
        net: net.to_string(),
    };
    operator_change(cli, &req, change, |maps| {
        if !maps.unban(net)? {
            bail!(
                "{} is not banned (unban takes the exact address or network that was banned)",
                addr::display(&net)
            );
        }
        Ok(())
    })?;
    println!("unbanned {}", addr::display(&net));
    Ok(())
}

fn do_allow(cli: &Cli, net: &str) -> Result<()> {
    let checked: Net = net.parse()?;
    require_root("change the allowlist")?;
    let req = Request::Allow { net: checked };
    let net = checked.get();
    let change = journal::Change::Allow {
        net: net.to_string(),
    };
    operator_change(cli, &req, change, |maps| maps.allow(net))?;
    println!("allow-listed {}", addr::display(&net));
    Ok(())
}

fn do_disallow(cli: &Cli, net: &str) -> Result<()> {
    let checked: Net = net.parse()?;
    require_root("change the allowlist")?;
    let req = Request::Disallow { net: checked };
    let net = checked.get();
    let change = journal::Change::Disallow {
        net: net.to_string(),
    };
    operator_change(cli, &req, change, |maps| {
        if !maps.disallow(net)? {
            bail!("{} is not in the allowlist", addr::display(&net));
        }
        Ok(())
    })?;
    println!("removed {} from the allowlist", addr::display(&net));
    Ok(())
}

fn do_list(cli: &Cli, json: bool, allowed: bool) -> Result<()> {
    require_root("read sipguard's maps")?;
    let Paths {
        pin_dir, socket, ..
    } = paths(cli);
    let maps = open(&pin_dir)?;
    if allowed {
        return show::list_allowed(&maps, json);
    }
    // The kernel has the bans; the daemon, when it runs, their jail and
    // reason, a page at a time.
    let mut notes = show::BanNotes::new();
    let mut offset = 0;
    while let Ok(Some(page)) = daemon_request::<control::Notes>(
        &socket,
        &Request::Notes {
            offset,
            limit: NOTES_PAGE,
        },
    ) {
        let got = show::add_notes(&mut notes, page);
        offset += got;
        if got < NOTES_PAGE {
            break;
        }
    }
    show::list_bans(&maps, &notes, json)
}

fn do_export(cli: &Cli, path: &Path) -> Result<()> {
    let state_file = paths(cli).state_file;
    let e = crate::store::export::export(&state_file, path)?;
    println!(
        "exported {} ban(s) and {} ban count(s) from {} ({} logged and {} journaled change(s) laid over it) to {}",
        e.bans,
        e.counts,
        state_file.display(),
        e.changes,
        e.journaled,
        path.display()
    );
    println!(
        "read it with: sqlite3 {} 'SELECT * FROM bans_readable LIMIT 20'",
        path.display()
    );
    Ok(())
}

fn do_stats(cli: &Cli, json: bool) -> Result<()> {
    require_root("read sipguard's maps")?;
    show::stats(&open(&paths(cli).pin_dir)?, json)
}

fn do_top(cli: &Cli, interval: f64, json: bool) -> Result<()> {
    require_root("read sipguard's maps")?;
    if !(0.1..=60.0).contains(&interval) {
        bail!("--interval must be between 0.1 and 60 seconds");
    }
    show::top(
        &open(&paths(cli).pin_dir)?,
        std::time::Duration::from_secs_f64(interval),
        json,
    )
}

fn do_status(cli: &Cli, jail: Option<&str>, json: bool, wait: Option<f64>) -> Result<()> {
    require_root("read the daemon's status")?;
    let socket = paths(cli).socket;
    let req = Request::Status {
        jail: jail.map(str::to_owned),
    };
    let data: control::Status = match wait {
        None => running_daemon(&socket, &req)?,
        Some(secs) if (0.0..=86_400.0).contains(&secs) => {
            wait_for_daemon(&socket, &req, std::time::Duration::from_secs_f64(secs))?
        }
        Some(_) => bail!("--wait takes 0 to 86400 seconds"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        show::status(&data, jail.is_some());
    }
    Ok(())
}

fn do_reload(cli: &Cli) -> Result<()> {
    require_root("reload the daemon")?;
    let socket = paths(cli).socket;
    running_daemon::<control::Reloaded>(&socket, &Request::Reload)?;
    println!("configuration reloaded");
    Ok(())
}

fn do_detach(cli: &Cli, ifaces: &[String]) -> Result<()> {
    require_root("detach the program")?;
    let pin_dir = paths(cli).pin_dir;
    let ifaces = if ifaces.is_empty() {
        program::pinned_links(&pin_dir)
    } else {
        ifaces.to_vec()
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

fn do_trace(cli: &Cli, args: &trace::Args) -> Result<()> {
    require_root("trace packets")?;
    trace::run(args, &paths(cli).pin_dir)
}

/// Sends a request to the daemon; `None` when no daemon runs. A daemon's
/// refusal is an error carrying its message.
fn daemon_request<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<Option<T>> {
    match control::request(socket, req)? {
        None => Ok(None),
        Some(r) => answer(r).map(Some),
    }
}

/// The reply of a daemon's answer, or its refusal as an error.
fn answer<T>(r: control::Response<T>) -> Result<T> {
    match r {
        control::Response {
            ok: true,
            data: Some(data),
            ..
        } => Ok(data),
        control::Response { ok: true, .. } => bail!("the daemon answered nothing"),
        control::Response { error, .. } => {
            bail!("{}", error.unwrap_or_else(|| "the daemon refused".into()))
        }
    }
}

/// Like `daemon_request`, for requests only a running daemon can answer.
fn running_daemon<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T> {
    daemon_request(socket, req)?.with_context(|| {
        format!(
            "the daemon is not running (no one listens on {})",
            socket.display()
        )
    })
}

/// Asks until a daemon answers (it answers only once protection is
/// active), for at most `within`.
fn wait_for_daemon<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    within: std::time::Duration,
) -> Result<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match control::request_within(socket, req, left) {
            Ok(Some(r)) => return answer(r),
            // Not listening yet, or a daemon that died while starting.
            Ok(None) | Err(_) if !left.is_zero() => {
                std::thread::sleep(left.min(std::time::Duration::from_millis(50)))
            }
            Ok(None) => bail!(
                "no daemon with protection active on {} after {:.1} s",
                socket.display(),
                within.as_secs_f64()
            ),
            Err(e) => {
                return Err(e.context(format!(
                    "no daemon answered within {:.1} s",
                    within.as_secs_f64()
                )))
            }
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
    crate::kernel::bpffs::ensure_pin_dir(pin_dir)?;
    KernelMaps::open(pin_dir)
}
