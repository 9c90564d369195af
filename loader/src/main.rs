use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Errors are printed as one line (`{e:#}`), never with a backtrace:
    // capturing one for each error is pure cost, and it takes a process-wide
    // lock that a forked snapshot writer (`bans::background`) could inherit
    // held. Set before any thread starts; an operator's own setting stands.
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
    match sipguard::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipguard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
