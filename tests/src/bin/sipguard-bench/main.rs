//! `cargo xtask bench [all|xdp|drop|logs|latency|scale|fleet|scale-store|xdp-storm|burst]`: sipguard measured
//! against a baseline in the same run (an empty XDP program, iptables, ipset,
//! nftables, fail2ban), every figure reported as a ratio to it. Each part
//! writes its section of `BENCHMARKS.md` (see `report`).
/// `say!(out, "format", args)`: one line of a part's output (see `report::Section`).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format!($($arg)*))
    };
}

mod admission;
mod burst;
mod dispatcher;
mod drop;
mod fleet;
mod latency;
mod logs;
mod report;
mod scale;
mod store;
mod storm;
mod xdp;

use anyhow::{bail, Result};

type Part = fn(&mut report::Section) -> Result<()>;

/// In the order `all` runs them: the quick in-kernel figures first.
const PARTS: [(&str, Part); 6] = [
    ("xdp", xdp::run),
    ("drop", drop::run),
    ("logs", logs::run),
    ("latency", latency::run),
    ("scale", scale::run),
    ("fleet", fleet::run),
];

/// Parts of another, run alone only when named (`all` runs them in theirs).
const ALONE: [(&str, Part); 4] = [
    ("scale-store", store::run_alone),
    ("xdp-storm", storm::run_alone),
    ("burst", burst::run),
    ("xdp-dispatcher", dispatcher::run),
];

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let parts: Vec<_> = PARTS
        .iter()
        .filter(|(name, _)| what == "all" || what == *name)
        .chain(ALONE.iter().filter(|(name, _)| what == *name))
        .collect();
    if parts.is_empty() {
        let known: Vec<_> = PARTS.iter().chain(&ALONE).map(|(n, _)| *n).collect();
        bail!(
            "unknown benchmark '{what}' (known: all, {})",
            known.join(", ")
        );
    }
    let all = std::time::Instant::now();
    for (name, run) in parts {
        println!("\n# bench {name}\n");
        let start = std::time::Instant::now();
        let mut section = report::Section::default();
        run(&mut section)?;
        report::save(name, &section, start.elapsed().as_secs_f64())?;
    }
    println!(
        "\nbench {what}: {:.0} s in all",
        all.elapsed().as_secs_f64()
    );
    Ok(())
}
