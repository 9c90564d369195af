//! A Redis fleet: sipguard daemons sharing their bans through one Redis.
//!
//! Pub/sub loses what is sent while a node is away, so the fleet keeps two
//! things under `prefix`:
//! * `bans`: a sorted set of every node's bans, member `NODE|NET|SCOPE|JAIL`,
//!   score the end (Unix ms; `+inf` permanent), trimmed of ended ones;
//! * `events`: a stream of changes (`ban`, `unban`, `fleet-unban`), capped.
//!
//! A node (re)connecting reads the set (the snapshot: everything in force,
//! whatever it missed) and then follows the stream from the entry it saw
//! last before the snapshot, so nothing falls between the two. Its own
//! entries are skipped (no echo). An unban stays on its box unless the
//! operator asks for every box (`unban --fleet`).
//!
//! The protocol is RESP2, spoken directly over TCP (or TLS for `rediss://`).
use super::{deliver, sleep_or_stop, Inbound, InboundTx, Outbound, RemoteDecision};
use anyhow::{bail, Context as _, Result};
use ipnet::IpNet;
use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader, Read, Write},
    net::TcpStream,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

/// Stream entries kept (approximately).
const STREAM_MAXLEN: u64 = 100_000;
/// Snapshot page size.
const PAGE: usize = 10_000;
/// Longest reply accepted (a bulk string or an array's count).
const MAX_REPLY: i64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub prefix: String,
    pub node: String,
}

/// A parsed `redis://[user:password@]host[:port][/db]` (or `rediss://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

pub fn parse_url(url: &str) -> Result<Target> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("rediss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else {
        bail!("`{url}`: expected redis://HOST[:PORT][/DB] or rediss://...");
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (hostport, db) = match rest.split_once('/') {
        Some((h, d)) if !d.is_empty() => {
            (h, d.parse().with_context(|| format!("`{url}`: bad db"))?)
        }
        Some((h, _)) => (h, 0),
        None => (rest, 0),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').context("bad IPv6 host")?;
        (h, p.strip_prefix(':').unwrap_or("6379"))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (hostport, "6379"),
        }
    };
    anyhow::ensure!(!host.is_empty(), "`{url}`: no host");
    let (user, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), Some(p.to_owned())),
            None => (None, Some(a.to_owned())),
        },
    };
    Ok(Target {
        tls,
        host: host.to_owned(),
        port: port.parse().with_context(|| format!("`{url}`: bad port"))?,
        user,
        password,
        db,
    })
}

/// A RESP reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(v)) => v,
            _ => &[],
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One connection.
pub struct Conn {
    io: BufReader<Box<dyn Stream>>,
}

impl Conn {
    pub fn open(t: &Target, read_timeout: Duration) -> Result<Self> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(t.host.as_str(), t.port))?
            .next()
            .with_context(|| format!("{} has no address", t.host))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(read_timeout))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = if t.tls {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())?;
            let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        } else {
            Box::new(tcp)
        };
        let mut c = Self {
            io: BufReader::new(stream),
        };
        if let Some(p) = &t.password {
            match &t.user {
                Some(u) => c.call(&["AUTH", u, p])?,
                None => c.call(&["AUTH", p])?,
            };
        }
        if t.db != 0 {
            c.call(&["SELECT", &t.db.to_string()])?;
        }
        Ok(c)
    }

    pub fn call(&mut self, args: &[&str]) -> Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.io.get_mut().write_all(&out)?;
        self.io.get_mut().flush()?;
        read_reply(&mut self.io, 0)
    }
}

