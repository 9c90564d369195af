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

/// The addresses of each host (an address as it is, a name looked up),
/// all names looked up at once and given up after `within` (a name not
/// answered by then has none): start-up and reloads never wait on DNS
/// for longer.
pub fn resolve_within(hosts: &[String], within: std::time::Duration) -> Vec<Vec<IpAddr>> {
    let mut out: Vec<Vec<IpAddr>> = vec![Vec::new(); hosts.len()];
    let (tx, rx) = std::sync::mpsc::channel();
    let mut waiting = 0;
    for (i, host) in hosts.iter().enumerate() {
        if let Ok(ip) = host.parse::<IpAddr>() {
            out[i].push(ip);
            continue;
        }
        waiting += 1;
        let (tx, host) = (tx.clone(), host.clone());
        std::thread::spawn(move || {
            use std::net::ToSocketAddrs as _;
            let found: Vec<IpAddr> = (host.as_str(), 0)
                .to_socket_addrs()
                .map(|a| a.map(|s| s.ip()).collect())
                .unwrap_or_default();
            let _ = tx.send((i, found));
        });
    }
    let deadline = std::time::Instant::now() + within;
    while waiting > 0 {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok((i, found)) => {
                waiting -= 1;
                out[i] = found;
            }
            Err(_) => break,
        }
    }
    for list in &mut out {
        list.sort();
        list.dedup();
    }
    out
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

    #[test]
    fn display_drops_host_prefix() {
        assert_eq!(display(&parse_net("192.0.2.7").unwrap()), "192.0.2.7");
        assert_eq!(display(&parse_net("192.0.2.0/24").unwrap()), "192.0.2.0/24");
    }
}
