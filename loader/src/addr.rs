//! Parsing of `ADDR[/PREFIX]` arguments into normalised networks.
use anyhow::{bail, Context as _, Result};
use ipnet::IpNet;
use std::net::IpAddr;

/// The shortest prefixes a ban may cover. A ban of `0.0.0.0/0` would cut every
/// client off the SIP ports; anything this wide is almost surely a typo.
pub const MIN_BAN_PREFIX_V4: u8 = 8;
pub const MIN_BAN_PREFIX_V6: u8 = 16;

/// Parses `1.2.3.4`, `1.2.3.0/24`, `2001:db8::1` or `2001:db8::/64`. A bare
/// address is a host network (/32 or /128); host bits after the prefix are
/// cleared (`10.0.0.7/24` is `10.0.0.0/24`).
pub fn parse_net(text: &str) -> Result<IpNet> {
    let text = text.trim();
    let net = if text.contains('/') {
        text.parse::<IpNet>()
            .with_context(|| format!("invalid network '{text}': expected ADDRESS/PREFIX, e.g. 192.0.2.0/24 or 2001:db8::/64"))?
    } else {
        let addr: IpAddr = text.parse().with_context(|| {
            format!("invalid address '{text}': expected an IPv4 or IPv6 address")
        })?;
        IpNet::from(addr)
    };
    Ok(net.trunc())
}

/// Parses a network to ban, refusing prefixes so wide they would ban everyone.
pub fn parse_ban_net(text: &str) -> Result<IpNet> {
    let net = parse_net(text)?;
    let min = match net {
        IpNet::V4(_) => MIN_BAN_PREFIX_V4,
        IpNet::V6(_) => MIN_BAN_PREFIX_V6,
    };
    if net.prefix_len() < min {
        bail!(
            "refusing to ban {net}: prefixes shorter than /{min} would ban a large part of the Internet"
        );
    }
    Ok(net)
}

/// Networks are shown without the prefix when they are single hosts.
pub fn display(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// Most threads looking names up for one `resolve_within`.
const RESOLVERS: usize = 8;
/// Most resolver threads alive at once, all calls together: a thread stuck
/// in a lookup past its deadline lives on until the lookup returns, and
/// reloads must not pile them up.
const MAX_RESOLVERS: usize = 32;
/// Resolver threads alive now.
static RESOLVING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one resolver thread while it lives.
struct Resolver;

impl Resolver {
    /// A place for one more thread, if there is one.
    fn enter() -> Option<Self> {
        use std::sync::atomic::Ordering::SeqCst;
        RESOLVING
            .fetch_update(SeqCst, SeqCst, |n| (n < MAX_RESOLVERS).then_some(n + 1))
            .ok()
            .map(|_| Self)
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        RESOLVING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The addresses of each host (an address as it is, a name looked up),
/// names looked up by at most `RESOLVERS` threads and given up after
/// `within` (a name not answered by then has none): start-up and reloads
/// never wait on DNS for longer. A thread that cannot be started (or too
/// many still stuck in lookups) means fewer lookups, never a panic.
pub fn resolve_within(hosts: &[String], within: std::time::Duration) -> Vec<Vec<IpAddr>> {
    use std::sync::{Arc, Mutex};
    let deadline = std::time::Instant::now() + within;
    let mut out: Vec<Vec<IpAddr>> = vec![Vec::new(); hosts.len()];
    let mut names = std::collections::VecDeque::new();
    for (i, host) in hosts.iter().enumerate() {
        match host.parse::<IpAddr>() {
            Ok(ip) => out[i].push(ip),
            Err(_) => names.push_back((i, host.clone())),
        }
    }
    let waiting = names.len();
    let queue = Arc::new(Mutex::new(names));
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..RESOLVERS.min(waiting) {
        let Some(slot) = Resolver::enter() else { break };
        let (tx, queue) = (tx.clone(), queue.clone());
        let started = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || resolver(&queue, deadline, &tx, slot));
        if started.is_err() {
            break;
        }
    }
    drop(tx);
    for _ in 0..waiting {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok((i, found)) => out[i] = found,
            // The deadline, or every thread gone (none could start).
            Err(_) => break,
        }
    }
    for list in &mut out {
        list.sort();
        list.dedup();
    }
    out
}

/// One resolver thread: names from `queue` until it is empty or the
/// deadline passed.
fn resolver(
    queue: &std::sync::Mutex<std::collections::VecDeque<(usize, String)>>,
    deadline: std::time::Instant,
    tx: &std::sync::mpsc::Sender<(usize, Vec<IpAddr>)>,
    _slot: Resolver,
) {
    use std::net::ToSocketAddrs as _;
    while std::time::Instant::now() < deadline {
        let next = queue.lock().map_or(None, |mut q| q.pop_front());
        let Some((i, host)) = next else { return };
        let found: Vec<IpAddr> = (host.as_str(), 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default();
        if tx.send((i, found)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_are_host_networks() {
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_net("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_net("2001:db8:1:2:3::9/64").unwrap().to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn bad_input_is_rejected_with_the_text() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "2001:db8::/129",
            "host.example",
            "1.2.3.4/",
            "1.2.3.4/x",
        ] {
            let err = parse_net(bad).unwrap_err().to_string();
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
    }

    #[test]
    fn too_wide_bans_are_refused() {
        assert!(parse_ban_net("0.0.0.0/0").is_err());
        assert!(parse_ban_net("10.0.0.0/7").is_err());
        assert!(parse_ban_net("10.0.0.0/8").is_ok());
        assert!(parse_ban_net("::/0").is_err());
        assert!(parse_ban_net("2001:db8::/64").is_ok());
    }

    /// A thousand names: a few threads look them up (not one a name), the
    /// deadline is kept, literal addresses need none.
    #[test]
    fn lookups_use_a_small_pool_within_the_deadline() {
        let mut hosts: Vec<String> = (0..1000).map(|i| format!("h{i}.invalid")).collect();
        hosts.push("localhost".into());
        hosts.push("192.0.2.9".into());
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = std::thread::spawn(move || {
            let mut most = 0;
            while rx.try_recv().is_err() {
                most = most.max(threads_named("resolve"));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            most
        });
        let started = std::time::Instant::now();
        let found = resolve_within(&hosts, std::time::Duration::from_millis(1500));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        tx.send(()).unwrap();
        let most = watcher.join().unwrap();
        // Other tests resolve in parallel: all calls together stay in bounds.
        assert!(
            (1..=MAX_RESOLVERS).contains(&most),
            "{most} resolver threads"
        );
        assert_eq!(found.len(), 1002);
        assert_eq!(found[1001], ["192.0.2.9".parse::<IpAddr>().unwrap()]);
        assert!(found[..1000].iter().all(Vec::is_empty));
    }

    /// Threads of this process whose name is `name`.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .count()
    }

    #[test]
    fn display_drops_host_prefix() {
        assert_eq!(display(&parse_net("192.0.2.7").unwrap()), "192.0.2.7");
        assert_eq!(display(&parse_net("192.0.2.0/24").unwrap()), "192.0.2.0/24");
    }
}
