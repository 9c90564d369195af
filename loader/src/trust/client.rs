//! The event-socket worker: a thread of its own (blocking I/O, like the
//! fleet's engines) that connects, authenticates, subscribes to the sofia
//! registration events, asks for the current registrations, and hands
//! everything to the daemon's loop. Any error drops the connection; the
//! supervisor reconnects with backoff (1 s doubling to 60 s).
use super::esl::{event_headers, shown, Conn, Read1};
use super::registrations::{parse_event, parse_listing, Current, RegEvent};
use crate::text::Secret;
use anyhow::{bail, Context as _, Result};
use std::{
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    time::Duration,
};

/// Where to connect and with what.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub addr: SocketAddr,
    pub password: Secret,
    /// Where the settings came from (configuration or discovery).
    pub from: String,
    /// Most registrations taken from a listing.
    pub max_rows: usize,
}

/// What the worker tells the daemon. `generation` numbers connections.
#[derive(Debug)]
pub enum EslMsg {
    Connected {
        generation: u64,
    },
    Listing {
        generation: u64,
        rows: Vec<Current>,
        unreadable: usize,
    },
    Event {
        generation: u64,
        event: RegEvent,
    },
    /// An event that could not be read (skipped; the connection stays).
    BadEvent {
        error: String,
    },
    Down {
        error: String,
    },
}

pub type EslTx = tokio::sync::mpsc::Sender<EslMsg>;

/// The subscription: the registration events only.
pub const SUBSCRIBE: &str = "event plain CUSTOM sofia::register sofia::unregister sofia::expire";
/// The current registrations (the core's table, CSV).
pub const LISTING: &str = "api show registrations";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a quiet connection looks at whether it must stop.
const TICK: Duration = Duration::from_millis(250);

/// Connections made so far, by any worker of this process: a worker
/// started by a reload numbers its connections after the old one's, so
/// its listing replaces what the old one learnt.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Starts the worker; it stops when `stop`'s sender is dropped.
pub fn start(settings: Settings, tx: EslTx, stop: mpsc::Receiver<()>) {
    crate::fleet::supervise("esl", stop, move |stop| {
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let result = session(&settings, &tx, stop, generation);
        if let Err(e) = &result {
            let _ = tx.try_send(EslMsg::Down {
                error: crate::text::escape(&format!("{e:#}")).into_owned(),
            });
        }
        result
    });
}

/// One connection, until it fails or the worker is stopped (`Ok`).
fn session(s: &Settings, tx: &EslTx, stop: &mpsc::Receiver<()>, generation: u64) -> Result<()> {
    let stream = TcpStream::connect_timeout(&s.addr, CONNECT_TIMEOUT)
        .with_context(|| format!("cannot connect to FreeSWITCH's event socket at {}", s.addr))?;
    let mut conn = Conn::new(stream, TICK)?;
    let at = s.addr;
    let hello = conn
        .expect(ANSWER_TIMEOUT)
        .with_context(|| format!("event socket at {at}"))?;
    if hello.content_type() != "auth/request" {
        bail!(
            "{at} is not FreeSWITCH's event socket: it greeted with Content-Type {}",
            shown(hello.content_type())
        );
    }
    conn.send(&format!("auth {}", s.password.expose()))?;
    let reply = command_reply(&mut conn).with_context(|| format!("event socket at {at}"))?;
    if !reply.starts_with("+OK") {
        // The reply is FreeSWITCH's (`-ERR invalid`), never the password.
        bail!(
            "the event socket at {at} refused the password ({}); set [trust] esl_password, or check {}",
            shown(&reply),
            s.from
        );
    }
    conn.send(SUBSCRIBE)?;
    let reply = command_reply(&mut conn).with_context(|| format!("event socket at {at}"))?;
    if !reply.starts_with("+OK") {
        bail!(
            "the event socket at {at} refused the subscription ({})",
            shown(&reply)
        );
    }
    if tx.blocking_send(EslMsg::Connected { generation }).is_err() {
        return Ok(());
    }
    tracing::info!("connected to FreeSWITCH's event socket at {at} (registrations trusted)");
    conn.send(LISTING)?;
    loop {
        let frame = match conn.read()? {
            Read1::Frame(f) => f,
            Read1::Idle => {
                if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    return Ok(());
                }
                continue;
            }
        };
        let msg = match frame.content_type() {
            "text/event-plain" => match event_headers(&frame.body).and_then(|h| parse_event(&h)) {
                Ok(Some(event)) => EslMsg::Event { generation, event },
                Ok(None) => continue,
                Err(e) => EslMsg::BadEvent {
                    error: crate::text::escape(&format!("{e:#}")).into_owned(),
                },
            },
            "api/response" => {
                let (rows, unreadable) = parse_listing(&frame.body, s.max_rows)?;
                EslMsg::Listing {
                    generation,
                    rows,
                    unreadable,
                }
            }
            "text/disconnect-notice" => bail!("FreeSWITCH closed the event socket at {at}"),
            // Replies to nothing asked, log lines: not ours.
            _ => continue,
        };
        if tx.blocking_send(msg).is_err() {
            return Ok(());
        }
    }
}

/// The `Reply-Text` of the next `command/reply`.
fn command_reply(conn: &mut Conn) -> Result<String> {
    let f = conn.expect(ANSWER_TIMEOUT)?;
    if f.content_type() != "command/reply" {
        bail!(
            "expected a command/reply, got Content-Type {}",
            shown(f.content_type())
        );
    }
    Ok(f.header("Reply-Text").unwrap_or("").to_owned())
}
