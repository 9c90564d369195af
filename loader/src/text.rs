//! Text from outside, made safe to show: control characters escaped before
//! anything reaches a terminal or a log line, and URLs shown without their
//! secrets (user, password, path tokens, query keys).
use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1, and the bidirectional
/// overrides that reorder what a terminal shows) written as `\u{..}`, and
/// backslashes doubled so that an escape cannot be faked. Text without any
/// is borrowed as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(
            c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A URL as it may be logged or shown: scheme, host and port only
/// (`https://hooks.example:8443/…`). Credentials in the user part, a token
/// in the path and keys in the query never appear. Something that is not a
/// URL is shown as `<url>`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<url>".into();
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return "<url>".into();
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let more = if rest.len() > authority.len() {
        "/…"
    } else {
        ""
    };
    // An `@` past the authority may end a password holding a `/`, `?` or
    // `#` written unencoded: what looks like the host could be part of it.
    if !authority.contains('@') && rest[authority.len()..].contains('@') {
        return format!("{scheme}://…");
    }
    let host = authority.rsplit('@').next().unwrap_or("");
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
    if !host_ok {
        return format!("{scheme}://…");
    }
    format!("{scheme}://{host}{more}")
}

/// An error's text with every URL in it redacted, and the secrets of
/// `url` (its user part, password, path and query, as written and
/// percent-encoded or decoded) removed wherever they appear: libraries put
/// the URL they were given in their messages, often normalised.
pub fn redact_in(message: &str, url: &str) -> String {
    let mut out = redact_urls(message);
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, _) = authority.rsplit_once('@').unwrap_or(("", ""));
        let password = userinfo.split_once(':').map_or("", |(_, p)| p);
        let tail = &rest[authority.len()..];
        for secret in [userinfo, password, tail] {
            for form in [
                secret.to_owned(),
                percent_decode(secret),
                percent_encode(secret),
            ] {
                if form.len() >= 3 {
                    out = out.replace(&form, "***");
                }
            }
        }
    }
    escape(&out).into_owned()
}

/// Every `scheme://…` in `text` replaced by its redacted form.
fn redact_urls(text: &str) -> String {
    let is_scheme = |c: char| c.is_ascii_alphanumeric() || "+-.".contains(c);
    let ends = |c: char| c.is_whitespace() || "\"'<>`".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_scheme(c))
            .last()
            .map_or(at, |(i, _)| i);
        let end = rest[at + 3..].find(ends).map_or(rest.len(), |i| at + 3 + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(escape("plain text"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("x\r\ny\u{7f}"), "x\\u{d}\\u{a}y\\u{7f}");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        // A literal backslash cannot pass for an escape.
        assert_eq!(escape("\\u{1b}"), "\\\\u{1b}");
        assert_eq!(escape("né"), "né");
    }

    #[test]
    fn bounded_cuts_on_a_character() {
        assert_eq!(bounded("abcdef", 4), "abcd");
        assert_eq!(bounded("ééé", 3), "é");
        assert_eq!(bounded("ab", 4), "ab");
    }

    #[test]
    fn urls_lose_their_secrets() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact_url("redis://user:p%40ss@10.0.0.5:6380/2"),
            "redis://10.0.0.5:6380/…"
        );
        assert_eq!(redact_url("http://h:8080?token=abc"), "http://h:8080/…");
        assert_eq!(redact_url("rediss://[::1]:7000"), "rediss://[::1]:7000");
        assert_eq!(redact_url("not a url"), "<url>");
        assert_eq!(redact_url("x\x1b://h"), "<url>");
        let url = "redis://fleet:hunter2secret@db.example:6379/0";
        let msg = redact_in(
            &format!("cannot connect to {url}: refused (password hunter2secret)"),
            url,
        );
        assert!(!msg.contains("hunter2secret"), "{msg}");
        assert!(msg.contains("redis://db.example:6379/…"), "{msg}");
        // As a library writes it back, normalised.
        let url = "https://alerts:p@ss;w0rd@hooks.example/x/{TOKEN}";
        let msg = redact_in(
            "https://alerts:p%40ss%3Bw0rd@hooks.example/x/%7BTOKEN%7D: status 500 (p%40ss%3Bw0rd)",
            url,
        );
        assert!(!msg.contains("TOKEN") && !msg.contains("w0rd"), "{msg}");
        assert!(msg.starts_with("https://hooks.example/…"), "{msg}");
        // A password with an unencoded slash: no part of it is shown.
        assert_eq!(redact_url("redis://user:pa/ss@db:6379"), "redis://…");
        assert_eq!(escape("a\u{200e}b\u{2028}"), "a\\u{200e}b\\u{2028}");
    }
}

/// A secret from the configuration (a password): compared and cloned,
/// never shown. `Debug` prints a placeholder, it has no `Display` and no
/// `Serialize`, so neither a log line nor `status` can carry it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}
