//! FreeSWITCH's event socket (mod_event_socket, inbound mode): its framing,
//! read within bounds. A frame is header lines `Name: value` ended by an
//! empty line; `Content-Length` announces a body of exactly that many bytes.
//! The peer is FreeSWITCH, or whatever answers on its port: every line, the
//! number of headers, every body and the time a frame takes are bounded,
//! and anything else is an error that drops the connection.
use anyhow::{bail, Context as _, Result};
use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// Longest header line (FreeSWITCH's are short: `Content-Type: ...`).
pub const MAX_LINE: usize = 8 * 1024;
/// Most headers in one frame.
pub const MAX_HEADERS: usize = 64;
/// Largest body: an `api` reply listing many registrations.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Largest event body (`text/event-plain`: a few dozen headers).
pub const MAX_EVENT_BODY: usize = 256 * 1024;
/// Longest a frame may take to arrive once its first byte has.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// One frame: its headers and body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> &str {
        self.header("Content-Type").unwrap_or("")
    }
}

/// A connection to the event socket.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// A line read in part when the read timed out.
    partial: Vec<u8>,
    /// A frame read in part (its headers so far) and since when.
    pending: Option<(Frame, Instant)>,
}

/// What reading gave.
pub enum Read1 {
    Frame(Frame),
    /// Nothing arrived within the socket's read timeout.
    Idle,
}

