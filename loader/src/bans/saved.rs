//! The ban manager's whole state as the store's records, in a batch that
//! replaces what the database holds (`store::Batch::replace`): for when the
//! store's writer had to drop failed batches (`store::Progress::lost`), or
//! a database made anew from the kernel's bans.
use super::{counted_at, saved_remote, BanManager};
use crate::{
    kernel::clock::{self, Clock as _},
    store::{Batch, Clock},
};

impl BanManager {
    /// Every ban (this box's and other origins') and every ban count, as a
    /// `replace` batch stamped with this boot; the caller adds the
    /// allowlist, cursors and positions. Holds every ban as a record at
    /// once (about 200 bytes each): made only when the database must be
    /// made whole again, never per tick.
    pub fn whole_batch(&self) -> Batch {
        let clock = clock::System;
        let now = (clock.mono_ns(), clock.wall_ms());
        let bans = self
            .bans
            .iter()
            .map(|(net, b)| self.saved_local(net, b, now))
            .chain(
                self.remote
                    .iter()
                    .map(|(net, b)| saved_remote(net, &b, now)),
            )
            .collect();
        // A banned network's count goes with its ban.
        let counts = self
            .counts
            .iter()
            .map(|(net, (n, at))| (net.to_string(), *n, counted_at(*at, now)))
            .collect();
        Batch {
            replace: true,
            clock: Some(Clock {
                boot_id: clock.boot_id(),
                saved_at: now.1,
            }),
            bans,
            counts,
            ..Default::default()
        }
    }
}
