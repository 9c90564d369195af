//! The daemon's control socket: one JSON request per line, one JSON response
//! per line. The socket file is mode 0600 in a 0700 folder, and every
//! connection's peer must be root (SO_PEERCRED), so only root can read the
//! daemon's state or change bans through it.
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
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

/// Serves connections, answering each request with `handle`.
pub async fn serve(
    listener: tokio::net::UnixListener,
    handle: impl Fn(Request) -> Response + Clone + 'static,
) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::task::spawn_local(async move {
            let root = stream.peer_cred().is_ok_and(|c| c.uid() == 0);
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
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
                if write.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
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
