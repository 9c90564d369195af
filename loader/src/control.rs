//! The daemon's control socket: one JSON request per line, one JSON response
//! per line. The socket file is mode 0600 in a 0700 folder, and every
//! connection's peer must be root (SO_PEERCRED), so only root can read the
//! daemon's state or change bans through it.
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::{
    cell::RefCell,
    collections::VecDeque,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    rc::Rc,
    time::Duration,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status {
        jail: Option<String>,
    },
    Ban {
        net: String,
        duration: String,
        all_ports: bool,
    },
    Unban {
        net: String,
        /// Every box of the fleet, not only this one.
        #[serde(default)]
        fleet: bool,
    },
    Allow {
        net: String,
    },
    Disallow {
        net: String,
    },
    /// Jail and reason of bans, a page at a time: `list` reads the bans
    /// from the kernel maps and asks the daemon only for these, so a
    /// million bans never hold its one thread for long.
    Notes {
        offset: usize,
        limit: usize,
    },
    Reload,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            data,
        }
    }

    pub fn err(e: &anyhow::Error) -> Self {
        Self {
            ok: false,
            error: Some(format!("{e:#}")),
            data: serde_json::Value::Null,
        }
    }
}

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

/// Most control clients served at once (the CLI opens one a command).
const MAX_CLIENTS: usize = 32;
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
            Ok((stream, _)) => clients.spawn(client(stream, handle.clone())),
            Err(e) => clients.accept_failed(&e).await,
        }
    }
}

/// One control connection: requests answered in order until it closes or
/// stays idle for `IDLE_TIMEOUT`.
async fn client(stream: tokio::net::UnixStream, handle: impl Fn(Request) -> Response) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::time::timeout;
    let root = stream.peer_cred().is_ok_and(|c| c.uid() == 0);
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64)).lines();
    while let Ok(Ok(Some(line))) = timeout(IDLE_TIMEOUT, lines.next_line()).await {
        let response = if !root {
            Response::err(&anyhow::anyhow!(
                "only root can use the sipguard control socket"
            ))
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(req) => handle(req),
                Err(e) => Response::err(&anyhow::anyhow!("bad request: {e}")),
            }
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
/// closes the oldest: an idle or slow one, most likely, as a real client is
/// answered in milliseconds. So idle connections can neither run the daemon
/// out of descriptors nor lock out the next real client (refusing new
/// clients instead would let a few idle ones, renewed, lock out every real
/// one; waiting would queue real ones behind thousands of idle ones).
pub struct Clients {
    max: usize,
    what: &'static str,
    next: u64,
    held: Rc<RefCell<VecDeque<(u64, tokio::task::AbortHandle)>>>,
    warned: Option<std::time::Instant>,
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

    /// Runs `client` on the current `LocalSet`, closing the oldest client
    /// first if `max` are held.
    pub fn spawn(&mut self, client: impl std::future::Future<Output = ()> + 'static) {
        while self.held.borrow().len() >= self.max {
            self.close_oldest();
        }
        let (id, held) = (self.next, self.held.clone());
        self.next += 1;
        let task = tokio::task::spawn_local(async move {
            client.await;
            held.borrow_mut().retain(|(i, _)| *i != id);
        });
        self.held.borrow_mut().push_back((id, task.abort_handle()));
    }

    /// How many clients are held now.
    pub fn len(&self) -> usize {
        self.held.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn close_oldest(&self) {
        if let Some((_, task)) = self.held.borrow_mut().pop_front() {
            // Dropping the task's future closes its connection.
            task.abort();
        }
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
        self.close_oldest();
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// Sends one request to the daemon. `Ok(None)`: no daemon is listening.
pub fn request(path: &Path, req: &Request) -> Result<Option<Response>> {
    request_within(path, req, Duration::from_secs(30))
}

/// Like `request`, waiting at most `timeout` for the answer (a daemon
/// still starting has bound its socket but answers once protection is on).
pub fn request_within(path: &Path, req: &Request, timeout: Duration) -> Result<Option<Response>> {
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

    /// 100 idle clients: the oldest are closed, so at most `MAX_CLIENTS`
    /// are held, and a real request is still answered at once.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_clients_are_capped_and_a_real_one_answered() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = bind(&sock).unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(serve(listener, |_| Response::ok(serde_json::json!("up"))));
        local
            .run_until(async {
                let mut idle = Vec::new();
                for _ in 0..100 {
                    idle.push(tokio::net::UnixStream::connect(&sock).await.unwrap());
                }
                let path = sock.clone();
                let started = std::time::Instant::now();
                let answer = tokio::task::spawn_blocking(move || {
                    request_within(&path, &Request::Reload, Duration::from_secs(5))
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
