//! Sharing the interface with xdp-tools' programs (xdp-filter, xdp-loader,
//! libxdp's dispatcher), on a veth pair between namespaces the tests create.
//!
//! xdp-filter keeps its maps pinned box-wide (/sys/fs/bpf/xdp-filter, no
//! override), so the tests that load it run one at a time and unload it
//! even when they fail.
use anyhow::{bail, Context as _, Result};
use sipguard::kernel::dispatcher::probe::{self, Freplace};
use sipguard_tests::{
    daemon::{bin, Daemon},
    netns::*,
    Sandbox,
};
use std::{process::Command, sync::Mutex, time::Duration};

const SIP: u16 = 5060;
const PROBES: usize = 20;

static XDP_FILTER: Mutex<()> = Mutex::new(());

/// xdp-filter loaded on the server's veth, unloaded on drop.
struct XdpFilter<'a> {
    pair: &'a Pair,
}

impl<'a> XdpFilter<'a> {
    /// `xdp-filter load` (native mode, as an operator runs it), then a deny
    /// rule for packets from `deny_src`.
    fn load(pair: &'a Pair, deny_src: &str) -> Result<Self> {
        run_in(&pair.server, "xdp-filter", &["load", &pair.server_if])?;
        let filter = Self { pair };
        run_in(
            &pair.server,
            "xdp-filter",
            &["ip", deny_src, "--mode", "src"],
        )?;
        Ok(filter)
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        let _ = run_in(
            &self.pair.server,
            "xdp-filter",
            &["unload", &self.pair.server_if],
        );
    }
}

/// Runs `cmd ARGS` in `ns`'s network namespace only (nsenter, so the host's
/// /sys/fs/bpf stays visible); its stdout, or an error with its stderr.
fn run_in(ns: &Netns, cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(cmd)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {cmd} (cargo xtask setup installs xdp-tools)"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn xdp_loader_status(pair: &Pair) -> Result<String> {
    run_in(&pair.server, "xdp-loader", &["status", &pair.server_if])
}

/// UDP datagrams from `src` delivered to the server's SIP socket, of PROBES.
fn delivered(pair: &Pair, server: &std::net::UdpSocket, src: &str) -> Result<usize> {
    let from = udp_socket(&pair.client, addr(src, 0))?;
    udp_delivered(&from, server, PROBES)
}

/// libxdp and sipguard agree on whether this kernel lets programs share an
/// interface through a dispatcher: sipguard's check says "allowed" exactly
/// when xdp-filter (through libxdp) ends up inside a dispatcher.
#[test]
fn sipguard_and_libxdp_agree_on_freplace() -> Result<()> {
    let _one = XDP_FILTER.lock().unwrap_or_else(|e| e.into_inner());
    let pair = Pair::new()?;
    let _filter = XdpFilter::load(&pair, OTHER_V4)?;
    let status = xdp_loader_status(&pair)?;
    assert!(status.contains("xdpfilt_"), "xdp-filter listed:\n{status}");
    let libxdp_dispatcher = status.contains("xdp_dispatcher");
    let verdict = probe::probe()?;
    assert_eq!(
        verdict == Freplace::Allowed,
        libxdp_dispatcher,
        "sipguard's check ({verdict:?}) and libxdp's (dispatcher on the interface: {libxdp_dispatcher}) disagree:\n{status}"
    );
    if let Freplace::Refused(why) = &verdict {
        eprintln!("this kernel refuses freplace: {why}");
    }
    Ok(())
}

