//! This box's bans in force per (jail, family), kept up to date as bans are
//! made, replaced and lifted: a scrape or a status reads a few numbers
//! instead of walking a million bans on the event loop.
use super::{caps::family, names::Name};
use ipnet::IpNet;
use std::collections::HashMap;

/// Bans per jail (by its name's index) and family (0: IPv4, 1: IPv6). An
/// entry is gone at zero, so the name of a jail with no ban, which
/// `Names::retain_used` may let go and give out again, is never in here.
#[derive(Debug, Default)]
pub struct ByJail(HashMap<(Name, usize), u64>);

impl ByJail {
    pub fn add(&mut self, jail: Name, net: &IpNet) {
        *self.0.entry((jail, family(net))).or_default() += 1;
    }

    pub fn sub(&mut self, jail: Name, net: &IpNet) {
        let key = (jail, family(net));
        if let Some(n) = self.0.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&key);
            }
        }
    }

    /// Jail, family (0, 1), bans.
    pub fn iter(&self) -> impl Iterator<Item = (Name, usize, u64)> + '_ {
        self.0.iter().map(|(&(jail, f), &n)| (jail, f, n))
    }
}
