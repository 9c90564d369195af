//! The event loop: it waits for the next input and hands it on.
use super::{
    configure::{reload, RunOptions},
    Daemon,
};
use crate::{control, fleet::Inbound, ops::metrics, ops::readiness::Readiness};
use anyhow::Result;
use std::{
    cell::RefCell,
    rc::Rc,
    time::{Duration, Instant},
};
use tokio::signal::unix::{signal, SignalKind};

/// What the event loop listens to: the control socket, the logs, the
/// program's reports, the engines, the metrics endpoint.
pub(super) struct Inputs {
    pub(super) listener: tokio::net::UnixListener,
    pub(super) watch: crate::logs::watch::LogWatch,
    pub(super) flood_events: tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    pub(super) fleet_rx: tokio::sync::mpsc::Receiver<Inbound>,
    pub(super) snapshot_events: super::SnapshotEvents,
    pub(super) metrics_listener: Option<std::net::TcpListener>,
    pub(super) esl_rx: tokio::sync::mpsc::Receiver<crate::trust::client::EslMsg>,
}

/// Logs are read as soon as inotify reports a change in their folders, and
/// at least this often (the safety net for missed events).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often bans are expired and new files matched by globs picked up.
const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// The event loop: the control socket, signals, log wake-ups, reports from
/// the program, and the once-a-second tick; until SIGTERM or SIGINT.
pub(super) async fn serve(
    daemon: &Rc<RefCell<Daemon>>,
    opts: &RunOptions,
    readiness: &Rc<RefCell<Readiness>>,
    inputs: Inputs,
) -> Result<()> {
    let Inputs {
        listener,
        mut watch,
        mut flood_events,
        mut fleet_rx,
        mut snapshot_events,
        metrics_listener,
        mut esl_rx,
    } = inputs;
    let local = tokio::task::LocalSet::new();
    let (handler_daemon, handler_opts, handler_readiness) =
        (daemon.clone(), opts.clone(), readiness.clone());
    local.spawn_local(control::serve(listener, move |req| {
        super::requests::dispatch(&handler_daemon, &handler_opts, &handler_readiness, req)
    }));
    if let Some(listener) = metrics_listener {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let scrape_daemon = daemon.clone();
        local.spawn_local(metrics::serve(listener, move || {
            let daemon = scrape_daemon.borrow();
            metrics::render(&daemon.announce.metrics, &daemon.metrics_snapshot())
        }));
    }
    local
        .run_until(async {
            let mut sigterm = signal(SignalKind::terminate())?;
            let mut sigint = signal(SignalKind::interrupt())?;
            let mut sighup = signal(SignalKind::hangup())?;
            let mut poll = tokio::time::interval(POLL_INTERVAL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tick = tokio::time::interval(TICK_INTERVAL);
            let mut overload = tokio::time::interval(crate::trust::overload::SAMPLE);
            overload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Without a watchdog this ticks once a day and sends nothing.
            let watchdog_every = readiness.borrow().watchdog();
            let mut watchdog =
                tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(86_400)));
            // A log has more to read than one poll took.
            let mut behind = false;
            loop {
                tokio::select! {
                    _ = sigterm.recv() => break,
                    _ = sigint.recv() => break,
                    _ = sighup.recv() => {
                        if let Err(e) = reload(daemon, opts, readiness) {
                            tracing::error!("reload failed, keeping the running configuration: {e:#}");
                        }
                    }
                    _ = watch.changed() => behind = daemon.borrow_mut().poll_logs(),
                    // The rest of a burst, after whatever else is ready.
                    () = std::future::ready(()), if behind => behind = daemon.borrow_mut().poll_logs(),
                    guard = flood_events.readable_mut() => {
                        let mut guard = guard?;
                        let ring = guard.get_inner_mut();
                        while let Some(item) = ring.next() {
                            if let Some(event) = crate::kernel::maps::flood_event(&item) {
                                daemon.borrow_mut().on_flood(&event);
                            }
                        }
                        guard.clear_ready();
                    }
                    // One batch (at most fleet::BATCH bans) per turn: log
                    // lines are read between the batches of a long list.
                    Some(msg) = fleet_rx.recv() => timed("a batch from an daemon", || daemon.borrow_mut().on_fleet(msg)),
                    // The next slices of a snapshot being written (each
                    // a millisecond or two of the loop's time).
                    Some(event) = snapshot_events.recv() => timed("a slice of the state's snapshot", || daemon.borrow_mut().on_snapshot(event)),
                    Some(msg) = esl_rx.recv() => daemon.borrow_mut().on_esl(msg),
                    _ = overload.tick() => daemon.borrow_mut().sample_overload(),
                    _ = poll.tick() => behind = daemon.borrow_mut().poll_logs(),
                    _ = tick.tick() => timed("the once-a-second tick", || {
                        let mut daemon = daemon.borrow_mut();
                        daemon.tick();
                        readiness.borrow_mut().status(&daemon.status_line());
                    }),
                    _ = watchdog.tick() => {
                        // Pinged from the loop itself: a stuck loop misses it.
                        if watchdog_every.is_some() {
                            readiness.borrow().watchdog_ping();
                        }
                    }
                }
            }
            anyhow::Ok(())
        })
        .await
}

/// A turn of the event loop longer than this is logged: log lines wait
/// behind it.
const SLOW_TURN: Duration = Duration::from_millis(100);

/// Runs one turn's work, and says so when it held the loop up.
pub(super) fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    if took > SLOW_TURN {
        tracing::warn!("{what} held the event loop for {} ms", took.as_millis());
    }
    out
}
