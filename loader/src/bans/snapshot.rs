//! The state file's binary form: what a daemon reads before it can enforce
//! a single saved ban, so it must read fast. A million bans as JSON are
//! 180 MB and 0.65 s of parsing; here they are ~45 MB read at memory speed,
//! each jail name, reason and origin written once and shared.
//!
//! ```text
//! "SIPGUARD STATE 2\n"
//! u32 n, n bytes       everything but the bans, as JSON (small)
//! u32 n, n × (u32 len, bytes)   the strings the bans name by index
//! u64 n, n × ban       (below)
//! "END\n"
//! ```
//! A ban: `u8` flags (`HAS_END`, `HAS_MONO`, `ALL_PORTS`, `PORTS_ONLY`,
//! `HAS_ORIGIN`), `u8` length + the network as text, `i64` start, [`i64`
//! end], [`u64` monotonic end], `u32` jail, `u32` reason, [`u32` origin],
//! `u32` length + the matched line. Integers little-endian. Written whole
//! (temporary file, fsync, rename) like the JSON it replaces, which is
//! still read.
use super::state::{SavedBan, State};
use anyhow::{bail, Context as _, Result};
use std::{collections::HashMap, io::Write, sync::Arc};

pub const MAGIC: &[u8] = b"SIPGUARD STATE 2\n";
const END: &[u8] = b"END\n";

const HAS_END: u8 = 1;
const HAS_MONO: u8 = 2;
const ALL_PORTS: u8 = 4;
const PORTS_ONLY: u8 = 8;
const HAS_ORIGIN: u8 = 16;

/// Writes `state` to `out`.
pub fn write(out: &mut impl Write, state: &State) -> Result<()> {
    out.write_all(MAGIC)?;
    let rest = State {
        version: state.version,
        boot_id: state.boot_id.clone(),
        saved_at: state.saved_at,
        bans: Vec::new(),
        allowed: state.allowed.clone(),
        ban_counts: state.ban_counts.clone(),
        ban_counted_at: state.ban_counted_at.clone(),
        positions: state.positions.clone(),
        cursors: state.cursors.clone(),
    };
    let header = serde_json::to_vec(&rest)?;
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(&header)?;
    // The strings, each once.
    let mut index: HashMap<&str, u32> = HashMap::new();
    let mut strings: Vec<&str> = Vec::new();
    for b in &state.bans {
        for s in [Some(&*b.jail), Some(&*b.reason), b.origin.as_deref()]
            .into_iter()
            .flatten()
        {
            if !index.contains_key(s) {
                index.insert(s, strings.len() as u32);
                strings.push(s);
            }
        }
    }
    out.write_all(&(strings.len() as u32).to_le_bytes())?;
    for s in &strings {
        write_bytes32(out, s.as_bytes())?;
    }
    out.write_all(&(state.bans.len() as u64).to_le_bytes())?;
    for b in &state.bans {
        let flags = if b.expires_at.is_some() { HAS_END } else { 0 }
            | if b.expires_mono.is_some() {
                HAS_MONO
            } else {
                0
            }
            | if b.all_ports { ALL_PORTS } else { 0 }
            | if b.ports_only { PORTS_ONLY } else { 0 }
            | if b.origin.is_some() { HAS_ORIGIN } else { 0 };
        out.write_all(&[flags, b.net.len() as u8])?;
        out.write_all(b.net.as_bytes())?;
        out.write_all(&b.banned_at.to_le_bytes())?;
        if let Some(end) = b.expires_at {
            out.write_all(&end.to_le_bytes())?;
        }
        if let Some(mono) = b.expires_mono {
            out.write_all(&mono.to_le_bytes())?;
        }
        out.write_all(&index[&*b.jail].to_le_bytes())?;
        out.write_all(&index[&*b.reason].to_le_bytes())?;
        if let Some(origin) = &b.origin {
            out.write_all(&index[&**origin].to_le_bytes())?;
        }
        write_bytes32(out, b.line.as_bytes())?;
    }
    out.write_all(END)?;
    Ok(())
}

fn write_bytes32(out: &mut impl Write, bytes: &[u8]) -> Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)?;
    Ok(())
}

