//! What a member publishes, signed: one line of canonical text and its
//! HMAC-SHA256. The MAC covers a version tag, the Redis key the entry is
//! stored under (so an entry cannot be moved to another prefix or from the
//! stream to the snapshot) and every field, so that whoever else can write
//! to the Redis (routinely shared with other applications) can neither
//! forge an entry nor alter one.
//!
//! Text: `sipguard-fleet-1 OP NODE NET SCOPE END TS JAIL`, fields separated
//! by one space; names are `[A-Za-z0-9._-]`, at most `MAX_NAME` bytes, so a
//! separator cannot hide in one. `END`: Unix ms, `-1` permanent. `TS`: the
//! publish time (Unix ms), against replays of stream entries.
use super::Secret;
use crate::bans::Scope;
use hmac::{Hmac, Mac as _};
use ipnet::IpNet;
use sha2::Sha256;
use std::time::Duration;

const VERSION: &str = "sipguard-fleet-1";
/// Longest node or jail name.
pub const MAX_NAME: usize = 64;
/// Longest entry text (all fields at their longest fit well within).
pub const MAX_TEXT: usize = 320;
/// A MAC, hex.
const MAC_HEX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Ban,
    Unban,
    FleetUnban,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Op::Ban => "ban",
            Op::Unban => "unban",
            Op::FleetUnban => "fleet-unban",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub op: Op,
    pub node: String,
    pub net: IpNet,
    pub scope: Scope,
    /// Unix ms; `None`: permanent.
    pub end_ms: Option<i64>,
    /// Publish time, Unix ms.
    pub ts_ms: i64,
    pub jail: String,
}

/// Why an entry was not applied; each is counted (status, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not parseable: bad field, name too long or with other characters,
    /// not UTF-8, too large.
    Malformed,
    /// No MAC, or one that neither key gives.
    BadMac,
    /// Signed, but older than the window, from the future, or seen already.
    Replay,
    /// Claims this box's node name without this fleet's key.
    OwnName,
    /// Signed, but past the number of distinct nodes accepted.
    TooManyNodes,
    /// A signed fleet unban, refused by `accept_fleet_unban = false`.
    FleetUnbanRefused,
    /// A snapshot member whose entry names another node or network.
    Mismatch,
    /// A field, member or entry past the bounds (`scripts::MAX_VALUE`,
    /// `scripts::MAX_FIELDS`): dropped on the Redis, never read here.
    Oversized,
}

impl Reject {
    pub const ALL: [Reject; 8] = [
        Reject::Malformed,
        Reject::BadMac,
        Reject::Replay,
        Reject::OwnName,
        Reject::TooManyNodes,
        Reject::FleetUnbanRefused,
        Reject::Mismatch,
        Reject::Oversized,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::BadMac => "bad_mac",
            Reject::Replay => "replay",
            Reject::OwnName => "own_name",
            Reject::TooManyNodes => "too_many_nodes",
            Reject::FleetUnbanRefused => "fleet_unban_refused",
            Reject::Mismatch => "mismatch",
            Reject::Oversized => "oversized",
        }
    }
}

/// A node or jail name as the fleet carries it.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A jail name made fit to travel (`[A-Za-z0-9._-]`, bounded).
pub fn clean_jail(j: &str) -> String {
    let out: String = j
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

fn scope_word(s: Scope) -> &'static str {
    match s {
        Scope::PortsOnly => "ports-only",
        Scope::Ports => "ports",
        Scope::AllPorts => "all",
    }
}

impl Entry {
    pub fn text(&self) -> String {
        format!(
            "{VERSION} {} {} {} {} {} {} {}",
            self.op.word(),
            self.node,
            self.net,
            scope_word(self.scope),
            self.end_ms.unwrap_or(-1),
            self.ts_ms,
            self.jail
        )
    }

    /// The entry's text and MAC (hex), for the Redis key `where_`.
    pub fn sign(&self, key: &Secret, where_: &str) -> (String, String) {
        let text = self.text();
        let mac = mac_hex(key, where_, &text);
        (text, mac)
    }

