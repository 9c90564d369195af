//! The configuration's tests: parsing, checks, and the built-in default.
use super::*;

#[test]
fn a_parse_error_says_where_but_never_quotes_the_line() {
    let text =
        "[crowdsec]\napi_url = \"http://127.0.0.1:8080/\"\napi-key = \"s3cr3t-bouncer-key\"\n";
    let e = format!(
        "{:#}",
        Config::parse(text, "/etc/sipguard/sipguard.toml").unwrap_err()
    );
    assert!(!e.contains("s3cr3t"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("api-key"), "{e}");
    let text = "[notify]\nwebhooks = [\"https://hooks.example/T0KEN\", 5]\n";
    let e = format!("{:#}", Config::parse(text, "x").unwrap_err());
    assert!(!e.contains("T0KEN") && e.contains("line 2"), "{e}");
}

fn err(text: &str) -> String {
    format!("{:#}", Config::parse(text, "test.toml").unwrap_err())
}

/// A FIFO (or a huge file) in place of the key file is an error,
/// never a stall; a real one is read and trimmed.
#[test]
fn api_key_file_is_read_without_blocking_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (fifo, big, key) = (
        dir.path().join("fifo"),
        dir.path().join("big"),
        dir.path().join("key"),
    );
    crate::files::mkfifo(&fifo);
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    std::fs::write(&key, "secret\n").unwrap();
    let settings = |f: &std::path::Path| {
        let text = format!("[crowdsec]\napi_key_file = {:?}\n", f.display().to_string());
        let c = Config::parse(&text, "test.toml").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let crowdsec = c.crowdsec.unwrap();
        std::thread::spawn(move || {
            let _ = tx.send(crowdsec.settings().map(|s| s.api_key));
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("blocked")
    };
    let e = format!("{:#}", settings(&fifo).unwrap_err());
    assert!(e.contains("a FIFO, not a regular file"), "{e}");
    let e = format!("{:#}", settings(&big).unwrap_err());
    assert!(e.contains("larger than"), "{e}");
    assert_eq!(settings(&key).unwrap().as_deref(), Some("secret"));
}

#[test]
fn fleet_caps_keep_room_and_refuse_huge_prefixes() {
    let c = Config::parse("[fleet]\nmax_bans_per_origin = 7\n", "t.toml").unwrap();
    assert_eq!(c.fleet.caps().per_origin.bans, 7);
    assert_eq!(c.fleet.caps().min_prefix_v4, 16, "defaults for the rest");
    assert!(err("[fleet]\nwidest_ipv4_prefix = 4\n").contains("widest_ipv4_prefix"));
    assert!(err("[fleet]\nwidest_ipv6_prefix = 8\n").contains("widest_ipv6_prefix"));
    let full = format!("[fleet]\nmax_remote_bans = {}\n", common::MAX_BANS);
    assert!(err(&full).contains("log-driven and manual bans"));
    assert!(err("[fleet]\nmax_bans = 1\n").contains("unknown field"));
}

#[test]
fn builtin_default_is_valid() {
    let c = Config::parse(DEFAULT_TOML, "default").unwrap();
    assert_eq!(c.jails.len(), 2);
    let j = &c.jails["freeswitch"];
    assert_eq!(
        (j.maxretry, j.findtime, j.bantime),
        (10, Duration::from_secs(60), Some(Duration::from_secs(3600)))
    );
    assert_eq!(
        c.protected_ports(),
        vec![5060, 5061, 5066, 5080, 5081, 7443]
    );
}

/// `cargo xtask install` puts loader/dist/sipguard.toml in place: it
/// must mean the built-in default, and every key it shows commented
/// out must exist with a valid example value.
#[test]
fn installed_default_config_is_the_builtin_one() {
    let text = include_str!("../../dist/sipguard.toml");
    let installed = Config::parse(text, "dist").unwrap();
    let builtin = Config::parse(DEFAULT_TOML, "default").unwrap();
    assert_eq!(installed.jails, builtin.jails);
    assert_eq!(installed.protected_ports(), builtin.protected_ports());
    let key = regex::Regex::new(r"^#[a-z_]+ = ").unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| if key.is_match(l) { &l[1..] } else { l })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.lines().count() > 40);
    Config::parse(&uncommented, "dist, every key set").unwrap();
}

#[test]
fn durations_and_ports_forms() {
    let c = Config::parse(
        r#"
            ports = [5060]
            [jails.a]
            logpath = "/tmp/x.log"
            failregex = ["fail from <HOST>$"]
            findtime = 30
            bantime = -1
            "bantime.increment" = true
            "bantime.maxtime" = "1d"
            ports = [5080]
            [jails.b]
            logpath = ["/tmp/y.log", "/tmp/z*.log"]
            filter = "freeswitch"
            bantime = "1h30m"
            ports = "all"
            "#,
        "t",
    )
    .unwrap();
    let a = &c.jails["a"];
    assert_eq!(
        (a.findtime, a.bantime, a.bantime_increment),
        (Duration::from_secs(30), None, true)
    );
    assert_eq!(a.bantime_maxtime, Duration::from_secs(86400));
    assert_eq!(c.jails["b"].bantime, Some(Duration::from_secs(5400)));
    assert_eq!(c.jails["b"].ports, Some(Ports::All));
    assert_eq!(c.protected_ports(), vec![5060, 5080]);
}

