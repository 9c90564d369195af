//! The operator's trusted sources in the daemon: taken in at start (with
//! the kernel's entries when the file cannot be read), saved, and
//! `sipguard trust`/`untrust`.
use super::{operator, Operator};
use crate::{
    daemon::Daemon,
    kernel::{clock, trust::TrustMaps},
};
use anyhow::{bail, Result};
use common::{RateKey, TRUST_OPERATOR, TRUST_REGISTERED};
use std::time::Duration;

impl Daemon {
    /// At start: the operator's file, and what the kernel holds from the
    /// daemon before (registrations are adopted until FreeSWITCH's listing
    /// says otherwise; operator entries no longer in the file go).
    pub(super) fn take_in_trust(&mut self) -> Result<()> {
        let t = &mut self.trust;
        let entries = match operator::load(&t.operator_file) {
            Ok(e) => e,
            Err(e) => {
                // The kernel's operator entries stay (taken in below) and
                // the file is left as it is for the operator to mend.
                let error = crate::text::escape(&format!("{e:#}")).into_owned();
                tracing::error!(
                    "the operator's trusted sources file cannot be read: {error}; the kernel's operator entries are kept, the file is not overwritten, and `sipguard trust`/`untrust` are refused until it is fixed or removed and the daemon restarted"
                );
                t.operator_file_error = Some(error);
                Vec::new()
            }
        };
        for e in entries {
            let o = Operator::new(e.addr, e.until);
            if o.until_unix.is_none() || o.until_ns > clock::mono_now_ns() {
                t.operator
                    .insert(crate::kernel::trust::trust_key(e.addr), o);
            }
        }
        let now = clock::mono_now_ns();
        let pinned = t
            .maps
            .as_ref()
            .map(TrustMaps::entries)
            .transpose()?
            .unwrap_or_default();
        let mut stale = Vec::new();
        for (key, e) in pinned {
            match e.origin {
                TRUST_REGISTERED if !e.is_expired(now) => {
                    let addr = crate::kernel::trust::trust_net(&key).addr();
                    let id = ("adopted".to_owned(), addr.to_string(), String::new());
                    t.registry.register(id, addr, e.expires_at_ns, 0);
                }
                TRUST_OPERATOR if t.operator_file_error.is_some() => {
                    let addr = crate::kernel::trust::trust_net(&key).addr();
                    let until_unix = (e.expires_at_ns != 0).then(|| {
                        let left = e.expires_at_ns.saturating_sub(now) / 1_000_000_000;
                        operator::unix_now().saturating_add(i64::try_from(left).unwrap_or(i64::MAX))
                    });
                    t.operator.insert(
                        key,
                        Operator {
                            addr,
                            until_unix,
                            until_ns: e.expires_at_ns,
                        },
                    );
                }
                _ if !t.operator.contains_key(&key) => stale.push(key),
                _ => {}
            }
        }
        let keys: Vec<RateKey> = t.operator.keys().copied().chain(stale).collect();
        for key in keys {
            t.write(key);
        }
        Ok(())
    }

    pub(super) fn save_operator_trust(&self) {
        if self.trust.operator_file_error.is_some() {
            // Never written over: it may hold what the operator wants back.
            return;
        }
        let entries: Vec<operator::Entry> = self
            .trust
            .operator
            .values()
            .map(|o| operator::Entry {
                addr: o.addr,
                until: o.until_unix,
            })
            .collect();
        if let Err(e) = operator::save(&self.trust.operator_file, &entries) {
            tracing::error!("saving the operator's trusted sources failed: {e:#}");
        }
    }

    /// Refuses a change while the operator's file could not be read at
    /// start (saving would overwrite it).
    fn operator_file_usable(&self) -> Result<()> {
        if let Some(e) = &self.trust.operator_file_error {
            bail!(
                "the operator's trusted sources file could not be read at start ({e}): fix or remove {}, then restart the daemon",
                self.trust.operator_file.display()
            );
        }
        Ok(())
    }

    /// `sipguard trust ADDR [--for DURATION]`.
    pub(in crate::daemon) fn do_trust(
        &mut self,
        net: ipnet::IpNet,
        duration: Option<Duration>,
    ) -> Result<crate::control::Trusted> {
        let addr = operator::trust_addr(net)?;
        let key = crate::kernel::trust::trust_key(addr);
        self.operator_file_usable()?;
        if !self.trust.operator.contains_key(&key) {
            operator::check_room(self.trust.operator.len())?;
        }
        let until_unix = duration.map(operator::until_unix).transpose()?;
        let shown = crate::addr::display(&crate::kernel::trust::trust_net(&key));
        let before = self
            .trust
            .operator
            .insert(key, Operator::new(addr, until_unix));
        if let Err(e) = self.trust.try_write(key) {
            // Not trusted: the operator is told, nothing kept.
            match before {
                Some(o) => self.trust.operator.insert(key, o),
                None => self.trust.operator.remove(&key),
            };
            self.trust.write(key);
            bail!("{shown} is not trusted: {e:#}");
        }
        self.save_operator_trust();
        tracing::info!(
            "trusted {shown} (operator){}",
            duration
                .map(|d| format!(" for {}", humantime::format_duration(d)))
                .unwrap_or_default()
        );
        Ok(crate::control::Trusted {
            trusted: shown,
            expires_in_secs: duration.map(|d| d.as_secs()),
        })
    }

    /// `sipguard untrust ADDR`: the operator's entry goes (a registration
    /// ends with FreeSWITCH's unregister).
    pub(in crate::daemon) fn do_untrust(
        &mut self,
        net: ipnet::IpNet,
    ) -> Result<crate::control::Untrusted> {
        let addr = operator::trust_addr(net)?;
        let key = crate::kernel::trust::trust_key(addr);
        let shown = crate::addr::display(&crate::kernel::trust::trust_net(&key));
        self.operator_file_usable()?;
        let Some(before) = self.trust.operator.remove(&key) else {
            if self.trust.registry.key(&key).is_some() {
                bail!("{shown} is trusted as registered with FreeSWITCH, not by `sipguard trust`: it ends when it unregisters or expires");
            }
            bail!("{shown} is not trusted");
        };
        if let Err(e) = self.trust.try_write(key) {
            self.trust.operator.insert(key, before);
            bail!("{shown} is still trusted: {e:#}");
        }
        self.save_operator_trust();
        tracing::info!("untrusted {shown}");
        Ok(crate::control::Untrusted { untrusted: shown })
    }
}
