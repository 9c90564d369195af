//! Discovery's tests: vanilla trees, broken ones, and hostile ones.
use super::*;

#[test]
fn sip_hosts() {
    for (v, want) in [
        ("sip.provider.example", Some("sip.provider.example")),
        ("sip:203.0.113.5:5060;transport=tcp", Some("203.0.113.5")),
        ("203.0.113.5:5080", Some("203.0.113.5")),
        ("[2001:db8::5]:5060", Some("2001:db8::5")),
        ("2001:db8::5", Some("2001:db8::5")),
        ("sips:user@Trunk.Example", Some("trunk.example")),
        ("$${unknown}", None),
        ("", None),
        ("evil host", None),
    ] {
        assert_eq!(sip_host(v).as_deref(), want, "{v}");
    }
}

/// The vanilla-shaped tree in tests/fixtures, copied to `dir`.
pub fn vanilla_tree(dir: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/freeswitch");
    let all = glob::glob(&from.join("**/*.xml").display().to_string()).unwrap();
    for f in all.map(Result::unwrap) {
        let to = dir.join(f.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, to).unwrap();
    }
}

#[test]
fn a_vanilla_tree() {
    let dir = tempfile::tempdir().unwrap();
    vanilla_tree(dir.path());
    let d = discover(dir.path());
    assert_eq!(d.port_numbers(), [5060, 5066, 5080, 5081, 7443], "{d:#?}");
    let from: Vec<&str> = d.ports.iter().map(|f| f.from.as_str()).collect();
    assert!(
        from.contains(&"sip_profiles/external.xml: tls-sip-port"),
        "{from:?}"
    );
    let trunks: Vec<(&str, &str, Vec<IpAddr>)> = d
        .trunks
        .iter()
        .map(|t| (t.gateway.as_str(), t.host.as_str(), t.addresses.clone()))
        .collect();
    assert_eq!(
        trunks,
        [
            ("carrier", "10.213.0.3", vec!["10.213.0.3".parse().unwrap()]),
            (
                "carrier",
                "2001:db8::5",
                vec!["2001:db8::5".parse().unwrap()]
            ),
            ("backup.example", "localhost", trunks[2].2.clone()),
        ]
    );
    assert!(trunks[2].2.iter().any(|a| a.is_loopback()), "names resolve");
    assert!(d.trunks[0]
        .from
        .contains("external/trunk.xml: gateway carrier proxy"));
    let log = d.log.unwrap();
    assert_eq!(
        log.value,
        dir.path().parent().unwrap().join("log/fs-custom.log")
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn broken_trees_warn_and_default() {
    let dir = tempfile::tempdir().unwrap();
    vanilla_tree(dir.path());
    std::fs::write(
        dir.path().join("sip_profiles/external/gone.xml"),
        r#"<gateway name="gone"><param name="proxy" value="no-such-host.invalid"/></gateway>"#,
    )
    .unwrap();
    let mut weird = br#"<profile name="w"><settings><param name="sip-port" value="$${nowhere}"/>
<param name="tls-only" value="false"/></settings></profile><<<>>"#
        .to_vec();
    weird.push(0xff);
    std::fs::write(dir.path().join("sip_profiles/weird.xml"), weird).unwrap();
    std::fs::remove_file(dir.path().join("autoload_configs/logfile.conf.xml")).unwrap();
    let d = discover(dir.path());
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("sip-port = `$${nowhere}`")),
        "{:?}",
        d.warnings
    );
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("no-such-host.invalid")),
        "{:?}",
        d.warnings
    );
    assert_eq!(d.port_numbers(), [5060, 5066, 5080, 5081, 7443]);
    assert!(d.log.unwrap().from.contains("default"));
    // Discovery off, or nothing found.
    assert_eq!(conf_dir(Some(Path::new(""))), None);
    let empty = tempfile::tempdir().unwrap();
    let d = discover(empty.path());
    assert!(d.ports.is_empty() && !d.warnings.is_empty());
}

