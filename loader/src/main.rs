use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Errors are printed as one line (`{e:#}`), never with a backtrace:
    // capturing one for each error is pure cost. Set before any thread
    // starts; an operator's own setting stands.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIPGUARD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = sipguard::cli::Cli::parse();
    if matches!(cli.command, sipguard::cli::Command::Run { .. }) {
        raise_fd_limit();
    }
    match sipguard::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipguard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon's soft limit on open files raised to the hard one: the
/// default 1024 is soon reached by many followed logs, engines and clients
/// (each server also caps its own clients).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    if before == lim.rlim_max || unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::debug!("open files: soft limit {before} raised to {}", lim.rlim_cur);
    } else {
        tracing::debug!(
            "open files: soft limit {before} kept: {}",
            std::io::Error::last_os_error()
        );
    }
}
