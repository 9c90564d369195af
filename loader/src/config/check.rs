//! What spans several keys, checked once the file is parsed: one check per
//! section, in the order the errors are reported.
use super::*;

impl Config {
    pub(super) fn check(&self) -> Result<()> {
        for (name, jail) in &self.jails {
            check_jail(jail).map_err(|msg| anyhow::anyhow!("jail '{name}': {msg}"))?;
        }
        if let Some(c) = &self.crowdsec {
            c.check()?;
        }
        if let Some(r) = &self.redis {
            r.check()?;
        }
        if let Some(a) = &self.apiban {
            a.check()?;
        }
        self.notify.check()?;
        self.flood.check()?;
        self.trust.check(&self.flood)?;
        check_ignoreip(&self.ignoreip)?;
        self.fleet.check(self.flood.max_packet_bans)?;
        if self.ports.as_ref().is_some_and(Vec::is_empty) && !self.all_ports {
            bail!("key `ports`: at least one protected port is needed (or all_ports = true)");
        }
        Ok(())
    }
}

/// What is wrong with a jail, if anything (its name is added by the caller).
fn check_jail(jail: &JailConfig) -> Result<(), String> {
    match (&jail.filter, jail.failregex.is_empty()) {
        (Some(_), false) => return Err("set either `filter` or `failregex`, not both".into()),
        (None, true) => return Err("needs `filter` (built-in name) or `failregex`".into()),
        (Some(f), true) if filter::builtin(f).is_none() => {
            return Err(format!(
                "key `filter`: unknown filter '{f}' (built-in: {})",
                filter::builtin_names()
            ))
        }
        _ => {}
    }
    if jail.enabled && jail.logpath.is_empty() {
        return Err("key `logpath`: an enabled jail needs at least one log path".into());
    }
    if jail.maxretry == 0 {
        return Err("key `maxretry` must be at least 1".into());
    }
    if !(16..=128).contains(&jail.ipv6_prefix) {
        return Err(format!(
            "key `ipv6_prefix` must be between 16 and 128, not {}",
            jail.ipv6_prefix
        ));
    }
    if !(jail.bantime_factor >= 1.0 && jail.bantime_factor.is_finite()) {
        return Err("key `bantime_factor` must be a number ≥ 1".into());
    }
    if jail.max_offenders == 0 {
        return Err("key `max_offenders` must be at least 1".into());
    }
    super::aggregate::check_jail(jail)
}

impl CrowdsecConfig {
    fn check(&self) -> Result<()> {
        if !self.api_url.starts_with("http://") && !self.api_url.starts_with("https://") {
            bail!("[crowdsec] key `api_url` must start with http:// or https://");
        }
        if self.api_key.is_none() && self.api_key_file.is_none() && self.machine_id.is_none() {
            bail!("[crowdsec] needs `api_key` (or `api_key_file`) to enforce decisions, and/or `machine_id` and `password` to send alerts");
        }
        if self.machine_id.is_some() != self.password.is_some() {
            bail!("[crowdsec] `machine_id` and `password` go together");
        }
        if self.update_frequency < Duration::from_secs(1) {
            bail!("[crowdsec] `update_frequency` must be at least 1s");
        }
        if self.max_decisions == 0 {
            bail!("[crowdsec] `max_decisions` must be at least 1");
        }
        // The id is written into exported scenarios and recognized in
        // the stream: one word, as `cscli machines add` makes them.
        if self.machine_id.as_deref().is_some_and(|m| {
            m.is_empty() || m.len() > 128 || !m.bytes().all(|b| b.is_ascii_graphic())
        }) {
            bail!("[crowdsec] `machine_id` must be one word of printable ASCII, at most 128 bytes");
        }
        Ok(())
    }
}

