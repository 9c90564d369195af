//! The never-ban set: sources that are never counted, banned or dropped, so
//! that nothing an attacker forges can cut the box off its own peers.
//!
//! * `ignoreip` from the configuration;
//! * loopback and this host's own addresses (fail2ban's `ignoreself`);
//! * the gateways of the routing table, IPv4 and IPv6 (`/proc/net/route`,
//!   `/proc/net/ipv6_route`): a forged packet "from the router" must not
//!   ban the router;
//! * the nameservers of `/etc/resolv.conf`.
//!
//! The set is re-read on reload and periodically (routes and addresses
//! change under a running daemon: DHCP, failover, VRRP). It is written to the
//! XDP allowlist, and every automatic ban is vetted against it: a ban whose
//! network lies inside a protected one is refused, one that would cover a
//! protected address is narrowed to the offender's own address (an IPv6 /64
//! that holds the host's own address becomes the attacker's /128).
use ipnet::IpNet;
use std::{fmt, fs, net::IpAddr, path::Path};

/// Why a network is in the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    Configured,
    /// The operator's `sipguard allow`.
    Operator,
    Loopback,
    OwnAddress,
    Gateway,
    Resolver,
    /// A gateway of FreeSWITCH's configuration (a SIP trunk).
    Trunk,
    /// The CrowdSec LAPI, the Redis server or the APIBAN host the box
    /// talks to: a ban of it would cut the box off its fleet.
    Engine,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Configured => "ignoreip",
            Why::Operator => "allow-listed with `sipguard allow`",
            Why::Loopback => "loopback",
            Why::OwnAddress => "an address of this host",
            Why::Gateway => "a gateway of the routing table",
            Why::Resolver => "a nameserver of resolv.conf",
            Why::Trunk => "a FreeSWITCH gateway (SIP trunk)",
            Why::Engine => "a fleet engine this box talks to (CrowdSec, Redis, APIBAN)",
        })
    }
}

/// What an automatic ban becomes once vetted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vetted {
    /// Nothing protected is touched: ban as asked.
    Ban(IpNet),
    /// The network would cover `protected`: ban only the offender's address.
    Narrowed {
        net: IpNet,
        protected: IpNet,
        why: Why,
    },
    /// The offender is (or lies inside) a protected network.
    Refused { protected: IpNet, why: Why },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeverBan {
    nets: Vec<(IpNet, Why)>,
}

/// Where the set comes from, besides the configuration.
#[derive(Clone, Debug)]
pub struct Sources<'a> {
    pub resolv_conf: &'a Path,
    pub route_v4: &'a Path,
    pub route_v6: &'a Path,
    /// FreeSWITCH's gateways, as discovered.
    pub trunks: &'a [IpAddr],
    /// The fleet engines' addresses.
    pub engines: &'a [IpAddr],
}

impl Default for Sources<'static> {
    fn default() -> Self {
        Self {
            resolv_conf: Path::new("/etc/resolv.conf"),
            route_v4: Path::new("/proc/net/route"),
            route_v6: Path::new("/proc/net/ipv6_route"),
            trunks: &[],
            engines: &[],
        }
    }
}

impl NeverBan {
    /// The configured networks plus loopback, own addresses, gateways and
    /// resolvers as the system has them now. Unreadable sources add nothing
    /// (and are logged): the configured part always holds.
    pub fn discover(
        configured: impl IntoIterator<Item = IpNet>,
        operator: impl IntoIterator<Item = IpNet>,
        from: &Sources,
    ) -> Self {
        let mut nets: Vec<(IpNet, Why)> = configured
            .into_iter()
            .map(|n| (n, Why::Configured))
            .chain(operator.into_iter().map(|n| (n, Why::Operator)))
            .collect();
        nets.push(("127.0.0.0/8".parse().expect("valid"), Why::Loopback));
        nets.push(("::1/128".parse().expect("valid"), Why::Loopback));
        if let Ok(ifaces) = if_addrs::get_if_addrs() {
            nets.extend(ifaces.iter().map(|i| (host(i.ip()), Why::OwnAddress)));
        }
        let routes_v4 = read_or_empty(from.route_v4);
        let routes_v6 = read_or_empty(from.route_v6);
        nets.extend(
            gateways(&routes_v4, &routes_v6)
                .into_iter()
                .map(|a| (host(a), Why::Gateway)),
        );
        nets.extend(
            nameservers(&read_resolv_conf(from.resolv_conf))
                .into_iter()
                .map(|a| (host(a), Why::Resolver)),
        );
        nets.extend(from.trunks.iter().map(|a| (host(*a), Why::Trunk)));
        nets.extend(from.engines.iter().map(|a| (host(*a), Why::Engine)));
        Self::from_nets(nets)
    }

