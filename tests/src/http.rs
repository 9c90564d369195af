//! A real HTTP server for the tests, inside a namespace: it records what
//! is POSTed (webhooks) and answers GETs with what the test set (feeds).
use anyhow::Result;
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

/// A request as received: method, path, headers (lower-case names), body.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// How the server answers: status and body, decided per request (for a
/// 3xx, the body is the `Location`).
pub type Answer = Box<dyn Fn(&Request) -> (u16, String) + Send>;

/// Listens on 127.0.0.1 (a free port) in a namespace until dropped.
pub struct Server {
    pub port: u16,
    requests: mpsc::Receiver<Request>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Answers every request with 200 and an empty body.
    pub fn recorder(ns: &crate::netns::Netns) -> Result<Self> {
        Self::start(ns, Box::new(|_| (200, String::new())))
    }

    pub fn start(ns: &crate::netns::Netns, answer: Answer) -> Result<Self> {
        let listener = crate::netns::in_netns(ns, || TcpListener::bind("127.0.0.1:0"))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (tx, requests) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                match serve_one(stream, &answer) {
                    Ok(req) => {
                        let _ = tx.send(req);
                    }
                    Err(e) => eprintln!("test HTTP server: {e:#}"),
                }
            }
        });
        Ok(Self {
            port,
            requests,
            stop,
        })
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next request, waiting at most `within`.
    pub fn next(&self, within: Duration) -> Option<Request> {
        self.requests.recv_timeout(within).ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_one(stream: std::net::TcpStream, answer: &Answer) -> Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or("").to_owned(),
        words.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let req = Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (status, text) = answer(&req);
    let mut stream = stream;
    // A redirect's text is where it points.
    let (location, text) = match status {
        300..=399 => (format!("Location: {text}\r\n"), String::new()),
        _ => (String::new(), text),
    };
    // One write: a client may stop reading after the status line.
    let response = format!(
        "HTTP/1.1 {status} X\r\n{location}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes());
    Ok(req)
}
