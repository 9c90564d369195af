//! Ban durations as operators write them: `30` (seconds), `10m`, `1h30m`, `1d`,
//! and `-1` (fail2ban's spelling of "forever").
use anyhow::{bail, Context as _, Result};
use std::time::Duration;

/// A ban length: `None` is permanent.
pub type BanTime = Option<Duration>;

pub fn parse_bantime(text: &str) -> Result<BanTime> {
    let text = text.trim();
    match text {
        "-1" | "permanent" | "forever" => return Ok(None),
        "" => bail!("empty duration: expected e.g. 30, 10m, 1h30m, 1d or -1"),
        _ => {}
    }
    let duration = if let Ok(secs) = text.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        humantime::parse_duration(text).with_context(|| {
            format!("invalid duration '{text}': expected e.g. 30, 10m, 1h30m, 1d or -1")
        })?
    };
    if duration.is_zero() {
        bail!("invalid duration '{text}': a ban must last longer than zero (use -1 for permanent)");
    }
    Ok(Some(duration))
}

/// Durations in configuration files: a number of seconds or a string
/// (`"10m"`), checked while they are read so errors carry file and line.
pub mod serde {
    use serde::{de, Deserialize, Deserializer};
    use std::time::Duration;

    /// A duration written as a number of seconds or a string (`"10m"`).
    fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            Raw::Text(s) => s,
        })
    }

    pub fn bantime<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::parse_bantime(&raw(d)?).map_err(|e| de::Error::custom(format!("{e:#}")))
    }

    pub fn finite<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = raw(d)?;
        super::parse_bantime(&text)
            .map_err(|e| de::Error::custom(format!("{e:#}")))?
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "'{text}' is not allowed here: a finite duration is needed"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_spellings() {
        assert_eq!(parse_bantime("30").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_bantime("10m").unwrap(),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            parse_bantime("1h30m").unwrap(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_bantime("1d").unwrap(),
            Some(Duration::from_secs(86400))
        );
        assert_eq!(
            parse_bantime("1.5h").unwrap(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(parse_bantime("-1").unwrap(), None);
    }

    #[test]
    fn bad_durations() {
        for bad in ["", "0", "0s", "abc", "10x", "-5", "1h-30m"] {
            assert!(parse_bantime(bad).is_err(), "{bad}");
        }
    }
}