fn read_line(r: &mut impl std::io::BufRead) -> Result<String> {
    let mut line = Vec::new();
    r.take(MAX_REPLY as u64).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        bail!("the connection closed mid-reply");
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_reply(r: &mut impl std::io::BufRead, depth: usize) -> Result<Reply> {
    anyhow::ensure!(depth < 8, "reply nested too deep");
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    let n = || -> Result<i64> { rest.parse().with_context(|| format!("bad reply {line:?}")) };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => bail!("Redis: {rest}"),
        ":" => Reply::Int(n()?),
        "$" => {
            let len = n()?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            anyhow::ensure!(len <= MAX_REPLY, "reply too long");
            let mut buf = vec![0; len as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len as usize);
            Reply::Bulk(Some(buf))
        }
        "*" => {
            let len = n()?;
            if len < 0 {
                return Ok(Reply::Array(None));
            }
            anyhow::ensure!(len <= MAX_REPLY, "reply too long");
            let mut v = Vec::with_capacity(len.min(PAGE as i64 * 2) as usize);
            for _ in 0..len {
                v.push(read_reply(r, depth + 1)?);
            }
            Reply::Array(Some(v))
        }
        _ => bail!("not a Redis reply: {line:?}"),
    })
}

fn key(s: &Settings, name: &str) -> String {
    format!("{}{name}", s.prefix)
}

/// `NODE|NET|SCOPE|JAIL`; `|` cannot appear in a node or jail name.
fn member(node: &str, net: &IpNet, all_ports: bool, jail: &str) -> String {
    let clean = |t: &str| t.replace(['|', '\r', '\n'], "_");
    format!(
        "{}|{}|{}|{}",
        clean(node),
        net,
        if all_ports { "all" } else { "ports" },
        clean(jail)
    )
}

fn parse_member(m: &str) -> Option<(String, IpNet, bool, String)> {
    let mut parts = m.splitn(4, '|');
    let node = parts.next()?.to_owned();
    let net = crate::addr::parse_ban_net(parts.next()?).ok()?;
    let all = parts.next()? == "all";
    let jail = parts.next().unwrap_or("").to_owned();
    Some((node, net, all, jail))
}

fn scope_of(all_ports: bool) -> crate::bans::Scope {
    if all_ports {
        crate::bans::Scope::AllPorts
    } else {
        crate::bans::Scope::Ports
    }
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Time left until `end_ms`; `None` for permanent (`-1` / `inf`), and
/// `Some(ZERO)`-or-less ends are over.
fn left_of(end: &str) -> Option<Option<Duration>> {
    match end {
        "-1" | "inf" | "+inf" => Some(None),
        e => {
            let ms: f64 = e.parse().ok()?;
            let left = ms - unix_ms() as f64;
            (left > 0.0).then(|| Some(Duration::from_millis(left as u64)))
        }
    }
}

pub fn start(
    s: Settings,
    tx: InboundTx,
    out: mpsc::Receiver<Outbound>,
    stop: mpsc::Receiver<()>,
) -> Result<()> {
    let target = parse_url(&s.url)?;
    let (r_s, r_t) = (s.clone(), target.clone());
    std::thread::Builder::new()
        .name("sipguard-redis-in".into())
        .spawn(move || reader(&r_s, &r_t, &tx, &stop))?;
    std::thread::Builder::new()
        .name("sipguard-redis-out".into())
        .spawn(move || writer(&s, &target, &out))?;
    Ok(())
}

/// Snapshot, then the stream; again from a snapshot after every failure.
fn reader(s: &Settings, t: &Target, tx: &InboundTx, stop: &mpsc::Receiver<()>) {
    let mut failing = false;
    loop {
        match follow(s, t, tx, stop) {
            Ok(()) => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "Redis fleet: {e:#}; bans in force stay, and the fleet's list is read again once {}:{} answers",
                        t.host, t.port
                    );
                }
                failing = true;
            }
        }
        if sleep_or_stop(stop, Duration::from_secs(2)) {
            return;
        }
    }
}

