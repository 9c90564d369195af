//! Single-address bans written in batches (`batch`): a million at the
//! daemon's start after a reboot (`BanWriter`, on a thread of its own), and
//! a burst of new bans from the logs (`ban_new_v4`).
use super::{full_or, new_entry, KernelMaps, BPF_NOEXIST};
use crate::kernel::batch;
use anyhow::{anyhow, Result};
use aya::maps::{IterableMap as _, MapError};
use common::BanEntry;
use ipnet::IpNet;
use std::{net::Ipv4Addr, os::fd::AsFd as _};

impl KernelMaps {
    /// A writer of new bans (see `BanWriter`); `n` is a hint. Its bans take
    /// the ids from here on: no other ban may be made until its `finish`,
    /// which takes these maps back.
    pub fn writer(&mut self, n: usize) -> Result<BanWriter> {
        let first_id = self.next_id;
        let clone = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
        let v4 = clone(self.host_v4.map().fd().as_fd())?;
        let v6 = clone(self.host_v6.map().fd().as_fd())?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<HostChunk>(4);
        let thread = std::thread::Builder::new()
            .name("sipguard-restore".into())
            .spawn(move || {
                let mut failed = Vec::new();
                for chunk in rx {
                    match chunk {
                        HostChunk::V4(bans) => write_batch(v4.as_fd(), &bans, &mut failed),
                        HostChunk::V6(bans) => write_batch(v6.as_fd(), &bans, &mut failed),
                    }
                }
                failed
            })?;
        Ok(BanWriter {
            tx,
            thread,
            next_id: first_id,
            v4: Vec::with_capacity(n.min(batch::CHUNK)),
            v6: Vec::new(),
            ranges: Vec::new(),
        })
    }

    /// Writes new single-address IPv4 bans (address, end, flags, start) as
    /// `ban` writes each, ids in order, in a system call per `batch::CHUNK`
    /// instead of one each (the calls were half of a ban's kernel time in
    /// a burst of a million). Returns how many were written, from the
    /// first: the one after them was not (`ban` it alone, which says why:
    /// the map is full, say), nor any later. For bans the maps do not hold:
    /// the kernel takes no `BPF_NOEXIST` for a batch, which replaces what
    /// it finds, where `ban` keeps an entry's id (and so its drop counts).
    pub fn ban_new_v4(&mut self, bans: &[(Ipv4Addr, u64, u32, u64)]) -> usize {
        let keys: Vec<[u8; 4]> = bans.iter().map(|b| b.0.octets()).collect();
        let values: Vec<BanEntry> = (0u64..)
            .zip(bans)
            .map(|(i, &(addr, end, flags, at))| {
                let net = IpNet::from(std::net::IpAddr::V4(addr));
                new_entry(net, end, flags, at, self.next_id.wrapping_add(i))
            })
            .collect();
        let written = match batch::update(self.host_v4.map().fd().as_fd(), &keys, &values) {
            Ok(()) => bans.len(),
            Err((e, done)) => {
                tracing::debug!("batch write stopped after {done} bans ({e})");
                done
            }
        };
        self.next_id = self.next_id.wrapping_add(written as u64);
        written
    }
}

/// Writes new bans (ones the maps do not hold) while its caller goes on:
/// single addresses in batches on a thread of their own (see `batch`), a
/// million in ~0.5 s of kernel time the daemon's start does not wait for;
/// ranges one by one at `finish` (an LPM trie has no batch update).
pub struct BanWriter {
    tx: std::sync::mpsc::SyncSender<HostChunk>,
    thread: std::thread::JoinHandle<Vec<(IpNet, anyhow::Error)>>,
    next_id: u64,
    v4: Vec<(IpNet, [u8; 4], BanEntry)>,
    v6: Vec<(IpNet, [u8; 16], BanEntry)>,
    ranges: Vec<(IpNet, BanEntry)>,
}

enum HostChunk {
    V4(Vec<(IpNet, [u8; 4], BanEntry)>),
    V6(Vec<(IpNet, [u8; 16], BanEntry)>),
}

impl BanWriter {
    /// Bans `net` until `expires_at_ns` (0: permanent) with `flags`, as
    /// `KernelMaps::ban` does; `net` must not be in the maps yet.
    pub fn push(&mut self, net: IpNet, expires_at_ns: u64, flags: u32, banned_at_ns: u64) {
        let entry = new_entry(net, expires_at_ns, flags, banned_at_ns, self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                self.v4.push((net, n.addr().octets(), entry));
                if self.v4.len() == batch::CHUNK {
                    let chunk = HostChunk::V4(std::mem::take(&mut self.v4));
                    self.send(chunk);
                }
            }
            IpNet::V6(n) if n.prefix_len() == 128 => {
                self.v6.push((net, n.addr().octets(), entry));
                if self.v6.len() == batch::CHUNK {
                    let chunk = HostChunk::V6(std::mem::take(&mut self.v6));
                    self.send(chunk);
                }
            }
            _ => self.ranges.push((net, entry)),
        }
    }

    fn send(&self, chunk: HostChunk) {
        // The thread only ends when `tx` is dropped.
        let _ = self.tx.send(chunk);
    }

    /// Waits for every write; returns the bans that could not be written,
    /// with why. The others are in force.
    pub fn finish(mut self, maps: &mut KernelMaps) -> Vec<(IpNet, anyhow::Error)> {
        maps.next_id = self.next_id;
        let (v4, v6) = (std::mem::take(&mut self.v4), std::mem::take(&mut self.v6));
        self.send(HostChunk::V4(v4));
        self.send(HostChunk::V6(v6));
        drop(self.tx);
        let mut failed = self.thread.join().unwrap_or_else(|_| {
            vec![(
                IpNet::from(std::net::IpAddr::from([0u8; 4])),
                anyhow!("the ban writer panicked"),
            )]
        });
        for (net, entry) in self.ranges {
            if let Err(e) = maps.insert_ban(net, entry, BPF_NOEXIST) {
                failed.push((net, full_or(e, "blocklist", net)));
            }
        }
        failed
    }
}

/// Writes `bans` in batches; what a batch could not take is written one by
/// one, so each failure names its ban (a full map, say).
fn write_batch<K: aya::Pod>(
    map: std::os::fd::BorrowedFd<'_>,
    bans: &[(IpNet, K, BanEntry)],
    failed: &mut Vec<(IpNet, anyhow::Error)>,
) {
    let keys: Vec<K> = bans.iter().map(|b| b.1).collect();
    let values: Vec<BanEntry> = bans.iter().map(|b| b.2).collect();
    let Err((e, done)) = batch::update(map, &keys, &values) else {
        return;
    };
    tracing::debug!("batch write stopped after {done} bans ({e}); writing the rest one by one");
    for (net, key, entry) in &bans[done..] {
        let one = batch::update(map, std::slice::from_ref(key), std::slice::from_ref(entry));
        if let Err((e, _)) = one {
            let e = MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_batch",
                io_error: e,
            });
            failed.push((*net, full_or(e, "blocklist", *net)));
        }
    }
}
