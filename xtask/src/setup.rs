//! `cargo xtask setup`: installs what building and testing sipguard needs on a
//! fresh Debian/Ubuntu machine. Every step checks first and is skipped when
//! already satisfied; every step says what it does and why.
use anyhow::{bail, Context as _, Result};
use std::{path::Path, process::Command};

/// The LLVM that bpf-linker is built against (Debian bookworm-security has it).
const LLVM_VERSION: &str = "22";
/// The bpf-linker release known to build against that LLVM with our toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Toolchain that builds the eBPF crate (`-Z build-std` needs nightly).
const NIGHTLY: &str = "nightly";

struct Step {
    what: &'static str,
    why: &'static str,
    done: fn() -> bool,
    run: fn() -> Result<()>,
}

fn steps() -> [Step; 9] {
    [
        Step {
            what: "nightly Rust toolchain",
            why: "the XDP program is built with -Z build-std=core for the BPF target",
            done: || rustup(&["run", NIGHTLY, "rustc", "--version"]),
            run: || {
                bail!(
                    "the '{NIGHTLY}' toolchain is missing: install it with `rustup toolchain install {NIGHTLY}` \
                     (this machine cannot download toolchains by itself)"
                )
            },
        },
        Step {
            what: "rust-src for the nightly toolchain",
            why: "build-std compiles core for bpfel-unknown-none from source",
            done: || {
                output(
                    "rustup",
                    &["component", "list", "--toolchain", NIGHTLY, "--installed"],
                )
                .is_some_and(|o| o.lines().any(|l| l.starts_with("rust-src")))
            },
            run: || {
                sh(
                    "rustup",
                    &["component", "add", "rust-src", "--toolchain", NIGHTLY],
                )
            },
        },
        Step {
            what: "LLVM 22 development files (llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev)",
            why: "bpf-linker links against LLVM 22 to turn the program's bitcode into BPF",
            done: || LLVM_PACKAGES.iter().all(|p| deb_installed(p)),
            run: || apt_install(LLVM_PACKAGES),
        },
        Step {
            what: "bpf-linker",
            why: "the linker rustc uses for the BPF target",
            done: || {
                Command::new(bpf_linker_path())
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
            run: || {
                let prefix = format!("/usr/lib/llvm-{LLVM_VERSION}");
                println!("  (building from crates.io takes about two minutes)");
                let status = Command::new("cargo")
                    .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                    .args([
                        "--no-default-features",
                        "--features",
                        &format!("llvm-{LLVM_VERSION}"),
                    ])
                    // Debian also ships an older /usr/bin/llvm-config; point the
                    // build at LLVM 22 explicitly.
                    .env("LLVM_PREFIX", &prefix)
                    .status()
                    .context("cannot run cargo install")?;
                if !status.success() {
                    bail!("cargo install bpf-linker failed ({status}); LLVM_PREFIX was {prefix}");
                }
                Ok(())
            },
        },
        Step {
            what: "iproute2, util-linux and sipvicious (ip, nsenter, svmap)",
            why: "the end-to-end tests build network namespaces joined by veth pairs, and scan with a real SIP scanner",
            done: || which("ip") && which("nsenter") && which("svmap"),
            run: || apt_install(&["iproute2", "util-linux", "sipvicious"]),
        },
        Step {
            what: "xdp-tools (xdp-loader, xdp-filter, libxdp's xdp-dispatcher.o)",
            why: "the dispatcher tests put xdp-filter on the interface sipguard protects, check libxdp's verdict on freplace, and read `xdp-loader status`",
            done: || which("xdp-loader") && which("xdp-filter") && XDP_DISPATCHER_OBJECTS.iter().any(|p| Path::new(p).is_file()),
            run: || apt_install(&["xdp-tools"]),
        },
        Step {
            what: "fail2ban (its sample logs)",
            why: "the filter tests check the asterisk and freeswitch filters against fail2ban's own samples, with fail2ban's expected hosts",
            done: || std::path::Path::new(FAIL2BAN_SAMPLES).is_dir(),
            run: || without_service_starts(|| apt_install(&["fail2ban"])),
        },
        Step {
            what: "redis-server and CrowdSec (crowdsec, cscli)",
            why: "the fleet tests run a real Redis and a real CrowdSec local API in their namespaces",
            done: || which("redis-server") && which("crowdsec") && which("cscli") && Path::new("/etc/crowdsec/profiles.yaml").exists(),
            run: install_engines,
        },
        Step {
            what: "systemd-analyze (systemd)",
            why: "the service tests verify the systemd unit and score its sandbox",
            done: || which("systemd-analyze"),
            run: || apt_install(&["systemd"]),
        },
    ]
}

/// Redis and CrowdSec, without starting their services. Debian's crowdsec
/// registers with CrowdSec's Central API while it is configured, which
/// fails without internet; a non-empty credentials file written first is
/// its documented way to skip that (README.Debian), and the tests run a
/// local API of their own.
fn install_engines() -> Result<()> {
    let capi = Path::new("/etc/crowdsec/online_api_credentials.yaml");
    if !capi.exists() {
        std::fs::create_dir_all("/etc/crowdsec")?;
        std::fs::write(
            capi,
            "# Central API registration skipped: sipguard's tests run a local API only\n",
        )?;
    }
    without_service_starts(|| apt_install(&["redis-server", "crowdsec"]))
}

/// Where Debian's xdp-tools puts libxdp's dispatcher object (multiarch).
const XDP_DISPATCHER_OBJECTS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o",
    "/usr/lib/aarch64-linux-gnu/bpf/xdp-dispatcher.o",
    "/usr/lib/bpf/xdp-dispatcher.o",
];

