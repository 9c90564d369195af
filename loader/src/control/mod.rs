//! The daemon's control socket: one JSON request per line, one JSON response
//! per line. The socket file is mode 0600 in a 0700 folder, and every
//! connection's peer must be root (SO_PEERCRED), so only root can read the
//! daemon's state or change bans through it.
//!
//! This is the bottom floor: the protocol's types (`request`, `reply`) are
//! shared by the CLI and the daemon and use only `addr` and `duration`.
mod reply;
mod request;

pub use reply::*;
pub use request::*;

use anyhow::{bail, Context as _, Result};
use serde::de::DeserializeOwned;
use std::{
    cell::RefCell,
    collections::VecDeque,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    rc::Rc,
    time::Duration,
};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// Binds the socket with root-only permissions. The folder is created
/// (mode 0700) when missing, and only then: an existing one (`/run`, a
/// shared temporary folder) keeps its mode, as the socket itself is 0600 and
/// every peer must be root. A stale socket is replaced; anything else at the
/// path is left alone and is an error.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another sipguard daemon is already listening on {}",
            path.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a socket: refusing to replace it (choose another `socket` path)",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Most root clients served at once (the CLI opens one a command). Other
/// users are refused at once and never held, so they cannot evict root.
const MAX_CLIENTS: usize = 32;
/// What a client that is not root reads before its connection is closed.
const NOT_ROOT: &str = "only root can use the sipguard control socket";
/// A control client silent this long (or not reading its answer) is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves connections, answering each request with `handle`.
pub async fn serve(
    listener: tokio::net::UnixListener,
    handle: impl Fn(Request) -> Response + Clone + 'static,
) {
    let mut clients = Clients::new(MAX_CLIENTS, "control socket");
    loop {
        match listener.accept().await {
            Ok((stream, _)) if is_root(&stream) => {
                clients.spawn(None, client(stream, handle.clone()));
            }
            Ok((stream, _)) => refuse(&stream),
            Err(e) => clients.accept_failed(&e).await,
        }
    }
}

fn is_root(stream: &tokio::net::UnixStream) -> bool {
    stream.peer_cred().is_ok_and(|c| c.uid() == 0)
}

/// Tells a client that is not root why, if its socket takes the line now
/// (it always can, being new), and closes it: nothing waits on it.
fn refuse(stream: &tokio::net::UnixStream) {
    let mut line = serde_json::to_vec(&Response::<Reply>::err(&anyhow::anyhow!(NOT_ROOT)))
        .expect("responses serialize");
    line.push(b'\n');
    let _ = stream.try_write(&line);
}

/// One control connection: requests answered in order until it closes or
/// stays idle for `IDLE_TIMEOUT`.
async fn client(stream: tokio::net::UnixStream, handle: impl Fn(Request) -> Response) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::time::timeout;
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64)).lines();
    while let Ok(Ok(Some(line))) = timeout(IDLE_TIMEOUT, lines.next_line()).await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req),
            Err(e) => Response::err(&anyhow::anyhow!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).expect("responses serialize");
        out.push(b'\n');
        if !matches!(
            timeout(IDLE_TIMEOUT, write.write_all(&out)).await,
            Ok(Ok(()))
        ) {
            break;
        }
    }
}

/// How long accepting waits after running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The clients a server holds at once, oldest first. A client beyond `max`
/// closes the oldest of the source holding the most connections: an idle
/// or slow one, most likely, as a real client is answered in milliseconds.
/// So idle connections can neither run the daemon out of descriptors nor
/// lock out the next real client (refusing new clients instead would let a
/// few idle ones, renewed, lock out every real one; waiting would queue
/// real ones behind thousands of idle ones), and one source flooding
/// connections only ever closes its own.
pub struct Clients {
    max: usize,
    what: &'static str,
    next: u64,
    held: Rc<RefCell<VecDeque<Held>>>,
    warned: Option<std::time::Instant>,
}

/// One client held: its id, its source, its task.
struct Held {
    id: u64,
    source: Option<Source>,
    task: tokio::task::AbortHandle,
}

/// Where a client connects from, as far as sharing the cap goes: an IPv4
/// address, or an IPv6 /64 (what one host usually has to itself).
pub type Source = u128;

/// The source of a TCP peer.
pub fn source(peer: std::net::SocketAddr) -> Source {
    match peer.ip().to_canonical() {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a) & !u128::from(u64::MAX),
    }
}

