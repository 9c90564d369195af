//! A FreeSWITCH event socket (mod_event_socket, inbound mode) for the
//! tests, following its framing: `Content-Type: auth/request` on connect,
//! `auth PASSWORD` answered by a `command/reply` (`+OK accepted` or
//! `-ERR invalid`, then a `text/disconnect-notice`), `event plain ...`
//! answered `+OK event listener enabled plain`, events as
//! `text/event-plain` with a `Content-Length` body of URL-encoded
//! `Name: value` lines, and `api show registrations` answered by an
//! `api/response` body in the core's CSV. One client at a time, on
//! 127.0.0.1 (or another address of its namespace) in a namespace; stopped
//! on drop.
use anyhow::Result;
use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

/// One row of `show registrations`: (user, realm, call-id, ip, expires at, Unix s).
#[derive(Clone, Debug)]
pub struct Row {
    pub user: String,
    pub realm: String,
    pub call_id: String,
    pub ip: String,
    pub expires_at: i64,
}

pub struct Esl {
    pub port: u16,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Option<mpsc::Sender<Vec<u8>>>>>,
    /// Commands received, the auth line with its password replaced by `*`.
    pub commands: Arc<Mutex<Vec<String>>>,
    /// Connections accepted, and those that passed auth.
    pub accepted: Arc<AtomicU64>,
    pub authenticated: Arc<AtomicU64>,
    /// What `show registrations` answers (`set_rows`).
    rows: Arc<Mutex<Vec<Row>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A frame as mod_event_socket writes one: headers, blank line, body.
pub fn frame(content_type: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\n", body.len()));
    }
    out.push_str(&format!("Content-Type: {content_type}\n"));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out.push('\n');
    let mut b = out.into_bytes();
    b.extend_from_slice(body);
    b
}

/// `%XX` for what FreeSWITCH escapes in event values.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `text/event-plain` frame of a CUSTOM event with `subclass`.
pub fn event(subclass: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = String::new();
    let mut all = vec![
        ("Event-Name", "CUSTOM"),
        ("Core-UUID", "9e0c7a3e-0000-4000-8000-000000000001"),
        ("FreeSWITCH-Hostname", "pbx"),
        ("Event-Subclass", subclass),
        ("Event-Date-Local", "2026-12-03 10:00:00"),
    ];
    all.extend_from_slice(fields);
    for (k, v) in all {
        body.push_str(&format!("{k}: {}\n", url_encode(v)));
    }
    body.push('\n');
    frame("text/event-plain", &[], body.as_bytes())
}

/// A sofia::register event for user 1000@example.org from `ip`.
pub fn register(call_id: &str, ip: &str, expires: u64) -> Vec<u8> {
    let exp = expires.to_string();
    event(
        "sofia::register",
        &[
            ("profile-name", "internal"),
            ("from-user", "1000"),
            ("from-host", "example.org"),
            (
                "contact",
                &format!("\"user\" <sip:1000@{ip}:5060;fs_nat=yes>"),
            ),
            ("call-id", call_id),
            ("rpid", "unknown"),
            ("status", "Registered(UDP)"),
            ("expires", &exp),
            ("to-user", "1000"),
            ("to-host", "example.org"),
            ("network-ip", ip),
            ("network-port", "5060"),
            ("username", "1000"),
            ("realm", "example.org"),
            ("user-agent", "Yealink SIP-T46S"),
        ],
    )
}

/// A sofia::unregister event of that registration (no network-ip, as
/// FreeSWITCH's).
pub fn unregister(call_id: &str) -> Vec<u8> {
    event(
        "sofia::unregister",
        &[
            ("profile-name", "internal"),
            ("from-user", "1000"),
            ("from-host", "example.org"),
            ("contact", "<sip:1000@192.0.2.1:5060>"),
            ("call-id", call_id),
            ("rpid", "unknown"),
            ("expires", "0"),
        ],
    )
}

impl Esl {
    /// Listens on 127.0.0.1:`port` (0: any) in `ns` with `password`,
    /// answering `show registrations` with `rows`.
    pub fn start(
        ns: &crate::netns::Netns,
        port: u16,
        password: &str,
        rows: Vec<Row>,
    ) -> Result<Self> {
        Self::start_as(ns, port, password, rows, None)
    }

    /// Like `start`, its sockets owned by `uid` (`None`: ours): a local
    /// user who took FreeSWITCH's port. The socket's owner is the file
    /// system uid of the thread that makes it (a listener's, and an
    /// accepted one's), so only the stand-in's own threads change theirs
    /// (`setfsuid` is per thread; `setuid` would change the whole test).
    pub fn start_as(
        ns: &crate::netns::Netns,
        port: u16,
        password: &str,
        rows: Vec<Row>,
        uid: Option<u32>,
    ) -> Result<Self> {
        Self::start_at(ns, Ipv4Addr::LOCALHOST, port, password, rows, uid)
    }