/// Where Debian's fail2ban keeps its filters' sample logs.
pub const FAIL2BAN_SAMPLES: &str = "/usr/lib/python3/dist-packages/fail2ban/tests/files/logs";

pub fn run() -> Result<()> {
    for step in &steps() {
        if (step.done)() {
            println!("setup: {}: present", step.what);
            continue;
        }
        println!("setup: installing {} ({})", step.what, step.why);
        (step.run)().with_context(|| format!("setup could not install {}", step.what))?;
        if !(step.done)() {
            bail!("setup installed {} but still cannot find it", step.what);
        }
    }
    Ok(())
}

const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// The benchmarks' baselines, from the distribution: what fail2ban drives
/// (iptables, both backends; ipset; nftables) and fail2ban itself. fail2ban
/// is optional: the parts that compare with it say so and go on without it.
pub fn bench() -> Result<()> {
    let firewalls = ["iptables", "ipset", "nftables"];
    if !firewalls.iter().all(|p| deb_installed(p)) {
        println!(
            "setup: installing {} (the benchmarks' baselines)",
            firewalls.join(", ")
        );
        apt_install(&firewalls)?;
    }
    if !deb_installed("fail2ban") {
        println!("setup: installing fail2ban (the benchmarks' baseline for logs and ban rates), without starting its service");
        if let Err(e) = without_service_starts(|| apt_install(&["fail2ban"])) {
            println!(
                "setup: fail2ban could not be installed ({e:#}); its comparisons will be skipped"
            );
        }
    }
    Ok(())
}

/// Runs `f` with Debian's policy-rc.d saying "no service starts", so that
/// installing fail2ban does not start its service (and its firewall rules)
/// on this host: the benchmarks run their own fail2ban-server in a namespace.
fn without_service_starts(f: impl FnOnce() -> Result<()>) -> Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    if policy.exists() {
        return f(); // the machine's own policy applies
    }
    std::fs::write(
        policy,
        "#!/bin/sh\n# written by cargo xtask bench while installing fail2ban\nexit 101\n",
    )?;
    std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let result = f();
    std::fs::remove_file(policy)?;
    result
}

/// True when every step would be skipped: lets `test` and `run` stay quiet.
pub fn is_complete() -> bool {
    steps().iter().all(|s| (s.done)())
}

/// Where `cargo install` puts bpf-linker; that folder is added to PATH for builds.
pub fn cargo_bin_dir() -> std::path::PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    Path::new(&home).join("bin")
}

fn bpf_linker_path() -> std::path::PathBuf {
    let installed = cargo_bin_dir().join("bpf-linker");
    if installed.exists() {
        installed
    } else {
        "bpf-linker".into()
    }
}

fn rustup(args: &[&str]) -> bool {
    Command::new("rustup")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(cmd).is_file()))
        || Path::new("/usr/sbin").join(cmd).is_file()
        || Path::new("/sbin").join(cmd).is_file()
}

fn deb_installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    if !which("apt-get") {
        bail!(
            "no apt-get on this machine: install {} with your package manager",
            pkgs.join(" ")
        );
    }
    if !is_root() {
        bail!(
            "installing {} needs root: run `sudo cargo xtask setup`",
            pkgs.join(" ")
        );
    }
    let install = |pkgs: &[&str]| {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    // A fresh machine's package lists may be empty or old: refresh once on failure.
    if install(pkgs)?.success() {
        return Ok(());
    }
    println!("setup: apt-get install failed; refreshing package lists and retrying");
    sh("apt-get", &["update", "-q"])?;
    if !install(pkgs)?.success() {
        bail!("apt-get install {} failed", pkgs.join(" "));
    }
    Ok(())
}

fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !status.success() {
        bail!("`{cmd} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}