impl Clients {
    pub fn new(max: usize, what: &'static str) -> Self {
        Self {
            max,
            what,
            next: 0,
            held: Rc::default(),
            warned: None,
        }
    }

    /// Runs `client` (from `source`) on the current `LocalSet`, first
    /// closing a client of the busiest source if `max` are held.
    pub fn spawn(
        &mut self,
        source: Option<Source>,
        client: impl std::future::Future<Output = ()> + 'static,
    ) {
        while self.held.borrow().len() >= self.max {
            self.close_busiest();
        }
        let (id, held) = (self.next, self.held.clone());
        self.next += 1;
        let task = tokio::task::spawn_local(async move {
            client.await;
            held.borrow_mut().retain(|h| h.id != id);
        });
        self.held.borrow_mut().push_back(Held {
            id,
            source,
            task: task.abort_handle(),
        });
    }

    /// Closes the oldest client of the source holding the most.
    fn close_busiest(&self) {
        let mut held = self.held.borrow_mut();
        let mut counts = std::collections::HashMap::new();
        for h in held.iter() {
            *counts.entry(h.source).or_insert(0usize) += 1;
        }
        let Some(busiest) = counts.into_iter().max_by_key(|&(_, n)| n).map(|(s, _)| s) else {
            return;
        };
        if let Some(at) = held.iter().position(|h| h.source == busiest) {
            if let Some(h) = held.remove(at) {
                // Dropping the task's future closes its connection.
                h.task.abort();
            }
        }
    }

