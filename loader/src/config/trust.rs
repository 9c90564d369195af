//! `[trust]`: trusted sources (phones FreeSWITCH registered, learnt over its
//! event socket; the operator's `sipguard trust`) and overload shedding.
use crate::{duration, text::Secret};
use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// FreeSWITCH's event socket, `HOST:PORT` (unset: as discovered in
    /// `autoload_configs/event_socket.conf.xml`; `""`: do not connect).
    pub esl: Option<String>,
    /// Its password (unset: `esl_password_file`, else as discovered).
    pub esl_password: Option<Secret>,
    /// A root-only file holding the password (whole content, trimmed).
    pub esl_password_file: Option<PathBuf>,
    /// Besides root, the user whose socket on this box may be sent the
    /// password (FreeSWITCH's; unset: the owner of the discovered
    /// `event_socket.conf.xml`, else root only).
    pub esl_uid: Option<u32>,
    /// How long a registration's address stays trusted past its expiry.
    #[serde(deserialize_with = "duration::serde::finite")]
    pub grace: Duration,
    /// How often FreeSWITCH is asked for its registrations again while
    /// connected (0: only on each connect). It drops some without an
    /// event: a registration replaced by the same user's new one (a phone
    /// rebooted, with a new call-id), one removed by `sofia profile ...
    /// flush_inbound_reg`; the listing is the truth for those.
    #[serde(deserialize_with = "duration::serde::finite")]
    pub relist: Duration,
    /// Most registrations kept: a flood of register events cannot grow
    /// memory without bound. With the operator's entries they fit the
    /// kernel's trusted map (`MAX_TRUSTED`), so a refusal is ours, counted,
    /// never the kernel's.
    pub max_entries: usize,
    /// A trusted source's budget (packets/s, and at once above it).
    pub trusted_rate: u32,
    pub trusted_burst: u32,
    /// The box's SIP packets per second (all sources, all CPUs) over which
    /// it is overloaded; 0: never.
    pub overload_pps: u64,
    /// While overloaded, what an untrusted source may send.
    pub untrusted_rate: u32,
    pub untrusted_burst: u32,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            esl: None,
            esl_password: None,
            esl_password_file: None,
            esl_uid: None,
            grace: Duration::from_secs(600),
            relist: Duration::from_secs(300),
            max_entries: 50_000,
            trusted_rate: 5_000,
            trusted_burst: 20_000,
            overload_pps: 0,
            untrusted_rate: 20,
            untrusted_burst: 40,
        }
    }
}

/// Most `max_entries`: what the kernel's trusted map holds beyond the
/// operator's room (a registration takes at most one key).
pub fn max_entries() -> usize {
    (common::MAX_TRUSTED as usize).saturating_sub(crate::trust::operator::MAX_ENTRIES)
}

/// Longest a password file may be.
const MAX_PASSWORD_FILE: u64 = 4096;

impl TrustConfig {
    /// Checked against `[flood]`: the trusted budget is never below the
    /// normal one, the overload budget never above it.
    pub fn check(&self, flood: &super::FloodConfig) -> Result<()> {
        if let Some(esl) = &self.esl {
            if !esl.is_empty() {
                parse_esl(esl)?;
            }
        }
        if self.esl_password.is_some() && self.esl_password_file.is_some() {
            bail!("[trust]: set either `esl_password` or `esl_password_file`, not both");
        }
        let most = max_entries();
        if self.max_entries == 0 || self.max_entries > most {
            bail!(
                "[trust] key `max_entries`: between 1 and {most} (the kernel's trusted map holds {} sources, {} of them kept for `sipguard trust`)",
                common::MAX_TRUSTED,
                crate::trust::operator::MAX_ENTRIES
            );
        }
        if !self.relist.is_zero() && self.relist < Duration::from_secs(1) {
            bail!("[trust] key `relist`: 0 (on connect only) or at least 1s");
        }
        if self.trusted_rate == 0 || self.trusted_burst == 0 {
            bail!("[trust]: `trusted_rate` and `trusted_burst` must be above 0");
        }
        // Compared as budgets: rate, and burst in seconds of the rate.
        let rate = u64::from(flood.rate);
        if u64::from(self.trusted_rate) < rate
            || u64::from(self.trusted_burst) * rate
                < u64::from(flood.burst) * u64::from(self.trusted_rate)
        {
            bail!(
                "[trust]: the trusted budget ({} /s, burst {}) must be at least [flood]'s ({} /s, burst {}, and as many seconds of burst)",
                self.trusted_rate, self.trusted_burst, flood.rate, flood.burst
            );
        }
        if self.overload_pps > 0 {
            if !flood.enabled {
                bail!("[trust] `overload_pps` needs the limiter ([flood] enabled = true)");
            }
            if self.untrusted_rate == 0 || self.untrusted_rate > flood.rate {
                bail!(
                    "[trust] key `untrusted_rate`: between 1 and [flood] rate ({}); it is what an untrusted source keeps while overloaded",
                    flood.rate
                );
            }
            if self.untrusted_burst == 0 {
                bail!("[trust] key `untrusted_burst`: above 0");
            }
        }
        Ok(())
    }

