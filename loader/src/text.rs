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
    c.is_control() || c == '\\' || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
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
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || host.is_empty() {
        return "<url>".into();
    }
    let more = rest.len() > authority.len();
    format!(
        "{}://{}{}",
        escape(scheme),
        escape(host),
        if more { "/…" } else { "" }
    )
}

/// An error's text with every occurrence of `url` (and of its secrets)
/// replaced by its redacted form: libraries put the URL they were given in
/// their messages.
pub fn redact_in(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &redact_url(url));
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            for secret in [userinfo, userinfo.split_once(':').map_or("", |(_, p)| p)] {
                if secret.len() >= 3 {
                    out = out.replace(secret, "***");
                }
            }
        }
        let tail = &rest[authority.len()..];
        if tail.len() >= 3 {
            out = out.replace(tail, "/…");
        }
    }
    escape(&out).into_owned()
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
    }
}
