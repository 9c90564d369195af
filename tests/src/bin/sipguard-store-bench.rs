//! `sipguard-store-bench [BANS] [PER_BATCH]`: the SQLite store at scale,
//! against the binary snapshot it replaces, on the same bans (a day of a
//! scan campaign: FreeSWITCH bans, each with its matched line).
//!
//! - write: BANS bans handed to the writer thread in batches of PER_BATCH
//!   (the daemon's changes per tick), as `BanManager::take_changes` hands
//!   them out (each network's bans now), at most two batches in flight;
//!   then 100 small ticks on the full table (the first a new boot's);
//! - restore: every ban read back, as a start reads them;
//! - size: the database (checkpointed) beside the snapshot of the same bans;
//! - peak RSS of each phase (the peak is reset between phases).
//!
//! To join `cargo xtask bench scale` later; on its own for now (no root,
//! no XDP needed). A third argument keeps the files in that folder.
use anyhow::Result;
use sipguard::store::{
    legacy::{snapshot, state},
    records::{SavedBan, State, VERSION},
    Batch, Store,
};
use std::{net::Ipv4Addr, path::Path, time::Instant};

/// The first banned address (as `bench scale`'s).
const BASE: u32 = u32::from_be_bytes([10, 64, 0, 0]);

fn ban(i: u32, now: i64) -> SavedBan {
    let ip = Ipv4Addr::from(BASE + i);
    SavedBan {
        net: format!("{ip}/32"),
        jail: "fs".into(),
        banned_at: now,
        expires_at: Some(now + 86_400_000),
        expires_mono: Some(1_000_000_000_000 + u64::from(i)),
        reason: "3 failures in 10m".into(),
        line: format!(
            "2026-12-03 06:00:00.123456 [WARNING] sofia_reg.c:1842 SIP auth failure (REGISTER) on sofia profile 'internal' for [u@d] from ip {ip}"
        ),
        all_ports: false,
        ports_only: false,
        origin: None,
        count: 1,
    }
}

/// This process's peak resident memory since the last reset, MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// This process's resident memory now, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Starts a new peak (Linux: "5" to `clear_refs` resets `VmHWM`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64) / (1024.0 * 1024.0)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let per_batch: u32 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    // A third argument: the folder to write in, kept (else a temporary one).
    let temp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map_or(temp.path().to_owned(), std::path::PathBuf::from);
    let state_file = dir.join("state.json");
    let db = sipguard::store::db_path(&state_file);
    let now = chrono::Utc::now().timestamp_millis();
    let base_mib = peak_mib();

    // Write (unless only the restore is asked for, of a kept folder).
    let restore_only = std::env::var_os("STORE_BENCH_RESTORE_ONLY").is_some() && db.exists();
    if !restore_only {
        write(&db, n, per_batch, now)?;
    }
    restore(&db, n)?;
    if restore_only {
        return Ok(());
    }
    // The snapshot of the same bans, written and read as today.
    reset_peak();
    let started = Instant::now();
    let header = State {
        version: VERSION,
        ..Default::default()
    };
    state::write_atomically(&state_file, |out| {
        snapshot::write_parts(
            out,
            &header,
            ["fs", "3 failures in 10m"].into_iter(),
            (n as usize, (0..n).map(|i| ban(i, now))),
            std::iter::empty(),
        )
    })?;
    let snap_wrote = started.elapsed();
    let started = Instant::now();
    let mut opened = state::open(&state_file)?;
    let mut read = 0;
    while opened.next_ban().is_some() {
        read += 1;
    }
    anyhow::ensure!(read == n, "snapshot read {read} of {n}");
    println!(
        "snapshot (today's binary form): written in {:.0} ms, read in {:.0} ms; peak RSS {:.0} MiB",
        snap_wrote.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3,
        peak_mib()
    );
    let wal = db.with_extension("db-wal");
    println!(
        "size: database {:.1} MiB (+ log {:.1} MiB), snapshot {:.1} MiB: {:.2}x; process base {base_mib:.0} MiB",
        mib(&db),
        mib(&wal),
        mib(&state_file),
        mib(&db) / mib(&state_file).max(f64::MIN_POSITIVE)
    );
    Ok(())
}