    /// The password configured here, if any (file read now).
    pub fn password(&self) -> Result<Option<Secret>> {
        if let Some(p) = &self.esl_password {
            return Ok(Some(p.clone()));
        }
        let Some(path) = &self.esl_password_file else {
            return Ok(None);
        };
        use crate::files::{self, Opened};
        use std::os::unix::fs::MetadataExt as _;
        let at = || format!("[trust] esl_password_file {}", path.display());
        // Opened without blocking (a FIFO there would hold the daemon's
        // loop), checked on the descriptor that is then read.
        let (file, meta) = match files::open_regular(path).with_context(at)? {
            Opened::File(f, m) => (f, m),
            Opened::Missing => bail!("{}: no such file", at()),
            Opened::NotRegular(m) => bail!("{}: {}, not a regular file", at(), files::kind(&m)),
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me && meta.uid() != 0 {
            bail!(
                "{}: owned by uid {}, not by root: anyone who can write it chooses where the password check goes (chown root it)",
                at(),
                meta.uid()
            );
        }
        if meta.mode() & 0o077 != 0 {
            bail!("{}: readable or writable by others (chmod 600 it)", at());
        }
        let bytes = files::read_at_most(&file, MAX_PASSWORD_FILE)
            .with_context(at)?
            .with_context(|| format!("{}: longer than {MAX_PASSWORD_FILE} bytes", at()))?;
        let text = String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", at()))?;
        let text = text.trim();
        if text.is_empty() || text.contains(['\n', '\r']) {
            bail!(
                "[trust] esl_password_file {}: one line, not empty",
                path.display()
            );
        }
        Ok(Some(Secret::new(text)))
    }

    /// The kernel's budgets.
    pub fn kernel(&self) -> common::TrustConfig {
        let untrusted = if self.overload_pps > 0 {
            (self.untrusted_rate, self.untrusted_burst)
        } else {
            (0, 0)
        };
        common::TrustConfig::new((self.trusted_rate, self.trusted_burst), untrusted)
    }
}

/// `HOST:PORT` (a name resolved now; IPv6 as `[::1]:8021`).
pub fn parse_esl(text: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let shown = crate::text::escape(crate::text::bounded(text, 200)).into_owned();
    text.to_socket_addrs()
        .with_context(|| format!("[trust] key `esl`: {shown} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("[trust] key `esl`: {shown} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_entries_fits_the_kernel_map_beside_the_operators_room() {
        let flood = crate::config::FloodConfig::default();
        let mut c = TrustConfig::default();
        assert!(c.check(&flood).is_ok(), "the default fits");
        assert!(
            c.max_entries + crate::trust::operator::MAX_ENTRIES <= common::MAX_TRUSTED as usize
        );
        c.max_entries = max_entries();
        assert!(c.check(&flood).is_ok());
        c.max_entries = max_entries() + 1;
        let e = c.check(&flood).unwrap_err().to_string();
        assert!(e.contains("max_entries") && e.contains("65536"), "{e}");
        c.max_entries = 0;
        assert!(c.check(&flood).is_err());
    }

    fn with_file(path: &std::path::Path) -> TrustConfig {
        TrustConfig {
            esl_password_file: Some(path.to_owned()),
            ..TrustConfig::default()
        }
    }

    #[test]
    fn the_password_file_is_a_private_regular_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("esl.pass");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            with_file(&p).password().unwrap().unwrap().expose(),
            "s3cret"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", with_file(&p).password().unwrap_err());
        assert!(e.contains("chmod 600") && !e.contains("s3cret"), "{e}");
        // A FIFO is refused at once, never opened for reading (which
        // would wait for a writer).
        let fifo = dir.path().join("fifo");
        crate::files::mkfifo(&fifo);
        let e = format!("{:#}", with_file(&fifo).password().unwrap_err());
        assert!(e.contains("a FIFO, not a regular file"), "{e}");
        let e = format!(
            "{:#}",
            with_file(&dir.path().join("none")).password().unwrap_err()
        );
        assert!(e.contains("no such file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 5000]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = format!("{:#}", with_file(&big).password().unwrap_err());
        assert!(e.contains("longer than 4096 bytes"), "{e}");
    }
}
