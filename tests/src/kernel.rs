//! The real XDP object, loaded with its own pin directory, run on crafted
//! packets through BPF_PROG_TEST_RUN.
use crate::netns::{in_netns_scoped, Netns};
use crate::Sandbox;
use anyhow::{Context as _, Result};
use aya::{
    programs::{TestRun, TestRunOptions, XdpMode},
    Ebpf,
};
use common::Counter;
use sipguard::{kernel::maps::KernelMaps, kernel::program};
use std::time::Duration;

/// The empty program in the object, for benchmarks.
pub const FLOOR: &str = "pass_all";
/// The program that drops everything: the floor of a real receive path.
pub const DROP_FLOOR: &str = "drop_all";
/// The XDP action that lets a packet through.
pub const XDP_PASS: u32 = 2;

pub struct TestProgram {
    pub maps: KernelMaps,
    ebpf: Ebpf,
    // Dropped last: the pins go after the program and maps are closed.
    _sandbox: Sandbox,
}

impl TestProgram {
    pub fn load() -> Result<Self> {
        Self::load_with(program::Capacity::default())
    }

    pub fn load_with(capacity: program::Capacity) -> Result<Self> {
        Self::load_in(Sandbox::bare()?, capacity)
    }

    /// Like `load`, with the rate map made beforehand with `map_flags`
    /// (e.g. `BPF_F_NO_COMMON_LRU`): the loader reuses a map pinned under
    /// the name it would pin its own, so the program runs on this one.
    pub fn load_with_rate_flags(map_flags: u32) -> Result<Self> {
        let sandbox = Sandbox::bare()?;
        sipguard::kernel::bpffs::create_pinned_map(
            &sandbox.pin.join(common::map_name::RATE),
            sipguard::kernel::bpffs::BPF_MAP_TYPE_LRU_HASH,
            std::mem::size_of::<common::RateKey>() as u32,
            std::mem::size_of::<common::RateState>() as u32,
            common::MAX_RATE_SOURCES,
            map_flags,
        )?;
        Self::load_in(sandbox, program::Capacity::default())
    }

    fn load_in(sandbox: Sandbox, capacity: program::Capacity) -> Result<Self> {
        let mut ebpf = program::load_with(&sandbox.pin, capacity)?;
        let floor: &mut aya::programs::Xdp = ebpf
            .program_mut(FLOOR)
            .context("floor program missing")?
            .try_into()?;
        floor.load()?;
        let drop_floor: &mut aya::programs::Xdp = ebpf
            .program_mut(DROP_FLOOR)
            .context("drop floor program missing")?
            .try_into()?;
        drop_floor.load()?;
        let mut maps = KernelMaps::open(&sandbox.pin)?;
        maps.set_ports(&sipguard::cli::DEFAULT_PORTS)?;
        Ok(Self {
            maps,
            ebpf,
            _sandbox: sandbox,
        })
    }

    /// Instructions the verifier went through to accept program `name`.
    pub fn verified_instructions(&self, name: &str) -> Result<u32> {
        let program: &aya::programs::Xdp = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        program
            .info()?
            .verified_instruction_count()
            .context("the kernel does not report verified instructions")
    }

    /// Runs `frame` through the program once; returns the XDP action.
    pub fn run(&mut self, frame: &[u8]) -> Result<u32> {
        Ok(self.run_repeat(frame, 1)?.0)
    }

    /// Runs `frame` through the program `n` times, one run each (so the
    /// clock moves between them); returns how many passed.
    pub fn passed(&mut self, frame: &[u8], n: usize) -> Result<usize> {
        let mut ok = 0;
        for _ in 0..n {
            if self.run(frame)? == XDP_PASS {
                ok += 1;
            }
        }
        Ok(ok)
    }