/// A tree a local user could have written: every file of `evil/`
/// includes all of them again (4^8 files at the depth bound), one is a
/// FIFO, one a sparse file of 64 GiB, one a symbolic link to itself,
/// and `evil/up` leads back to the folder.
#[test]
fn hostile_includes_stop_at_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    vanilla_tree(dir.path());
    let evil = dir.path().join("evil");
    std::fs::create_dir(&evil).unwrap();
    for i in 0..4 {
        std::fs::write(
            evil.join(format!("fan{i}.xml")),
            r#"<X-PRE-PROCESS cmd="include" data="*.xml"/><X-PRE-PROCESS cmd="include" data="up/**/*.xml"/>"#,
        )
        .unwrap();
    }
    crate::files::mkfifo(&evil.join("fifo.xml"));
    let sparse = std::fs::File::create(evil.join("sparse.xml")).unwrap();
    sparse.set_len(64 << 30).unwrap();
    std::os::unix::fs::symlink(evil.join("loop.xml"), evil.join("loop.xml")).unwrap();
    std::os::unix::fs::symlink(&evil, evil.join("up")).unwrap();
    let vars = dir.path().join("vars.xml");
    let mut text = std::fs::read_to_string(&vars).unwrap();
    text.push_str(r#"<X-PRE-PROCESS cmd="include" data="evil/*.xml"/>"#);
    std::fs::write(&vars, text).unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    let root = dir.path().to_owned();
    let started = std::time::Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(discover(&root));
    });
    let d = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("discovery blocked");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let count = |what: &str| d.warnings.iter().filter(|w| w.contains(what)).count();
    assert_eq!(count("at most 256 files"), 1, "{:#?}", d.warnings);
    assert!(
        count("fifo.xml: a FIFO, not a regular file") >= 1,
        "{:#?}",
        d.warnings
    );
    assert!(
        count("sparse.xml: 68719476736 bytes: not read") >= 1,
        "{:#?}",
        d.warnings
    );
    assert!(count("loop.xml") >= 1, "{:#?}", d.warnings);
    assert!(d.warnings.len() < 300, "{}", d.warnings.len());
}