#[test]
fn bad_config_names_line_and_key() {
    let e = err("[jails.a]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nmaxretr = 3\n");
    assert!(
        e.contains("test.toml") && e.contains("line 4") && e.contains("maxretr"),
        "{e}"
    );
    let e = err("[jails.a]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nbantime = \"10x\"\n");
    assert!(
        e.contains("line 4") && e.contains("bantime") && e.contains("invalid duration '10x'"),
        "{e}"
    );
    let e = err("[jails.a]\nlogpath = \"/x\"\nfailregex = [\"failed (\"]\n");
    assert!(
        e.contains("line 3") && e.contains("failregex") && e.contains("<HOST>"),
        "{e}"
    );
    let e = err("[jails.a]\nlogpath = \"/x\"\nfailregex = [\"failed from (<HOST>\"]\n");
    assert!(
        e.contains("line 3") && e.contains("invalid failregex"),
        "{e}"
    );
    let e = err("ignoreip = [\"10.0.0.0/33\"]\n");
    assert!(
        e.contains("line 1") && e.contains("ignoreip") && e.contains("10.0.0.0/33"),
        "{e}"
    );
    let e = err("[jails.a]\nlogpath = \"/x\"\nfilter = \"nope\"\n");
    assert!(
        e.contains("jail 'a'") && e.contains("unknown filter 'nope'"),
        "{e}"
    );
    let e = err("[jails.a]\nlogpath = \"/x\"\n");
    assert!(e.contains("needs `filter`"), "{e}");
    let e = err("[jails.a]\nlogpath = \"/x\"\nfilter = \"freeswitch\"\nfindtime = -1\n");
    assert!(e.contains("finite duration"), "{e}");
    for (text, what) in [
        ("ignoreip = [\"0.0.0.0/0\"]\n", "ignoreip"),
        ("ignoreip = [\"::/0\"]\n", "ignoreip"),
        ("[flood]\nwindow = \"500ms\"\n", "window"),
        ("[flood]\nwindow = 0\n", "window"),
        ("[flood]\nrate = 2000000000\n", "rate"),
    ] {
        let e = err(text);
        assert!(e.contains(what), "{text}: {e}");
    }
    let e = err("[jails.a\n");
    assert!(e.contains("test.toml") && e.contains("line 1"), "{e}");
}

#[test]
fn missing_default_file_falls_back_but_explicit_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    assert_eq!(Config::load(&missing, false).unwrap().jails.len(), 2);
    assert!(format!("{:#}", Config::load(&missing, true).unwrap_err()).contains("nope.toml"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, [0xff, 0xfe, b'\n']).unwrap();
    assert!(format!("{:#}", Config::load(&bad, true).unwrap_err()).contains("not UTF-8"));
}

#[test]
fn crowdsec_machine_id_is_one_word_and_max_decisions_positive() {
    let base = "[crowdsec]\napi_key = \"k\"\n";
    let c = Config::parse(base, "t").unwrap();
    assert_eq!(
        c.crowdsec.unwrap().settings().unwrap().max_decisions,
        crate::fleet::crowdsec::DEFAULT_MAX_DECISIONS
    );
    assert!(err(&format!("{base}max_decisions = 0\n")).contains("max_decisions"));
    for bad in ["a b", "box\\u001b", ""] {
        let text = format!("{base}machine_id = \"{bad}\"\npassword = \"p\"\n");
        assert!(err(&text).contains("one word"), "{bad:?}");
    }
    let ok = format!("{base}machine_id = \"box-1\"\npassword = \"p\"\n");
    assert!(Config::parse(&ok, "t").is_ok());
}

/// The invalid-message budget judges the SIP ports only: `ports` (or the
/// discovered ones, or the defaults), not the ports a jail adds.
#[test]
fn the_invalid_budget_names_the_sip_ports_not_a_jails_extras() {
    let c = Config::parse(
        r#"
            ports = [5060, 5080]
            [jails.turn]
            logpath = "/tmp/turn.log"
            filter = "freeswitch"
            ports = [3478]
            "#,
        "t",
    )
    .unwrap();
    assert_eq!(c.protected_ports(), vec![3478, 5060, 5080]);
    assert_eq!(c.sip_ports(), vec![5060, 5080]);
    let l = c.sip_limits();
    assert!(l.judges_invalid(5060) && l.judges_invalid(5080));
    assert!(!l.judges_invalid(3478));
    // More SIP ports than the kernel names: every protected port.
    let many: Vec<String> = (5000..5020).map(|p| p.to_string()).collect();
    let c = Config::parse(&format!("ports = [{}]", many.join(", ")), "t").unwrap();
    assert!(c.sip_limits().judges_invalid(3478));
}
