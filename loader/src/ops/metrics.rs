//! Prometheus metrics (`prometheus-client`), served on `127.0.0.1:9713` by
//! default. What the daemon counts as it happens (bans, unbans, ban
//! latency) lives here; what the kernel and the jails already count is read
//! when scraped. No metric carries an address: a label per source would be
//! a series per attacker.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JailCause {
    jail: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerCause {
    worker: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JailFamily {
    jail: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JailResult {
    jail: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Action {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapName {
    map: String,
}

/// What the daemon counts as it happens.
#[derive(Clone, Debug)]
pub struct Metrics {
    bans: Family<JailCause, Counter>,
    unbans: Family<JailCause, Counter>,
    ban_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            bans: Family::default(),
            unbans: Family::default(),
            // 10 µs to ~1.3 s: a ban is written well under a millisecond
            // after its line is read; the tail shows a stalled loop.
            ban_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-5, 4.0, 9),
            ),
        }
    }
}

impl Metrics {
    /// A ban written: `cause` is what made it (log, manual, flood, ...).
    pub fn banned(&self, jail: &str, cause: &str) {
        self.bans.get_or_create(&labels(jail, cause)).inc();
    }

    /// A ban lifted: expired, by the operator, evicted to make room, ...
    pub fn unbanned(&self, jail: &str, cause: &str) {
        self.unbans.get_or_create(&labels(jail, cause)).inc();
    }

    /// From reading a failure line to its ban being in the map.
    pub fn ban_latency(&self, d: Duration) {
        self.ban_latency.observe(d.as_secs_f64());
    }
}

fn labels(jail: &str, cause: &str) -> JailCause {
    JailCause {
        jail: jail.to_owned(),
        cause: cause.to_owned(),
    }
}

