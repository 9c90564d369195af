//! What a client asks of the daemon. Values are typed and checked where
//! they are read: the CLI parses the operator's text once (same checks,
//! same messages as before), and the daemon refuses a request whose values
//! do not pass the same checks at the socket, before any handler runs.
use crate::{addr, duration};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, str::FromStr, time::Duration};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status {
        jail: Option<String>,
    },
    Ban {
        net: BanNet,
        duration: BanTime,
        all_ports: bool,
    },
    Unban {
        net: Net,
        /// Every box of the fleet, not only this one.
        #[serde(default)]
        fleet: bool,
    },
    Allow {
        net: Net,
    },
    Disallow {
        net: Net,
    },
    /// Jail and reason of bans, a page at a time: `list` reads the bans
    /// from the kernel maps and asks the daemon only for these, so a
    /// million bans never hold its one thread for long.
    Notes {
        offset: usize,
        limit: usize,
    },
    Reload,
    /// Trust a source (`sipguard trust`): its own, higher budget.
    Trust {
        net: Net,
        duration: BanTime,
    },
    Untrust {
        net: Net,
    },
}

/// An address or network as `addr::parse_net` reads it (host bits
/// cleared). On the wire: `ADDRESS/PREFIX`, as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net(IpNet);

/// A network to ban: `addr::parse_ban_net`'s checks too (nothing so wide
/// it would ban a large part of the Internet). The field is private so
/// that no unchecked network can be sent as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BanNet(IpNet);

/// How long a ban lasts, as `duration::parse_bantime` reads it: `None`
/// (`-1` on the wire) is permanent; zero is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanTime(Option<Duration>);

impl Net {
    pub fn get(self) -> IpNet {
        self.0
    }
}

impl BanNet {
    pub fn get(self) -> IpNet {
        self.0
    }
}

impl BanTime {
    /// `None`: permanent.
    pub fn get(self) -> Option<Duration> {
        self.0
    }
}

impl FromStr for Net {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        addr::parse_net(text).map(Self)
    }
}

impl FromStr for BanNet {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        addr::parse_ban_net(text).map(Self)
    }
}

impl FromStr for BanTime {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        duration::parse_bantime(text).map(Self)
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for BanNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `-1` for permanent, else humantime's spelling (`1h 30m`, `1s 500ms`),
/// which `parse_bantime` reads back exactly: a daemon of any version
/// understands it, as it always read the operator's text.
impl fmt::Display for BanTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("-1"),
            Some(d) => humantime::format_duration(d).fmt(f),
        }
    }
}

/// Parses `text` with `T`'s checks, as a serde error carrying the whole
/// message (`{:#}`: the reason and what was read).
fn checked<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: FromStr<Err = anyhow::Error>,
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|e: anyhow::Error| serde::de::Error::custom(format!("{e:#}")))
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d)
    }
}

impl<'de> Deserialize<'de> for BanNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d)
    }
}

/// A number of seconds or a string, as configuration files write it.
impl<'de> Deserialize<'de> for BanTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        duration::serde::bantime(d).map(Self)
    }
}

impl Serialize for Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for BanNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for BanTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(net: &str, duration: &str) -> String {
        format!(r#"{{"op":"ban","net":"{net}","duration":{duration},"all_ports":false}}"#)
    }

    /// What the CLI sends reads back as the same request.
    #[test]
    fn requests_round_trip() {
        for (net, duration) in [
            ("192.0.2.7", "-1"),
            ("10.1.2.3/8", "10m"),
            ("2001:db8::/64", "1h30m"),
            ("192.0.2.0/24", "1.5s"),
        ] {
            let req = Request::Ban {
                net: net.parse().unwrap(),
                duration: duration.parse().unwrap(),
                all_ports: true,
            };
            let line = serde_json::to_string(&req).unwrap();
            assert_eq!(
                serde_json::from_str::<Request>(&line).unwrap(),
                req,
                "{line}"
            );
        }
        let line = serde_json::to_string(&Request::Unban {
            net: "10.0.0.7/24".parse().unwrap(),
            fleet: false,
        })
        .unwrap();
        assert_eq!(line, r#"{"op":"unban","net":"10.0.0.0/24","fleet":false}"#);
    }

    /// The operator's text, as an older CLI sent it, is still read.
    #[test]
    fn the_operator_s_text_is_read() {
        let req: Request = serde_json::from_str(&ban("192.0.2.7", r#""1d""#)).unwrap();
        let Request::Ban { net, duration, .. } = req else {
            panic!("{req:?}")
        };
        assert_eq!(net.to_string(), "192.0.2.7/32");
        assert_eq!(duration.get(), Some(Duration::from_secs(86_400)));
        let req: Request = serde_json::from_str(&ban("192.0.2.7", "30")).unwrap();
        assert!(
            matches!(req, Request::Ban { duration, .. } if duration.get() == Some(Duration::from_secs(30)))
        );
    }

    /// A request a handler must not see is refused as it is read, saying why.
    #[test]
    fn bad_values_are_refused_as_they_are_read() {
        for (line, why) in [
            (ban("0.0.0.0/0", r#""-1""#), "refusing to ban 0.0.0.0/0"),
            (ban("1.2.3", r#""-1""#), "invalid address '1.2.3'"),
            (
                ban("192.0.2.7", r#""0""#),
                "a ban must last longer than zero",
            ),
            (ban("192.0.2.7", r#""10x""#), "invalid duration '10x'"),
            (
                r#"{"op":"allow","net":"1.2.3.4/33"}"#.to_owned(),
                "invalid network '1.2.3.4/33'",
            ),
        ] {
            let err = serde_json::from_str::<Request>(&line)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{line}: {err}");
        }
    }
}