#[test]
fn expansions_are_bounded() {
    let vars = BTreeMap::from([("a".to_owned(), "x".repeat(MAX_VALUE - 10))]);
    assert_eq!(expand("$${a}", &vars).len(), MAX_VALUE - 10);
    assert_eq!(expand("$${a}$${a}$${a}", &vars).len(), MAX_VALUE);
    // Each `set` doubling the last: 2^40 bytes, were it not bounded.
    let mut text = r#"<X-PRE-PROCESS cmd="set" data="v0=0123456789"/>"#.to_owned();
    for i in 1..=40 {
        let p = i - 1;
        text.push_str(&format!(
            r#"<X-PRE-PROCESS cmd="set" data="v{i}=$${{v{p}}}$${{v{p}}}"/>"#
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vars.xml"), text).unwrap();
    let mut vars = BTreeMap::new();
    let (mut tags, mut warnings) = (Vec::new(), Vec::new());
    read_tree(
        &dir.path().join("vars.xml"),
        dir.path(),
        0,
        &mut vars,
        &mut tags,
        &mut warnings,
        &mut Budget::new(),
    );
    assert!(vars["v40"].len() <= MAX_VALUE + 16, "{}", vars["v40"].len());
}

#[test]
fn variables_expand_and_unknown_ones_stay() {
    let vars = BTreeMap::from([("a".to_owned(), "5080".to_owned())]);
    assert_eq!(expand("$${a}", &vars), "5080");
    assert_eq!(expand(":$${a}/x $${b}", &vars), ":5080/x $${b}");
}

/// Runs discovery in a thread: it must end within `secs`.
fn discover_within(dir: &Path, secs: u64) -> Discovered {
    let (tx, rx) = std::sync::mpsc::channel();
    let root = dir.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(discover(&root));
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("discovery took too long")
}

fn count(d: &Discovered, what: &str) -> usize {
    d.warnings.iter().filter(|w| w.contains(what)).count()
}

/// A variable doubled up to 64 KiB, then thousands of small tags each
/// expanding it: 16 MiB of expanded text in all, then the walk stops.
#[test]
fn expanded_text_is_bounded_in_all() {
    let dir = tempfile::tempdir().unwrap();
    vanilla_tree(dir.path());
    let mut text = r#"<X-PRE-PROCESS cmd="set" data="v0=0123456789abcdef"/>"#.to_owned();
    for i in 1..=12 {
        let p = i - 1;
        text.push_str(&format!(
            r#"<X-PRE-PROCESS cmd="set" data="v{i}=$${{v{p}}}$${{v{p}}}"/>"#
        ));
    }
    // 2000 tags of 64 KiB each: 128 MiB, were it not bounded.
    text.push_str(&r#"<a b="$${v12}"/>"#.repeat(2000));
    std::fs::write(dir.path().join("sip_profiles/bomb.xml"), text).unwrap();
    let d = discover_within(dir.path(), 20);
    assert_eq!(
        count(
            &d,
            &format!("at most {MAX_EXPANDED} bytes of expanded text")
        ),
        1,
        "{:#?}",
        d.warnings
    );
}

/// A thousand gateways with distinct hosts: `MAX_HOSTS` kept, said once.
#[test]
fn gateway_hosts_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    vanilla_tree(dir.path());
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!(
            r#"<gateway name="g{i}"><param name="proxy" value="10.9.{}.{}"/></gateway>"#,
            i / 256,
            i % 256
        ));
    }
    std::fs::write(dir.path().join("sip_profiles/external/many.xml"), text).unwrap();
    let d = discover_within(dir.path(), 20);
    assert_eq!(d.trunks.len(), MAX_HOSTS);
    assert_eq!(
        count(&d, &format!("discovery keeps at most {MAX_HOSTS}")),
        1
    );
}

/// Patterns that would walk the file system, a folder of thousands of
/// entries, and a glob once the file budget is spent.
#[test]
fn globs_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    vanilla_tree(dir.path());
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..MAX_DIR_ENTRIES + 100 {
        std::fs::write(big.join(format!("f{i}.txt")), b"").unwrap();
    }
    let vars = dir.path().join("vars.xml");
    let mut text = std::fs::read_to_string(&vars).unwrap();
    text.push_str(r#"<X-PRE-PROCESS cmd="include" data="/*/*/*/*/*/*/x.xml"/>"#);
    text.push_str(r#"<X-PRE-PROCESS cmd="include" data="big/*.xml"/>"#);
    std::fs::write(&vars, &text).unwrap();
    let d = discover_within(dir.path(), 20);
    assert_eq!(
        count(&d, "more than 2 wildcard components"),
        1,
        "{:#?}",
        d.warnings
    );
    assert_eq!(
        count(&d, &format!("only {MAX_DIR_ENTRIES} entries read")),
        1,
        "{:#?}",
        d.warnings
    );
    assert_eq!(d.port_numbers(), [5060, 5066, 5080, 5081, 7443]);

    // The file budget spent on vars.xml itself: its include is not globbed.
    let mut budget = Budget::new();
    budget.files = 1;
    let (mut vars_map, mut tags, mut warnings) = (BTreeMap::new(), Vec::new(), Vec::new());
    read_tree(
        &vars,
        dir.path(),
        0,
        &mut vars_map,
        &mut tags,
        &mut warnings,
        &mut budget,
    );
    assert_eq!(budget.entries, MAX_ENTRIES, "{warnings:#?}");
    assert!(
        warnings.iter().any(|w| w.contains("at most 256 files")),
        "{warnings:#?}"
    );
}

/// Bytes this process has read so far (`rchar` of /proc/self/io).
fn bytes_read() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A sparse file past the budget is refused by its size: not one of its
/// zeros is read (256 of them would otherwise cost gigabytes of reads).
#[test]
fn a_sparse_file_past_the_budget_is_refused_before_a_byte_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.xml");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(MAX_BYTES * 4)
        .unwrap();
    let mut budget = walk::Budget::new();
    let mut warnings = Vec::new();
    let before = bytes_read();
    assert!(walk::read_file(&path, 1, &mut budget, &mut warnings).is_none());
    let read = bytes_read() - before;
    assert!(read < 64 * 1024, "{read} bytes read");
    assert_eq!(budget.bytes, MAX_BYTES);
    assert!(warnings[0].contains("not read"), "{warnings:?}");
}

#[test]
fn the_event_socket_is_found_and_its_password_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    vanilla_tree(dir.path());
    let d = discover(dir.path());
    let es = d
        .event_socket
        .as_ref()
        .expect("vanilla has event_socket.conf.xml");
    // `::` listens everywhere, loopback included: connect there.
    assert_eq!(es.value.addr(), "[::1]:8021".parse().unwrap());
    assert_eq!(es.value.password.expose(), "ClueCon");
    assert_eq!(
        es.from,
        "autoload_configs/event_socket.conf.xml: listen-ip, listen-port, password"
    );
    let shown = format!("{d:?}{}", serde_json::to_string(&d).unwrap());
    assert!(!shown.contains("ClueCon"), "{shown}");
    // Another address and port, `$${}` expanded; a bad port is a warning.
    let conf = dir.path().join("autoload_configs/event_socket.conf.xml");
    std::fs::write(
        &conf,
        r#"<X-PRE-PROCESS cmd="set" data="esl_pw=Other"/><configuration name="event_socket.conf"><settings>
<param name="listen-ip" value="0.0.0.0"/><param name="listen-port" value="8022"/>
<param name="password" value="$${esl_pw}"/></settings></configuration>"#,
    )
    .unwrap();
    let d = discover(dir.path());
    let es = d.event_socket.unwrap().value;
    assert_eq!(es.addr(), "127.0.0.1:8022".parse().unwrap());
    assert_eq!(es.password.expose(), "Other");
    std::fs::write(
        &conf,
        r#"<configuration><settings><param name="listen-port" value="99999"/></settings></configuration>"#,
    )
    .unwrap();
    let d = discover(dir.path());
    assert!(d.event_socket.is_none());
    assert!(
        d.warnings.iter().any(|w| w.contains("listen-port 99999")),
        "{:?}",
        d.warnings
    );
    std::fs::remove_file(&conf).unwrap();
    assert!(discover(dir.path()).event_socket.is_none());
}
