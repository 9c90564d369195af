//! Telling a service manager where the daemon is: systemd's `sd_notify`
//! protocol (a datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET`), spoken
//! directly, no libsystemd. Without `NOTIFY_SOCKET` every call is a no-op,
//! and `sipguard status --wait` is the way to wait for protection.
use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

/// The daemon's side of `sd_notify`.
pub struct Readiness {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_status: String,
}

impl Readiness {
    /// From the environment systemd gives a `Type=notify` service. The
    /// variables are removed so that hooks the daemon runs (notifications)
    /// cannot speak for it.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let addr = socket_addr(path.as_encoded_bytes());
            match (UnixDatagram::unbound(), addr) {
                (Ok(s), Some(a)) => Some((s, a)),
                _ => {
                    tracing::warn!("NOTIFY_SOCKET={path:?} is unusable: not telling systemd");
                    None
                }
            }
        });
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        );
        // SAFETY: called at start-up, before the daemon starts other threads.
        unsafe {
            for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
                std::env::remove_var(var);
            }
        }
        Self {
            socket,
            watchdog,
            last_status: String::new(),
        }
    }

    /// How often to send `WATCHDOG=1`: half the manager's timeout.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Protection is active: the program is attached and the bans in force.
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_owned();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload begins (`Type=notify-reload` wants the monotonic time).
    pub fn reloading(&self) {
        let now = crate::kernel::clock::mono_now_ns() / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping; the program stays attached");
    }

    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    /// The one-line status `systemctl status` shows, sent when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_owned();
            self.send(&format!("STATUS={status}"));
        }
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                tracing::debug!("sd_notify: {e}");
            }
        }
    }
}

/// A path, or `@name` for a socket in the abstract namespace.
fn socket_addr(path: &[u8]) -> Option<SocketAddr> {
    use std::os::{linux::net::SocketAddrExt as _, unix::ffi::OsStrExt as _};
    match path {
        [] => None,
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name).ok(),
        _ => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path)).ok(),
    }
}

/// Half of `WATCHDOG_USEC`, when the watchdog is meant for this process.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_us() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None),
            Some(Duration::from_secs(1))
        );
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("600"), Some(&me)),
            Some(Duration::from_micros(300))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("soon"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }

    #[test]
    fn messages_reach_the_socket_once_per_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut r = Readiness {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                socket_addr(path.as_os_str().as_encoded_bytes()).unwrap(),
            )),
            watchdog: None,
            last_status: String::new(),
        };
        r.ready("3 bans");
        r.status("3 bans");
        r.status("4 bans");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = listener.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got, ["READY=1\nSTATUS=3 bans", "STATUS=4 bans"]);
        assert!(socket_addr(b"@sipguard-test").is_some());
        assert!(socket_addr(b"").is_none());
    }
}