impl Conn {
    /// Wraps a connected stream; reads give up every `tick` (to look at
    /// whether the worker must stop) and resume where they were.
    pub fn new(stream: TcpStream, tick: Duration) -> Result<Self> {
        stream.set_read_timeout(Some(tick))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, stream),
            writer,
            partial: Vec::new(),
            pending: None,
        })
    }

    /// Sends a command (`auth ...`, `event plain ...`, `api ...`): one
    /// line, ended by the empty line that ends a frame.
    pub fn send(&mut self, command: &str) -> Result<()> {
        if command.contains(['\n', '\r']) {
            bail!("a command is one line");
        }
        self.writer
            .write_all(format!("{command}\n\n").as_bytes())
            .context("cannot write to the event socket")
    }

    /// Waits for the next frame, at most `wait` (then an error).
    pub fn expect(&mut self, wait: Duration) -> Result<Frame> {
        let until = Instant::now() + wait;
        loop {
            match self.read()? {
                Read1::Frame(f) => return Ok(f),
                Read1::Idle if Instant::now() >= until => {
                    bail!("no answer within {} s", wait.as_secs())
                }
                Read1::Idle => {}
            }
        }
    }

    /// Reads the next frame, or `Idle` when nothing more came within the
    /// read timeout (what was read so far is kept for the next call).
    pub fn read(&mut self) -> Result<Read1> {
        loop {
            let Some(line) = self.line()? else {
                if let Some((_, since)) = &self.pending {
                    if since.elapsed() > FRAME_TIMEOUT {
                        bail!(
                            "a frame did not arrive whole within {} s",
                            FRAME_TIMEOUT.as_secs()
                        );
                    }
                }
                return Ok(Read1::Idle);
            };
            let (frame, _) = self
                .pending
                .get_or_insert_with(|| (Frame::default(), Instant::now()));
            if line.is_empty() {
                if frame.headers.is_empty() {
                    // Blank lines between frames.
                    self.pending = None;
                    continue;
                }
                let (mut frame, since) = self.pending.take().expect("just set");
                if let Some(len) = frame.header("Content-Length") {
                    let len: usize = len
                        .trim()
                        .parse()
                        .with_context(|| format!("bad Content-Length {}", shown(len)))?;
                    let max = if frame.content_type() == "text/event-plain" {
                        MAX_EVENT_BODY
                    } else {
                        MAX_BODY
                    };
                    if len > max {
                        bail!("a body of {len} bytes announced (at most {max} taken)");
                    }
                    frame.body = self.body(len, since)?;
                }
                return Ok(Read1::Frame(frame));
            }
            if frame.headers.len() >= MAX_HEADERS {
                bail!("more than {MAX_HEADERS} headers in a frame");
            }
            let text = String::from_utf8(line).context("a header line is not UTF-8")?;
            let Some((k, v)) = text.split_once(':') else {
                bail!("a header line without `:`: {}", shown(&text));
            };
            frame
                .headers
                .push((k.trim().to_owned(), v.trim_start().to_owned()));
        }
    }

    /// One line without its end (`\n`, or `\r\n`); `None` on a timeout
    /// (the part read is kept).
    fn line(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            let buf = match self.reader.fill_buf() {
                Ok([]) => bail!("the event socket closed the connection"),
                Ok(b) => b,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("cannot read from the event socket"),
            };
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.partial.len() + take > MAX_LINE + 2 {
                bail!("a header line longer than {MAX_LINE} bytes");
            }
            self.partial.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if done {
                let mut line = std::mem::take(&mut self.partial);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
        }
    }

    /// Exactly `len` bytes of body, within the frame's time.
    fn body(&mut self, len: usize, since: Instant) -> Result<Vec<u8>> {
        let mut body = vec![0; len];
        let mut got = 0;
        while got < len {
            match self.reader.read(&mut body[got..]) {
                Ok(0) => bail!("the event socket closed the connection inside a body"),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if since.elapsed() > FRAME_TIMEOUT {
                        bail!(
                            "a body of {len} bytes did not arrive within {} s",
                            FRAME_TIMEOUT.as_secs()
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("cannot read from the event socket"),
            }
        }
        Ok(body)
    }
}

/// Outside text, bounded and escaped, for an error message.
pub fn shown(s: &str) -> String {
    crate::text::escape(crate::text::bounded(s, 80)).into_owned()
}

/// `%XX` decoded (event values are URL-encoded); `+` stays (FreeSWITCH
/// encodes a space as `%20`). A bad escape is kept as it is.
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The headers of a `text/event-plain` body: `Name: value` lines, values
/// URL-encoded; bounded like a frame's.
pub fn event_headers(body: &[u8]) -> Result<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).context("an event is not UTF-8")?;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            // The empty line ends the headers; what follows is the event's
            // own body (`Content-Length` in the event), unused here.
            break;
        }
        if out.len() >= 4 * MAX_HEADERS {
            bail!("an event with more than {} headers", 4 * MAX_HEADERS);
        }
        if line.len() > MAX_LINE {
            bail!("an event header longer than {MAX_LINE} bytes");
        }
        let Some((k, v)) = line.split_once(':') else {
            bail!("an event line without `:`: {}", shown(line));
        };
        out.push((k.trim().to_owned(), url_decode(v.trim_start())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_url_decoded() {
        assert_eq!(url_decode("sofia%3A%3Aregister"), "sofia::register");
        assert_eq!(url_decode("a%20b%"), "a b%");
        assert_eq!(url_decode("%zz%4"), "%zz%4");
        assert_eq!(url_decode("100%25"), "100%");
    }

    /// A connection to a peer that writes `bytes` and keeps the socket open.
    fn conn_to(bytes: &'static [u8]) -> (Conn, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(bytes).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        let stream = TcpStream::connect(addr).unwrap();
        (Conn::new(stream, Duration::from_millis(50)).unwrap(), peer)
    }

    #[test]
    fn frames_are_read_whole_and_within_bounds() {
        let (mut c, peer) = conn_to(
            b"Content-Type: auth/request\r\n\r\n\nContent-Length: 5\nContent-Type: api/response\n\nhello",
        );
        let f = c.expect(Duration::from_secs(2)).unwrap();
        assert_eq!(f.content_type(), "auth/request");
        let f = c.expect(Duration::from_secs(2)).unwrap();
        assert_eq!(
            (f.content_type(), f.body.as_slice()),
            ("api/response", &b"hello"[..])
        );
        assert!(matches!(c.read().unwrap(), Read1::Idle));
        peer.join().unwrap();

        let many: &'static [u8] = Box::leak(
            (0..=MAX_HEADERS)
                .map(|i| format!("X-{i}: v\n"))
                .collect::<String>()
                .into_bytes()
                .into_boxed_slice(),
        );
        let (mut c, peer) = conn_to(many);
        let e = c.expect(Duration::from_secs(2)).unwrap_err();
        assert!(format!("{e:#}").contains("more than 64 headers"), "{e:#}");
        peer.join().unwrap();

        let (mut c, peer) = conn_to(b"Content-Length: -1\n\n");
        let e = c.expect(Duration::from_secs(2)).unwrap_err();
        assert!(format!("{e:#}").contains("bad Content-Length"), "{e:#}");
        peer.join().unwrap();

        let (mut c, peer) = conn_to(b"no colon\n\n");
        assert!(c.expect(Duration::from_secs(2)).is_err());
        peer.join().unwrap();
    }

    #[test]
    fn event_bodies_are_read_as_headers() {
        let body =
            b"Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister\nnetwork-ip: 192.0.2.1\n\n";
        let h = event_headers(body).unwrap();
        assert_eq!(h[1], ("Event-Subclass".into(), "sofia::register".into()));
        assert_eq!(h.len(), 3);
        assert!(event_headers(b"no colon here\n").is_err());
    }
}