    /// Runs `frame` `repeat` times in the kernel; returns the action and the
    /// kernel's mean time per run.
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        self.run_named(program::PROGRAM, frame, repeat)
    }

    /// Like `run_repeat`, on the empty program: the cost floor of XDP itself.
    pub fn run_floor(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        self.run_named(FLOOR, frame, repeat)
    }

    /// Loads (verifies) another program of the object, e.g. the untraced
    /// twin `sipguard_untraced` for benchmarks.
    pub fn load_program(&mut self, name: &str) -> Result<()> {
        let prog: &mut aya::programs::Xdp = self
            .ebpf
            .program_mut(name)
            .context("program missing")?
            .try_into()?;
        prog.load()?;
        Ok(())
    }

    /// Runs `frame` `repeat` times through the program `name`.
    pub fn run_named(&mut self, name: &str, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let prog: &mut aya::programs::Xdp = self
            .ebpf
            .program_mut(name)
            .context("program missing")?
            .try_into()?;
        let result = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok((result.return_value, result.duration))
    }

    /// The descriptor of sipguard's loaded program, for runs on several
    /// CPUs at once (`test_run_on`).
    pub fn prog_fd(&mut self) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let prog: &mut aya::programs::Xdp = self
            .ebpf
            .program_mut(program::PROGRAM)
            .context("program missing")?
            .try_into()?;
        Ok(prog.fd()?.as_fd().as_raw_fd())
    }

    /// Attaches `program` (sipguard's, or one of the floors) to `iface` in
    /// `ns`; it stays attached until this `TestProgram` or the namespace goes.
    pub fn attach_in(
        &mut self,
        ns: &Netns,
        iface: &str,
        program: &str,
        mode: XdpMode,
    ) -> Result<()> {
        let pin = self._sandbox.pin.clone();
        let ebpf = &mut self.ebpf;
        in_netns_scoped(ns, move || -> Result<()> {
            if program == program::PROGRAM {
                let mode = match mode {
                    XdpMode::Skb => program::AttachMode::Skb,
                    _ => program::AttachMode::Driver,
                };
                program::attach(ebpf, &pin, iface, mode)?;
            } else {
                let prog: &mut aya::programs::Xdp = ebpf
                    .program_mut(program)
                    .context("program missing")?
                    .try_into()?;
                prog.attach(iface, mode)?;
            }
            Ok(())
        })
    }

    /// Program `name`'s own run time and runs so far, as the kernel counts
    /// them while `kernel.bpf_stats_enabled` is 1.
    pub fn run_stats(&self, name: &str) -> Result<(Duration, u64)> {
        let program: &aya::programs::Xdp = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        let info = program.info()?;
        Ok((info.run_time(), info.run_count()))
    }

    /// The pin directory (for maps not wrapped by `KernelMaps`).
    pub fn pin(&self) -> &std::path::Path {
        &self._sandbox.pin
    }

    /// Trusts `key` with no end, as `origin` (`common::TRUST_*`) would.
    pub fn trust(&self, key: common::RateKey, origin: u32) -> Result<()> {
        sipguard::kernel::trust::TrustMaps::open(self.pin())?.trust(
            key,
            common::TrustEntry {
                expires_at_ns: 0,
                trusted_at_ns: sipguard::kernel::clock::mono_now_ns(),
                origin,
                _pad: 0,
            },
        )
    }

    pub fn counters(&self) -> Result<Vec<Counter>> {
        self.maps.counters()
    }
}

/// `BPF_F_NO_COMMON_LRU`: an LRU hash with a free list per CPU.
pub const BPF_F_NO_COMMON_LRU: u32 = 2;

/// Runs `frame` `repeat` times through the program `prog_fd` on `cpu`
/// (the calling thread is pinned there first); returns the action and the
/// kernel's mean ns per run. Raw `BPF_PROG_TEST_RUN`, so that several
/// threads can run the same program at once.
pub fn test_run_on(
    cpu: usize,
    prog_fd: std::os::fd::RawFd,
    frame: &[u8],
    repeat: u32,
) -> Result<(u32, f64)> {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // `union bpf_attr`'s test struct: prog_fd, retval, data_size_in,
    // data_size_out, data_in, data_out, repeat, duration; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&repeat.to_ne_bytes());
    // SAFETY: a valid bpf_attr; the kernel only reads `frame` (no data_out).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if rc != 0 {
        anyhow::bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    let retval = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
    let duration = u32::from_ne_bytes(attr[36..40].try_into().expect("4 bytes"));
    Ok((retval, f64::from(duration)))
}

/// The slot a source's lease takes on a CPU, as the program picks it
/// (`key_hash(key) >> 52` of the key, `tweak`ed at byte 8 for a method
/// class's lease).
pub fn lease_slot(src: [u8; 4], tweak: Option<u8>) -> u64 {
    let mut key = common::rate_key_v4(src);
    if let Some(t) = tweak {
        key[8] ^= t;
    }
    let a = u64::from_le_bytes(key[..8].try_into().unwrap());
    let b = u64::from_le_bytes(key[8..].try_into().unwrap());
    (a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52
}

/// Two addresses of 198.18.0.0/16 (RFC 2544's benchmark range) whose
/// leases take the same slot (a multiplicative hash spreads neighbours
/// apart: more addresses than slots make the pair).
pub fn colliding_leases(tweak: Option<u8>) -> ([u8; 4], [u8; 4]) {
    let mut seen = std::collections::HashMap::new();
    for x in 0..=255u8 {
        for y in 0..=255u8 {
            let src = [198, 18, x, y];
            if let Some(other) = seen.insert(lease_slot(src, tweak), src) {
                return (other, src);
            }
        }
    }
    panic!("no two addresses share a slot");
}
