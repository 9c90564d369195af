//! The SQLite state store at scale (`cargo xtask bench scale`, after the
//! daemon's rows; alone: `cargo xtask bench scale-store`), against the
//! binary snapshot it is to replace, on the same bans (a day of a scan
//! campaign: FreeSWITCH bans, each with its matched line):
//!
//! - write: SAVED bans handed to the writer thread in batches of `BATCH`
//!   (a busy tick's changes), as `BanManager::take_changes` hands them out
//!   (each network's bans now), at most two batches in flight;
//! - sustained: as many batches as the writer takes for `SUSTAINED` (each
//!   bans `BATCH` new networks and lifts as many of the oldest: the table
//!   stays at SAVED bans);
//! - ticks: small batches on the full table (the first a new boot's);
//! - restore: every ban read back, as a start reads them, against the
//!   snapshot's read of the same bans;
//! - size: the database (checkpointed) beside the snapshot.
//!
//! Then which of the gate rows these figures pass. The files go
//! in a temporary folder (`SIPGUARD_BENCH_STORE_DIR` keeps them); `SIPGUARD_BENCH_STORE_SECS` shortens the sustained run;
//! `SIPGUARD_BENCH_STORE_RESTORE_ONLY` with a kept folder times only its
//! restores (to profile them). The restore into the ban manager and the
//! kernel maps needs root (it loads the XDP program's maps).
use crate::report::Section;
use anyhow::{ensure, Result};
use sipguard::store::{
    legacy::{snapshot, state},
    records::{SavedBan, State, VERSION},
    Batch, Clock, Position, Store,
};
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

/// Bans in the table (as `scale`'s daemon rows).
const SAVED: u32 = 1_000_000;
/// Bans per batch: a busy tick's.
const BATCH: u32 = 10_000;
/// How long the sustained run lasts.
const SUSTAINED: Duration = Duration::from_secs(60);
/// Small ticks on the full table.
const TICKS: u32 = 100;
/// The first banned address (as `scale`'s).
const BASE: u32 = 0x6440_0000;

/// The gate: a start with 1 M bans ready within this (a), the sustained
/// rate (b), the database's size against the snapshot's (e).
const READY_SECS: f64 = 1.0;
const RATE: f64 = 200_000.0;
const SIZE_RATIO: f64 = 2.0;
/// Today's start with 1 M bans, when `scale` has not just measured it
/// (BENCHMARKS.md's row), for the estimate of a start on the store.
const START_SECS: f64 = 0.83;

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

/// The batch banning networks `from..to` and lifting `unban` (a range).
fn batch(from: u32, to: u32, unban: std::ops::Range<u32>, now: i64) -> Batch {
    let mut nets: Vec<(String, Vec<SavedBan>)> = (from..to)
        .map(|i| {
            let b = ban(i, now);
            (b.net.clone(), vec![b])
        })
        .collect();
    nets.extend(unban.map(|i| (ban(i, now).net, Vec::new())));
    Batch {
        nets,
        ..Default::default()
    }
}

thread_local! {
    /// This process's resident memory when the peak was last reset: what
    /// the rows before (in `bench scale`, the daemon's) left in it.
    static BASE_MIB: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// How far this process's resident memory rose since the last reset, at
/// its peak, MiB (0 when it cannot be read).
fn peak_mib() -> f64 {
    crate::scale::memory(std::process::id()).map_or(0.0, |(_, hwm)| (hwm - BASE_MIB.get()).max(0.0))
}

/// Starts a new peak (Linux: "5" to `clear_refs` resets `VmHWM` to the
/// resident memory now, which is the base the next peak is taken from).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    BASE_MIB.set(crate::scale::memory(std::process::id()).map_or(0.0, |(rss, _)| rss));
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64) / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `bench scale-store`: the store's rows alone.
pub fn run_alone(out: &mut Section) -> Result<()> {
    run(out, None)
}