/// With xdp-filter on the interface, sipguard (which attaches exclusively)
/// does not start: its error names xdp-filter's program and why it cannot
/// share the interface on this kernel. xdp-filter is left in place and its
/// verdicts hold before and after: its denied source is dropped, another
/// source passes.
#[test]
fn beside_xdp_filter_sipguard_refuses_by_name_and_xdp_filter_keeps_working() -> Result<()> {
    let _one = XDP_FILTER.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let server = udp_socket(&pair.server, addr(SERVER_V4, SIP))?;
    assert_eq!(
        delivered(&pair, &server, OTHER_V4)?,
        PROBES,
        "all flows before any XDP"
    );
    let _filter = XdpFilter::load(&pair, OTHER_V4)?;
    let verdicts = |when: &str| -> Result<()> {
        assert_eq!(
            delivered(&pair, &server, OTHER_V4)?,
            0,
            "xdp-filter drops its denied source {when}"
        );
        assert_eq!(
            delivered(&pair, &server, CLIENT_V4)?,
            PROBES,
            "other sources pass {when}"
        );
        Ok(())
    };
    verdicts("before sipguard")?;
    let before = xdp_loader_status(&pair)?;

    let mut daemon = Daemon::spawn(&pair.server, &sb, &["--iface", &pair.server_if], &[])?;
    let err = match daemon.wait_for("READY=1", Duration::from_secs(30)) {
        Ok(_) => bail!("sipguard started beside xdp-filter:\n{}", daemon.log()),
        Err(e) => format!("{e:#}"),
    };
    let id = before
        .lines()
        .find(|l| l.contains("xdpfilt_"))
        .and_then(|l| l.split_whitespace().find(|w| w.parse::<u32>().is_ok()))
        .context("xdp-filter's program id in xdp-loader status")?;
    assert!(
        err.contains(&format!(
            "another XDP program is attached to {}: xdpfilt_",
            pair.server_if
        )) && err.contains(&format!("(id {id}, driver mode)")),
        "the error names xdp-filter's program {id}: {err}"
    );
    match probe::probe()? {
        Freplace::Refused(_) => assert!(
            err.contains("this kernel refuses the freplace (BPF_PROG_TYPE_EXT) programs"),
            "the error says why no program can share the interface here: {err}"
        ),
        Freplace::Allowed => assert!(err.contains("not implemented yet"), "{err}"),
    }
    assert!(
        !sb.pin.join("links").join(&pair.server_if).exists(),
        "no link pinned for the interface"
    );
    assert_eq!(xdp_loader_status(&pair)?, before, "xdp-filter untouched");
    verdicts("after sipguard gave up")
}

/// `sipguard stats` says what is on each protected interface's XDP hook,
/// the program behind sipguard's link marked, in text and JSON.
#[test]
fn stats_show_what_is_on_the_hook() -> Result<()> {
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let _daemon = Daemon::start(
        &pair.server,
        &sb,
        &["--iface", &pair.server_if, "--xdp-mode", "driver"],
    )?;
    let stats = |json: bool| -> Result<String> {
        let mut args: Vec<String> = sb
            .args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        args.push("stats".into());
        if json {
            args.push("--json".into());
        }
        let bin = bin();
        let mut all = vec![bin.to_str().context("binary path")?];
        all.extend(args.iter().map(String::as_str));
        run_in(&pair.server, all[0], &all[1..])
    };
    let text = stats(false)?;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("xdp on {}:", pair.server_if)))
        .with_context(|| format!("no hook line in:\n{text}"))?;
    assert!(
        line.contains("sipguard (id ") && line.contains("driver mode) [sipguard]"),
        "{line}"
    );
    let v: serde_json::Value = serde_json::from_str(&stats(true)?)?;
    let hook = &v["xdp_hooks"][&pair.server_if];
    assert_eq!(hook.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(hook[0]["name"], "sipguard");
    assert_eq!(hook[0]["mode"], "driver");
    assert_eq!(hook[0]["sipguard"], true);
    assert_eq!(v["attach"], "exclusive");
    // From a namespace without the interface: said, not "nothing".
    let out = sipguard_tests::daemon::cli_ok(&sb, &["stats"])?;
    assert!(
        out.contains(&format!("xdp on {}: unknown (", pair.server_if)),
        "{out}"
    );
    Ok(())
}