/// Reads a state written by `write`; any damage is an error (the caller
/// moves the file aside and starts from the kernel's bans).
pub fn read(bytes: &[u8]) -> Result<State> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        bail!("not a sipguard state");
    }
    let n = r.u32()? as usize;
    let mut state: State = serde_json::from_slice(r.take(n)?).context("the state's header")?;
    let n = r.u32()? as usize;
    let mut strings: Vec<Arc<str>> = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let len = r.u32()? as usize;
        strings.push(Arc::from(r.str(len)?));
    }
    let string = |i: u32| -> Result<Arc<str>> {
        strings
            .get(i as usize)
            .cloned()
            .with_context(|| format!("string {i} out of range"))
    };
    let n = r.u64()? as usize;
    // Bounded by what the file can hold (a ban takes at least 27 bytes).
    let mut bans = Vec::with_capacity(n.min(bytes.len() / 27));
    for _ in 0..n {
        let flags = r.u8()?;
        let len = r.u8()? as usize;
        let net = r.str(len)?.to_owned();
        let banned_at = r.u64()? as i64;
        let expires_at = (flags & HAS_END != 0).then(|| r.u64()).transpose()?;
        let expires_mono = (flags & HAS_MONO != 0).then(|| r.u64()).transpose()?;
        let jail = string(r.u32()?)?;
        let reason = string(r.u32()?)?;
        let origin = (flags & HAS_ORIGIN != 0)
            .then(|| r.u32().and_then(string))
            .transpose()?;
        let len = r.u32()? as usize;
        let line = r.str(len)?.to_owned();
        bans.push(SavedBan {
            net,
            jail,
            banned_at,
            expires_at: expires_at.map(|e| e as i64),
            expires_mono,
            reason,
            line,
            all_ports: flags & ALL_PORTS != 0,
            ports_only: flags & PORTS_ONLY != 0,
            origin,
        });
    }
    if r.take(END.len())? != END || r.at != bytes.len() {
        bail!("the state does not end where it should");
    }
    state.bans = bans;
    Ok(state)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let Some(slice) = self.bytes.get(self.at..self.at.saturating_add(n)) else {
            bail!("the state is cut short at byte {}", self.at);
        };
        self.at += n;
        Ok(slice)
    }

    fn str(&mut self, n: usize) -> Result<&'a str> {
        let at = self.at;
        std::str::from_utf8(self.take(n)?).with_context(|| format!("invalid text at byte {at}"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(net: &str, origin: Option<&str>) -> SavedBan {
        SavedBan {
            net: net.into(),
            jail: "freeswitch".into(),
            banned_at: 1_700_000_000_000,
            expires_at: origin.is_none().then_some(1_700_000_600_000),
            expires_mono: origin.is_none().then_some(123_456_789),
            reason: "5 failures in 10m".into(),
            line: "SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@x] from ip 203.0.113.5 \u{e9}".into(),
            all_ports: origin.is_some(),
            ports_only: origin.is_none(),
            origin: origin.map(Into::into),
        }
    }

    fn sample() -> State {
        State {
            version: super::super::state::VERSION,
            boot_id: Some("b".into()),
            saved_at: Some(5),
            bans: vec![
                ban("203.0.113.5/32", None),
                ban("2001:db8::/64", Some("crowdsec")),
                ban("198.51.100.0/24", Some("redis:box2")),
            ],
            allowed: Some(vec!["10.0.0.0/8".into()]),
            ban_counts: [("203.0.113.5/32".to_owned(), 3)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips() {
        let mut out = Vec::new();
        write(&mut out, &sample()).unwrap();
        assert_eq!(read(&out).unwrap(), sample());
    }

    /// A damaged file is an error, never a state with bans missing or
    /// garbled: every truncation, and a flipped byte in the framing.
    #[test]
    fn damage_is_an_error() {
        let mut out = Vec::new();
        write(&mut out, &sample()).unwrap();
        for cut in 0..out.len() {
            assert!(read(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = out.clone();
        longer.push(b'x');
        assert!(read(&longer).is_err());
        // A huge count in a small file is refused, not allocated.
        let mut huge = out.clone();
        let at = out.len() - END.len() - 1;
        huge.truncate(at);
        assert!(read(&huge).is_err());
    }
}
