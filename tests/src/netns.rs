//! Two network namespaces joined by a veth pair: a client and a server with
//! IPv4 and IPv6 addresses of their own. Traffic in the tests goes only
//! between these namespaces.
use crate::unique;
use anyhow::{bail, Context as _, Result};
use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

pub const SERVER_V4: &str = "10.213.0.1";
pub const CLIENT_V4: &str = "10.213.0.2";
/// A second client address: "another source" that must keep working.
pub const OTHER_V4: &str = "10.213.0.3";
pub const SERVER_V6: &str = "fd00:5167::1";
pub const CLIENT_V6: &str = "fd00:5167::2";
pub const OTHER_V6: &str = "fd00:5167::3";

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Result<Self> {
        let name = unique("sgt");
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `cmd ARGS` inside the namespace with `stdin` as its input
    /// (`ip netns exec`, which also mounts the namespace's own /sys);
    /// returns its output, or an error with what it printed.
    pub fn exec(&self, cmd: &str, args: &[&str], stdin: &[u8]) -> Result<String> {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {cmd}"))?;
        let mut input = child.stdin.take().expect("piped");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || input.write_all(&data));
        let out = child.wait_with_output()?;
        writer.join().expect("stdin writer")?;
        if !out.status.success() {
            bail!(
                "{cmd} {} failed in namespace {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The two namespaces and the veth between them.
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
    pub client_if: String,
    pub server_if: String,
}

impl Pair {
    pub fn new() -> Result<Self> {
        let client = Netns::new()?;
        let server = Netns::new()?;
        let client_if = unique("sgc");
        let server_if = unique("sgs");
        ip(&[
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &server_if,
            "netns",
            &server.name,
        ])?;
        for (ns, dev, addrs) in [
            (
                &client,
                &client_if,
                [CLIENT_V4, OTHER_V4, CLIENT_V6, OTHER_V6].as_slice(),
            ),
            (&server, &server_if, [SERVER_V4, SERVER_V6].as_slice()),
        ] {
            for a in addrs {
                if a.contains(':') {
                    ns.ip(&["-6", "addr", "add", &format!("{a}/64"), "dev", dev, "nodad"])?;
                } else {
                    ns.ip(&["addr", "add", &format!("{a}/24"), "dev", dev])?;
                }
            }
            ns.ip(&["link", "set", dev, "up"])?;
        }
        let pair = Self {
            client,
            server,
            client_if,
            server_if,
        };
        // Static neighbours: no ARP/ND round trips to wait for or lose.
        let client_mac = pair.mac(&pair.client, &pair.client_if)?;
        let server_mac = pair.mac(&pair.server, &pair.server_if)?;
        for a in [SERVER_V4, SERVER_V6] {
            pair.client.ip(&[
                "neigh",
                "replace",
                a,
                "lladdr",
                &server_mac,
                "dev",
                &pair.client_if,
            ])?;
        }
        for a in [CLIENT_V4, OTHER_V4, CLIENT_V6, OTHER_V6] {
            pair.server.ip(&[
                "neigh",
                "replace",
                a,
                "lladdr",
                &client_mac,
                "dev",
                &pair.server_if,
            ])?;
        }
        Ok(pair)
    }

    /// The (client, server) MAC addresses, as bytes for hand-built frames.
    pub fn macs(&self) -> Result<([u8; 6], [u8; 6])> {
        let bytes = |ns, dev| -> Result<[u8; 6]> {
            let text = self.mac(ns, dev)?;
            crate::packet::parse_mac(&text).with_context(|| format!("bad MAC address {text}"))
        };
        Ok((
            bytes(&self.client, &self.client_if)?,
            bytes(&self.server, &self.server_if)?,
        ))
    }

    fn mac(&self, ns: &Netns, dev: &str) -> Result<String> {
        let out = ns.ip(&["-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["address"]
            .as_str()
            .map(str::to_owned)
            .context("no MAC address in `ip -j link`")
    }

    /// An AF_PACKET socket on the client's veth: frames with any source
    /// address, as a forger sends them, reach the server's XDP program.
    pub fn forger(&self) -> Result<RawSocket> {
        let iface = self.client_if.clone();
        in_netns_scoped(&self.client, move || RawSocket::bind(&iface))
    }

    /// True if the program is attached to the server's veth.
    pub fn server_has_xdp(&self) -> Result<bool> {
        Ok(self
            .server
            .ip(&["link", "show", "dev", &self.server_if])?
            .contains("prog/xdp"))
    }
}

/// Runs `f` on a thread that has entered `ns`'s network namespace, so that
/// sockets it creates live there (they stay there when used from any thread).
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> io::Result<T> + Send) -> Result<T> {
    in_netns_scoped(ns, || Ok(f()?))
}

/// Like `in_netns`, for work that borrows from the caller: runs `f` on a
/// scoped thread inside `ns` and waits for it.
pub fn in_netns_scoped<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    in_netns_at(&ns.path(), f)
}

/// Like `in_netns_scoped`, for the namespace at `path`.
pub fn in_netns_at<T: Send>(path: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = path.to_owned();
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                enter(&path)?;
                f()
            })
            .join()
            .expect("netns thread panicked")
    })
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: a valid namespace fd; setns only affects this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("test addresses are valid"), port)
}

