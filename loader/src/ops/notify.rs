//! Notifications on ban and unban: exec hooks (the fields in `SIPGUARD_*`
//! environment variables, no shell) and webhooks (the same as a JSON POST).
//!
//! Banning never waits for them: the engine hands an event to a bounded
//! queue and goes on. A dispatcher thread sends events one by one while
//! they come at most about once a second (a burst of `BURST` passes), and
//! folds the rest into one digest per `digest_every`. Each hook has its own
//! delivery thread and queue, with a timeout per delivery, so a slow or dead
//! hook delays only itself; what it cannot take is counted and logged.
use ipnet::IpNet;
use serde::Serialize;
use std::{
    sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    time::{Duration, Instant, SystemTime},
};

/// Events sent one by one before the digest takes over.
const BURST: f64 = 10.0;
/// Events listed in a digest; the rest are counted.
const DIGEST_LIST: usize = 100;
/// Events waiting for the dispatcher; beyond, they are counted and dropped
/// (a million bans in a second must not become a million in memory).
const QUEUE: usize = 10_000;
/// Deliveries waiting per hook.
const HOOK_QUEUE: usize = 64;
/// Longest text field handed to a hook (a matched log line can be long).
const MAX_FIELD: usize = 1024;

/// How to notify.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Programs run once per event, with no arguments and no shell.
    pub exec: Vec<String>,
    /// `http://` or `https://` URLs that receive a JSON POST per event.
    pub webhooks: Vec<String>,
    /// Longest an exec hook may run or a webhook may take.
    pub timeout: Duration,
    /// How often a digest is sent while events come faster than one a second.
    pub digest_every: Duration,
}

/// A ban or an unban, as hooks receive it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// `ban` or `unban`; `overload` or `overload_end` for the box's state.
    pub event: &'static str,
    pub address: String,
    pub prefix: u8,
    pub jail: String,
    /// What made or lifted it: log, manual, flood, scanner; expired,
    /// operator, evicted.
    pub cause: String,
    pub reason: String,
    /// Seconds; -1: permanent; absent for unbans.
    pub bantime: Option<i64>,
    /// The log line that tipped the ban, when there is one.
    pub line: String,
    /// Unix seconds.
    pub time: u64,
}