    /// Like `start_as`, listening on `ip` (an address of `ns`) instead of
    /// 127.0.0.1: an event socket off loopback, still in the namespace.
    pub fn start_at(
        ns: &crate::netns::Netns,
        ip: Ipv4Addr,
        port: u16,
        password: &str,
        rows: Vec<Row>,
        uid: Option<u32>,
    ) -> Result<Self> {
        let listener = crate::netns::in_netns(ns, move || {
            if let Some(uid) = uid {
                set_fsuid(uid)?;
            }
            let s = socket2_reuse_bind(ip, port)?;
            Ok(s)
        })?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let out: Arc<Mutex<Option<mpsc::Sender<Vec<u8>>>>> = Arc::new(Mutex::new(None));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let authenticated = Arc::new(AtomicU64::new(0));
        let rows = Arc::new(Mutex::new(rows));
        let (s, o, c, a, au, r) = (
            stop.clone(),
            out.clone(),
            commands.clone(),
            accepted.clone(),
            authenticated.clone(),
            rows.clone(),
        );
        let password = password.to_owned();
        let thread = std::thread::spawn(move || {
            if let Some(uid) = uid {
                set_fsuid(uid).expect("setfsuid");
            }
            while !s.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                a.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel();
                *o.lock().unwrap() = Some(tx);
                let _ = serve(stream, &password, &r, &rx, &c, &au, &s);
            }
        });
        Ok(Self {
            port,
            stop,
            out,
            commands,
            accepted,
            authenticated,
            rows,
            thread: Some(thread),
        })
    }

    /// Writes raw bytes to the connected client (events, or anything).
    pub fn send(&self, bytes: Vec<u8>) {
        if let Some(tx) = self.out.lock().unwrap().as_ref() {
            let _ = tx.send(bytes);
        }
    }

    /// From now on, `show registrations` answers `rows`: FreeSWITCH's
    /// table changed without an event (a registration replaced, flushed).
    pub fn set_rows(&self, rows: Vec<Row>) {
        *self.rows.lock().unwrap() = rows;
    }

    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

impl Drop for Esl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This thread's file system uid (what new sockets are owned by).
fn set_fsuid(uid: u32) -> std::io::Result<()> {
    // SAFETY: the raw syscall changes only the calling thread's fsuid
    // (glibc's setfsuid wrapper does the same, without telling failure).
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) };
    // setfsuid returns the previous value; asking again tells the new one.
    let now = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) };
    if now != i64::from(uid) {
        return Err(std::io::Error::other(format!(
            "setfsuid({uid}) did not take"
        )));
    }
    Ok(())
}

/// A listener that can be bound again on the same port right after the
/// last one closed (a restarted FreeSWITCH).
fn socket2_reuse_bind(ip: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls on a fresh descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let listener = TcpListener::from_raw_fd(fd);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
            || libc::listen(fd, 16) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

/// One client, until it leaves, the password is wrong, or the server stops.
fn serve(
    stream: TcpStream,
    password: &str,
    rows: &Mutex<Vec<Row>>,
    out: &mpsc::Receiver<Vec<u8>>,
    commands: &Mutex<Vec<String>>,
    authenticated: &AtomicU64,
    stop: &AtomicBool,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(&frame("auth/request", &[], b""))?;
    let mut authed = false;
    let mut line = String::new();
    let mut command = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        while let Ok(bytes) = out.try_recv() {
            w.write_all(&bytes)?;
        }
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        }
        let l = std::mem::take(&mut line);
        let l = l.trim_end_matches(['\r', '\n']);
        if !l.is_empty() {
            command.push(l.to_owned());
            continue;
        }
        let Some(cmd) = command.first().cloned() else {
            continue;
        };
        command.clear();
        if let Some(pw) = cmd.strip_prefix("auth ") {
            commands.lock().unwrap().push("auth *".into());
            if pw == password {
                authed = true;
                authenticated.fetch_add(1, Ordering::Relaxed);
                w.write_all(&frame(
                    "command/reply",
                    &[("Reply-Text", "+OK accepted")],
                    b"",
                ))?;
            } else {
                w.write_all(&frame(
                    "command/reply",
                    &[("Reply-Text", "-ERR invalid")],
                    b"",
                ))?;
                w.write_all(&frame(
                    "text/disconnect-notice",
                    &[],
                    b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n",
                ))?;
                return Ok(());
            }
            continue;
        }
        commands.lock().unwrap().push(cmd.clone());
        if !authed {
            w.write_all(&frame(
                "command/reply",
                &[("Reply-Text", "-ERR command not found")],
                b"",
            ))?;
            continue;
        }
        if cmd.starts_with("event plain ") {
            w.write_all(&frame(
                "command/reply",
                &[("Reply-Text", "+OK event listener enabled plain")],
                b"",
            ))?;
        } else if cmd == "api show registrations" {
            // As mod_commands' show_callback: the header comes with the
            // first row, so no registrations is "\n0 total.\n".
            let rows = rows.lock().unwrap().clone();
            let mut body = String::new();
            if !rows.is_empty() {
                body.push_str(
                    "reg_user,realm,token,url,expires,network_ip,network_port,network_proto,hostname,metadata\n",
                );
            }
            for row in &rows {
                body.push_str(&format!(
                    "{},{},{},sofia/internal/sip:{}@{}:5060,{},{},5060,udp,pbx,\n",
                    row.user, row.realm, row.call_id, row.user, row.ip, row.expires_at, row.ip
                ));
            }
            body.push_str(&format!("\n{} total.\n", rows.len()));
            w.write_all(&frame("api/response", &[], body.as_bytes()))?;
        } else {
            w.write_all(&frame(
                "command/reply",
                &[("Reply-Text", "-ERR command not found")],
                b"",
            ))?;
        }
    }
    Ok(())
}
