//! mod_event_socket's settings (`autoload_configs/event_socket.conf.xml`):
//! where FreeSWITCH's event socket listens and its password, for the trust
//! client (see `trust`). The password is kept out of `Debug` and of
//! everything serialized (`status`, `sipguard discover`).
use super::*;
use crate::text::Secret;

/// FreeSWITCH's own defaults (mod_event_socket.c): loopback, 8021, ClueCon.
const DEFAULT_PORT: u16 = 8021;
const DEFAULT_PASSWORD: &str = "ClueCon";

/// Where the event socket listens, as FreeSWITCH's configuration says.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventSocket {
    /// Where to connect: `listen-ip`, with a wildcard (`::`, `0.0.0.0`)
    /// made loopback (a wildcard listens on loopback too).
    pub host: IpAddr,
    pub port: u16,
    #[serde(skip)]
    pub password: Secret,
    /// Who owns `event_socket.conf.xml`: the user FreeSWITCH runs as
    /// (besides root, the only one whose socket is sent the password).
    #[serde(skip)]
    pub owner_uid: Option<u32>,
}

impl EventSocket {
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.host, self.port)
    }
}

/// Reads `autoload_configs/event_socket.conf.xml`; `None` when the file is
/// missing (mod_event_socket then does not load its settings either).
pub(super) fn event_socket(
    dir: &Path,
    vars: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
    budget: &mut Budget,
) -> Option<Found<EventSocket>> {
    let conf = dir.join("autoload_configs/event_socket.conf.xml");
    if !conf.is_file() {
        return None;
    }
    let tags = read_top(&conf, dir, vars, warnings, budget);
    let param = |name: &str| {
        tags.iter()
            .find(|t| t.name == "param" && t.attr("name") == Some(name))
            .and_then(|t| t.attr("value"))
    };
    let file = rel(dir, &conf);
    let host = match param("listen-ip") {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(v) => match v
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
        {
            Ok(IpAddr::V4(a)) if a.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            Ok(IpAddr::V6(a)) if a.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            Ok(a) => a,
            Err(_) => {
                warnings.push(format!(
                    "{file}: listen-ip {} is not an address",
                    crate::text::escape(crate::text::bounded(v, 64))
                ));
                return None;
            }
        },
    };
    let port = match param("listen-port") {
        None => DEFAULT_PORT,
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                warnings.push(format!(
                    "{file}: listen-port {} is not a port",
                    crate::text::escape(crate::text::bounded(v, 16))
                ));
                return None;
            }
        },
    };
    let password = Secret::new(param("password").unwrap_or(DEFAULT_PASSWORD));
    let owner_uid = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&conf).ok().map(|m| m.uid())
    };
    Some(Found {
        value: EventSocket {
            host,
            port,
            password,
            owner_uid,
        },
        from: format!("{file}: listen-ip, listen-port, password"),
    })
}
