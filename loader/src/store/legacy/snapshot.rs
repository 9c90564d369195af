//! The state file's binary form: what a daemon reads before it can enforce
//! a single saved ban, so it must read fast, and read as a stream: a
//! million bans are restored as they are read, never held decoded beside
//! the table they go into (that copy was the daemon's peak memory).
//!
//! ```text
//! "SIPGUARD STATE 3\n"
//! u32 n, n bytes       everything but the bans and counts, as JSON (small)
//! u32 n, n × (u32 len, bytes)   the strings the bans name by index
//! u64 n, n × ban       (below)
//! u64 n, n × count     u8 length + the network as text, u32 bans, i64 at
//! "END\n"
//! ```
//! A ban: `u8` flags (`HAS_END`, `HAS_MONO`, `ALL_PORTS`, `PORTS_ONLY`,
//! `HAS_ORIGIN`), `u8` length + the network as text, `i64` start, [`i64`
//! end], [`u64` monotonic end], `u32` jail, `u32` reason, [`u32` origin],
//! `u32` length + the matched line, [`u32` ban count]. Integers
//! little-endian. Written whole
//! (temporary file, fsync, rename) like the JSON it replaces, which is
//! still read, as is form 2 (the counts in the JSON part).
use crate::store::records::{SavedBan, State};
use anyhow::{bail, Context as _, Result};
use std::{
    collections::HashMap,
    io::{Read, Write},
    sync::Arc,
};

pub const MAGIC: &[u8] = b"SIPGUARD STATE 3\n";
/// Form 2: no counts section; the counts are in the JSON part.
pub const MAGIC_2: &[u8] = b"SIPGUARD STATE 2\n";
/// The end of a state, after the counts.
pub const END: &[u8] = b"END\n";

const HAS_END: u8 = 1;
const HAS_MONO: u8 = 2;
const ALL_PORTS: u8 = 4;
const PORTS_ONLY: u8 = 8;
const HAS_ORIGIN: u8 = 16;
/// The ban carries its network's ban count (form 3).
const HAS_COUNT: u8 = 32;

pub use crate::store::records::Count;

/// Writes `state` to `out`.
pub fn write(out: &mut impl Write, state: &State) -> Result<()> {
    let strings = state
        .bans
        .iter()
        .flat_map(|b| [Some(&*b.jail), Some(&*b.reason), b.origin.as_deref()])
        .flatten();
    let counts = state.counts();
    let bans = state.bans.iter().cloned();
    write_parts(out, state, strings, (state.bans.len(), bans), counts)
}

/// Writes a state whose bans (`n` of them) and counts come one at a time
/// (`header`'s own are not written): `strings` must name every jail,
/// reason and origin the bans carry.
pub fn write_parts<'a>(
    out: &mut impl Write,
    header: &State,
    strings: impl Iterator<Item = &'a str>,
    (n, bans): (usize, impl Iterator<Item = SavedBan>),
    counts: impl Iterator<Item = Count>,
) -> Result<()> {
    let strings = Strings::new(strings);
    write_head(out, header, &strings)?;
    out.write_all(&(n as u64).to_le_bytes())?;
    let mut written = 0;
    let mut buf = Vec::with_capacity(512);
    for b in bans {
        written += 1;
        buf.clear();
        if !encode_ban(&mut buf, &b, &strings)? {
            bail!("a ban's names are not in the string table");
        }
        out.write_all(&buf)?;
    }
    if written != n {
        bail!("{written} bans written of {n} announced");
    }
    // The count is only known at the end: the counts go to a buffer first
    // (short records, and as many as the bans at most).
    let mut section = Vec::new();
    let mut n: u64 = 0;
    for count in counts {
        encode_count(&mut section, &count)?;
        n += 1;
    }
    out.write_all(&n.to_le_bytes())?;
    out.write_all(&section)?;
    out.write_all(END)?;
    Ok(())
}

/// The strings the bans name by index, each once, in the order met.
#[derive(Clone, Debug, Default)]
pub struct Strings {
    index: HashMap<String, u32>,
    table: Vec<String>,
}

impl Strings {
    pub fn new<'a>(strings: impl Iterator<Item = &'a str>) -> Self {
        let mut me = Self::default();
        for s in strings {
            if !me.index.contains_key(s) {
                me.index.insert(s.to_owned(), me.table.len() as u32);
                me.table.push(s.to_owned());
            }
        }
        me
    }

    fn at(&self, s: &str) -> Option<[u8; 4]> {
        self.index.get(s).map(|i| i.to_le_bytes())
    }
}

/// Everything before the bans' number: the magic, the header as JSON
/// (without its bans and counts), the string table.
pub fn write_head(out: &mut impl Write, header: &State, strings: &Strings) -> Result<()> {
    out.write_all(MAGIC)?;
    let rest = State {
        version: header.version,
        boot_id: header.boot_id.clone(),
        saved_at: header.saved_at,
        bans: Vec::new(),
        allowed: header.allowed.clone(),
        ban_counts: Default::default(),
        ban_counted_at: Default::default(),
        positions: header.positions.clone(),
        cursors: header.cursors.clone(),
    };
    let json = serde_json::to_vec(&rest)?;
    write_bytes32(out, &json)?;
    out.write_all(&(strings.table.len() as u32).to_le_bytes())?;
    for s in &strings.table {
        write_bytes32(out, s.as_bytes())?;
    }
    Ok(())
}

