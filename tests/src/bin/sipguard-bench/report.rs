//! Where the benchmarks' results go: printed as they come, and kept in
//! `BENCHMARKS.md`, one section per part between `<!-- bench:NAME -->`
//! markers, each stamped with the commit, the machine and the command it came
//! from. Running one part replaces only its own section; the text outside the
//! markers (the reading of the figures) is written by hand.
use anyhow::{Context as _, Result};
use std::{path::PathBuf, process::Command};

/// One part's output: echoed to stdout and kept for the file.
#[derive(Default)]
pub struct Section {
    text: String,
}

impl Section {
    pub fn line(&mut self, line: String) {
        println!("{line}");
        self.text.push_str(&line);
        self.text.push('\n');
    }
}

/// The workspace root, where `BENCHMARKS.md` lives.
fn root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

pub fn file() -> PathBuf {
    std::env::var_os("SIPGUARD_BENCH_FILE")
        .map_or_else(|| root().join("BENCHMARKS.md"), PathBuf::from)
}

/// Replaces (or appends) part `name`'s section in `BENCHMARKS.md`.
pub fn save(name: &str, section: &Section, secs: f64) -> Result<()> {
    let path = file();
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# sipguard benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let stamp = format!(
        "_From `cargo xtask bench {name}` on commit `{}`, {} UTC, in {secs:.0} s. Machine: {}._\n\n",
        commit(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        machine(),
    );
    let new = with_section(&old, name, &format!("{stamp}{}", section.text.trim_start()));
    // Written whole, then renamed: an interrupted run leaves the old file.
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new)?;
    std::fs::rename(&tmp, &path)?;
    println!("\n(saved in {})", path.display());
    Ok(())
}

/// `file` with part `name`'s section (between its markers) replaced by
/// `text`, or added at the end when it has none yet.
fn with_section(file: &str, name: &str, text: &str) -> String {
    let (begin, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let body = format!("{begin}\n{text}{end}");
    match (file.find(&begin), file.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{body}{}", &file[..b], &file[e + end.len()..]),
        _ => format!("{}\n\n{body}\n", file.trim_end()),
    }
}

/// The commit measured, marked when the work tree differs from it.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(id) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    match git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!BENCHMARKS.md",
    ]) {
        Some(s) if s.is_empty() => id,
        _ => format!("{id} + uncommitted changes"),
    }
}

/// CPU model and count, memory, kernel: enough to compare runs.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".into(), |m| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} × {model}, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::with_section;

    #[test]
    fn a_part_replaces_only_its_own_section() {
        let file = "# head\n<!-- bench:xdp -->\nold xdp\n<!-- /bench:xdp -->\n<!-- bench:drop -->\nold drop\n<!-- /bench:drop -->\n## Reading\nby hand\n";
        let new = with_section(file, "drop", "new drop\n");
        assert_eq!(
            new,
            "# head\n<!-- bench:xdp -->\nold xdp\n<!-- /bench:xdp -->\n<!-- bench:drop -->\nnew drop\n<!-- /bench:drop -->\n## Reading\nby hand\n"
        );
        // A part without a section yet goes at the end; the rest is kept.
        let added = with_section(&new, "scale", "scale\n");
        assert!(added.starts_with(new.trim_end()), "{added}");
        assert!(
            added.ends_with("<!-- bench:scale -->\nscale\n<!-- /bench:scale -->\n"),
            "{added}"
        );
    }
}