/// A UDP socket bound in `ns`, with a 4 MiB receive buffer so that bursts in
/// the tests are not lost to the socket (what XDP drops is what is measured).
pub fn udp_socket(ns: &Netns, local: SocketAddr) -> Result<UdpSocket> {
    in_netns(ns, move || {
        let s = UdpSocket::bind(local)?;
        let size: libc::c_int = 4 << 20;
        // SAFETY: a valid socket and a c_int option value; FORCE works as root.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(s)
    })
}

pub fn tcp_listener(ns: &Netns, local: SocketAddr) -> Result<TcpListener> {
    in_netns(ns, move || TcpListener::bind(local))
}

/// Sends `count` datagrams from `from` to `to`'s address and returns how many
/// `to` received within a short grace period. Bounded in count and time.
pub fn udp_delivered(from: &UdpSocket, to: &UdpSocket, count: usize) -> Result<usize> {
    let dst = to.local_addr()?;
    to.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = [0u8; 2048];
    while to.recv(&mut buf).is_ok() {} // drain leftovers from earlier checks
    for i in 0..count {
        from.send_to(
            format!("OPTIONS sip:probe-{i} SIP/2.0\r\n\r\n").as_bytes(),
            dst,
        )?;
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut got = 0;
    while got < count && Instant::now() < deadline {
        if to.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    Ok(got)
}

/// Whether a TCP connection from `src` (in `ns`) to `dst` completes within a second.
pub fn tcp_connects(ns: &Netns, src: IpAddr, dst: SocketAddr) -> Result<bool> {
    in_netns(ns, move || {
        let domain = if dst.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        Ok(s.connect_timeout(&dst.into(), Duration::from_secs(1))
            .is_ok())
    })
}

/// A send-only AF_PACKET socket bound to an interface of the calling
/// thread's namespace, skipping the qdisc: frames leave exactly as built
/// (any source address), at as little cost per frame as the kernel allows.
pub struct RawSocket(std::os::fd::OwnedFd);

impl RawSocket {
    pub fn bind(iface: &str) -> Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket(2); protocol 0 means it receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and own.
        let sock = Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let index = sipguard::kernel::program::if_index(iface)?;
        // SAFETY: a zeroed sockaddr_ll with family and interface set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        let one: libc::c_int = 1;
        // SAFETY: valid socket, address and option of the sizes given.
        unsafe {
            if libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                bail!("bind to {iface}: {}", io::Error::last_os_error());
            }
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        Ok(sock)
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: a valid buffer of the length given.
        if unsafe { libc::send(self.fd(), frame.as_ptr().cast(), frame.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