fn write(db: &Path, n: u32, per_batch: u32, now: i64) -> Result<()> {
    reset_peak();
    let started = Instant::now();
    let mut writer = Store::open_db(db)?.writer()?;
    let mut seq = 0;
    let mut from = 0;
    while from < n {
        let to = (from + per_batch).min(n);
        let batch = Batch {
            nets: (from..to)
                .map(|i| {
                    let b = ban(i, now);
                    (b.net.clone(), vec![b])
                })
                .collect(),
            counts: Vec::new(),
            ..Default::default()
        };
        if seq > 0 {
            // Two in flight: the next is made while one is written.
            writer.wait(seq - 1)?;
        }
        seq = writer.send(batch)?;
        from = to;
    }
    writer.flush()?;
    let wrote = started.elapsed();
    let progress = writer.close()?;
    let closed = started.elapsed();
    let write_peak = peak_mib();
    anyhow::ensure!(Store::open_db(db)?.integrity_check()? == "ok");
    println!(
        "write: {n} bans in {} batches of {per_batch}: {:.2} s ({:.0} bans/s); longest transaction {:.1} ms, mean {:.1} ms; close (checkpoint) {:.2} s; peak RSS {write_peak:.0} MiB",
        progress.batches,
        wrote.as_secs_f64(),
        f64::from(n) / wrote.as_secs_f64(),
        progress.longest.as_secs_f64() * 1e3,
        progress.busy.as_secs_f64() * 1e3 / progress.batches.max(1) as f64,
        (closed - wrote).as_secs_f64(),
    );
    ticks(db, n, now)
}

/// A busy daemon's ticks on the full table: each bans 50 new networks,
/// lifts 50 old bans, and moves a read position; the time from handing a
/// batch over to its commit.
fn ticks(db: &Path, n: u32, now: i64) -> Result<()> {
    const TICKS: u32 = 100;
    let mut writer = Store::open_db(db)?.writer()?;
    let mut times = Vec::new();
    for t in 0..TICKS {
        let mut nets: Vec<(String, Vec<SavedBan>)> = (0..50)
            .map(|i| {
                let b = ban(n + t * 50 + i, now);
                (b.net.clone(), vec![b])
            })
            .collect();
        nets.extend((0..50).map(|i| (ban(t * 50 + i, now).net, Vec::new())));
        let batch = Batch {
            clock: Some(sipguard::store::Clock {
                boot_id: "bench".into(),
                saved_at: now,
            }),
            nets,
            positions: vec![(
                "/var/log/freeswitch/freeswitch.log".into(),
                Some(sipguard::store::Position {
                    dev: 1,
                    ino: 2,
                    offset: u64::from(t) * 4096,
                }),
            )],
            ..Default::default()
        };
        let started = Instant::now();
        let seq = writer.send(batch)?;
        writer.wait(seq)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    writer.close()?;
    times.sort_by(f64::total_cmp);
    println!(
        "ticks on the full table ({TICKS} batches of 50 bans + 50 unbans + a position): median {:.1} ms, longest {:.1} ms",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    Ok(())
}

fn restore(db: &Path, n: u32) -> Result<()> {
    // Restore (the file as a stopped daemon leaves it; its pages are in the
    // page cache, as after a restart).
    reset_peak();
    let started = Instant::now();
    let mut store = Store::open_db(db)?;
    let mut r = store.restore()?;
    if std::env::var_os("STORE_BENCH_ALL_LINES").is_none() {
        // What the daemon keeps (`defaults::LINE_MEMORY`).
        r.keep_lines(sipguard::defaults::LINE_MEMORY)?;
    }
    let (mut bans, mut bytes) = (0usize, 0usize);
    for b in r.bans() {
        bans += 1;
        bytes += b.line.len();
    }
    let counts = r.counts().count();
    let mapped_peak = peak_mib();
    r.finish()?;
    let restored = started.elapsed();
    anyhow::ensure!(bans == n as usize, "restored {bans} of {n}");
    println!(
        "restore: {bans} bans ({counts} counts, {} MiB of lines) in {:.0} ms; peak RSS {mapped_peak:.0} MiB (the file's pages mapped included), {:.0} MiB once unmapped",
        bytes >> 20,
        restored.as_secs_f64() * 1e3,
        rss_mib()
    );

    Ok(())
}