/// The store's rows; `start`: the daemon's start with SAVED bans measured
/// just before (seconds), for the estimate of a start on the store.
pub fn run(out: &mut Section, start: Option<f64>) -> Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::var_os("SIPGUARD_BENCH_STORE_DIR")
        .map_or(temp.path().to_owned(), std::path::PathBuf::from);
    std::fs::create_dir_all(&dir)?;
    let sustained = std::env::var("SIPGUARD_BENCH_STORE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(SUSTAINED, Duration::from_secs);
    let state_file = dir.join("state.json");
    let db = sipguard::store::db_path(&state_file);
    if std::env::var_os("SIPGUARD_BENCH_STORE_RESTORE_ONLY").is_some() && db.exists() {
        // The restore alone, of a kept folder's database (to profile it).
        let started = Instant::now();
        let (bans, lines) = restore(&db)?;
        say!(
            out,
            "restore alone: {bans} bans, {} MiB of lines, in {:.0} ms",
            lines >> 20,
            ms(started.elapsed())
        );
        if state_file.exists() {
            let (snap, store) = into_maps(&state_file, &db)?;
            say!(
                out,
                "into the maps: from the snapshot {:.0} ms, from the store {:.0} ms",
                ms(snap),
                ms(store)
            );
        }
        return Ok(());
    }
    for old in [
        db.clone(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ] {
        let _ = std::fs::remove_file(old);
    }
    let now = chrono::Utc::now().timestamp_millis();

    say!(out, "\n## The state store (SQLite), {SAVED} bans\n");
    say!(out, "The SQLite database built to replace the daemon's state files (`loader/src/store`), on the same bans as the snapshot (each with its matched line). Writes go through the writer thread, one transaction per batch, at most two batches in flight. Memory is how far this process's resident set rose during the row.\n");
    say!(out, "| what | figure | longest transaction | memory |");
    say!(out, "|---|---:|---:|---:|");

    // Write SAVED bans into an empty database.
    reset_peak();
    let started = Instant::now();
    let mut writer = Store::open_db(&db)?.writer()?;
    let mut seq = 0;
    for from in (0..SAVED).step_by(BATCH as usize) {
        let next = batch(from, (from + BATCH).min(SAVED), 0..0, now);
        if seq > 0 {
            // Two in flight: the next is made while one is written.
            writer.wait(seq - 1)?;
        }
        seq = writer.send(next)?;
    }
    writer.flush()?;
    let wrote = started.elapsed();
    let p = writer.close()?;
    let rate = f64::from(SAVED) / wrote.as_secs_f64();
    say!(out, "| write {SAVED} bans into an empty database, {} batches of {BATCH} | {rate:.0} bans/s ({:.2} s) | {:.1} ms (mean {:.1} ms) | peak +{:.0} MiB |", p.batches, wrote.as_secs_f64(), ms(p.longest), ms(p.busy) / p.batches.max(1) as f64, peak_mib());

    // Sustained: new bans in, the oldest out, for `sustained`.
    reset_peak();
    let mut writer = Store::open_db(&db)?.writer()?;
    let (mut seq, mut next_ban, mut oldest) = (0, SAVED, 0);
    let started = Instant::now();
    while started.elapsed() < sustained {
        let next = batch(next_ban, next_ban + BATCH, oldest..oldest + BATCH, now);
        next_ban += BATCH;
        oldest += BATCH;
        if seq > 0 {
            writer.wait(seq - 1)?;
        }
        seq = writer.send(next)?;
    }
    writer.flush()?;
    let took = started.elapsed();
    let p = writer.close()?;
    let banned = next_ban - SAVED;
    let sustained_rate = f64::from(banned) / took.as_secs_f64();
    say!(out, "| sustained for {:.0} s: batches of {BATCH} new bans and {BATCH} of the oldest lifted (the table stays at {SAVED}), as fast as the writer takes them | {sustained_rate:.0} bans/s ({banned} bans, {} batches) | {:.1} ms (mean {:.1} ms) | peak +{:.0} MiB |", took.as_secs_f64(), p.batches, ms(p.longest), ms(p.busy) / p.batches.max(1) as f64, peak_mib());

    // Small ticks on the full table, one at a time.
    let mut writer = Store::open_db(&db)?.writer()?;
    let mut times = Vec::new();
    for t in 0..TICKS {
        let mut tick = batch(next_ban, next_ban + 50, oldest..oldest + 50, now);
        next_ban += 50;
        oldest += 50;
        tick.clock = Some(Clock {
            boot_id: "bench".into(),
            saved_at: now,
        });
        tick.positions = vec![(
            "/var/log/freeswitch/freeswitch.log".into(),
            Some(Position {
                dev: 1,
                ino: 2,
                offset: u64::from(t) * 4096,
            }),
        )];
        let started = Instant::now();
        let seq = writer.send(tick)?;
        writer.wait(seq)?;
        times.push(ms(started.elapsed()));
    }
    let p = writer.close()?;
    times.sort_by(f64::total_cmp);
    say!(out, "| {TICKS} small ticks on the full table (50 bans, 50 lifted, a read position; the first of a new boot), handed over to committed | median {:.1} ms | {:.1} ms (committed in {:.1} ms) | |", times[times.len() / 2], times[times.len() - 1], ms(p.longest));
    ensure!(
        Store::open_db(&db)?.integrity_check()? == "ok",
        "integrity_check failed"
    );

    // Restore: the file as a stopped daemon leaves it, its pages in the
    // page cache (as after a restart; after a reboot they are read first).
    reset_peak();
    let started = Instant::now();
    let (bans, lines) = restore(&db)?;
    let restored = started.elapsed();
    let restore_peak = peak_mib();
    ensure!(bans == SAVED as usize, "restored {bans} of {SAVED}");

    // The snapshot of the same bans, written and read as today.
    let header = State {
        version: VERSION,
        ..Default::default()
    };
    let table = oldest..next_ban;
    state::write_atomically(&state_file, |out| {
        snapshot::write_parts(
            out,
            &header,
            ["fs", "3 failures in 10m"].into_iter(),
            (SAVED as usize, table.clone().map(|i| ban(i, now))),
            std::iter::empty(),
        )
    })?;
    reset_peak();
    let started = Instant::now();
    let mut opened = state::open(&state_file)?;
    let mut read = 0;
    while opened.next_ban().is_some() {
        read += 1;
    }
    let snap_read = started.elapsed();
    let snap_peak = peak_mib();
    ensure!(read == SAVED, "snapshot read {read} of {SAVED}");
    let restore_ratio = restored.as_secs_f64() / snap_read.as_secs_f64();
    say!(out, "| restore {bans} bans (the newest {} MiB of lines) from the store, against the snapshot's read of the same bans ({:.0} ms, peak +{snap_peak:.0} MiB) | {:.0} ms, {restore_ratio:.2}× the snapshot's | | peak +{restore_peak:.0} MiB |", lines >> 20, ms(snap_read), ms(restored));

    // The same into a ban manager and empty kernel maps, as a start after
    // a reboot restores them (root: loads the XDP program's maps).
    let into_maps = match into_maps(&state_file, &db) {
        Ok((snap, store)) => {
            say!(out, "| restore {SAVED} bans into the ban manager and empty kernel maps (as a start after a reboot), from the store, against from the snapshot ({:.0} ms) | {:.0} ms, {:.2}× the snapshot's | | |", ms(snap), ms(store), store.as_secs_f64() / snap.as_secs_f64());
            Some(store.as_secs_f64() - snap.as_secs_f64())
        }
        Err(e) => {
            say!(
                out,
                "| restore into the ban manager and kernel maps: not measured ({e:#}) | | | |"
            );
            None
        }
    };

    let size_ratio = mib(&db) / mib(&state_file).max(f64::MIN_POSITIVE);
    say!(out, "| size: the database (checkpointed) against the snapshot ({:.1} MiB) | {:.1} MiB, {size_ratio:.2}× | | |", mib(&state_file), mib(&db));

    // The gate.
    let today = start.unwrap_or(START_SECS);
    // The store's part of a start, beyond the snapshot's: into the maps
    // when measured (the reading overlaps the maps' writes), else the read.
    let (extra, how) = match into_maps {
        Some(extra) => (extra, "the restore into the maps from the snapshot"),
        None => (
            restored.as_secs_f64() - snap_read.as_secs_f64(),
            "the snapshot's read",
        ),
    };
    let start_on_store = today + extra;
    let verdict = |ok: bool| if ok { "passes" } else { "fails" };
    say!(out, "\nGate (the issue's, before the store replaces the state files): (a) start with {SAVED} bans ready ≤ {READY_SECS:.1} s, estimated as today's start ({today:.2} s{}) less {how} plus the store's: {start_on_store:.2} s, {} by {:.2} s; (b) ≥ {RATE:.0} bans/s sustained: {sustained_rate:.0}, {} by {:.0}%; (e) database ≤ {SIZE_RATIO:.0}× the state file: {size_ratio:.2}×, {} by {:.2}×. (c) memory is the rows' own above; (d) kill -9 is `tests/tests/store_crash.rs`. {}",
        if start.is_some() { ", measured above" } else { ", BENCHMARKS.md's" },
        verdict(start_on_store <= READY_SECS),
        (READY_SECS - start_on_store).abs(),
        verdict(sustained_rate >= RATE),
        (sustained_rate / RATE - 1.0).abs() * 100.0,
        verdict(size_ratio <= SIZE_RATIO),
        (SIZE_RATIO - size_ratio).abs(),
        if start_on_store <= READY_SECS && sustained_rate >= RATE && size_ratio <= SIZE_RATIO {
            "The store meets the gate."
        } else {
            "The store misses the gate: the daemon keeps the state files (the snapshot, written a slice at a time by a thread, and the change log), and the database is what `sipguard export` writes for an operator to read."
        },
    );
    Ok(())
}

/// Reads every ban back as a start does: how many, and their lines' bytes.
fn restore(db: &Path) -> Result<(usize, usize)> {
    let mut store = Store::open_db(db)?;
    let mut r = store.restore()?;
    // What the daemon keeps (`defaults::LINE_MEMORY`).
    r.keep_lines(sipguard::defaults::LINE_MEMORY)?;
    let (mut bans, mut lines) = (0usize, 0usize);
    for b in r.bans() {
        bans += 1;
        lines += b.line.len();
    }
    ensure!(r.counts().count() == 0, "counts where none were written");
    r.finish()?;
    Ok((bans, lines))
}

/// The daemon's restore of SAVED bans into empty maps (as after a reboot),
/// from the snapshot and from the store, as `daemon::boot` does it.
fn into_maps(state_file: &Path, db: &Path) -> Result<(Duration, Duration)> {
    use sipguard::{
        bans::{BanManager, InKernel},
        kernel::maps::KernelMaps,
    };
    use sipguard_tests::kernel::TestProgram;
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "needs root, to load the XDP program's maps"
    );
    let snapshot = {
        let t = TestProgram::load()?;
        let mut bans = BanManager::new(KernelMaps::open(t.pin())?);
        let started = Instant::now();
        let opened = state::open(state_file)?;
        let header = opened.state.clone();
        let n = opened.bans_left();
        let opened = std::cell::RefCell::new(opened);
        let r = bans.restore_from(
            &header,
            (n, std::iter::from_fn(|| opened.borrow_mut().next_ban())),
            std::iter::from_fn(|| opened.borrow_mut().next_count()),
            InKernel::Empty,
        )?;
        let took = started.elapsed();
        ensure!(r.reinstated == SAVED as usize, "{r:?}");
        took
    };
    let t = TestProgram::load()?;
    let mut bans = BanManager::new(KernelMaps::open(t.pin())?);
    let started = Instant::now();
    let mut store = Store::open_db(db)?;
    let mut r = store.restore()?;
    r.keep_lines(sipguard::defaults::LINE_MEMORY)?;
    let header = r.header.clone();
    let restored =
        bans.restore_from(&header, (r.bans_len, r.bans()), r.counts(), InKernel::Empty)?;
    r.finish()?;
    let took = started.elapsed();
    ensure!(restored.reinstated == SAVED as usize, "{restored:?}");
    Ok((snapshot, took))
}
