//! A log line's own time, read from the prefix its server wrote at its
//! start (never from text a client wrote further on).
//!
//! FreeSWITCH's own timestamp is read by hand, not by a regex with
//! captures: every failure line has one, and running the capture engine
//! for it took half the time of matching the line (a tenth of a
//! million-line burst). The hand parsers accept exactly what the patterns
//! they replace (kept in the tests) accept in ASCII; a line whose prefix
//! they do not read goes the slower way, `LINE_START` with captures.
use super::{LogTz, LINE_START};
use chrono::{DateTime, Datelike as _, Local, NaiveDate, NaiveDateTime, TimeZone as _};
use regex::Regex;
use std::sync::LazyLock;

/// The prefix alone, to read a line's time from the start of the line
/// (never from text a client wrote further on).
static PREFIX: LazyLock<Regex> = LazyLock::new(|| Regex::new(&LINE_START).expect("valid"));

/// The length of a session UUID and the space after it
/// (`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12} `).
const UUID_LEN: usize = 37;

/// Whether `line` starts with a session UUID and a space.
fn starts_with_uuid(line: &[u8]) -> bool {
    line.len() >= UUID_LEN
        && line[..UUID_LEN].iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            36 => b == b' ',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether `after` (what follows the timestamp) is FreeSWITCH's CPU-idle
/// percentage and the level: ` \d{1,3}\.\d{1,2}% \[`.
fn cpu_next(after: &[u8]) -> bool {
    let Some(rest) = after.strip_prefix(b" ") else {
        return false;
    };
    let whole = digits(rest, 3);
    if whole == 0 || rest.get(whole) != Some(&b'.') {
        return false;
    }
    let rest = &rest[whole + 1..];
    let fraction = digits(rest, 2);
    fraction > 0 && rest[fraction..].starts_with(b"% [")
}

/// How many ASCII digits `s` starts with, at most `max`.
fn digits(s: &[u8], max: usize) -> usize {
    s.iter()
        .take(max)
        .take_while(|b| b.is_ascii_digit())
        .count()
}

/// FreeSWITCH's timestamp, `(YYYY-)?MM-DD hh:mm:ss(.f{1,9})?`, as read.
#[derive(Debug, PartialEq, Eq)]
struct FsTime {
    year: Option<i32>,
    month: u32,
    day: u32,
    h: u32,
    m: u32,
    s: u32,
    nanos: u32,
    /// Where the timestamp ends in the text read.
    len: usize,
}

/// FreeSWITCH's timestamp at the start of `text`
/// (`^(?:(\d{4})-)?(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?`,
/// with ASCII digits), or none.
fn fs_time(text: &[u8]) -> Option<FsTime> {
    // The value of the `n` ASCII digits at `at`, followed by `then` (if any).
    let num = |at: usize, n: usize, then: Option<u8>| -> Option<u32> {
        let field = text.get(at..at + n)?;
        if !field.iter().all(u8::is_ascii_digit) {
            return None;
        }
        if let Some(then) = then {
            if text.get(at + n) != Some(&then) {
                return None;
            }
        }
        Some(field.iter().fold(0, |v, d| v * 10 + u32::from(d - b'0')))
    };
    // With a year, its four digits and a dash come first (without one, the
    // third character is a dash: never both).
    let (year, at) = match num(0, 4, Some(b'-')) {
        Some(y) => (Some(y as i32), 5),
        None => (None, 0),
    };
    let month = num(at, 2, Some(b'-'))?;
    let day = num(at + 3, 2, Some(b' '))?;
    let h = num(at + 6, 2, Some(b':'))?;
    let m = num(at + 9, 2, Some(b':'))?;
    let s = num(at + 12, 2, None)?;
    let mut len = at + 14;
    let mut nanos = 0;
    if text.get(len) == Some(&b'.') {
        let n = digits(&text[len + 1..], 9);
        if n > 0 {
            let fraction = num(len + 1, n, None)?;
            nanos = fraction * 10u32.pow(9 - n as u32);
            len += 1 + n;
        }
    }
    Some(FsTime {
        year,
        month,
        day,
        h,
        m,
        s,
        nanos,
        len,
    })
}

/// The time of a line, in ms since the epoch, from the prefix FreeSWITCH
/// wrote at its start: FreeSWITCH's own timestamp (in `tz`), else the
/// syslog one when it is ISO. A year-less date (`08-03 08:10:21`) is taken
/// in the current year, or the previous one if that would put it more than
/// a day in the future. `None` when the line has no such prefix.
pub fn line_time_ms(line: &str, tz: LogTz) -> Option<i64> {
    // Most lines start with FreeSWITCH's timestamp (after a session UUID
    // with `log-uuid`): read it there when the level or the CPU percentage
    // follows (not a syslog host), without running the capture engine.
    let bytes = line.as_bytes();
    let after_uuid = if starts_with_uuid(bytes) { UUID_LEN } else { 0 };
    if let Some(t) = fs_time(&bytes[after_uuid..]) {
        let after = &bytes[after_uuid + t.len..];
        if after.starts_with(b" [") || cpu_next(after) {
            return fs_time_to_ms(&t, tz);
        }
    }
    let caps = PREFIX.captures(line)?;
    if let Some(fs) = caps.name("fstime").or_else(|| caps.name("fstime2")) {
        return fs_time_to_ms(&fs_time(fs.as_str().as_bytes())?, tz);
    }
    let sys = caps.name("systime")?.as_str().replacen(' ', "T", 1);
    let sys = sys.as_str();
    if let Ok(t) = DateTime::parse_from_rfc3339(sys) {
        return Some(t.timestamp_millis());
    }
    let t = NaiveDateTime::parse_from_str(sys, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    to_ms(t, tz)
}

/// Asterisk's `[2012-02-13 17:21:54]` / `[Jan 18 17:39:50]`, else a syslog
/// date (ISO, or RFC 3164 `Nov  4 18:30:40`), at the very start of the line.
static OTHER_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\[?(?:(?P<iso>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?)(?P<off>Z|[+-]\d{2}:?\d{2})?|(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<hms>\d{2}:\d{2}:\d{2}))")
        .expect("valid")
});

/// The time of an Asterisk or Kamailio line, from its start only. A date
/// without a year is this year's (last year's if that is over a day ahead).
pub fn other_time_ms(line: &str, tz: LogTz) -> Option<i64> {
    let c = OTHER_TIME.captures(line)?;
    if let Some(iso) = c.name("iso") {
        let text = iso.as_str().replacen(' ', "T", 1);
        if let Some(off) = c.name("off") {
            return DateTime::parse_from_rfc3339(&format!("{text}{}", off.as_str()))
                .ok()
                .map(|t| t.timestamp_millis());
        }
        return to_ms(
            NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f").ok()?,
            tz,
        );
    }
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == &c["mon"])? as u32
        + 1;
    let day: u32 = c["day"].parse().ok()?;
    let hms = chrono::NaiveTime::parse_from_str(&c["hms"], "%H:%M:%S").ok()?;
    let now = chrono::Utc::now().timestamp_millis();
    let year = Local::now().year();
    let at = |y: i32| Some(NaiveDate::from_ymd_opt(y, month, day)?.and_time(hms));
    let this_year = to_ms(at(year)?, tz)?;
    if this_year > now + 86_400_000 {
        to_ms(at(year - 1)?, tz)
    } else {
        Some(this_year)
    }
}