/// Appends ban `b`'s record to `out`; false (and nothing appended) when
/// one of its names is not in `strings`.
pub fn encode_ban(out: &mut Vec<u8>, b: &SavedBan, strings: &Strings) -> Result<bool> {
    let (Some(jail), Some(reason)) = (strings.at(&b.jail), strings.at(&b.reason)) else {
        return Ok(false);
    };
    let origin = match &b.origin {
        Some(o) => match strings.at(o) {
            Some(at) => Some(at),
            None => return Ok(false),
        },
        None => None,
    };
    let flags = if b.expires_at.is_some() { HAS_END } else { 0 }
        | if b.expires_mono.is_some() {
            HAS_MONO
        } else {
            0
        }
        | if b.all_ports { ALL_PORTS } else { 0 }
        | if b.ports_only { PORTS_ONLY } else { 0 }
        | if b.origin.is_some() { HAS_ORIGIN } else { 0 }
        | if b.count > 0 { HAS_COUNT } else { 0 };
    write_net(out, flags, &b.net)?;
    out.extend_from_slice(&b.banned_at.to_le_bytes());
    if let Some(end) = b.expires_at {
        out.extend_from_slice(&end.to_le_bytes());
    }
    if let Some(mono) = b.expires_mono {
        out.extend_from_slice(&mono.to_le_bytes());
    }
    out.extend_from_slice(&jail);
    out.extend_from_slice(&reason);
    if let Some(origin) = origin {
        out.extend_from_slice(&origin);
    }
    write_bytes32(out, b.line.as_bytes())?;
    if b.count > 0 {
        out.extend_from_slice(&b.count.to_le_bytes());
    }
    Ok(true)
}

/// Appends a count's record to `out`.
pub fn encode_count(out: &mut Vec<u8>, (net, bans, at): &Count) -> Result<()> {
    out.push(u8::try_from(net.len()).context("a network's text is too long")?);
    out.extend_from_slice(net.as_bytes());
    out.extend_from_slice(&bans.to_le_bytes());
    out.extend_from_slice(&at.to_le_bytes());
    Ok(())
}

fn write_net(out: &mut impl Write, flags: u8, net: &str) -> Result<()> {
    let len = u8::try_from(net.len()).context("a network's text is too long")?;
    out.write_all(&[flags, len])?;
    out.write_all(net.as_bytes())?;
    Ok(())
}

fn write_bytes32(out: &mut impl Write, bytes: &[u8]) -> Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)?;
    Ok(())
}

/// Reads a whole state written by `write`; any damage is an error (the
/// caller moves the file aside and starts from the kernel's bans).
pub fn read(bytes: &[u8]) -> Result<State> {
    let (mut state, mut stream) = open(bytes)?;
    while let Some(b) = stream.next_ban()? {
        state.bans.push(b);
    }
    while let Some(count) = stream.next_count()? {
        state.set_count(count);
    }
    Ok(state)
}

/// Starts reading a state: everything but its bans and counts, which
/// `Stream` hands out one at a time.
pub fn open<R: Read>(r: R) -> Result<(State, Stream<R>)> {
    let mut r = Reader { r, at: 0 };
    let magic = r.bytes(MAGIC.len())?;
    let counted = match &magic[..] {
        m if m == MAGIC => true,
        m if m == MAGIC_2 => false,
        _ => bail!("not a sipguard state"),
    };
    let n = r.u32()? as usize;
    let state: State = serde_json::from_slice(&r.bytes(n)?).context("the state's header")?;
    let n = r.u32()?;
    let mut strings: Vec<Arc<str>> = Vec::new();
    for _ in 0..n {
        let len = r.u32()? as usize;
        strings.push(Arc::from(r.string(len)?));
    }
    let bans_left = r.u64()?;
    Ok((
        state,
        Stream {
            r,
            strings,
            bans_left,
            counts_left: None,
            counted,
            ended: false,
        },
    ))
}

/// The bans, then the counts, of a state being read.
pub struct Stream<R> {
    r: Reader<R>,
    strings: Vec<Arc<str>>,
    bans_left: u64,
    /// Known once the bans are read.
    counts_left: Option<u64>,
    /// Form 3: a counts section follows the bans.
    counted: bool,
    ended: bool,
}

impl<R: Read> Stream<R> {
    /// How many bans are still to come.
    pub fn bans_left(&self) -> usize {
        usize::try_from(self.bans_left).unwrap_or(usize::MAX)
    }