    /// How many clients are held now.
    pub fn len(&self) -> usize {
        self.held.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After a failed accept. Out of descriptors (or memory), the pending
    /// connection stays queued and accepting again fails at once: instead
    /// of spinning on it, the oldest client is closed and accepting waits
    /// `ACCEPT_BACKOFF`. Other failures (a connection aborted before it was
    /// accepted) concern that connection only.
    pub async fn accept_failed(&mut self, e: &std::io::Error) {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !exhausted {
            return;
        }
        if self
            .warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.warned = Some(std::time::Instant::now());
            tracing::warn!(
                "{}: cannot accept a client ({e}), holding {}; retrying every {} ms",
                self.what,
                self.len(),
                ACCEPT_BACKOFF.as_millis()
            );
        }
        self.close_busiest();
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// Sends one request to the daemon. `Ok(None)`: no daemon is listening.
/// `T` is the reply the request gets (`IgnoredAny` to read none); an answer
/// of another shape is an error.
pub fn request<T: DeserializeOwned>(path: &Path, req: &Request) -> Result<Option<Response<T>>> {
    request_within(path, req, Duration::from_secs(30))
}

/// Like `request`, waiting at most `timeout` for the answer (a daemon
/// still starting has bound its socket but answers once protection is on).
pub fn request_within<T: DeserializeOwned>(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Option<Response<T>>> {
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!(
                "permission denied on {}: only root can talk to the daemon",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", path.display())),
    };
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("no answer from the daemon")?;
    Ok(Some(
        serde_json::from_str(&answer).context("unreadable answer from the daemon")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    /// 100 idle clients: the oldest are closed, so at most `MAX_CLIENTS`
    /// are held, and a real request is still answered at once.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_clients_are_capped_and_a_real_one_answered() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = bind(&sock).unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(serve(listener, |_| {
            Response::ok(Reply::Reloaded(Reloaded { reloaded: true }))
        }));
        local
            .run_until(async {
                let mut idle = Vec::new();
                for _ in 0..100 {
                    idle.push(tokio::net::UnixStream::connect(&sock).await.unwrap());
                }
                let path = sock.clone();
                let started = std::time::Instant::now();
                let answer = tokio::task::spawn_blocking(move || {
                    request_within::<Reloaded>(&path, &Request::Reload, Duration::from_secs(5))
                })
                .await
                .unwrap()
                .unwrap()
                .unwrap();
                assert!(answer.ok && started.elapsed() < Duration::from_secs(1));
                // The server closed the oldest: they read their end.
                let mut closed = 0;
                for s in &mut idle {
                    use tokio::io::AsyncReadExt as _;
                    let mut b = [0u8; 1];
                    let read = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b));
                    closed += usize::from(matches!(read.await, Ok(Ok(0))));
                }
                assert!(closed >= 100 - MAX_CLIENTS, "{closed} closed");
                assert!(closed < 100, "the newest are kept");
            })
            .await;
    }

    /// A request whose values fail their checks never reaches the
    /// handler: the client reads why, and the connection still serves.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bad_value_is_refused_at_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = bind(&sock).unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(serve(listener, |req| {
            assert_eq!(req, Request::Reload, "only the good request is handled");
            Response::ok(Reply::Reloaded(Reloaded { reloaded: true }))
        }));
        let answers = local
            .run_until(tokio::task::spawn_blocking(move || {
                let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
                stream
                    .write_all(b"{\"op\":\"ban\",\"net\":\"0.0.0.0/0\",\"duration\":\"-1\",\"all_ports\":false}\n{\"op\":\"reload\"}\n")
                    .unwrap();
                let mut lines = BufReader::new(stream).lines();
                let mut next = || lines.next().unwrap().unwrap();
                (next(), next())
            }))
            .await
            .unwrap();
        let refused: Response<IgnoredAny> = serde_json::from_str(&answers.0).unwrap();
        let why = refused.error.unwrap_or_default();
        assert!(
            !refused.ok && why.starts_with("bad request: refusing to ban 0.0.0.0/0"),
            "{why}"
        );
        let reloaded: Response<Reloaded> = serde_json::from_str(&answers.1).unwrap();
        assert_eq!(reloaded.data, Some(Reloaded { reloaded: true }));
    }

    /// Forks a child that, as user `nobody`, connects to `sock` `total`
    /// times, holding the last 100 connections: a local user flooding the
    /// control socket. Only raw system calls after the fork.
    fn flood_as_nobody(sock: &Path, total: usize) -> libc::pid_t {
        use std::os::unix::ffi::OsStrExt as _;
        // SAFETY: a zeroed sockaddr_un is valid; the path fits (checked).
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = sock.as_os_str().as_bytes();
        assert!(path.len() < addr.sun_path.len());
        for (d, s) in addr.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: the child makes only async-signal-safe system calls and
        // leaves with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid > 0 {
                return pid;
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                libc::_exit(2);
            }
            let mut held = [-1; 100];
            for i in 0..total {
                let slot = &mut held[i % 100];
                if *slot >= 0 {
                    libc::close(*slot);
                }
                *slot = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::connect(*slot, std::ptr::addr_of!(addr).cast(), len);
            }
            libc::_exit(0);
        }
    }

    /// A user other than root floods the socket (made reachable to them,
    /// as a careless mode would): it is refused at once and never held, so
    /// root's requests are all answered meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn other_users_cannot_evict_root() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test runs as root");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("s.sock");
        let listener = bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(serve(listener, |_| {
            Response::ok(Reply::Reloaded(Reloaded { reloaded: true }))
        }));
        local
            .run_until(async {
                // A refused user reads why.
                let path = sock.clone();
                let refused = tokio::task::spawn_blocking(move || {
                    std::process::Command::new("setpriv")
                        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                        .args(["/usr/bin/python3", "-c"])
                        .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(s.recv(4096).decode())")
                        .arg(&path)
                        .output()
                        .unwrap()
                })
                .await
                .unwrap();
                let said = String::from_utf8_lossy(&refused.stdout);
                assert!(said.contains(NOT_ROOT), "{said} {refused:?}");

                let child = flood_as_nobody(&sock, 20_000);
                let path = sock.clone();
                let answers = tokio::task::spawn_blocking(move || {
                    (0..50)
                        .map(|_| {
                            std::thread::sleep(Duration::from_millis(10));
                            request_within::<Reloaded>(&path, &Request::Reload, Duration::from_secs(5))
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap();
                let mut status = 0;
                let flooded = tokio::task::spawn_blocking(move || {
                    // SAFETY: waiting for our own child.
                    unsafe { libc::waitpid(child, &mut status, 0) };
                    status
                });
                let status = flooded.await.unwrap();
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{status}");
                for a in answers {
                    let a = a.expect("answered").expect("listening");
                    assert!(a.ok, "{a:?}");
                }
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn binding_leaves_other_folders_and_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        // An existing folder keeps its mode.
        let sock = dir.path().join("s.sock");
        drop(bind(&sock).unwrap());
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
        assert_eq!(
            std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A stale socket is replaced.
        drop(bind(&sock).unwrap());
        // A folder it makes is 0700.
        let made = dir.path().join("run/sipguard/s.sock");
        drop(bind(&made).unwrap());
        let mode = std::fs::metadata(made.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // A file that is not a socket is never removed.
        let file = dir.path().join("important");
        std::fs::write(&file, b"keep me").unwrap();
        let err = format!("{:#}", bind(&file).unwrap_err());
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