fn follow(s: &Settings, t: &Target, tx: &InboundTx, stop: &mpsc::Receiver<()>) -> Result<()> {
    let mut c = Conn::open(t, Duration::from_secs(5))?;
    let events = key(s, "events");
    let bans_key = key(s, "bans");
    // The stream's last entry before the snapshot: follow from there.
    let last = c.call(&["XREVRANGE", &events, "+", "-", "COUNT", "1"])?;
    let mut last_id = last
        .items()
        .first()
        .and_then(|e| e.items().first())
        .and_then(Reply::text)
        .unwrap_or_else(|| "0-0".to_owned());
    let now = unix_ms().to_string();
    let mut offset = 0;
    let mut seen = HashSet::new();
    let mut batch: Vec<(String, RemoteDecision)> = Vec::new();
    loop {
        let page = c.call(&[
            "ZRANGEBYSCORE",
            &bans_key,
            &format!("({now}"),
            "+inf",
            "WITHSCORES",
            "LIMIT",
            &offset.to_string(),
            &PAGE.to_string(),
        ])?;
        let items = page.items();
        for pair in items.chunks(2) {
            let (Some(m), Some(score)) = (pair[0].text(), pair.get(1).and_then(Reply::text)) else {
                continue;
            };
            let Some((node, net, all_ports, jail)) = parse_member(&m) else {
                continue;
            };
            if node == s.node {
                continue;
            }
            let Some(left) = left_of(&score) else {
                continue;
            };
            seen.insert((node.clone(), net));
            batch.push((
                node.clone(),
                RemoteDecision {
                    net,
                    left,
                    reason: format!("banned by {node} ({jail})"),
                    scope: scope_of(all_ports),
                },
            ));
        }
        offset += items.len() / 2;
        if items.len() / 2 < PAGE {
            break;
        }
    }
    send_by_node(tx, batch)?;
    // Every node's list is complete: what another node no longer bans
    // (unbanned for the fleet while this one was away) goes.
    let nodes: HashSet<String> = seen.iter().map(|(n, _)| n.clone()).collect();
    for node in &nodes {
        let nets = seen
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, net)| *net)
            .collect();
        tx.blocking_send(Inbound::Complete {
            origin: format!("redis:{node}"),
            nets,
        })
        .map_err(|_| anyhow::anyhow!("daemon gone"))?;
    }
    // Nodes with nothing in force any more.
    tx.blocking_send(Inbound::OnlyOrigins {
        prefix: "redis:".into(),
        keep: nodes.iter().map(|n| format!("redis:{n}")).collect(),
    })
    .map_err(|_| anyhow::anyhow!("daemon gone"))?;
    tracing::info!(
        "Redis fleet: following {}:{} as node {:?}, {} ban(s) of {} other node(s) in force",
        t.host,
        t.port,
        s.node,
        seen.len(),
        nodes.len()
    );
    loop {
        if matches!(
            stop.try_recv(),
            Err(mpsc::TryRecvError::Disconnected) | Ok(())
        ) {
            return Ok(());
        }
        let reply = c.call(&[
            "XREAD", "COUNT", "1000", "BLOCK", "1000", "STREAMS", &events, &last_id,
        ])?;
        let mut bans = Vec::new();
        for stream in reply.items() {
            for entry in stream.items().get(1).map(Reply::items).unwrap_or(&[]) {
                let Some(id) = entry.items().first().and_then(Reply::text) else {
                    continue;
                };
                last_id = id;
                let fields: Vec<String> = entry
                    .items()
                    .get(1)
                    .map(Reply::items)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(Reply::text)
                    .collect();
                let get = |k: &str| {
                    fields
                        .chunks(2)
                        .find(|p| p[0] == k)
                        .and_then(|p| p.get(1).cloned())
                        .unwrap_or_default()
                };
                let node = get("node");
                if node == s.node || node.is_empty() {
                    continue; // our own, or not a sipguard entry
                }
                let Ok(net) = crate::addr::parse_ban_net(&get("net")) else {
                    continue;
                };
                match get("op").as_str() {
                    "ban" => {
                        if let Some(left) = left_of(&get("end")) {
                            bans.push((
                                node.clone(),
                                RemoteDecision {
                                    net,
                                    left,
                                    reason: format!("banned by {node} ({})", get("jail")),
                                    scope: scope_of(get("scope") == "all"),
                                },
                            ));
                        }
                    }
                    "unban" => {
                        send_by_node(tx, std::mem::take(&mut bans))?;
                        tx.blocking_send(Inbound::Unbans {
                            origin: format!("redis:{node}"),
                            nets: vec![net],
                        })
                        .map_err(|_| anyhow::anyhow!("daemon gone"))?;
                    }
                    "fleet-unban" => {
                        send_by_node(tx, std::mem::take(&mut bans))?;
                        tx.blocking_send(Inbound::FleetUnban { net, node })
                            .map_err(|_| anyhow::anyhow!("daemon gone"))?;
                    }
                    _ => {}
                }
            }
        }
        send_by_node(tx, bans)?;
    }
}