impl Event {
    pub fn new(
        kind: &'static str,
        net: IpNet,
        jail: &str,
        cause: &str,
        reason: &str,
        bantime: Option<Option<Duration>>,
        line: &str,
    ) -> Self {
        Self {
            event: kind,
            address: net.addr().to_string(),
            prefix: net.prefix_len(),
            jail: clean(jail),
            cause: clean(cause),
            reason: clean(reason),
            bantime: bantime
                .map(|b| b.map_or(-1, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
            line: clean(line),
            time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// A change of the box's state (`overload`, `overload_end`): no
    /// address, the reason says what was measured.
    pub fn state(kind: &'static str, reason: &str) -> Self {
        Self {
            event: kind,
            address: String::new(),
            prefix: 0,
            jail: String::new(),
            cause: kind.to_owned(),
            reason: clean(reason),
            bantime: None,
            line: String::new(),
            time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SIPGUARD_EVENT", self.event.to_owned()),
            ("SIPGUARD_ADDRESS", self.address.clone()),
            ("SIPGUARD_PREFIX", self.prefix.to_string()),
            ("SIPGUARD_JAIL", self.jail.clone()),
            ("SIPGUARD_CAUSE", self.cause.clone()),
            ("SIPGUARD_REASON", self.reason.clone()),
            (
                "SIPGUARD_BANTIME",
                self.bantime.map(|b| b.to_string()).unwrap_or_default(),
            ),
            ("SIPGUARD_LINE", self.line.clone()),
            ("SIPGUARD_TIME", self.time.to_string()),
        ]
    }

    /// One line for a digest's summary.
    fn summary(&self) -> String {
        format!(
            "{} {}/{} [{}] {}",
            self.event, self.address, self.prefix, self.jail, self.reason
        )
    }
}

/// Text from the log (a username, a User-Agent) reaches hooks as plain
/// data: control characters (newlines that would start a mail header, NUL
/// that no environment can hold) become spaces, and it is bounded.
fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// What a hook is given: one event, or a digest of many.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
enum Delivery {
    One(Event),
    Digest(Digest),
}

#[derive(Clone, Debug, Default, Serialize)]
struct Digest {
    /// `digest`.
    event: &'static str,
    bans: u64,
    unbans: u64,
    period_secs: u64,
    /// The first `DIGEST_LIST` events; `omitted` more.
    events: Vec<Event>,
    omitted: u64,
}

impl Digest {
    fn add(&mut self, e: Event) {
        if e.event == "ban" {
            self.bans += 1;
        } else {
            self.unbans += 1;
        }
        if self.events.len() < DIGEST_LIST {
            self.events.push(e);
        } else {
            self.omitted += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.bans + self.unbans == 0
    }
}

impl Delivery {
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Delivery::One(e) => e.env(),
            Delivery::Digest(d) => {
                let mut summary: Vec<String> = d.events.iter().map(Event::summary).collect();
                if d.omitted > 0 {
                    summary.push(format!("and {} more", d.omitted));
                }
                vec![
                    ("SIPGUARD_EVENT", "digest".to_owned()),
                    ("SIPGUARD_BANS", d.bans.to_string()),
                    ("SIPGUARD_UNBANS", d.unbans.to_string()),
                    ("SIPGUARD_PERIOD", d.period_secs.to_string()),
                    ("SIPGUARD_SUMMARY", summary.join("\n")),
                ]
            }
        }
    }
}

/// The engine's handle: `send` never blocks.
pub struct Notifier {
    queue: Option<SyncSender<Event>>,
    /// Events the queue could not take.
    pub dropped: u64,
}

impl Notifier {
    /// Starts the dispatcher and one delivery thread per hook; with no
    /// hooks, nothing runs and `send` does nothing.
    pub fn start(hooks: &Hooks) -> Self {
        if hooks.exec.is_empty() && hooks.webhooks.is_empty() {
            return Self {
                queue: None,
                dropped: 0,
            };
        }
        let mut targets = Vec::new();
        for program in &hooks.exec {
            targets.push(spawn_target(Target::Exec(program.clone()), hooks.timeout));
        }
        for url in &hooks.webhooks {
            targets.push(spawn_target(Target::Webhook(url.clone()), hooks.timeout));
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let every = hooks.digest_every;
        std::thread::Builder::new()
            .name("sipguard-notify".into())
            .spawn(move || dispatch(&rx, &targets, every))
            .expect("cannot start the notification thread");
        Self {
            queue: Some(tx),
            dropped: 0,
        }
    }

    /// Queues the event `event` makes; without hooks it is not even made
    /// (a burst of 100 000 bans builds no event at all).
    pub fn send(&mut self, event: impl FnOnce() -> Event) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(event()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::warn!(
                        "notifications: {} event(s) dropped, the queue is full",
                        self.dropped
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// One by one while a token bucket (one a second, `BURST` deep) allows;
/// else into the digest, sent when `every` has passed since it began.
fn dispatch(rx: &Receiver<Event>, targets: &[SyncSender<Delivery>], every: Duration) {
    let mut tokens = BURST;
    let mut last = Instant::now();
    let mut digest = Digest::default();
    let mut digest_due: Option<Instant> = None;
    loop {
        let received = match digest_due {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64()).min(BURST);
        last = now;
        let closed = matches!(received, Err(RecvTimeoutError::Disconnected));
        match received {
            Ok(event) if digest_due.is_none() && tokens >= 1.0 => {
                tokens -= 1.0;
                deliver(targets, &Delivery::One(event));
            }
            Ok(event) => {
                digest_due.get_or_insert(now + every);
                digest.add(event);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The daemon is stopping: what is pending still goes out.
                digest_due = Some(now);
            }
        }
        if digest_due.is_some_and(|due| now >= due) {
            digest.event = "digest";
            digest.period_secs = every.as_secs();
            if !digest.is_empty() {
                deliver(targets, &Delivery::Digest(std::mem::take(&mut digest)));
            }
            digest_due = None;
            // Still flooding: the next event starts the next digest.
            tokens = tokens.min(0.0);
        }
        if closed {
            return;
        }
    }
}

fn deliver(targets: &[SyncSender<Delivery>], d: &Delivery) {
    for t in targets {
        if let Err(TrySendError::Full(_)) = t.try_send(d.clone()) {
            tracing::warn!("notifications: a hook is not keeping up; one delivery dropped");
        }
    }
}

enum Target {
    Exec(String),
    Webhook(String),
}

fn spawn_target(target: Target, timeout: Duration) -> SyncSender<Delivery> {
    let (tx, rx) = mpsc::sync_channel::<Delivery>(HOOK_QUEUE);
    std::thread::Builder::new()
        .name("sipguard-hook".into())
        .spawn(move || {
            for d in rx {
                let result = match &target {
                    Target::Exec(program) => run_exec(program, &d, timeout),
                    Target::Webhook(url) => post(url, &d, timeout),
                };
                if let Err(e) = result {
                    tracing::warn!("{}", failure(&target, &e));
                }
            }
        })
        .expect("cannot start a hook thread");
    tx
}

/// What a failed delivery logs: a webhook's URL (a token in its path or
/// query, a password) only as scheme, host and port, in the error's text too.
fn failure(target: &Target, e: &anyhow::Error) -> String {
    match target {
        Target::Exec(program) => format!(
            "notification to {} failed: {}",
            crate::text::escape(program),
            crate::text::escape(&format!("{e:#}"))
        ),
        Target::Webhook(url) => format!(
            "notification to {} failed: {}",
            crate::text::redact_url(url),
            crate::text::redact_in(&format!("{e:#}"), url)
        ),
    }
}

/// What a hook must not inherit: with them (and `NotifyAccess=all`) a hook
/// could tell systemd the daemon is ready, stopping or alive.
const DAEMON_ONLY_ENV: [&str; 4] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
];

fn exec_command(program: &str, d: &Delivery) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    for var in DAEMON_ONLY_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(d.env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // The daemon raised its own open-files limit; a hook gets the usual
    // one back (programs built on select() break above FD_SETSIZE).
    // SAFETY: only getrlimit/setrlimit between fork and exec, both
    // async-signal-safe, on a struct of the child's own stack.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur > HOOK_FILES {
                lim.rlim_cur = HOOK_FILES;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            Ok(())
        });
    }
    cmd
}

/// The open-files limit hooks run with (FD_SETSIZE, systemd's default).
const HOOK_FILES: libc::rlim_t = 1024;

fn run_exec(program: &str, d: &Delivery, timeout: Duration) -> anyhow::Result<()> {
    let mut child = exec_command(program, d)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "exited with {status}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("killed after {} s", timeout.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A webhook URL: `http://` or `https://`, a host, no spaces or controls.
/// Errors name the URL redacted: a config error is logged too.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    let shown = crate::text::redact_url(url);
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| anyhow::anyhow!("`{shown}`: a webhook is an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    anyhow::ensure!(
        !host.is_empty() && !host.starts_with(':'),
        "`{shown}`: no host"
    );
    anyhow::ensure!(
        !url.contains(|c: char| c.is_control() || c == ' '),
        "`{shown}`: spaces or control characters"
    );
    Ok(())
}

/// One POST. Redirects are not followed: the event (and any credential in
/// the URL) would go to whatever host the answer names, so a 3xx is a
/// failure like any other.
fn post(url: &str, d: &Delivery, timeout: Duration) -> anyhow::Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .user_agent(concat!("sipguard/", env!("CARGO_PKG_VERSION")))
        .build();
    match agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&serde_json::to_string(d)?)
    {
        Ok(r) if (300..400).contains(&r.status()) => {
            anyhow::bail!(
                "answered `{} {}`: redirects are not followed",
                r.status(),
                crate::text::escape(crate::text::bounded(r.status_text(), 100))
            )
        }
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            anyhow::bail!(
                "answered `{code} {}`",
                crate::text::escape(crate::text::bounded(r.status_text(), 100))
            )
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(i: u8) -> Event {
        Event::new(
            "ban",
            format!("192.0.2.{i}/32").parse().unwrap(),
            "freeswitch",
            "log",
            "3 failures",
            Some(Some(Duration::from_secs(3600))),
            "a line",
        )
    }

    #[test]
    fn hostile_text_reaches_hooks_as_plain_data() {
        let e = Event::new(
            "ban",
            "2001:db8::/64".parse().unwrap(),
            "j",
            "log",
            "r",
            Some(None),
            "user\r\nBcc: everyone@example.com\0$(reboot)",
        );
        assert_eq!(e.line, "user  Bcc: everyone@example.com $(reboot)");
        assert_eq!(
            (e.address.as_str(), e.prefix, e.bantime),
            ("2001:db8::", 64, Some(-1))
        );
        let long = clean(&"é".repeat(2000));
        assert!(long.len() <= MAX_FIELD && long.chars().all(|c| c == 'é'));
    }

    #[test]
    fn hooks_inherit_nothing_that_speaks_for_the_daemon() {
        let cmd = exec_command("/bin/true", &Delivery::One(ban(1)));
        let envs: Vec<_> = cmd.get_envs().collect();
        for var in DAEMON_ONLY_ENV {
            assert!(
                envs.contains(&(std::ffi::OsStr::new(var), None)),
                "{var} is not removed: {envs:?}"
            );
        }
        assert!(envs
            .iter()
            .any(|(k, v)| *k == "SIPGUARD_EVENT" && v.is_some()));
    }

    #[test]
    fn urls() {
        for good in [
            "http://127.0.0.1:8080/hook?x=1",
            "https://hooks.example/services/T0/B0",
            "http://[::1]:9000/h",
        ] {
            check_url(good).unwrap();
        }
        for bad in [
            "ftp://x",
            "http://:80/",
            "http:///x",
            "http://x/a b",
            "hooks.example",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let err = check_url("ftp://u:pw0rd@x/TOKEN123")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw0rd") && !err.contains("TOKEN123"), "{err}");
    }

    #[test]
    fn failures_log_no_secret_of_the_url() {
        let url = "https://u:pw0rd@hooks.example:8443/services/TOKEN123?key=K3Y";
        let e = anyhow::anyhow!("{url}: Connection refused\x1b[2J");
        let text = failure(&Target::Webhook(url.into()), &e);
        for secret in ["pw0rd", "TOKEN123", "K3Y", "\x1b"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("https://hooks.example:8443/…"), "{text}");
    }

    #[test]
    fn a_storm_becomes_a_digest() {
        let (tx, rx) = mpsc::sync_channel(1000);
        let (out_tx, out_rx) = mpsc::sync_channel(1000);
        let t = std::thread::spawn(move || dispatch(&rx, &[out_tx], Duration::from_millis(300)));
        for i in 0..50 {
            tx.send(ban(i)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        drop(tx);
        t.join().unwrap();
        let got: Vec<Delivery> = out_rx.try_iter().collect();
        let ones = got.iter().filter(|d| matches!(d, Delivery::One(_))).count();
        let digests: Vec<&Digest> = got
            .iter()
            .filter_map(|d| match d {
                Delivery::Digest(d) => Some(d),
                Delivery::One(_) => None,
            })
            .collect();
        assert_eq!(ones, BURST as usize);
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].bans, 40);
        assert_eq!(digests[0].events.len(), 40);
        let env = Delivery::Digest(digests[0].clone()).env();
        assert!(env.contains(&("SIPGUARD_BANS", "40".to_owned())));
    }
}
