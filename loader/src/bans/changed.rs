//! The networks whose bans, or whose ban count, changed since the change
//! log last took them. One table for both: a ban changes both, and two
//! sets took two inserts per ban into tables of a million (a fifth of
//! the ban manager's time in a million-line burst, and twice the memory).
use ipnet::IpNet;

#[derive(Default)]
pub struct Changed(foldhash::HashMap<IpNet, What>);

/// What changed of a network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct What {
    /// Its bans (whatever the origin): a `Net` line.
    pub bans: bool,
    /// Its ban count: a `Count` line.
    pub count: bool,
}

impl Changed {
    /// `net`'s bans changed.
    pub fn bans(&mut self, net: IpNet) {
        self.0.entry(net).or_default().bans = true;
    }

    /// `net`'s ban count changed.
    pub fn count(&mut self, net: IpNet) {
        self.0.entry(net).or_default().count = true;
    }

    /// `net`'s bans and count changed (a ban made).
    pub fn both(&mut self, net: IpNet) {
        self.0.insert(
            net,
            What {
                bans: true,
                count: true,
            },
        );
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// At most `limit` networks and what changed of each, no longer
    /// listed here.
    pub fn take(&mut self, limit: usize) -> Vec<(IpNet, What)> {
        // Taken as they are walked (one lookup each, not a walk and then a
        // removal); what the walk does not reach stays.
        let taken = self.0.extract_if(|_, _| true).take(limit).collect();
        // A burst's million networks left a table of tens of MiB behind,
        // for the daemon's life: let it go once drained.
        if self.0.is_empty() && self.0.capacity() > 4096 {
            self.0 = Default::default();
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        crate::addr::parse_net(s).unwrap()
    }

    /// A network is taken once whatever changed of it, with all that
    /// changed; what is not taken stays for the next call.
    #[test]
    fn each_network_is_taken_once_with_all_that_changed() {
        let mut c = Changed::default();
        c.bans(n("192.0.2.1"));
        c.count(n("192.0.2.1"));
        c.count(n("192.0.2.2"));
        c.both(n("192.0.2.3"));
        c.bans(n("192.0.2.4"));
        let mut taken = c.take(3);
        assert_eq!(taken.len(), 3);
        assert!(!c.is_empty());
        taken.extend(c.take(3));
        assert!(c.is_empty());
        taken.sort_by_key(|(net, _)| *net);
        let what = |bans, count| What { bans, count };
        assert_eq!(
            taken,
            [
                (n("192.0.2.1"), what(true, true)),
                (n("192.0.2.2"), what(false, true)),
                (n("192.0.2.3"), what(true, true)),
                (n("192.0.2.4"), what(true, false)),
            ]
        );
        assert!(c.take(3).is_empty());
    }
}
