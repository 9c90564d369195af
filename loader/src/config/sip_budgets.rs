//! `[flood]`'s budgets on what a UDP packet to a SIP port starts with:
//! `invalid_rate`/`invalid_burst` (payloads that are neither a SIP request
//! or response line nor a keepalive) and `[flood.methods]` (requests per
//! method class), per source, enforced in XDP (see `xdp-ebpf/src/methods.rs`).
//!
//! ```toml
//! [flood]
//! invalid_rate = 5        # per source; 0: off
//! invalid_burst = 10
//! [flood.methods]
//! OPTIONS = 20                        # burst 40
//! REGISTER = { rate = 10, burst = 100 }
//! ```
use super::FloodConfig;
use anyhow::{bail, Result};
use common::{method, SipBudget, SipLimits, SIP_INVALID_ON, SIP_METHODS_ON};
use serde::{de, Deserialize, Deserializer};
use std::{collections::BTreeMap, fmt, time::Duration};

pub(super) fn default_invalid_rate() -> u32 {
    5
}
pub(super) fn default_invalid_burst() -> u32 {
    10
}
pub(super) fn default_invalid_bantime() -> Option<Duration> {
    Some(Duration::from_secs(600))
}

/// One method class's budget: `RATE` or `{ rate = R, burst = B }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodBudget {
    pub rate: u32,
    /// Twice the rate unless given.
    pub burst: u32,
}

/// `[flood.methods]`: class name → budget, as written (checked in `check`).
pub type MethodBudgets = BTreeMap<String, MethodBudget>;

impl<'de> Deserialize<'de> for MethodBudget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = MethodBudget;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("packets per second, or { rate = R, burst = B }")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MethodBudget, E> {
                let rate = u32::try_from(v)
                    .map_err(|_| E::custom(format!("a rate must be 1..=4294967295, not {v}")))?;
                Ok(MethodBudget {
                    rate,
                    burst: rate.saturating_mul(2),
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<MethodBudget, A::Error> {
                let (mut rate, mut burst) = (None, None);
                while let Some(key) = m.next_key::<String>()? {
                    match key.as_str() {
                        "rate" => rate = Some(m.next_value::<u32>()?),
                        "burst" => burst = Some(m.next_value::<u32>()?),
                        _ => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{}` (expected `rate` or `burst`)",
                                crate::text::escape(&key)
                            )))
                        }
                    }
                }
                let rate = rate.ok_or_else(|| de::Error::custom("missing key `rate`"))?;
                Ok(MethodBudget {
                    rate,
                    burst: burst.unwrap_or(rate.saturating_mul(2)),
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl FloodConfig {
    pub(super) fn check_sip_budgets(&self) -> Result<()> {
        if self.invalid_rate > 1_000_000_000 {
            bail!("[flood] key `invalid_rate` must be at most 1000000000 packets/s");
        }
        if self.invalid_rate > 0 && self.invalid_burst == 0 {
            bail!("[flood] key `invalid_burst` must be at least 1");
        }
        for (name, b) in &self.methods {
            let known = method::NAMES.contains(&name.as_str());
            let name = crate::text::escape(name);
            if !known {
                bail!(
                    "[flood.methods]: unknown method class '{name}' (known: {})",
                    method::NAMES.join(", ")
                );
            }
            if b.rate == 0 || b.rate > 1_000_000_000 {
                bail!(
                    "[flood.methods] {name}: the rate must be between 1 and 1000000000 packets/s"
                );
            }
            if b.burst == 0 {
                bail!("[flood.methods] {name}: the burst must be at least 1");
            }
        }
        Ok(())
    }

    /// The kernel's view (the `sip_limits` map): all off with `enabled =
    /// false`.
    pub fn sip_limits(&self) -> SipLimits {
        let mut limits = SipLimits::default();
        if !self.enabled {
            return limits;
        }
        if self.invalid_rate > 0 {
            limits.flags |= SIP_INVALID_ON;
            limits.invalid = SipBudget::new(self.invalid_rate, self.invalid_burst);
        }
        for (class, name) in method::NAMES.iter().enumerate() {
            if let Some(b) = self.methods.get(*name) {
                limits.flags |= SIP_METHODS_ON;
                limits.methods[class] = SipBudget::new(b.rate, b.burst);
            }
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use common::{method, SIP_INVALID_ON, SIP_METHODS_ON};

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text, "test.toml").unwrap_err())
    }

    #[test]
    fn defaults_hold_invalid_messages_and_no_method() {
        let c = Config::parse("", "x").unwrap();
        let l = c.flood.sip_limits();
        assert_eq!(l.flags, SIP_INVALID_ON);
        assert_eq!(l.invalid.interval_ns, 200_000_000);
        assert_eq!(l.invalid.tolerance_ns, 2_000_000_000);
        assert!(l.methods.iter().all(|b| !b.is_on()));
        assert!(c.flood.invalid_bans);
        let off = Config::parse("[flood]\ninvalid_rate = 0\n", "x").unwrap();
        assert_eq!(off.flood.sip_limits().flags, 0);
        let disabled = Config::parse("[flood]\nenabled = false\n", "x").unwrap();
        assert_eq!(disabled.flood.sip_limits().flags, 0);
    }

    #[test]
    fn method_budgets_parse_with_a_default_burst() {
        let c = Config::parse(
            "[flood.methods]\nOPTIONS = 20\nREGISTER = { rate = 10, burst = 100 }\nother = { rate = 3 }\n",
            "x",
        )
        .unwrap();
        let l = c.flood.sip_limits();
        assert_eq!(l.flags, SIP_INVALID_ON | SIP_METHODS_ON);
        let opt = l.methods[method::OPTIONS as usize];
        assert_eq!(
            (opt.interval_ns, opt.tolerance_ns),
            (50_000_000, 2_000_000_000)
        );
        let reg = l.methods[method::REGISTER as usize];
        assert_eq!(
            (reg.interval_ns, reg.tolerance_ns),
            (100_000_000, 10_000_000_000)
        );
        let other = l.methods[method::OTHER as usize];
        assert_eq!(other.tolerance_ns, 6 * other.interval_ns);
        assert!(!l.methods[method::INVITE as usize].is_on());
        assert!(!l.methods[method::SUBSCRIBE as usize].is_on());
    }

    #[test]
    fn bad_budgets_are_refused_clearly() {
        let e = err("[flood.methods]\nBYE = 5\n");
        assert!(
            e.contains("unknown method class 'BYE'")
                && e.contains("REGISTER, INVITE, OPTIONS, SUBSCRIBE, other"),
            "{e}"
        );
        assert!(err("[flood.methods]\nOPTIONS = 0\n").contains("OPTIONS: the rate must be"));
        assert!(err("[flood.methods]\nOPTIONS = -3\n").contains("a rate must be"));
        let e = err("[flood.methods]\nINVITE = { rate = 5, burst = 0 }\n");
        assert!(e.contains("INVITE: the burst must be at least 1"), "{e}");
        let e = err("[flood.methods]\nINVITE = { rate = 5, bust = 9 }\n");
        assert!(e.contains("unknown key `bust`"), "{e}");
        assert!(err("[flood.methods]\nINVITE = { burst = 9 }\n").contains("missing key `rate`"));
        assert!(err("[flood.methods]\nINVITE = \"fast\"\n").contains("packets per second"));
        assert!(err("[flood]\ninvalid_burst = 0\n").contains("invalid_burst"));
        // A rate of 0 turns the invalid budget off: no burst needed.
        assert!(Config::parse("[flood]\ninvalid_rate = 0\ninvalid_burst = 0\n", "x").is_ok());
    }
}
