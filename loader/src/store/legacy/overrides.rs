//! What the change log and the journal say, laid over a snapshot as a
//! start reads it (see `changes`).
use crate::store::records::{Count, SavedBan};
use ipnet::IpNet;
use std::collections::HashMap;

/// What the change log and the journal say of networks, laid over a
/// snapshot as it is read: a network they name has its bans from them, every
/// other keeps the snapshot's, so the snapshot's million bans are neither
/// held nor copied to apply a few changes.
#[derive(Debug, Default)]
pub struct Overrides {
    /// The change log's bans of each network it names.
    pub(super) nets: HashMap<IpNet, Vec<SavedBan>>,
    /// The operator's bans and unbans while no daemon ran (the journal),
    /// which come after everything the log says.
    by_hand: HashMap<IpNet, ByHand>,
    /// The change log's counts by network (0: forgotten).
    pub(super) counts: HashMap<String, (u32, i64)>,
    /// A later boot voided the snapshot's monotonic deadlines.
    pub(super) boot_over: bool,
}

/// What the journal did to one network, in sum.
#[derive(Debug, Default)]
struct ByHand {
    /// An unban: every ban of it before goes.
    drop_all: bool,
    /// A ban by hand replaces this box's own ban; other origins' stay.
    drop_local: bool,
    ban: Option<SavedBan>,
}

impl Overrides {
    /// The journal's bans and unbans (see `journal::apply`), after the log.
    pub fn by_hand(&mut self, net: IpNet, ban: Option<SavedBan>) {
        let entry = self.by_hand.entry(net).or_default();
        match ban {
            Some(b) => {
                entry.drop_local = true;
                entry.ban = Some(b);
            }
            None => {
                *entry = ByHand {
                    drop_all: true,
                    ..ByHand::default()
                }
            }
        }
    }

    /// Whether `b`, a ban of `net` the snapshot or the log holds, stands.
    fn keeps(&self, net: &IpNet, b: &SavedBan) -> bool {
        self.by_hand
            .get(net)
            .is_none_or(|h| !(h.drop_all || h.drop_local && b.origin.is_none()))
    }

    /// The snapshot's bans with the overrides laid over them.
    pub fn bans(self, snapshot: impl Iterator<Item = SavedBan>) -> impl Iterator<Item = SavedBan> {
        let this = std::rc::Rc::new(self);
        let (first, rest) = (this.clone(), this);
        // Nothing to lay over (most starts): no network parsed twice.
        let any = !first.nets.is_empty() || !first.by_hand.is_empty();
        snapshot
            .filter_map(move |mut b| {
                let net = any.then(|| crate::addr::parse_net(&b.net).ok()).flatten();
                if let Some(net) = net {
                    if first.nets.contains_key(&net) || !first.keeps(&net, &b) {
                        return None;
                    }
                }
                if first.boot_over {
                    b.expires_mono = None;
                }
                Some(b)
            })
            .chain(std::iter::once(()).flat_map(move |()| {
                let logged = rest
                    .nets
                    .iter()
                    .flat_map(|(net, bans)| bans.iter().filter(|b| rest.keeps(net, b)).cloned());
                let by_hand = rest.by_hand.values().filter_map(|h| h.ban.clone());
                logged.chain(by_hand).collect::<Vec<_>>()
            }))
    }

    /// The snapshot's counts with the log's laid over them.
    pub fn counts<I: Iterator<Item = Count>>(
        &mut self,
        snapshot: I,
    ) -> impl Iterator<Item = Count> + use<I> {
        let counts = std::mem::take(&mut self.counts);
        let logged: Vec<Count> = counts
            .iter()
            .filter(|(_, (n, _))| *n > 0)
            .map(|(net, (n, at))| (net.clone(), *n, *at))
            .collect();
        snapshot
            .filter(move |(net, _, _)| !counts.contains_key(net))
            .chain(logged)
    }
}