    /// The next ban; none once all are read.
    pub fn next_ban(&mut self) -> Result<Option<SavedBan>> {
        if self.bans_left == 0 {
            return Ok(None);
        }
        self.bans_left -= 1;
        let r = &mut self.r;
        let flags = r.u8()?;
        let len = r.u8()? as usize;
        let net = r.string(len)?;
        let banned_at = r.u64()? as i64;
        let expires_at = (flags & HAS_END != 0).then(|| r.u64()).transpose()?;
        let expires_mono = (flags & HAS_MONO != 0).then(|| r.u64()).transpose()?;
        let strings = &self.strings;
        let string = |i: u32| -> Result<Arc<str>> {
            strings
                .get(i as usize)
                .cloned()
                .with_context(|| format!("string {i} out of range"))
        };
        let jail = string(r.u32()?)?;
        let reason = string(r.u32()?)?;
        let origin = (flags & HAS_ORIGIN != 0)
            .then(|| r.u32().and_then(string))
            .transpose()?;
        let len = r.u32()? as usize;
        let line = r.string(len)?;
        let count = if flags & HAS_COUNT != 0 { r.u32()? } else { 0 };
        Ok(Some(SavedBan {
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
            count,
        }))
    }

    /// The next ban count, once the bans are read; none once all are, and
    /// the end of the file checked.
    pub fn next_count(&mut self) -> Result<Option<Count>> {
        while self.next_ban()?.is_some() {}
        if self.ended {
            return Ok(None);
        }
        let left = match self.counts_left {
            Some(n) => n,
            None if self.counted => *self.counts_left.insert(self.r.u64()?),
            None => 0,
        };
        if left == 0 {
            self.ended = true;
            if self.r.bytes(END.len())? != END {
                bail!("the state does not end where it should");
            }
            let mut more = [0u8; 1];
            if self.r.r.read(&mut more)? != 0 {
                bail!("the state goes on past its end");
            }
            return Ok(None);
        }
        self.counts_left = Some(left - 1);
        let len = self.r.u8()? as usize;
        let net = self.r.string(len)?;
        let n = self.r.u32()?;
        let at = self.r.u64()? as i64;
        Ok(Some((net, n, at)))
    }
}

struct Reader<R> {
    r: R,
    at: u64,
}

impl<R: Read> Reader<R> {
    /// `n` bytes; a length past 64 KiB is read in steps, so a huge length
    /// in a damaged file is refused at the file's end, not allocated first.
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let cut = |at| anyhow::anyhow!("the state is cut short at byte {at}");
        let mut out = vec![0; n.min(1 << 16)];
        self.r.read_exact(&mut out).map_err(|_| cut(self.at))?;
        if out.len() < n {
            let got = (&mut self.r)
                .take((n - out.len()) as u64)
                .read_to_end(&mut out)?;
            if out.len() != n {
                return Err(cut(self.at + got as u64));
            }
        }
        self.at += n as u64;
        Ok(out)
    }

    fn string(&mut self, n: usize) -> Result<String> {
        let at = self.at;
        String::from_utf8(self.bytes(n)?).with_context(|| format!("invalid text at byte {at}"))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        self.r
            .read_exact(&mut a)
            .with_context(|| format!("the state is cut short at byte {}", self.at))?;
        self.at += N as u64;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
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
            count: 0,
        }
    }

    fn sample() -> State {
        State {
            version: crate::store::records::VERSION,
            boot_id: Some("b".into()),
            saved_at: Some(5),
            bans: vec![
                ban("203.0.113.5/32", None),
                ban("2001:db8::/64", Some("crowdsec")),
                ban("198.51.100.0/24", Some("redis:box2")),
            ],
            allowed: Some(vec!["10.0.0.0/8".into()]),
            ban_counts: [
                ("203.0.113.5/32".to_owned(), 3),
                ("192.0.2.7/32".to_owned(), 1),
            ]
            .into(),
            ban_counted_at: [("203.0.113.5/32".to_owned(), 1_699_999_000_000)].into(),
            ..Default::default()
        }
    }

    /// Form 2 (what sipguard wrote before the counts had a section of
    /// their own) is still read, its counts from the JSON part.
    #[test]
    fn form_2_is_read() {
        let mut header = sample();
        let bans = std::mem::take(&mut header.bans);
        let counts = (
            std::mem::take(&mut header.ban_counts),
            std::mem::take(&mut header.ban_counted_at),
        );
        let mut out = Vec::new();
        write_parts(
            &mut out,
            &header,
            bans.iter()
                .flat_map(|b| [&*b.jail, &*b.reason])
                .chain(["crowdsec", "redis:box2"]),
            (bans.len(), bans.iter().cloned()),
            std::iter::empty(),
        )
        .unwrap();
        // No counts section; the counts in the JSON part.
        let body_end = out.len() - END.len() - 8;
        let json_len =
            u32::from_le_bytes(out[MAGIC.len()..MAGIC.len() + 4].try_into().unwrap()) as usize;
        let rest = &out[MAGIC.len() + 4 + json_len..body_end];
        let mut with_counts = header.clone();
        (with_counts.ban_counts, with_counts.ban_counted_at) = counts;
        let json = serde_json::to_vec(&with_counts).unwrap();
        let mut old = MAGIC_2.to_vec();
        old.extend_from_slice(&(json.len() as u32).to_le_bytes());
        old.extend_from_slice(&json);
        old.extend_from_slice(rest);
        old.extend_from_slice(END);
        assert_eq!(read(&old).unwrap(), sample());
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
