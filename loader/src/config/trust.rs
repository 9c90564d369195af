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
    /// Most registrations (and operator entries) kept: a flood of register
    /// events cannot grow memory without bound.
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
            max_entries: 100_000,
            trusted_rate: 5_000,
            trusted_burst: 20_000,
            overload_pps: 0,
            untrusted_rate: 20,
            untrusted_burst: 40,
        }
    }
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
        if self.max_entries == 0 || self.max_entries > 10_000_000 {
            bail!("[trust] key `max_entries`: between 1 and 10000000");
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
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("[trust] esl_password_file {}", path.display()))?;
        if meta.mode() & 0o077 != 0 {
            bail!(
                "[trust] esl_password_file {}: readable by others (chmod 600 it)",
                path.display()
            );
        }
        if meta.len() > MAX_PASSWORD_FILE {
            bail!("[trust] esl_password_file {}: too long", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("[trust] esl_password_file {}", path.display()))?;
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
