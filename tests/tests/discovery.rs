//! End to end: sipguard reads FreeSWITCH's configuration (a tree in the
//! vanilla shapes: internal and external profiles, a gateway, mod_logfile)
//! and protects exactly its ports, never bans its trunk, and follows its log.
use anyhow::Result;
use sipguard_tests::{
    fixture::{failures, wait_until, Setup, FREESWITCH_JAIL},
    netns::*,
};
use std::io::Write as _;

/// tests/fixtures/freeswitch, copied into the sandbox.
fn copy_tree(to: &std::path::Path) -> Result<()> {
    let from = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/freeswitch"));
    let mut stack = vec![from.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            let target = to.join(path.strip_prefix(from)?);
            if path.is_dir() {
                std::fs::create_dir_all(&target)?;
                stack.push(path);
            } else {
                std::fs::copy(&path, &target)?;
            }
        }
    }
    Ok(())
}

#[test]
fn protects_freeswitchs_ports_trunks_and_log() -> Result<()> {
    let mut s = Setup::new(FREESWITCH_JAIL)?;
    let conf = s.sb.path("freeswitch");
    copy_tree(&conf)?;
    // A jail on the default log path: discovery points it at the real one.
    s.sb.write_config(&format!(
        "freeswitch_conf = \"{}\"\n[jails.fs]\nlogpath = \"/var/log/freeswitch/freeswitch.log\"\nfilter = \"freeswitch\"\nmaxretry = 3\nbantime = \"1h\"\n",
        conf.display()
    ))?;
    let log = s.sb.path("log/fs-custom.log");
    std::fs::create_dir_all(log.parent().unwrap())?;
    std::fs::write(&log, "")?;
    s.restart()?;

    let st = s.json(&["status"])?;
    let fs = &st["freeswitch"];
    assert_eq!(
        st["ports"],
        serde_json::json!([5060, 5066, 5080, 5081, 7443]),
        "{st}"
    );
    assert_eq!(s.json(&["stats"])?["ports"], st["ports"]);
    assert_eq!(fs["log"]["value"], log.display().to_string(), "{fs}");
    assert_eq!(
        fs["trunks"][0]["addresses"],
        serde_json::json!([OTHER_V4]),
        "{fs}"
    );
    assert!(fs["warnings"].as_array().unwrap().is_empty(), "{fs}");
    let text = s.cli(&["status"])?;
    assert!(
        text.contains("port 5080") && text.contains("sip_profiles/external.xml: sip-port"),
        "{text}"
    );
    assert!(text.contains("trunk 10.213.0.3"), "{text}");

    // The trunk is never banned, whatever its log lines say.
    assert!(
        s.allowed()?.contains(&format!("{OTHER_V4}/32")),
        "{:?}",
        s.allowed()?
    );
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    f.write_all(failures(OTHER_V4, 5).as_bytes())?;
    // The attacker: banned from FreeSWITCH's real log, on every SIP port.
    f.write_all(failures(CLIENT_V4, 3).as_bytes())?;
    drop(f);
    wait_until(5, "banned from the discovered log", || {
        Ok(s.banned()? == [CLIENT_V4])
    })?;
    let attacker = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let trunk = udp_socket(&s.pair.client, addr(OTHER_V4, 0))?;
    for port in [5060, 5080] {
        let sip = udp_socket(&s.pair.server, addr(SERVER_V4, port))?;
        assert_eq!(udp_delivered(&attacker, &sip, 10)?, 0, "port {port}");
        assert_eq!(udp_delivered(&trunk, &sip, 10)?, 10, "trunk on port {port}");
    }
    Ok(())
}

#[test]
fn explicit_ports_win_and_discovery_can_be_off() -> Result<()> {
    let mut s = Setup::new(FREESWITCH_JAIL)?;
    let conf = s.sb.path("freeswitch");
    copy_tree(&conf)?;
    s.sb.write_config(&format!(
        "freeswitch_conf = \"{}\"\nports = [5060]\n{FREESWITCH_JAIL}",
        conf.display()
    ))?;
    s.cli(&["reload"])?;
    assert_eq!(s.json(&["status"])?["ports"], serde_json::json!([5060]));
    // The trunk is still protected, from a reload.
    assert!(s.allowed()?.contains(&format!("{OTHER_V4}/32")));

    s.sb.write_config(&format!("freeswitch_conf = \"\"\n{FREESWITCH_JAIL}"))?;
    s.restart()?;
    let st = s.json(&["status"])?;
    assert!(st["freeswitch"].is_null(), "{st}");
    assert_eq!(
        st["ports"],
        serde_json::json!([5060, 5061, 5066, 5080, 5081, 7443])
    );
    assert!(!s.allowed()?.contains(&format!("{OTHER_V4}/32")));
    Ok(())
}

/// A tree a local user could have written: an include fanning out
/// exponentially (every file includes all of them again), a FIFO and a
/// sparse file of 64 GiB among them. The daemon starts as quickly as ever,
/// says where discovery stopped, and keeps what it found before.
#[test]
fn hostile_includes_stop_at_discoverys_bounds() -> Result<()> {
    let mut s = Setup::new(FREESWITCH_JAIL)?;
    let conf = s.sb.path("freeswitch");
    copy_tree(&conf)?;
    let evil = conf.join("evil");
    std::fs::create_dir(&evil)?;
    for i in 0..6 {
        std::fs::write(
            evil.join(format!("fan{i}.xml")),
            r#"<X-PRE-PROCESS cmd="include" data="*.xml"/>"#,
        )?;
    }
    let fifo = std::ffi::CString::new(evil.join("fifo.xml").display().to_string())?;
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::fs::File::create(evil.join("sparse.xml"))?.set_len(64 << 30)?;
    // Read last, after the profiles: what they say is kept.
    let logfile = conf.join("autoload_configs/logfile.conf.xml");
    let mut text = std::fs::read_to_string(&logfile)?;
    text.push_str(r#"<X-PRE-PROCESS cmd="include" data="../evil/*.xml"/>"#);
    std::fs::write(&logfile, text)?;
    s.sb.write_config(&format!(
        "freeswitch_conf = \"{}\"\n{FREESWITCH_JAIL}",
        conf.display()
    ))?;
    let started = std::time::Instant::now();
    s.restart()?;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let st = s.json(&["status"])?;
    assert_eq!(
        st["ports"],
        serde_json::json!([5060, 5066, 5080, 5081, 7443]),
        "{st}"
    );
    let warnings: Vec<String> = st["freeswitch"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap_or("").to_owned())
        .collect();
    let count = |what: &str| warnings.iter().filter(|w| w.contains(what)).count();
    assert_eq!(count("at most 256 files"), 1, "{warnings:#?}");
    assert!(count("fifo.xml: a FIFO") >= 1, "{warnings:#?}");
    assert!(count("sparse.xml: 68719476736 bytes") >= 1, "{warnings:#?}");
    assert!(warnings.len() < 300, "{}", warnings.len());
    s.cli(&["status"])?;
    Ok(())
}
