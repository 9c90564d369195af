//! Sources that are never counted, banned or dropped: the configured
//! `ignoreip`, loopback, and this host's own addresses (fail2ban's
//! `ignoreself`), so a misconfigured filter can never lock the box out of
//! itself.
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Clone, Debug, Default)]
pub struct IgnoreList {
    nets: Vec<IpNet>,
}

impl IgnoreList {
    pub fn new(configured: impl IntoIterator<Item = IpNet>) -> Self {
        let mut nets: Vec<IpNet> = configured.into_iter().collect();
        nets.push("127.0.0.0/8".parse().expect("valid"));
        nets.push("::1/128".parse().expect("valid"));
        if let Ok(ifaces) = if_addrs::get_if_addrs() {
            nets.extend(ifaces.iter().map(|i| IpNet::from(i.ip())));
        }
        nets.sort();
        nets.dedup();
        Self { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_loopback_and_own_addresses() {
        let l = IgnoreList::new(["192.0.2.0/24".parse().unwrap()]);
        assert!(l.contains("192.0.2.9".parse().unwrap()));
        assert!(l.contains("127.0.0.1".parse().unwrap()));
        assert!(l.contains("::1".parse().unwrap()));
        assert!(!l.contains("198.51.100.1".parse().unwrap()));
    }
}