    /// Time left; `None` inside: permanent; `None` outside: over.
    pub fn left(&self, now_ms: i64) -> Option<Option<Duration>> {
        match self.end_ms {
            None => Some(None),
            Some(end) if end > now_ms => Some(Some(Duration::from_millis((end - now_ms) as u64))),
            Some(_) => None,
        }
    }
}

fn mac(key: &Secret, where_: &str, text: &str) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key");
    // Length-prefixed, so that no (where, text) pair can pass for another.
    m.update(&(where_.len() as u64).to_be_bytes());
    m.update(where_.as_bytes());
    m.update(text.as_bytes());
    m.finalize().into_bytes().into()
}

/// The MAC (hex) of any text stored under `where_`.
pub fn mac_hex(key: &Secret, where_: &str, text: &str) -> String {
    hex(&mac(key, where_, text))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != MAC_HEX {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Checks `mac_hex` over `text` (bytes from Redis: anything) with either
/// key, then parses it. The MAC is checked first: nothing unsigned is even
/// parsed. Returns the entry and its MAC (for the replay memory).
pub fn verify(
    text: &[u8],
    mac_hex: &[u8],
    keys: &[&Secret],
    where_: &str,
) -> Result<(Entry, [u8; 32]), Reject> {
    if text.len() > MAX_TEXT {
        return Err(Reject::Malformed);
    }
    let text = std::str::from_utf8(text).map_err(|_| Reject::Malformed)?;
    let given = unhex(mac_hex).ok_or(Reject::BadMac)?;
    let signed = keys.iter().any(|k| {
        let mut m = Hmac::<Sha256>::new_from_slice(k.bytes()).expect("HMAC takes any key");
        m.update(&(where_.len() as u64).to_be_bytes());
        m.update(where_.as_bytes());
        m.update(text.as_bytes());
        m.verify_slice(&given).is_ok() // constant time
    });
    if !signed {
        return Err(Reject::BadMac);
    }
    parse(text).map(|e| (e, given)).ok_or(Reject::Malformed)
}

/// The node an entry claims, unverified: only to tell a forgery in this
/// box's name from others.
pub fn claimed_node(text: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(text.get(..MAX_TEXT.min(text.len()))?).ok()?;
    text.split(' ').nth(2)
}

fn parse(text: &str) -> Option<Entry> {
    let f: Vec<&str> = text.split(' ').collect();
    let [version, op, node, net, scope, end, ts, jail] = f.as_slice() else {
        return None;
    };
    if *version != VERSION || !valid_name(node) || !valid_name(jail) {
        return None;
    }
    let op = match *op {
        "ban" => Op::Ban,
        "unban" => Op::Unban,
        "fleet-unban" => Op::FleetUnban,
        _ => return None,
    };
    let scope = match *scope {
        "ports-only" => Scope::PortsOnly,
        "ports" => Scope::Ports,
        "all" => Scope::AllPorts,
        _ => return None,
    };
    let end_ms = match end.parse::<i64>().ok()? {
        -1 => None,
        e if e >= 0 => Some(e),
        _ => return None,
    };
    Some(Entry {
        op,
        node: (*node).to_owned(),
        net: crate::addr::parse_ban_net(net).ok()?,
        scope,
        end_ms,
        ts_ms: ts.parse().ok()?,
        jail: (*jail).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Secret {
        Secret::new(k.as_bytes().to_vec())
    }

    fn entry() -> Entry {
        Entry {
            op: Op::Ban,
            node: "box-1.example".into(),
            net: "2001:db8::/64".parse().unwrap(),
            scope: Scope::PortsOnly,
            end_ms: Some(1_900_000_000_000),
            ts_ms: 1_800_000_000_000,
            jail: "sip-flood".into(),
        }
    }

    #[test]
    fn signed_entries_verify_and_nothing_else_does() {
        let (k, old, other) = (
            key("0123456789abcdef0123"),
            key("previous-key-0123456"),
            key("someone-elses-key-xx"),
        );
        let e = entry();
        let (text, m) = e.sign(&k, "sipguard:events");
        let (back, _) = verify(text.as_bytes(), m.as_bytes(), &[&k], "sipguard:events").unwrap();
        assert_eq!(back, e);
        // Signed with the previous key: accepted while it is configured.
        let (t2, m2) = e.sign(&old, "sipguard:events");
        assert!(verify(t2.as_bytes(), m2.as_bytes(), &[&k, &old], "sipguard:events").is_ok());
        assert_eq!(
            verify(t2.as_bytes(), m2.as_bytes(), &[&k], "sipguard:events").unwrap_err(),
            Reject::BadMac
        );
        // Wrong key, moved to another key name, altered, unsigned, garbage.
        let (t3, m3) = e.sign(&other, "sipguard:events");
        assert_eq!(
            verify(t3.as_bytes(), m3.as_bytes(), &[&k], "sipguard:events").unwrap_err(),
            Reject::BadMac
        );
        assert_eq!(
            verify(text.as_bytes(), m.as_bytes(), &[&k], "other:events").unwrap_err(),
            Reject::BadMac
        );
        let widened = text.replace("ports-only", "all");
        assert_eq!(
            verify(widened.as_bytes(), m.as_bytes(), &[&k], "sipguard:events").unwrap_err(),
            Reject::BadMac
        );
        assert_eq!(
            verify(text.as_bytes(), b"", &[&k], "sipguard:events").unwrap_err(),
            Reject::BadMac
        );
        assert_eq!(
            verify(b"\xff\xfe ban", m.as_bytes(), &[&k], "sipguard:events").unwrap_err(),
            Reject::Malformed
        );
        assert_eq!(
            verify(&[b'a'; 4000], m.as_bytes(), &[&k], "sipguard:events").unwrap_err(),
            Reject::Malformed
        );
        assert_eq!(
            verify(text.as_bytes(), "zz".repeat(32).as_bytes(), &[&k], "x").unwrap_err(),
            Reject::BadMac
        );
    }

    #[test]
    fn a_signed_entry_with_bad_fields_is_malformed() {
        let k = key("0123456789abcdef0123");
        for bad in [
            "sipguard-fleet-1 ban box|1 10.0.0.1/32 ports -1 1 j",
            "sipguard-fleet-1 ban b 0.0.0.0/0 all -1 1 j",
            "sipguard-fleet-1 ban b 10.0.0.1/32 every -1 1 j",
            "sipguard-fleet-1 nuke b 10.0.0.1/32 all -1 1 j",
            "sipguard-fleet-2 ban b 10.0.0.1/32 all -1 1 j",
            "sipguard-fleet-1 ban b 10.0.0.1/32 all -5 1 j",
            "sipguard-fleet-1 ban b 10.0.0.1/32 all -1 1 j extra",
        ] {
            let m = hex(&mac(&k, "w", bad));
            assert_eq!(
                verify(bad.as_bytes(), m.as_bytes(), &[&k], "w").unwrap_err(),
                Reject::Malformed,
                "{bad}"
            );
        }
        let long = format!(
            "sipguard-fleet-1 ban {} 10.0.0.1/32 all -1 1 j",
            "n".repeat(65)
        );
        let m = hex(&mac(&k, "w", &long));
        assert_eq!(
            verify(long.as_bytes(), m.as_bytes(), &[&k], "w").unwrap_err(),
            Reject::Malformed
        );
        assert_eq!(claimed_node(long.as_bytes()).map(str::len), Some(65));
    }

    #[test]
    fn names() {
        assert!(valid_name("box-1.example_2"));
        for bad in ["", "a b", "a|b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(clean_jail("free switch|x"), "free_switch_x");
        assert_eq!(clean_jail(&"j".repeat(100)).len(), MAX_NAME);
        assert_eq!(clean_jail(""), "-");
        let e = entry();
        assert_eq!(e.left(1_900_000_000_001), None);
        assert_eq!(
            e.left(1_899_999_999_000),
            Some(Some(Duration::from_secs(1)))
        );
    }
}
