//! A dispatcher built from libxdp's installed object with a configuration
//! of sipguard's making, loaded into the kernel (not attached): the first
//! step of libxdp's `xdp_multiprog__generate`. The members still have to be
//! loaded as extensions into its slots `prog0`..`prog9`.
use super::config::{self, Member};
use anyhow::{anyhow, bail, Context as _, Result};
use aya::{programs::Xdp, Ebpf, EbpfLoader};

/// The dispatcher's program and configuration variable in the object.
pub const PROGRAM: &str = "xdp_dispatcher";
const CONF: &str = "conf";

/// A loaded dispatcher: the aya object (its program and frozen config map).
pub struct Dispatcher {
    pub ebpf: Ebpf,
    pub version: u8,
}

impl Dispatcher {
    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("{PROGRAM} missing from the dispatcher object"))?
            .try_into()?)
    }
}

/// The size of the object's `conf`, which tells its layout version.
fn conf_size(object: &[u8]) -> Result<usize> {
    use object_symbols::symbol_size;
    symbol_size(object, CONF)?.ok_or_else(|| anyhow!("no `{CONF}` in the dispatcher object"))
}

/// Loads `object` (libxdp's `xdp-dispatcher.o`) with `members` (in run
/// order) in its configuration.
pub fn load(object: &[u8], members: &[Member], frags_supported: bool) -> Result<Dispatcher> {
    if members.is_empty() {
        bail!("a dispatcher needs at least one member");
    }
    let version = config::version_of_size(conf_size(object)?)?;
    load_config(object, &config::encode(version, members, frags_supported)?)
}

/// Loads `object` with `conf` as its configuration, bytes as
/// `config::encode` makes them.
pub fn load_config(object: &[u8], conf: &[u8]) -> Result<Dispatcher> {
    let version = config::version_of_size(conf_size(object)?)?;
    if conf.len() != conf_size(object)? || conf.first() != Some(&config::MAGIC) {
        bail!("a dispatcher config of the wrong layout for this object");
    }
    let mut ebpf = EbpfLoader::new()
        .override_global(CONF, conf, true)
        .load(object)
        .context("cannot load the dispatcher object")?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("{PROGRAM} missing from the dispatcher object"))?
        .try_into()?;
    program
        .load()
        .context("the kernel refused libxdp's dispatcher program")?;
    Ok(Dispatcher { ebpf, version })
}

/// The ELF symbol table, read for one symbol's size: aya does not say how
/// big a global is, and the object is libxdp's, not ours.
mod object_symbols {
    use anyhow::{bail, Result};

    fn u16_at(b: &[u8], at: usize) -> Result<u16> {
        Ok(u16::from_le_bytes(get(b, at)?))
    }
    fn u32_at(b: &[u8], at: usize) -> Result<u32> {
        Ok(u32::from_le_bytes(get(b, at)?))
    }
    fn u64_at(b: &[u8], at: usize) -> Result<u64> {
        Ok(u64::from_le_bytes(get(b, at)?))
    }
    fn get<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N]> {
        match b.get(at..at.saturating_add(N)) {
            Some(s) => Ok(s.try_into().expect("N bytes")),
            None => bail!("truncated ELF object"),
        }
    }

    /// The size of the symbol `name`, from a little-endian ELF64 object.
    pub fn symbol_size(b: &[u8], name: &str) -> Result<Option<usize>> {
        if b.get(..6) != Some(b"\x7fELF\x02\x01") {
            bail!("not a little-endian ELF64 object");
        }
        let shoff = u64_at(b, 0x28)? as usize;
        let shentsize = u16_at(b, 0x3a)? as usize;
        let shnum = u16_at(b, 0x3c)? as usize;
        if shentsize < 64 || shnum > 4096 {
            bail!("implausible ELF section table");
        }
        let section = |i: usize| shoff.saturating_add(i.saturating_mul(shentsize));
        for i in 0..shnum {
            let sh = section(i);
            if u32_at(b, sh + 4)? != 2 {
                continue; // not SHT_SYMTAB
            }
            let (off, size, link) = (
                u64_at(b, sh + 0x18)? as usize,
                u64_at(b, sh + 0x20)? as usize,
                u32_at(b, sh + 0x28)? as usize,
            );
            let strtab = section(link);
            let str_off = u64_at(b, strtab + 0x18)? as usize;
            for sym in (off..off.saturating_add(size)).step_by(24) {
                let at = str_off.saturating_add(u32_at(b, sym)? as usize);
                let Some(tail) = b.get(at..) else {
                    bail!("truncated ELF string table");
                };
                let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
                if &tail[..end] == name.as_bytes() {
                    return Ok(Some(u64_at(b, sym + 16)? as usize));
                }
            }
        }
        Ok(None)
    }
}