fn send_by_node(tx: &InboundTx, bans: Vec<(String, RemoteDecision)>) -> Result<()> {
    let mut by_node: std::collections::BTreeMap<String, Vec<RemoteDecision>> = Default::default();
    for (node, d) in bans {
        by_node.entry(node).or_default().push(d);
    }
    for (node, list) in by_node {
        if !deliver(tx, &format!("redis:{node}"), list) {
            bail!("daemon gone");
        }
    }
    Ok(())
}

/// Publishes this box's bans; reconnects as needed (what cannot be sent
/// while Redis is away waits in the queue, up to its bound).
fn writer(s: &Settings, t: &Target, rx: &mpsc::Receiver<Outbound>) {
    let mut conn: Option<Conn> = None;
    let mut pending: std::collections::VecDeque<Outbound> = Default::default();
    let mut last_trim = Instant::now();
    let mut failing = false;
    loop {
        let wait = if pending.is_empty() {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(2)
        };
        match rx.recv_timeout(wait) {
            Ok(o) => {
                if pending.len() >= 100_000 {
                    pending.pop_front();
                }
                pending.push_back(o);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(o) = rx.try_recv() {
            pending.push_back(o);
        }
        if conn.is_none() {
            match Conn::open(t, Duration::from_secs(10)) {
                Ok(c) => {
                    if failing {
                        tracing::info!("Redis fleet: publishing again");
                    }
                    failing = false;
                    conn = Some(c);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("Redis fleet: cannot publish ({e:#}); bans wait in a queue");
                    }
                    failing = true;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        while let Some(o) = pending.front() {
            if let Err(e) = publish(c, s, o) {
                tracing::warn!("Redis fleet: publishing failed: {e:#}");
                conn = None;
                failing = true;
                break;
            }
            pending.pop_front();
        }
        if let Some(c) = conn.as_mut() {
            if last_trim.elapsed() >= Duration::from_secs(60) {
                last_trim = Instant::now();
                let _ = c.call(&[
                    "ZREMRANGEBYSCORE",
                    &key(s, "bans"),
                    "-inf",
                    &format!("({}", unix_ms()),
                ]);
            }
        }
    }
}

fn publish(c: &mut Conn, s: &Settings, o: &Outbound) -> Result<()> {
    let (events, bans) = (key(s, "events"), key(s, "bans"));
    let maxlen = STREAM_MAXLEN.to_string();
    match o {
        Outbound::Ban {
            net,
            jail,
            left,
            scope,
            ..
        } => {
            let all_ports = &(*scope == crate::bans::Scope::AllPorts);
            let end = left.map_or("-1".to_owned(), |d| {
                (unix_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)).to_string()
            });
            let score = if end == "-1" {
                "+inf".to_owned()
            } else {
                end.clone()
            };
            let m = member(&s.node, net, *all_ports, jail);
            // One node's earlier ban of the network is replaced.
            remove_members(c, &bans, net, Some(&s.node))?;
            c.call(&["ZADD", &bans, &score, &m])?;
            let net_s = net.to_string();
            let scope = if *all_ports { "all" } else { "ports" };
            c.call(&[
                "XADD", &events, "MAXLEN", "~", &maxlen, "*", "node", &s.node, "op", "ban", "net",
                &net_s, "end", &end, "scope", scope, "jail", jail,
            ])?;
        }
        Outbound::Unban { net, fleet } => {
            let net_s = net.to_string();
            if *fleet {
                remove_members(c, &bans, net, None)?;
                c.call(&[
                    "XADD",
                    &events,
                    "MAXLEN",
                    "~",
                    &maxlen,
                    "*",
                    "node",
                    &s.node,
                    "op",
                    "fleet-unban",
                    "net",
                    &net_s,
                ])?;
            } else {
                remove_members(c, &bans, net, Some(&s.node))?;
                c.call(&[
                    "XADD", &events, "MAXLEN", "~", &maxlen, "*", "node", &s.node, "op", "unban",
                    "net", &net_s,
                ])?;
            }
        }
    }
    Ok(())
}

/// Removes `net`'s members of one node (or of every node).
fn remove_members(c: &mut Conn, bans: &str, net: &IpNet, node: Option<&str>) -> Result<()> {
    let pattern = format!(
        "{}|{}|*",
        node.map_or("*".to_owned(), glob_escape),
        glob_escape(&net.to_string())
    );
    let mut cursor = "0".to_owned();
    loop {
        let r = c.call(&["ZSCAN", bans, &cursor, "MATCH", &pattern, "COUNT", "1000"])?;
        let items = r.items();
        cursor = items
            .first()
            .and_then(Reply::text)
            .unwrap_or_else(|| "0".into());
        let found: Vec<String> = items
            .get(1)
            .map(Reply::items)
            .unwrap_or(&[])
            .chunks(2)
            .filter_map(|p| p[0].text())
            .collect();
        if !found.is_empty() {
            let mut args = vec!["ZREM", bans];
            args.extend(found.iter().map(String::as_str));
            c.call(&args)?;
        }
        if cursor == "0" {
            return Ok(());
        }
    }
}

fn glob_escape(t: &str) -> String {
    t.chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("rediss://user:p%40ss@redis.example:6380/2").unwrap();
        assert_eq!(
            (
                t.tls,
                t.host.as_str(),
                t.port,
                t.user.as_deref(),
                t.password.as_deref(),
                t.db
            ),
            (true, "redis.example", 6380, Some("user"), Some("p%40ss"), 2)
        );
        let t = parse_url("redis://:secret@127.0.0.1").unwrap();
        assert_eq!(
            (t.port, t.user, t.password.as_deref()),
            (6379, None, Some("secret"))
        );
        let t = parse_url("redis://[::1]:7000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
        for bad in ["http://x", "redis://", "redis://h:port", "redis://h/db"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_and_members() {
        let mut r = std::io::Cursor::new(b"*3\r\n$3\r\nabc\r\n:42\r\n*-1\r\n".to_vec());
        let reply = read_reply(&mut std::io::BufReader::new(&mut r), 0).unwrap();
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Int(42),
                Reply::Array(None)
            ]))
        );
        let mut err = std::io::Cursor::new(b"-ERR nope\r\n".to_vec());
        assert!(read_reply(&mut std::io::BufReader::new(&mut err), 0).is_err());
        let mut short = std::io::Cursor::new(b"$10\r\nabc".to_vec());
        assert!(read_reply(&mut std::io::BufReader::new(&mut short), 0).is_err());
        let m = member(
            "box|a",
            &"2001:db8::/64".parse().unwrap(),
            true,
            "free|switch",
        );
        assert_eq!(m, "box_a|2001:db8::/64|all|free_switch");
        let (node, net, all, jail) = parse_member(&m).unwrap();
        assert_eq!(
            (node.as_str(), net.to_string(), all, jail.as_str()),
            ("box_a", "2001:db8::/64".into(), true, "free_switch")
        );
        assert!(
            parse_member("x|0.0.0.0/0|all|j").is_none(),
            "no wider than sipguard bans"
        );
        assert_eq!(left_of("-1"), Some(None));
        assert_eq!(left_of("1000"), None, "over");
        assert!(
            left_of(&(unix_ms() + 60_000).to_string()).unwrap().unwrap() > Duration::from_secs(50)
        );
    }
}
