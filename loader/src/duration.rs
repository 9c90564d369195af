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