    /// Exactly these networks (tests, and `test-filter` which ignores nothing).
    pub fn from_nets(mut nets: Vec<(IpNet, Why)>) -> Self {
        for (n, _) in &mut nets {
            *n = n.trunc();
        }
        nets.sort();
        nets.dedup_by(|a, b| a.0 == b.0);
        Self { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|(n, _)| n.contains(&ip))
    }

    /// The networks, for the XDP allowlist.
    pub fn nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.nets.iter().map(|(n, _)| *n)
    }

    pub fn entries(&self) -> &[(IpNet, Why)] {
        &self.nets
    }

    /// A protected network that holds all of `net` (a ban of it would only
    /// ever drop protected addresses).
    pub fn covering(&self, net: &IpNet) -> Option<(IpNet, Why)> {
        self.nets.iter().find(|(p, _)| p.contains(net)).copied()
    }

    /// What an automatic ban of `net`, earned by `offender`, may become.
    pub fn vet(&self, net: IpNet, offender: IpAddr) -> Vetted {
        let offender = offender.to_canonical();
        for (p, why) in &self.nets {
            if p.contains(&offender) || p.contains(&net) {
                return Vetted::Refused {
                    protected: *p,
                    why: *why,
                };
            }
        }
        for (p, why) in &self.nets {
            if net.contains(p) {
                return Vetted::Narrowed {
                    net: host(offender),
                    protected: *p,
                    why: *why,
                };
            }
        }
        Vetted::Ban(net)
    }
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip.to_canonical())
}

fn read_or_empty(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            tracing::warn!("never-ban set: cannot read {}: {e}", path.display());
            String::new()
        }
    }
}

/// `resolv.conf`, refreshed on the tick: never blocking on a FIFO or a
/// device put in its place, never reading more than `MAX_RESOLV_CONF`.
fn read_resolv_conf(path: &Path) -> String {
    const MAX_RESOLV_CONF: u64 = 64 * 1024;
    match crate::files::read_small(path, MAX_RESOLV_CONF) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            tracing::warn!("never-ban set: {}: {e}", path.display());
            String::new()
        }
    }
}