impl RedisConfig {
    fn check(&self) -> Result<()> {
        crate::fleet::redis::check_url(&self.url).context("[redis] key `url`")?;
        let node = self.node.clone().unwrap_or_else(host_name);
        if !crate::fleet::redis::valid_name(&node) {
            bail!(
                "[redis] node name `{}` (key `node`, default the host name): at most 64 of A-Z a-z 0-9 . _ -",
                crate::text::escape(crate::text::bounded(&node, 80))
            );
        }
        if self.prefix.len() > 64 || self.prefix.chars().any(char::is_control) {
            bail!("[redis] key `prefix`: at most 64 bytes, no control characters");
        }
        Ok(())
    }
}

impl ApibanConfig {
    fn check(&self) -> Result<()> {
        if self.interval < Duration::from_secs(60) {
            bail!(
                "[apiban] `interval` must be at least 1m (APIBAN allows 11 requests per 2 minutes)"
            );
        }
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            bail!("[apiban] key `url` must start with http:// or https://");
        }
        Ok(())
    }
}

impl NotifyConfig {
    fn check(&self) -> Result<()> {
        for program in &self.exec {
            if !Path::new(program).is_absolute() {
                bail!("[notify] key `exec`: `{program}` must be an absolute path");
            }
        }
        for url in &self.webhooks {
            crate::ops::notify::check_url(url).context("[notify] key `webhooks`")?;
        }
        if self.timeout.is_zero() || self.digest_every < Duration::from_secs(1) {
            bail!("[notify] `timeout` must be above 0 and `digest_every` at least 1s");
        }
        Ok(())
    }
}

impl FloodConfig {
    fn check(&self) -> Result<()> {
        if self.max_packet_bans == 0 || self.max_packet_bans > common::MAX_BANS as usize / 2 {
            bail!(
                "[flood] key `max_packet_bans` must be between 1 and {} (half the blocklist, so that log-driven and manual bans keep room)",
                common::MAX_BANS / 2
            );
        }
        if self.window < Duration::from_secs(1) {
            bail!("[flood] key `window` must be at least 1s (escalation counts whole seconds)");
        }
        if self.rate > 1_000_000_000 {
            bail!("[flood] key `rate` must be at most 1000000000 packets/s (above, the limiter could not tell packets apart)");
        }
        if self.enabled && self.rate == 0 {
            bail!("[flood] key `rate` must be at least 1 (or enabled = false)");
        }
        self.check_sip_budgets()?;
        Ok(())
    }
}

/// Never-ban ranges no wider than a ban may be.
fn check_ignoreip(ignoreip: &[Net]) -> Result<()> {
    for net in ignoreip {
        let min = match net.0 {
            IpNet::V4(_) => addr::MIN_BAN_PREFIX_V4,
            IpNet::V6(_) => addr::MIN_BAN_PREFIX_V6,
        };
        if net.0.prefix_len() < min {
            bail!(
                "key `ignoreip`: {} would never ban, limit or drop a large part of the Internet; \
                 prefixes shorter than /{min} are refused",
                net.0
            );
        }
    }
    Ok(())
}

impl FleetConfig {
    /// Prefixes no wider than a /8 (IPv4) or /16 (IPv6), and room left
    /// for this box's own bans beside `packet_bans`.
    fn check(&self, packet_bans: usize) -> Result<()> {
        if !(8..=32).contains(&self.widest_ipv4_prefix)
            || !(16..=128).contains(&self.widest_ipv6_prefix)
        {
            bail!(
                "[fleet] `widest_ipv4_prefix` must be 8 to 32 and `widest_ipv6_prefix` 16 to 128"
            );
        }
        let room = u64::from(common::MAX_BANS) - RESERVED_LOCAL_BANS;
        if self.max_remote_bans.saturating_add(packet_bans as u64) > room {
            bail!(
                "[fleet] `max_remote_bans` plus [flood] `max_packet_bans` must be at most {room}, \
                 so that {RESERVED_LOCAL_BANS} entries of the blocklist stay for log-driven and manual bans"
            );
        }
        Ok(())
    }
}