/// What the kernel and the jails count, read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Verdict counter name (`drop_banned`, ...), packets, bytes.
    pub verdicts: Vec<(&'static str, u64, u64)>,
    /// Bans in force: jail, `ipv4`/`ipv6`, count.
    pub bans: Vec<(String, &'static str, u64)>,
    /// Log lines: jail, result (`read`, `matched`, `ignored`, ...), count.
    pub log_lines: Vec<(String, &'static str, u64)>,
    /// Map name, entries, capacity.
    pub maps: Vec<(&'static str, u64, u64)>,
    /// Reports the program could not hand over (ring buffer full).
    pub lost_reports: u64,
    /// Automatic bans refused because they would hit the never-ban set.
    pub refused: Vec<(String, u64)>,
    /// Remote bans refused by the `[fleet]` caps, by origin (bounded).
    pub over_cap: Vec<(String, u64)>,
    pub dry_run: bool,
    /// Ban and unban events the notification queue could not take.
    pub notifications_dropped: u64,
    /// Redis fleet entries refused, by reason (every reason, even at 0).
    pub fleet_rejected: Vec<(&'static str, u64)>,
    /// Fleet workers restarted by their supervisor: worker, errors, panics.
    pub worker_restarts: Vec<(&'static str, u64, u64)>,
    /// Trusted sources in the kernel's map (registered, operator).
    pub trusted: u64,
    /// Overload: now, times entered, the last measured SIP packets/s.
    pub overloaded: bool,
    pub overload_entered: u64,
    pub sip_pps: u64,
}

/// The whole exposition, in the Prometheus text format (0.0.4).
pub fn render(live: &Metrics, snap: &Snapshot) -> String {
    let mut r = Registry::with_prefix("sipguard");
    register_build(&mut r, snap);
    register_xdp(&mut r, snap);
    register_bans(&mut r, live, snap);
    register_fleet(&mut r, snap);
    register_logs(&mut r, snap);
    register_maps(&mut r, snap);
    register_trust(&mut r, snap);
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &r)
        .expect("writing to a String cannot fail");
    out
}

/// What runs: the version, and whether it drops at all.
fn register_build(r: &mut Registry, snap: &Snapshot) {
    let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
    r.register("build", "sipguard's version", info);
    let dry = Gauge::<i64>::default();
    dry.set(i64::from(snap.dry_run));
    r.register(
        "dry_run",
        "1 when the program counts would-be drops and passes every packet",
        dry,
    );
}

/// Trusted sources and overload.
fn register_trust(r: &mut Registry, snap: &Snapshot) {
    let trusted = Gauge::<i64>::default();
    trusted.set(i64::try_from(snap.trusted).unwrap_or(i64::MAX));
    r.register(
        "trusted_sources",
        "Sources with a trusted budget (registered, operator)",
        trusted,
    );
    let on = Gauge::<i64>::default();
    on.set(i64::from(snap.overloaded));
    r.register(
        "overloaded",
        "1 while untrusted sources are held to [trust] untrusted_rate",
        on,
    );
    let entered = Counter::<u64>::default();
    entered.inc_by(snap.overload_entered);
    r.register(
        "overload_entered",
        "Times the box became overloaded",
        entered,
    );
    let pps = Gauge::<i64>::default();
    pps.set(i64::try_from(snap.sip_pps).unwrap_or(i64::MAX));
    r.register("sip_packets_per_second", "SIP packets per second through the limiter, all sources and CPUs (measured while [trust] overload_pps is set)", pps);
}

/// The program's verdicts, and the reports it could not hand over.
fn register_xdp(r: &mut Registry, snap: &Snapshot) {
    let packets = Family::<Action, Counter>::default();
    let bytes = Family::<Action, Counter>::default();
    for &(action, p, b) in &snap.verdicts {
        let l = Action {
            action: action.to_owned(),
        };
        packets.get_or_create(&l).inc_by(p);
        bytes.get_or_create(&l).inc_by(b);
    }
    r.register(
        "xdp_packets",
        "Packets by the XDP program's verdict (drop_rate_limited: the per-source limiter, drop_scanner: scanner signatures, drop_invalid: invalid messages, drop_method_*: per-method budgets)",
        packets,
    );
    r.register_with_unit(
        "xdp",
        "Bytes by the XDP program's verdict",
        Unit::Bytes,
        bytes,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(snap.lost_reports);
    r.register(
        "xdp_lost_reports",
        "Flood and scanner reports lost to a full ring buffer (each is sent again)",
        lost,
    );
}

/// Bans: in force, made, lifted, refused, how fast, and their
/// notifications that could not be queued.
fn register_bans(r: &mut Registry, live: &Metrics, snap: &Snapshot) {
    let dropped = Counter::<u64>::default();
    dropped.inc_by(snap.notifications_dropped);
    r.register(
        "notifications_dropped",
        "Ban and unban events not handed to the hooks: the queue was full",
        dropped,
    );

    let bans = Family::<JailFamily, Gauge>::default();
    for (jail, family, n) in &snap.bans {
        bans.get_or_create(&JailFamily {
            jail: jail.clone(),
            family: (*family).to_owned(),
        })
        .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    r.register("active_bans", "Bans in force", bans);
    r.register("bans", "Bans made, by jail and cause", live.bans.clone());
    r.register(
        "unbans",
        "Bans lifted, by jail and cause",
        live.unbans.clone(),
    );
    r.register_with_unit(
        "ban_latency",
        "From reading a failure line to its ban in the kernel map",
        Unit::Seconds,
        live.ban_latency.clone(),
    );
    let refused = Family::<JailCause, Counter>::default();
    for (jail, n) in &snap.refused {
        refused.get_or_create(&labels(jail, "never_ban")).inc_by(*n);
    }
    for (origin, n) in &snap.over_cap {
        refused
            .get_or_create(&labels(origin, "over_cap"))
            .inc_by(*n);
    }
    r.register(
        "bans_refused",
        "Automatic bans refused: they would hit the never-ban set, or remote bans over the [fleet] caps",
        refused,
    );
}

/// What the fleet refused, and how often its workers restarted.
fn register_fleet(r: &mut Registry, snap: &Snapshot) {
    // Redis fleet entries refused (unsigned, replayed, ...), by reason.
    let fleet_rejected = Family::<Reason, Counter>::default();
    for &(reason, n) in &snap.fleet_rejected {
        fleet_rejected
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }
    r.register(
        "fleet_rejected",
        "Redis fleet entries refused: no valid MAC, replayed, forged in this box's name, malformed",
        fleet_rejected,
    );

    // Fleet workers restarted by their supervisor, after an error (an
    // engine away) or a panic (a hostile answer that crashed a parser).
    let restarts = Family::<WorkerCause, Counter>::default();
    for &(worker, errors, panics) in &snap.worker_restarts {
        for (cause, n) in [("error", errors), ("panic", panics)] {
            restarts
                .get_or_create(&WorkerCause {
                    worker: worker.to_owned(),
                    cause: cause.to_owned(),
                })
                .inc_by(n);
        }
    }
    r.register(
        "fleet_worker_restarts",
        "Fleet workers (CrowdSec, Redis, APIBAN) restarted after an error or a panic",
        restarts,
    );
}

/// The jails' log lines.
fn register_logs(r: &mut Registry, snap: &Snapshot) {
    let lines = Family::<JailResult, Counter>::default();
    for (jail, result, n) in &snap.log_lines {
        lines
            .get_or_create(&JailResult {
                jail: jail.clone(),
                result: (*result).to_owned(),
            })
            .inc_by(*n);
    }
    r.register(
        "log_lines",
        "Log lines by jail: read, and of those matched (failures), ignored, too old",
        lines,
    );
}

/// How full each kernel map is.
fn register_maps(r: &mut Registry, snap: &Snapshot) {
    let entries = Family::<MapName, Gauge>::default();
    let capacity = Family::<MapName, Gauge>::default();
    for &(map, n, cap) in &snap.maps {
        let l = MapName {
            map: map.to_owned(),
        };
        entries
            .get_or_create(&l)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        capacity
            .get_or_create(&l)
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
    }
    r.register("map_entries", "Entries in a kernel map", entries);
    r.register("map_capacity", "Entries a kernel map can hold", capacity);
}

/// The `Content-Type` of what `render` writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest request head read; a scrape is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Most scrapers served at once; one more closes the oldest of the source
/// holding the most (see `control::Clients`): a source flooding connections
/// closes its own, never another's scrape.
const MAX_CLIENTS: usize = 64;

/// Serves `GET /metrics` (and `/` with a pointer to it) over HTTP/1.
pub async fn serve(
    listener: tokio::net::TcpListener,
    scrape: impl Fn() -> String + Clone + 'static,
) {
    let mut clients = crate::control::Clients::new(MAX_CLIENTS, "metrics endpoint");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let scrape = scrape.clone();
                let source = crate::control::source(peer);
                clients.spawn(Some(source), async move {
                    let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, scrape)).await;
                });
            }
            Err(e) => clients.accept_failed(&e).await,
        }
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    scrape: impl Fn() -> String,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, kind, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", CONTENT_TYPE, scrape()),
        (b"GET", b"/") => (
            "200 OK",
            "text/html; charset=utf-8",
            "<html><body><a href=\"/metrics\">sipguard metrics</a></body></html>\n".to_owned(),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_rules() {
        let live = Metrics::default();
        live.banned("freeswitch", "log");
        live.unbanned("freeswitch", "expired");
        live.ban_latency(Duration::from_micros(150));
        let snap = Snapshot {
            verdicts: vec![("drop_banned", 5, 600)],
            bans: vec![("freeswitch".into(), "ipv4", 3)],
            log_lines: vec![("freeswitch".into(), "matched", 9)],
            maps: vec![("banned", 3, 1 << 20)],
            lost_reports: 2,
            refused: vec![("sip-flood".into(), 1)],
            over_cap: vec![("redis:b".into(), 4)],
            dry_run: false,
            notifications_dropped: 0,
            fleet_rejected: vec![("replay", 3)],
            worker_restarts: vec![("redis-reader", 1, 2)],
            trusted: 3,
            overloaded: true,
            overload_entered: 2,
            sip_pps: 12_000,
        };
        let text = render(&live, &snap);
        for line in [
            "sipguard_build_info{version=\"",
            "sipguard_xdp_packets_total{action=\"drop_banned\"} 5",
            "sipguard_xdp_bytes_total{action=\"drop_banned\"} 600",
            "sipguard_xdp_lost_reports_total 2",
            "sipguard_active_bans{jail=\"freeswitch\",family=\"ipv4\"} 3",
            "sipguard_bans_total{jail=\"freeswitch\",cause=\"log\"} 1",
            "sipguard_unbans_total{jail=\"freeswitch\",cause=\"expired\"} 1",
            "sipguard_ban_latency_seconds_count 1",
            "sipguard_log_lines_total{jail=\"freeswitch\",result=\"matched\"} 9",
            "sipguard_map_capacity{map=\"banned\"} 1048576",
            "sipguard_bans_refused_total{jail=\"sip-flood\",cause=\"never_ban\"} 1",
            "sipguard_bans_refused_total{jail=\"redis:b\",cause=\"over_cap\"} 4",
            "sipguard_dry_run 0",
            "sipguard_trusted_sources 3",
            "sipguard_overloaded 1",
            "sipguard_overload_entered_total 2",
            "sipguard_sip_packets_per_second 12000",
            "sipguard_notifications_dropped_total 0",
            "sipguard_fleet_rejected_total{reason=\"replay\"} 3",
            "sipguard_fleet_worker_restarts_total{worker=\"redis-reader\",cause=\"error\"} 1",
            "sipguard_fleet_worker_restarts_total{worker=\"redis-reader\",cause=\"panic\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        // Every sample belongs to a declared family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("sipguard_"), "{l}");
        }
    }

    /// A scraper halfway through its request while another source opens
    /// 200 connections: that source's own are closed, never the scrape.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flooding_source_never_closes_another_ones_scrape() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(serve(listener, || "sipguard_up 1\n".to_owned()));
        local
            .run_until(async {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut flood = Vec::new();
                for _ in 0..200 {
                    let c = tokio::net::TcpSocket::new_v4().unwrap();
                    c.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                    flood.push(c.connect(at).await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.write_all(b"\r\n").await.unwrap();
                let mut text = String::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut text));
                assert!(matches!(read.await, Ok(Ok(_))), "{text}");
                assert!(text.contains("sipguard_up 1"), "{text}");
                // The flooding source's oldest were closed.
                let mut closed = 0;
                for c in &mut flood {
                    let mut b = [0u8; 1];
                    let read = tokio::time::timeout(Duration::from_millis(20), c.read(&mut b));
                    closed += usize::from(matches!(read.await, Ok(Ok(0)) | Ok(Err(_))));
                }
                assert!(closed >= 200 - MAX_CLIENTS, "{closed} closed");
            })
            .await;
    }

    /// 200 idle connections: the oldest are closed, and a scrape is still
    /// answered at once.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_scrapers_are_capped_and_a_real_one_answered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(serve(listener, || "sipguard_up 1\n".to_owned()));
        local
            .run_until(async {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut idle = Vec::new();
                for _ in 0..200 {
                    idle.push(tokio::net::TcpStream::connect(at).await.unwrap());
                }
                let started = std::time::Instant::now();
                let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
                let mut text = String::new();
                tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut text))
                    .await
                    .expect("answered")
                    .unwrap();
                assert!(text.contains("sipguard_up 1"), "{text}");
                assert!(started.elapsed() < Duration::from_secs(1));
                let mut closed = 0;
                for s in &mut idle {
                    let mut b = [0u8; 1];
                    let read = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b));
                    closed += usize::from(matches!(read.await, Ok(Ok(0)) | Ok(Err(_))));
                }
                assert!(closed >= 200 - MAX_CLIENTS, "{closed} closed");
            })
            .await;
    }
}
