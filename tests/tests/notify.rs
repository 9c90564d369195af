//! End to end: exec hooks and webhooks hear of bans and unbans with the
//! right fields; text from the log reaches them as plain data; slow or dead
//! hooks never slow banning; a storm of bans becomes a digest; a webhook's
//! secrets never reach the log, and a redirect is never followed.
use anyhow::Result;
use sipguard_tests::{
    fixture::{append, failure, failures, wait_until, Setup, FREESWITCH_JAIL},
    http::Server,
    netns::*,
    Sandbox,
};
use std::{collections::BTreeMap, os::unix::fs::PermissionsExt as _, time::Duration};

/// An exec hook that writes its `SIPGUARD_*` environment to a new file in
/// the sandbox, one file per event.
fn recording_hook(sb: &Sandbox) -> Result<String> {
    let path = sb.path("hook.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nf=$(mktemp {dir}/event.XXXXXX)\n{{ env | grep '^SIPGUARD_'; echo \"HOOK_NOFILE=$(ulimit -n)\"; }} > \"$f.tmp\" && mv \"$f.tmp\" \"$f.done\"\n",
            dir = sb.dir.path().display()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path.display().to_string())
}

/// The events the recording hook wrote so far.
fn hook_events(sb: &Sandbox) -> Result<Vec<BTreeMap<String, String>>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(sb.dir.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "done") {
            let text = std::fs::read_to_string(&path)?;
            out.push(
                text.lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[test]
fn hooks_hear_bans_and_unbans_with_their_fields() -> Result<()> {
    // The webhook receiver lives in the server's namespace, where the daemon runs.
    let mut s = Setup::new(FREESWITCH_JAIL)?;
    let web = Server::recorder(&s.pair.server)?;
    let hook = recording_hook(&s.sb)?;
    s.sb.write_config(&format!(
        "[notify]\nexec = [\"{hook}\"]\nwebhooks = [\"{}\"]\n{FREESWITCH_JAIL}",
        web.url("/sipguard")
    ))?;
    s.restart()?;

    // A username that a shell would run, and a header a mailer would obey.
    let pwned = s.sb.path("pwned");
    let user = format!("$(touch {})", pwned.display());
    append(&s.sb, &failures(CLIENT_V4, 2))?;
    append(&s.sb, &failure(CLIENT_V4, &user))?;
    wait_until(5, "banned by the log", || Ok(s.banned()? == [CLIENT_V4]))?;

    let post = web.next(Duration::from_secs(5)).expect("a webhook POST");
    assert_eq!(
        (post.method.as_str(), post.path.as_str()),
        ("POST", "/sipguard")
    );
    assert!(post
        .headers
        .contains(&("content-type".into(), "application/json".into())));
    let ev: serde_json::Value = serde_json::from_str(&post.body)?;
    assert_eq!(ev["event"], "ban");
    assert_eq!(ev["address"], CLIENT_V4);
    assert_eq!(ev["prefix"], 32);
    assert_eq!(ev["jail"], "freeswitch");
    assert_eq!(ev["cause"], "log");
    assert_eq!(ev["bantime"], 3600);
    assert!(ev["reason"].as_str().unwrap().contains('3'), "{ev}");
    assert!(ev["line"].as_str().unwrap().contains(&user), "{ev}");

    wait_until(
        5,
        "the exec hook ran",
        || Ok(hook_events(&s.sb)?.len() == 1),
    )?;
    let env = &hook_events(&s.sb)?[0];
    assert_eq!(env["SIPGUARD_EVENT"], "ban");
    assert_eq!(env["SIPGUARD_ADDRESS"], CLIENT_V4);
    assert_eq!(env["SIPGUARD_PREFIX"], "32");
    assert_eq!(env["SIPGUARD_JAIL"], "freeswitch");
    assert_eq!(env["SIPGUARD_BANTIME"], "3600");
    assert_eq!(env["SIPGUARD_REASON"], ev["reason"].as_str().unwrap());
    assert!(env["SIPGUARD_LINE"].contains(&user), "{env:?}");
    assert!(!pwned.exists(), "text from the log was run");
    // The daemon raised its own open-files limit; the hook has the usual one.
    assert_eq!(env["HOOK_NOFILE"], "1024", "{env:?}");

    // The operator's unban is announced too.
    s.cli(&["unban", CLIENT_V4])?;
    let post = web.next(Duration::from_secs(5)).expect("a webhook POST");
    let ev: serde_json::Value = serde_json::from_str(&post.body)?;
    assert_eq!(
        (ev["event"].as_str(), ev["cause"].as_str()),
        (Some("unban"), Some("operator"))
    );
    assert!(ev["bantime"].is_null());
    wait_until(5, "the exec hook ran again", || {
        Ok(hook_events(&s.sb)?.len() == 2)
    })?;
    Ok(())
}

#[test]
fn dead_hooks_never_slow_bans_and_storms_become_digests() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    // A hook that hangs, a hook that fails, a webhook that never answers,
    // and one that records.
    let hang = s.sb.path("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nsleep 30\n")?;
    let fail = s.sb.path("fail.sh");
    std::fs::write(&fail, "#!/bin/sh\nexit 3\n")?;
    for p in [&hang, &fail] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    }
    let silent = in_netns(&s.pair.server, || {
        std::net::TcpListener::bind("127.0.0.1:0")
    })?;
    let web = Server::recorder(&s.pair.server)?;
    s.sb.write_config(&format!(
        "[notify]\nexec = [\"{}\", \"{}\"]\nwebhooks = [\"http://{}/\", \"{}\"]\ntimeout = \"20s\"\ndigest_every = \"2s\"\n{FREESWITCH_JAIL}",
        hang.display(),
        fail.display(),
        silent.local_addr()?,
        web.url("/")
    ))?;
    s.cli(&["reload"])?;

    // 25 bans in a burst through the log: all in force at once.
    let sources: Vec<String> = (1..=25).map(|i| format!("198.51.100.{i}")).collect();
    let text: String = sources.iter().map(|ip| failures(ip, 3)).collect();
    let t = std::time::Instant::now();
    append(&s.sb, &text)?;
    wait_until(5, "all 25 banned", || Ok(s.banned()?.len() == 25))?;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // The recording webhook: ten one by one, the rest in one digest.
    let mut singles = 0;
    let mut digested = 0;
    while singles + digested < 25 {
        let post = web.next(Duration::from_secs(10)).ok_or_else(|| {
            anyhow::anyhow!(
                "{singles} single, {digested} in digests:\n{}",
                s.daemon.log()
            )
        })?;
        let ev: serde_json::Value = serde_json::from_str(&post.body)?;
        match ev["event"].as_str() {
            Some("ban") => singles += 1,
            Some("digest") => {
                digested += ev["bans"].as_u64().unwrap();
                assert_eq!(
                    ev["events"].as_array().unwrap().len() as u64,
                    ev["bans"].as_u64().unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((singles, digested), (10, 15));
    assert!(
        s.daemon
            .log()
            .contains("fail.sh failed: exited with exit status: 3"),
        "{}",
        s.daemon.log()
    );
    Ok(())
}

/// A webhook stand-in that answers every request with a redirect to
/// `location`, counting the requests it saw.
fn redirector(
    ns: &Netns,
    location: String,
) -> Result<(u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::io::{Read as _, Write as _};
    let listener = in_netns(ns, || std::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    listener.set_nonblocking(true)?;
    // Bounded: 30 s, 16 requests at most; the socket closes with the thread.
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < 16 && std::time::Instant::now() < end {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            served += 1;
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = stream.write_all(
                format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    Ok((port, seen))
}

#[test]
fn webhook_secrets_stay_out_of_the_log_and_redirects_are_not_followed() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    // A webhook nobody answers (its port closed), its token in the URL.
    let closed = in_netns(&s.pair.server, || {
        std::net::TcpListener::bind("127.0.0.1:0")
    })?;
    let closed_port = closed.local_addr()?.port();
    drop(closed);
    let refused =
        format!("http://hook:pa55w0rdX@127.0.0.1:{closed_port}/services/T0KEN123?key=K3Y456");
    // One that redirects to another origin, which must see nothing.
    let elsewhere = Server::recorder(&s.pair.server)?;
    let (port, asked) = redirector(&s.pair.server, elsewhere.url("/stolen"))?;
    let redirecting = format!("http://127.0.0.1:{port}/hook/R3DIRTOKEN");
    s.sb.write_config(&format!(
        "[notify]\nwebhooks = [\"{refused}\", \"{redirecting}\"]\ntimeout = \"2s\"\n{FREESWITCH_JAIL}"
    ))?;
    s.cli(&["reload"])?;
    s.cli(&["ban", CLIENT_V4, "--for", "1h"])?;

    wait_until(10, "both deliveries failed and were logged", || {
        Ok(s.daemon.log().matches("notification to").count() >= 2)
    })?;
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(
        elsewhere.next(Duration::from_secs(1)).is_none(),
        "the redirect was followed"
    );
    let log = s.daemon.log();
    for secret in ["pa55w0rdX", "T0KEN123", "K3Y456", "R3DIRTOKEN"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert!(
        log.contains(&format!("http://127.0.0.1:{closed_port}/…")),
        "{log}"
    );
    assert!(log.contains("307"), "{log}");
    assert!(!s.cli(&["status"])?.contains("T0KEN123"));
    Ok(())
}