/// A dispatcher built from libxdp's installed object with sipguard's
/// configuration runs that configuration (BPF_PROG_TEST_RUN on the loaded
/// dispatcher, no member in its slots: every slot's stub returns 31):
/// with the stubs' 31 among the chain actions, as libxdp always sets it,
/// every slot count passes; without it in the last enabled slot, that
/// slot's 31 comes back, and a slot past `num_progs_enabled` is never run.
/// The frozen config map holds exactly the bytes sipguard made.
#[test]
fn a_dispatcher_from_libxdps_object_runs_sipguards_config() -> Result<()> {
    use sipguard::kernel::dispatcher::{build, config, object};
    let bytes = object::read(&object::find()?)?;
    let frame = sipguard_tests::packet::udp4([10, 213, 0, 2], SIP);
    let member = |i: u32| config::Member {
        name: format!("m{i}"),
        priority: i,
        chain_actions: 1 << config::XDP_PASS,
        frags: false,
    };
    let run = |conf: &[u8]| -> Result<u32> {
        let mut d = build::load_config(&bytes, conf)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(d.program()?.fd()?));
        let (action, _) = sipguard_tests::kernel::test_run_on(0, fd, &frame, 1)?;
        Ok(action)
    };
    let plain = |n: u32| -> Result<Vec<u8>> {
        let members: Vec<_> = (0..n).map(member).collect();
        let mut d = build::load(&bytes, &members, true)?;
        let conf = config::encode(d.version, &members, true)?;
        // The frozen .rodata map holds what sipguard wrote.
        let map: aya::maps::Array<_, [u8; 124]> = d
            .ebpf
            .map(".rodata")
            .context("the dispatcher's .rodata map")?
            .try_into()?;
        if d.version == 2 {
            assert_eq!(map.get(&0, 0)?.as_slice(), conf.as_slice());
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(d.program()?.fd()?));
        assert_eq!(
            sipguard_tests::kernel::test_run_on(0, fd, &frame, 1)?.0,
            2,
            "{n} empty slots pass (XDP_PASS)"
        );
        Ok(conf)
    };
    for n in 1..=10 {
        plain(n)?;
    }
    // Without the stubs' value among slot I's chain actions.
    let cut = |mut conf: Vec<u8>, slot: usize| {
        let at = 4 + slot * 4;
        let v = u32::from_ne_bytes(conf[at..at + 4].try_into().unwrap()) & !(1 << config::RETVAL);
        conf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        conf
    };
    assert_eq!(
        run(&cut(plain(1)?, 0))?,
        config::RETVAL,
        "slot 0 runs, its 31 returned"
    );
    assert_eq!(
        run(&cut(plain(3)?, 2))?,
        config::RETVAL,
        "slot 2 runs after 0 and 1"
    );
    assert_eq!(
        run(&cut(plain(2)?, 2))?,
        2,
        "slot 2 is past num_progs_enabled = 2"
    );
    Ok(())
}

