//! `cargo xtask`: the project's build, run and test entry points.
//!
//! * `setup`  install missing prerequisites (nightly rust-src, LLVM 22, bpf-linker, ip/nsenter)
//! * `build`  build the XDP object and the `sipguard` binary that embeds it
//! * `run`    setup + build, then `sipguard ARGS` as root
//! * `test`   setup + every test: unit, kernel (BPF_PROG_TEST_RUN) and end to end (netns)
//! * `install` the release binary, the systemd unit, a default configuration (`--destdir` to stage)
//! * `lint`   rustfmt check, clippy on the userspace crates and on the XDP crate (BPF target)
//! * `bench`  setup + benchmarks against baselines in the same run (`bench all|xdp|drop|logs|latency|scale|fleet`; `scale-store`: the state store's rows of `scale` alone; `xdp-storm`: the one-run-per-packet sections of `xdp` alone; `burst`: the 1 M-line burst row of `scale` alone; `xdp-dispatcher`: the libxdp dispatcher rows of `xdp` alone)
mod install;
mod setup;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing prerequisites (idempotent).
    Setup,
    /// Build the XDP object and the sipguard binary.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `sipguard ARGS` as root (release build).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build the release binary and install it with the systemd unit, a
    /// commented default configuration (kept if one exists) and the docs.
    Install {
        /// Stage everything under this folder instead of `/`.
        #[arg(long, default_value = "")]
        destdir: PathBuf,
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
    },
    /// rustfmt check and clippy (-D warnings) on every crate, the XDP one on its own target.
    Lint,
    /// Benchmarks, reported as ratios to a baseline measured in the same run;
    /// each part writes its section of BENCHMARKS.md.
    Bench {
        /// Which: `all`, or one of `xdp` (per-packet cost in the kernel),
        /// `drop` (a veth flood against iptables, ipset, nftables), `logs`
        /// (against fail2ban-regex), `latency` (line to ban to drop), `scale`
        /// (ban rates, 1 M bans, memory; against fail2ban and the firewalls),
        /// `fleet` (100 000 CrowdSec decisions and a delta; against ipset);
        /// `scale-store`: the state store's rows of `scale` alone (no XDP);
        /// `xdp-storm`: the forged-source storm and banned sources in turn alone;
        /// `burst`: the 1 M-line burst row of `scale` alone;
        /// `xdp-dispatcher`: the libxdp dispatcher rows of `xdp` alone.
        #[arg(default_value = "all")]
        which: String,
    },
    /// Run every test: unit, kernel (BPF_PROG_TEST_RUN) and end to end (netns).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => {
            ensure_setup()?;
            build(release)
        }
        Cmd::Run { args } => {
            ensure_setup()?;
            build(true)?;
            let bin = target_dir().join("release/sipguard");
            let mut cmd = if setup::is_root() {
                Command::new(&bin)
            } else {
                println!("xtask: sipguard needs root; running it through sudo");
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            let status = cmd
                .args(&args)
                .status()
                .with_context(|| format!("cannot run {}", bin.display()))?;
            if !status.success() {
                bail!("sipguard exited with {status}");
            }
            Ok(())
        }
        Cmd::Install { destdir, prefix } => {
            if destdir.as_os_str().is_empty() && !setup::is_root() {
                bail!("installing into the system needs root (or stage with --destdir)");
            }
            ensure_setup()?;
            build(true)?;
            install::Install {
                bin: target_dir().join("release/sipguard"),
                destdir,
                prefix,
                root: workspace_root(),
            }
            .run()
        }
        Cmd::Lint => {
            ensure_setup()?;
            let steps: [&[&str]; 3] = [
                &["fmt", "--all", "--check"],
                &[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "sipguard-xdp",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                // The XDP crate only builds for BPF (no_std, nightly intrinsics).
                &[
                    "+nightly",
                    "clippy",
                    "--package",
                    "sipguard-xdp",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ],
            ];
            for args in steps {
                if !cargo_plain().args(args).status()?.success() {
                    bail!("`cargo {}` failed", args.join(" "));
                }
            }
            Ok(())
        }
        Cmd::Bench { which } => {
            if !setup::is_root() {
                bail!("the benchmarks load XDP programs: run `cargo xtask bench` as root");
            }
            ensure_setup()?;
            // The baselines: iptables, ipset, nftables, fail2ban.
            setup::bench()?;
            // The log benchmarks drive the release binary.
            build(true)?;
            let status = cargo()
                .env("SIPGUARD_BIN", target_dir().join("release/sipguard"))
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "--package",
                    "sipguard-tests",
                    "--bin",
                    "sipguard-bench",
                    "--",
                ])
                .arg(&which)
                .status()?;
            if !status.success() {
                bail!("benchmark {which} failed");
            }
            Ok(())
        }
        Cmd::Test { args } => {
            if !setup::is_root() {
                bail!("the tests load XDP programs and build network namespaces: run `cargo xtask test` as root");
            }
            ensure_setup()?;
            build(false)?;
            let bin = target_dir().join("debug/sipguard");
            let status = cargo()
                .args(["test", "--workspace", "--exclude", "sipguard-xdp"])
                .args(&args)
                // The end-to-end tests drive the real binary.
                .env("SIPGUARD_BIN", &bin)
                .status()?;
            if !status.success() {
                bail!("tests failed");
            }
            Ok(())
        }
    }
}

fn ensure_setup() -> Result<()> {
    if !setup::is_complete() {
        println!("xtask: prerequisites missing; running setup first");
        setup::run()?;
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "sipguard"]);
    if release {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() {
        bail!("build failed");
    }
    Ok(())
}

/// `cargo` in the workspace root, with bpf-linker's folder on PATH.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    with_path(&mut cmd);
    cmd
}

/// The rustup proxy `cargo` (so `+nightly` works), same folder and PATH.
fn cargo_plain() -> Command {
    let mut cmd = Command::new("cargo");
    with_path(&mut cmd);
    // Let the proxy pick the toolchain named by `+toolchain`.
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    cmd
}

fn with_path(cmd: &mut Command) {
    cmd.current_dir(workspace_root());
    let mut paths = vec![setup::cargo_bin_dir()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    cmd.env(
        "PATH",
        std::env::join_paths(paths).expect("PATH entries are valid"),
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}