/// Next hops of every route that has one: `/proc/net/route` (gateway in
/// little-endian hex, flag RTF_GATEWAY) and `/proc/net/ipv6_route` (next hop
/// in the fifth column).
pub fn gateways(route_v4: &str, route_v6: &str) -> Vec<IpAddr> {
    const RTF_GATEWAY: u32 = 0x2;
    let mut out = Vec::new();
    for line in route_v4.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(gw), Some(flags)) = (cols.get(2), cols.get(3)) else {
            continue;
        };
        let (Ok(gw), Ok(flags)) = (u32::from_str_radix(gw, 16), u32::from_str_radix(flags, 16))
        else {
            continue;
        };
        if flags & RTF_GATEWAY != 0 && gw != 0 {
            out.push(IpAddr::from(gw.to_le_bytes()));
        }
    }
    for line in route_v6.lines() {
        let Some(hop) = line.split_whitespace().nth(4) else {
            continue;
        };
        let Ok(hop) = u128::from_str_radix(hop, 16) else {
            continue;
        };
        if hop != 0 {
            out.push(IpAddr::from(hop.to_be_bytes()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The `nameserver` addresses of a resolv.conf.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        // A scoped IPv6 nameserver (fe80::1%eth0) is the address before '%'.
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        crate::addr::parse_net(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn gateways_from_both_routing_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                  eth1\t0010A8C0\tFE0010AC\t0003\t0\t0\t0\t00FFFFFF\n\
                  garbage line\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
                  fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n";
        assert_eq!(
            gateways(v4, v6),
            vec![ip("172.16.0.254"), ip("192.0.2.1"), ip("fe80::1")]
        );
    }

    #[test]
    fn nameservers_of_resolv_conf() {
        let text = "# comment\nsearch example.com\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nnameserver   2001:db8::53 \nnameserver bogus\noptions edns0\n";
        assert_eq!(
            nameservers(text),
            vec![ip("10.255.255.53"), ip("fe80::1"), ip("2001:db8::53")]
        );
    }

    /// A FIFO in place of resolv.conf (re-read on the tick) never blocks.
    #[test]
    fn a_fifo_as_resolv_conf_stalls_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("resolv.conf");
        crate::files::mkfifo(&fifo);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let missing = fifo.with_file_name("none");
            let set = NeverBan::discover(
                [],
                [],
                &Sources {
                    resolv_conf: &fifo,
                    route_v4: &missing,
                    route_v6: &missing,
                    trunks: &[],
                    engines: &[],
                },
            );
            let _ = tx.send(set);
        });
        let set = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("blocked on the FIFO");
        assert!(!set.entries().iter().any(|(_, w)| *w == Why::Resolver));
    }

    #[test]
    fn discovered_from_files_and_the_system() {
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 198.51.100.53\n").unwrap();
        let route = dir.path().join("route");
        std::fs::write(
            &route,
            "Iface Destination Gateway Flags\neth0 00000000 FE0110AC 0003\n",
        )
        .unwrap();
        let missing = dir.path().join("no-ipv6");
        let set = NeverBan::discover(
            [n("203.0.113.0/24")],
            [n("10.0.8.0/24")],
            &Sources {
                resolv_conf: &resolv,
                route_v4: &route,
                route_v6: &missing,
                trunks: &["198.51.100.20".parse().unwrap()],
                engines: &["198.51.100.21".parse().unwrap()],
            },
        );
        for (addr, why) in [
            ("198.51.100.20", Why::Trunk),
            ("198.51.100.21", Why::Engine),
            ("203.0.113.9", Why::Configured),
            ("10.0.8.50", Why::Operator),
            ("127.0.0.1", Why::Loopback),
            ("::1", Why::Loopback),
            ("172.16.1.254", Why::Gateway),
            ("198.51.100.53", Why::Resolver),
        ] {
            assert!(set.contains(ip(addr)), "{addr}");
            assert!(
                set.entries()
                    .iter()
                    .any(|(p, w)| p.contains(&ip(addr)) && *w == why),
                "{addr} as {why}"
            );
        }
        assert!(!set.contains(ip("198.51.100.54")));
    }

    #[test]
    fn bans_touching_protected_addresses_are_narrowed_or_refused() {
        let set = NeverBan::from_nets(vec![
            (n("fd00:5167::1"), Why::OwnAddress),
            (n("10.213.0.254"), Why::Gateway),
            (n("203.0.113.0/24"), Why::Configured),
        ]);
        // The host's own /64: only the attacker's /128.
        assert_eq!(
            set.vet(n("fd00:5167::/64"), ip("fd00:5167::99")),
            Vetted::Narrowed {
                net: n("fd00:5167::99"),
                protected: n("fd00:5167::1"),
                why: Why::OwnAddress
            }
        );
        // The gateway itself, and anything inside ignoreip: refused.
        assert!(matches!(
            set.vet(n("10.213.0.254"), ip("10.213.0.254")),
            Vetted::Refused {
                why: Why::Gateway,
                ..
            }
        ));
        assert!(matches!(
            set.vet(n("203.0.113.0/28"), ip("203.0.113.2")),
            Vetted::Refused {
                why: Why::Configured,
                ..
            }
        ));
        // A mapped IPv4 offender is the IPv4 address.
        assert!(matches!(
            set.vet(n("10.213.0.254"), ip("::ffff:10.213.0.254")),
            Vetted::Refused { .. }
        ));
        // A /16 over ignoreip, by an offender outside it: narrowed.
        assert_eq!(
            set.vet(n("203.0.0.0/16"), ip("203.0.1.1")),
            Vetted::Narrowed {
                net: n("203.0.1.1"),
                protected: n("203.0.113.0/24"),
                why: Why::Configured
            }
        );
        // Elsewhere: as asked.
        assert_eq!(
            set.vet(n("2001:db8:bad::/64"), ip("2001:db8:bad::1")),
            Vetted::Ban(n("2001:db8:bad::/64"))
        );
        assert_eq!(
            set.vet(n("10.213.0.2"), ip("10.213.0.2")),
            Vetted::Ban(n("10.213.0.2"))
        );
    }
}