/// A libxdp dispatcher on the interface, built by sipguard from libxdp's
/// object with two members in its config and a program pinned for each
/// slot where libxdp pins it (under a private LIBXDP_BPFFS; plain XDP
/// programs stand in for members, since this kernel refuses freplace):
/// `xdp-loader status` reads it as its own, slots, priorities and chain
/// actions; sipguard reads it the same way and its refusal lists the
/// members in run order.
#[test]
fn a_dispatcher_on_the_interface_is_read_like_libxdp() -> Result<()> {
    use sipguard::kernel::dispatcher::{build, config, object};
    let sb = Sandbox::bare()?;
    let pair = Pair::new()?;
    let bytes = object::read(&object::find()?)?;
    let members = [
        config::Member {
            name: "first".into(),
            priority: 5,
            chain_actions: 1 << config::XDP_PASS,
            frags: false,
        },
        config::Member {
            name: "second".into(),
            priority: 10,
            chain_actions: 1 << config::XDP_PASS | 1 << config::XDP_DROP,
            frags: false,
        },
    ];
    let mut d = build::load(&bytes, &members, true)?;
    let iface = pair.server_if.clone();
    let (ifindex, id) = in_netns_scoped(&pair.server, || {
        let p = d.program()?;
        p.attach(&iface, aya::programs::XdpMode::Driver)?;
        let id = p.info()?.id();
        Ok((sipguard::kernel::program::if_index(&iface)?, id))
    })?;
    // Member programs pinned in the slots, as libxdp pins progN-prog.
    let dir = sb.pin.join("xdp").join(format!("dispatch-{ifindex}-{id}"));
    std::fs::create_dir_all(&dir)?;
    let mut pinned = Vec::new();
    for slot in 0..2 {
        let mut member = aya::EbpfLoader::new().load(&bytes)?;
        let pass: &mut aya::programs::Xdp = member
            .program_mut("xdp_pass")
            .context("xdp_pass")?
            .try_into()?;
        pass.load()?;
        pass.pin(dir.join(format!("prog{slot}-prog")))?;
        pinned.push(member);
    }
    // libxdp reads the same state: config layout and pins are its own.
    let status = Command::new("nsenter")
        .arg(format!("--net={}", pair.server.path()))
        .args(["xdp-loader", "status", &pair.server_if])
        .env("LIBXDP_BPFFS", &sb.pin)
        .output()?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status
            .lines()
            .any(|l| l.contains("xdp_dispatcher") && l.contains(&id.to_string())),
        "xdp-loader sees the dispatcher:\n{status}"
    );
    let rows: Vec<Vec<&str>> = status
        .lines()
        .filter(|l| l.trim_start().starts_with("=>"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let row = |r: &Vec<&str>| {
        (
            r[1].to_owned(),
            r[2].to_owned(),
            r.last().map(|s| s.to_string()),
        )
    };
    assert_eq!(
        rows.iter().map(row).collect::<Vec<_>>(),
        [
            ("5".into(), "xdp_pass".into(), Some("XDP_PASS".into())),
            (
                "10".into(),
                "xdp_pass".into(),
                Some("XDP_DROP,XDP_PASS".into())
            ),
        ],
        "xdp-loader reads sipguard's config and pins as its own:\n{status}"
    );

    let pin = sb.pin.to_string_lossy().into_owned();
    let mut daemon = Daemon::spawn(
        &pair.server,
        &sb,
        &["--iface", &pair.server_if],
        &[("LIBXDP_BPFFS", &pin)],
    )?;
    let err = match daemon.wait_for("READY=1", Duration::from_secs(30)) {
        Ok(_) => bail!("sipguard started over a dispatcher:\n{}", daemon.log()),
        Err(e) => format!("{e:#}"),
    };
    let expected = format!(
        "another XDP program is attached to {iface}: xdp_dispatcher (id {id}, driver mode): \
         libxdp dispatcher v2 (id {id}) running xdp_pass (priority 5, on to the next after PASS), \
         then xdp_pass (priority 10, on to the next after DROP/PASS)"
    );
    assert!(err.contains(&expected), "expected {expected}\nin: {err}");
    assert!(pair.server_has_xdp()?, "the dispatcher stays");
    Ok(())
}

/// Dispatchers put on the veth's hook through netlink as libxdp does: a
/// first one only on an empty hook; a replacement only in place of the
/// program expected there (the kernel refuses a stale expectation, libxdp's
/// cue to start over), seen at once by the kernel; removal of exactly the
/// expected one. Traffic flows through each (stub slots pass).
#[test]
fn dispatchers_swap_on_the_hook_the_way_libxdp_swaps_them() -> Result<()> {
    use sipguard::kernel::dispatcher::{build, config, iface, object, swap};
    use std::os::fd::AsFd as _;
    let pair = Pair::new()?;
    let server = udp_socket(&pair.server, addr(SERVER_V4, SIP))?;
    let bytes = object::read(&object::find()?)?;
    let member = config::Member {
        name: "m".into(),
        priority: 1,
        chain_actions: 1 << config::XDP_PASS,
        frags: false,
    };
    let mut a = build::load(&bytes, std::slice::from_ref(&member), true)?;
    let mut b = build::load(&bytes, &[member.clone(), member.clone()], true)?;
    let mut c = build::load(&bytes, std::slice::from_ref(&member), true)?;
    let id = |d: &mut build::Dispatcher| -> Result<u32> { Ok(d.program()?.info()?.id()) };
    let (ida, idb) = (id(&mut a)?, id(&mut b)?);
    let iface = pair.server_if.clone();
    let mode = swap::Mode::Driver;
    let on_hook = |ifindex: u32| -> Result<Vec<u32>> {
        in_netns_scoped(&pair.server, || {
            Ok(iface::attached(ifindex)?.iter().map(|p| p.id).collect())
        })
    };
    let ifindex = in_netns_scoped(&pair.server, || sipguard::kernel::program::if_index(&iface))?;
    let fd = |d: &mut build::Dispatcher| -> Result<std::os::fd::OwnedFd> {
        Ok(d.program()?.fd()?.as_fd().try_clone_to_owned()?)
    };
    let (fa, fb, fc) = (fd(&mut a)?, fd(&mut b)?, fd(&mut c)?);
    let result = in_netns_scoped(&pair.server, || -> Result<()> {
        swap::attach_new(ifindex, fa.as_fd(), mode)?;
        let again = swap::attach_new(ifindex, fb.as_fd(), mode);
        assert!(again.is_err(), "a second first dispatcher is refused");
        swap::replace(ifindex, fb.as_fd(), fa.as_fd(), mode)?;
        let stale = swap::replace(ifindex, fc.as_fd(), fa.as_fd(), mode);
        assert!(
            stale.is_err(),
            "a replacement expecting a program no longer there is refused"
        );
        let stale = swap::remove(ifindex, fa.as_fd(), mode);
        assert!(
            stale.is_err(),
            "removing a program no longer there is refused"
        );
        Ok(())
    });
    if let Err(e) = result {
        let _ = in_netns_scoped(&pair.server, || swap::remove(ifindex, fa.as_fd(), mode));
        return Err(e);
    }
    assert_eq!(on_hook(ifindex)?, [idb], "b replaced a ({ida})");
    assert_eq!(
        delivered(&pair, &server, CLIENT_V4)?,
        PROBES,
        "traffic flows through the dispatcher"
    );
    in_netns_scoped(&pair.server, || swap::remove(ifindex, fb.as_fd(), mode))?;
    assert!(on_hook(ifindex)?.is_empty(), "removed");
    Ok(())
}
