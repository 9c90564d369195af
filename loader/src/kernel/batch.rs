//! Batched hash map operations (`BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_LOOKUP_BATCH`, Linux 5.6): a million single-address bans written
//! at start after a reboot, or read back at a restart, in a hundred system
//! calls instead of a million (or two million: the key walk takes one per
//! key and one per value). aya 0.14 has no batch API; these are the raw
//! system calls. LPM tries have no batch operations in the kernel: ranges
//! keep their one call each (a blocklist holds few of them).
use aya::Pod;
use std::{io, mem::size_of, os::fd::AsRawFd as _, os::fd::BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Entries per system call: large enough that the calls cost nothing next
/// to the entries, small enough to keep the copies in cache.
pub const CHUNK: usize = 8192;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix of the size passed, and the
    // buffers it points to outlive the call (the callers hold them).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `keys[i] → values[i]` (replacing what is there). On an error,
/// the entries before `.1` were written, the others were not.
pub fn update<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), (io::Error, usize)> {
    assert_eq!(keys.len(), values.len());
    let mut done = 0;
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        if let Err(e) = bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            // `count` now says how many of this chunk went in, except when
            // the kernel failed before the first (EPERM, ENOTSUPP, or an
            // ENOMEM on kernels without the fix that zeroes it): then it
            // is still what was asked. An error always means entry `count`
            // failed, so a count of all of them means none.
            let went_in = attr.count as usize;
            let went_in = if went_in >= k.len() { 0 } else { went_in };
            return Err((e, done + went_in));
        }
        done += k.len();
    }
    Ok(())
}

/// Every entry of a (non per-CPU) hash map.
pub fn entries<K: Pod, V: Pod>(map: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    // SAFETY (both): Pod types are valid for any bytes, zeros included.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    // The kernel's position in the table (a bucket number for hash maps).
    let (mut token, mut first) = (0u64, true);
    loop {
        let mut next = 0u64;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count as usize;
        match result {
            Ok(()) => {}
            // The end of the table (with what this call found).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                out.extend(
                    keys[..got]
                        .iter()
                        .copied()
                        .zip(values[..got].iter().copied()),
                );
                return Ok(out);
            }
            // One bucket holds more than a chunk: larger buffers.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                chunk *= 2;
                keys.resize(chunk, unsafe { std::mem::zeroed() });
                values.resize(chunk, unsafe { std::mem::zeroed() });
                continue;
            }
            Err(e) => return Err(e),
        }
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        token = next;
        first = false;
    }
}
