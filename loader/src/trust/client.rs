//! The event-socket worker: a thread of its own (blocking I/O, like the
//! fleet's engines) that connects, authenticates, subscribes to the sofia
//! registration events, asks for the current registrations, and hands
//! everything to the daemon's loop. Any error drops the connection; the
//! supervisor reconnects with backoff (1 s doubling to 60 s).
use super::esl::{event_headers, shown, Conn, Read1};
use super::peer::{self, Peer};
use super::registrations::{parse_event, parse_listing, Listing, RegEvent};
use crate::text::Secret;
use anyhow::{bail, Context as _, Result};
use std::{
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
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
    /// Besides root, the user whose event socket on this box is sent the
    /// password: the owner of the FreeSWITCH configuration the settings
    /// came from, or `[trust] esl_uid`.
    pub uid: Option<u32>,
    /// How often the registrations are listed again (`[trust] relist`;
    /// zero: on connect only).
    pub relist: Duration,
}

/// What the worker tells the daemon. `generation` numbers connections and,
/// within one, the listings asked for: an event carries the number of the
/// last listing asked before it was read, a listing the number it was
/// asked with, so the registry forgets only what was learnt before the
/// listing was asked for and is not in it.
#[derive(Debug)]
pub enum EslMsg {
    Connected {
        generation: u64,
    },
    Listing {
        generation: u64,
        listing: Listing,
    },
    Event {
        generation: u64,
        event: RegEvent,
    },
    /// An event or a listing that could not be read (skipped; the
    /// connection stays).
    BadEvent {
        error: String,
    },
    /// The local socket at the event socket's address belongs to a user
    /// the password is not for: not sent, connection dropped.
    PeerRefused {
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
/// How long a listing may take to come (a big table is megabytes).
const LISTING_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a quiet connection looks at whether it must stop.
const TICK: Duration = Duration::from_millis(250);

/// Connections and listings so far, by any worker of this process: a
/// worker started by a reload numbers its connections after the old
/// one's, so its listing replaces what the old one learnt.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Starts the worker; it stops when `stop`'s sender is dropped.
pub fn start(settings: Settings, tx: EslTx, stop: mpsc::Receiver<()>) {
    if !settings.addr.ip().to_canonical().is_loopback() {
        // Said once per worker; a local address of this box is still
        // checked like loopback (see `peer`).
        tracing::warn!(
            "the event socket at {} is not on loopback: ESL has no TLS, its password crosses the network in clear text (keep it on a trusted network, or use loopback)",
            settings.addr
        );
    }
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
fn session(s: &Settings, tx: &EslTx, stop: &mpsc::Receiver<()>, mut generation: u64) -> Result<()> {
    let stream = TcpStream::connect_timeout(&s.addr, CONNECT_TIMEOUT)
        .with_context(|| format!("cannot connect to FreeSWITCH's event socket at {}", s.addr))?;
    let us = stream.local_addr()?;
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
    // Looked up once the greeting came: the peer has accepted by then,
    // so its end of the connection is in the kernel's tables.
    if let Err(e) = check_peer(s, us) {
        let error = crate::text::escape(&format!("{e:#}")).into_owned();
        let _ = tx.try_send(EslMsg::PeerRefused { error });
        return Err(e);
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
    // The listing asked for and not yet answered (one at a time: answers
    // come in the order asked), and when it was asked.
    let mut asked = Some(generation);
    let mut asked_at = Instant::now();
    loop {
        // On every pass, not only when idle: a busy FreeSWITCH's events
        // would otherwise keep a worker a reload replaced running.
        if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
            return Ok(());
        }
        if asked.is_some() && asked_at.elapsed() > LISTING_TIMEOUT {
            // Events may still come, but what FreeSWITCH dropped silently
            // would never be learnt: a new connection asks afresh.
            bail!(
                "FreeSWITCH did not answer `show registrations` within {} s",
                LISTING_TIMEOUT.as_secs()
            );
        }
        if asked.is_none() && !s.relist.is_zero() && asked_at.elapsed() >= s.relist {
            generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            conn.send(LISTING)?;
            asked = Some(generation);
            asked_at = Instant::now();
        }
        let frame = match conn.read()? {
            Read1::Frame(f) => f,
            Read1::Idle => continue,
        };
        let msg = match frame.content_type() {
            "text/event-plain" => match event_headers(&frame.body).and_then(|h| parse_event(&h)) {
                Ok(Some(event)) => EslMsg::Event { generation, event },
                Ok(None) => continue,
                Err(e) => EslMsg::BadEvent {
                    error: crate::text::escape(&format!("{e:#}")).into_owned(),
                },
            },
            // A listing that cannot be read replaces nothing: what is
            // known stays, the events keep coming on this connection.
            "api/response" => {
                let asked_as = asked.take().unwrap_or(generation);
                match parse_listing(&frame.body, s.max_rows) {
                    Ok(listing) => EslMsg::Listing {
                        generation: asked_as,
                        listing,
                    },
                    Err(e) => EslMsg::BadEvent {
                        error: crate::text::escape(&format!("{e:#}")).into_owned(),
                    },
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

/// Refuses a peer on this box whose socket is not root's or `s.uid`'s
/// (a user who bound the port while FreeSWITCH was away). A peer across
/// the network cannot be checked: it is sent the password as before.
fn check_peer(s: &Settings, us: SocketAddr) -> Result<()> {
    match peer::find(us, s.addr)? {
        Peer::Remote => Ok(()),
        Peer::Local { uid } if uid == 0 || Some(uid) == s.uid => Ok(()),
        Peer::Local { uid } => bail!(
            "the event socket at {} is a socket of uid {uid}, not root's{}: the password is not sent to it (someone else took FreeSWITCH's port?); set [trust] esl_uid if FreeSWITCH runs as uid {uid}",
            s.addr,
            s.uid.map(|u| format!(" nor uid {u}'s (owner of {})", s.from)).unwrap_or_default()
        ),
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