fn to_ms(t: NaiveDateTime, tz: LogTz) -> Option<i64> {
    match tz {
        LogTz::Local => Local
            .from_local_datetime(&t)
            .earliest()
            .map(|t| t.timestamp_millis()),
        LogTz::Fixed(off) => off
            .from_local_datetime(&t)
            .earliest()
            .map(|t| t.timestamp_millis()),
    }
}

fn fs_time_to_ms(t: &FsTime, tz: LogTz) -> Option<i64> {
    let at = |year: i32| -> Option<NaiveDateTime> {
        NaiveDate::from_ymd_opt(year, t.month, t.day)?.and_hms_nano_opt(t.h, t.m, t.s, t.nanos)
    };
    match t.year {
        Some(y) => to_ms(at(y)?, tz),
        None => {
            let now = chrono::Utc::now().timestamp_millis();
            let year = Local::now().year();
            let this_year = to_ms(at(year)?, tz)?;
            if this_year > now + 86_400_000 {
                to_ms(at(year - 1)?, tz)
            } else {
                Some(this_year)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patterns the hand parsers replace.
    const FS_TIME: &str = r"^(?:(\d{4})-)?(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?";
    const UUID: &str =
        r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12} ";
    const CPU_NEXT: &str = r"^ \d{1,3}\.\d{1,2}% \[";

    /// What the pattern read from `text`, as `fs_time` gives it.
    fn by_regex(re: &Regex, text: &str) -> Option<FsTime> {
        let c = re.captures(text)?;
        let n = |i: usize| c.get(i).map(|m| m.as_str().parse::<u32>().unwrap());
        let nanos = c.get(7).map_or(0, |f| {
            f.as_str().parse::<u32>().unwrap() * 10u32.pow(9 - f.len() as u32)
        });
        Some(FsTime {
            year: n(1).map(|y| y as i32),
            month: n(2)?,
            day: n(3)?,
            h: n(4)?,
            m: n(5)?,
            s: n(6)?,
            nanos,
            len: c.get(0)?.end(),
        })
    }

    /// Every prefix of each sample, and each sample with every character
    /// in turn replaced by a digit, a dash, a colon, a dot, a space and a
    /// letter: the hand parsers read exactly what the patterns match.
    #[test]
    fn the_hand_parsers_read_what_the_patterns_match() {
        let (fs, uuid, cpu) = (
            Regex::new(FS_TIME).unwrap(),
            Regex::new(UUID).unwrap(),
            Regex::new(CPU_NEXT).unwrap(),
        );
        let samples = [
            "2013-12-31 17:39:54.767815 [WARNING] x",
            "08-03 08:10:21.026299 [WARN] x",
            "2021-10-29 14:13:24.1234567891 82.43% [WARNING] x",
            "2021-10-29 14:13:24 x",
            "2021-10-29 14:13:24. x",
            "c2a1b7e2-1f1c-4a5e-9d6f-2b0a3c1d4e5f 2021-10-29 14:13:24.894719 95.00% [WARNING] x",
            " 82.43% [WARNING] x",
            " 100.5% [x",
        ];
        let mut cases = 0;
        for sample in samples {
            let mut variants: Vec<String> =
                (0..=sample.len()).map(|i| sample[..i].into()).collect();
            for i in 0..sample.len() {
                for c in ['7', '-', ':', '.', ' ', 'a', 'F', '%', '['] {
                    let mut v = sample.to_owned();
                    v.replace_range(i..i + 1, &c.to_string());
                    variants.push(v);
                }
            }
            for v in &variants {
                assert_eq!(fs_time(v.as_bytes()), by_regex(&fs, v), "{v:?}");
                assert_eq!(starts_with_uuid(v.as_bytes()), uuid.is_match(v), "{v:?}");
                assert_eq!(cpu_next(v.as_bytes()), cpu.is_match(v), "{v:?}");
                cases += 1;
            }
        }
        assert!(cases > 2000, "{cases}");
    }

    /// A line whose prefix the hand parsers do not read (a syslog host
    /// between the stamps) is read the slower way, to the same time.
    #[test]
    fn a_syslog_line_is_read_by_the_prefix_pattern() {
        let utc = "UTC".parse().unwrap();
        let fs = line_time_ms("2016-09-25 18:57:58.150982 [WARNING] x", utc);
        assert!(fs.is_some());
        assert_eq!(
            line_time_ms(
                "2016-09-25T18:57:59.000000 host freeswitch[1]: 2016-09-25 18:57:58.150982 [WARNING] x",
                utc
            ),
            fs
        );
    }
}
