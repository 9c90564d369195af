//! The keys of prefix aggregation (`aggregate_after`, `aggregate_v4`,
//! `aggregate_v6`; see `bans::aggregate`): checked per jail, and refused,
//! with the reason, where the evidence is a packet.
use super::*;
use crate::bans::aggregate::{PACKET_JAILS, PACKET_WHY};

const KEYS: [&str; 3] = ["aggregate_after", "aggregate_v4", "aggregate_v6"];

/// Refuses aggregation keys on a packet-evidence jail: in `[flood]` (where
/// `sip-flood` and `sip-scanner` are configured) or in a `[jails.NAME]`
/// named like one. Read from the text before the typed parse, so the error
/// says why rather than "unknown field"; a text that is not TOML is left to
/// the typed parse to report.
pub(super) fn reject_packet_jails(text: &str) -> Result<()> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    let has_key = |t: Option<&toml::Value>| {
        t.and_then(toml::Value::as_table)
            .and_then(|t| KEYS.iter().find(|k| t.contains_key(**k)))
    };
    if let Some(key) = has_key(table.get("flood")) {
        bail!("[flood] key `{key}`: {PACKET_WHY}");
    }
    let jails = table.get("jails").and_then(toml::Value::as_table);
    for name in PACKET_JAILS {
        if let Some(key) = has_key(jails.and_then(|j| j.get(name))) {
            bail!("jail '{name}': key `{key}`: {PACKET_WHY}");
        }
    }
    Ok(())
}

/// A jail's aggregation keys, in range (its name is added by the caller).
pub(super) fn check_jail(jail: &JailConfig) -> Result<(), String> {
    jail.aggregation().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAIL: &str = "[jails.fs]\nlogpath = \"/var/log/fs.log\"\nfilter = \"freeswitch\"\n";

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text, "t.toml").unwrap_err())
    }

    #[test]
    fn log_jails_aggregate_with_defaults() {
        let c = Config::parse(&format!("{JAIL}aggregate_after = 3\n"), "t.toml").unwrap();
        let s = c.jails["fs"].aggregation().unwrap().unwrap();
        assert_eq!((s.after, s.v4, s.v6), (3, 24, 56));
        let c = Config::parse(
            &format!("{JAIL}aggregate_after = 2\naggregate_v4 = 16\nipv6_prefix = 128\n"),
            "t.toml",
        )
        .unwrap();
        let s = c.jails["fs"].aggregation().unwrap().unwrap();
        assert_eq!((s.v4, s.v6), (16, 64));
        assert_eq!(
            Config::parse(JAIL, "t").unwrap().jails["fs"].aggregation(),
            Ok(None)
        );
    }

    #[test]
    fn bad_values_say_which_key_and_why() {
        let e = err(&format!("{JAIL}aggregate_after = 1\n"));
        assert!(
            e.contains("jail 'fs'") && e.contains("`aggregate_after` must be 2 to 256"),
            "{e}"
        );
        let e = err(&format!("{JAIL}aggregate_after = 3\naggregate_v4 = 4\n"));
        assert!(e.contains("`aggregate_v4` must be 16 to 31"), "{e}");
        // Only the filter whose lines follow a digest challenge.
        for filter in ["freeswitch-challenge", "kamailio", "asterisk"] {
            let text = JAIL.replace("\"freeswitch\"", &format!("\"{filter}\""));
            let e = err(&format!("{text}aggregate_after = 3\n"));
            assert!(
                e.contains("needs `filter = \"freeswitch\"`"),
                "{filter}: {e}"
            );
        }
        let custom = "[jails.fs]\nlogpath = \"/x\"\nfailregex = \"from <HOST>$\"\n";
        let e = err(&format!("{custom}aggregate_after = 3\n"));
        assert!(e.contains("a custom failregex"), "{e}");
        let e = err(&format!("{JAIL}aggregate_v6 = 48\n"));
        assert!(e.contains("need `aggregate_after`"), "{e}");
    }

    /// Wherever a packet jail would take the keys, they are refused with
    /// the reason, not as an unknown field.
    #[test]
    fn packet_jails_cannot_aggregate() {
        let e = err("[flood]\naggregate_after = 3\n");
        assert!(
            e.contains("[flood] key `aggregate_after`") && e.contains("forger"),
            "{e}"
        );
        for jail in PACKET_JAILS {
            let e = err(&format!("[jails.{jail}]\naggregate_v4 = 24\n"));
            assert!(
                e.contains(&format!("jail '{jail}'")) && e.contains("forger"),
                "{e}"
            );
        }
        // Not TOML: the typed parse says where.
        assert!(err("[flood\n").contains("line 1"));
    }
}
