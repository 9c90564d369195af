//! What FreeSWITCH says about registrations, and the registry made of it.
//!
//! Events (`CUSTOM sofia::register`, `sofia::unregister`, `sofia::expire`)
//! and the `show registrations` listing name a registration the same way:
//! its call-id, user and host (`call-id`/`token`, `from-user`/`user`/
//! `reg_user`, `from-host`/`host`/`realm`). Only a registration carries the
//! address (`network-ip`): an unregister or an expiry is matched by name.
use crate::kernel::trust::trust_key;
use anyhow::{bail, Context as _, Result};
use common::RateKey;
use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
};

/// A registration's name: (call-id, user, host).
pub type RegId = (String, String, String);

/// Longest call-id, user or host kept (a hostile peer's are cut off: the
/// name only has to match between events).
const MAX_FIELD: usize = 256;

/// What one event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegEvent {
    /// A successful registration from `addr`, for `expires` seconds.
    Register {
        id: RegId,
        addr: IpAddr,
        expires: u64,
    },
    /// An unregister or an expiry.
    Gone { id: RegId, why: &'static str },
}

fn field(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| crate::text::bounded(v, MAX_FIELD).to_owned())
}

fn need(headers: &[(String, String)], name: &str, what: &str) -> Result<String> {
    field(headers, name).with_context(|| format!("a {what} event without `{name}`"))
}

/// The registration event in an event's headers; `None` for any other
/// event (not subscribed to, but a peer may send anything).
pub fn parse_event(headers: &[(String, String)]) -> Result<Option<RegEvent>> {
    let Some(subclass) = field(headers, "Event-Subclass") else {
        return Ok(None);
    };
    Ok(Some(match subclass.as_str() {
        "sofia::register" => {
            let what = "sofia::register";
            let id = (
                need(headers, "call-id", what)?,
                need(headers, "from-user", what)?,
                need(headers, "from-host", what)?,
            );
            let ip = need(headers, "network-ip", what)?;
            let addr: IpAddr = ip.parse().with_context(|| {
                format!("network-ip {} is not an address", super::esl::shown(&ip))
            })?;
            let expires = need(headers, "expires", what)?;
            let expires: u64 = expires.trim().parse().with_context(|| {
                format!("expires {} is not a number", super::esl::shown(&expires))
            })?;
            if expires == 0 {
                RegEvent::Gone {
                    id,
                    why: "registered with expires 0",
                }
            } else {
                RegEvent::Register { id, addr, expires }
            }
        }
        "sofia::unregister" => RegEvent::Gone {
            id: (
                need(headers, "call-id", "sofia::unregister")?,
                need(headers, "from-user", "sofia::unregister")?,
                need(headers, "from-host", "sofia::unregister")?,
            ),
            why: "unregistered",
        },
        "sofia::expire" => RegEvent::Gone {
            id: (
                need(headers, "call-id", "sofia::expire")?,
                need(headers, "user", "sofia::expire")?,
                need(headers, "host", "sofia::expire")?,
            ),
            why: "expired",
        },
        _ => return Ok(None),
    }))
}

/// One row of `show registrations`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub id: RegId,
    pub addr: IpAddr,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
}

/// `N total.`, the listing's last line: N.
fn total(line: &str) -> Option<usize> {
    let n = line.trim().strip_suffix(" total.")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// What `show registrations` answered.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Listing {
    /// At most `max` rows taken.
    pub rows: Vec<Current>,
    /// Rows that could not be read, or over `max`.
    pub unreadable: usize,
    /// The whole table, every row read: its `N total.` line came and
    /// counts the rows there were. Only such a listing may make the
    /// registry forget anything (a cut or garbled one would make it forget
    /// registrations FreeSWITCH still holds).
    pub complete: bool,
}

/// The rows of `show registrations` (CSV: a header line naming the
/// columns, a row per registration, then `N total.`; FreeSWITCH prints the
/// header with the first row, so an empty table is `N total.` alone).
pub fn parse_listing(body: &[u8], max: usize) -> Result<Listing> {
    let text = std::str::from_utf8(body).context("the registrations listing is not UTF-8")?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        // FreeSWITCH always ends with its total: this is not a listing.
        return Ok(Listing::default());
    };
    if let Some(n) = total(header) {
        return Ok(Listing {
            complete: n == 0,
            ..Listing::default()
        });
    }
    if header.starts_with("-ERR") {
        bail!("show registrations: {}", super::esl::shown(header));
    }
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let at = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .with_context(|| format!("show registrations: no `{name}` column"))
    };
    let (user, realm, token, expires, ip) = (
        at("reg_user")?,
        at("realm")?,
        at("token")?,
        at("expires")?,
        at("network_ip")?,
    );
    let mut out = Listing::default();
    for (seen, line) in lines.enumerate() {
        if let Some(n) = total(line) {
            out.complete = n == seen && out.unreadable == 0;
            break;
        }
        let row: Vec<&str> = line.split(',').collect();
        let parsed = (row.len() == cols.len())
            .then(|| {
                Some(Current {
                    id: (
                        crate::text::bounded(row[token], MAX_FIELD).to_owned(),
                        crate::text::bounded(row[user], MAX_FIELD).to_owned(),
                        crate::text::bounded(row[realm], MAX_FIELD).to_owned(),
                    ),
                    addr: row[ip].trim().parse().ok()?,
                    expires_at: row[expires].trim().parse().ok()?,
                })
            })
            .flatten();
        match parsed {
            Some(c) if out.rows.len() < max => out.rows.push(c),
            _ => out.unreadable += 1,
        }
    }
    Ok(out)
}

/// One registration kept.
#[derive(Clone, Debug)]
struct Reg {
    key: RateKey,
    /// Until when its address is trusted (`CLOCK_MONOTONIC` ns).
    until_ns: u64,
    /// The connection (or listing) that last told of it.
    generation: u64,
    /// Missing from the last complete listing (forgotten if missing from
    /// the next one too: FreeSWITCH writes its table after it sends the
    /// event, so a listing may miss a registration just made).
    missed: bool,
}

/// A trusted key: how many registrations share it, until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyTrust {
    pub registrations: u32,
    pub until_ns: u64,
    pub addr: IpAddr,
}

/// The registrations FreeSWITCH reported, bounded: at most `max`; a new one
/// over it is refused (counted), never one already known.
#[derive(Debug)]
pub struct Registry {
    regs: HashMap<RegId, Reg>,
    keys: HashMap<RateKey, KeyTrust>,
    max: usize,
    pub refused: u64,
}

impl Registry {
    pub fn new(max: usize) -> Self {
        Self {
            regs: HashMap::new(),
            keys: HashMap::new(),
            max,
            refused: 0,
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn len(&self) -> usize {
        self.regs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    /// The trust of `key`, if a registration holds it.
    pub fn key(&self, key: &RateKey) -> Option<KeyTrust> {
        self.keys.get(key).copied()
    }

    pub fn keys(&self) -> impl Iterator<Item = (&RateKey, &KeyTrust)> {
        self.keys.iter()
    }

    /// Records a registration; returns the keys whose trust changed
    /// (empty when refused: the registry is full).
    pub fn register(
        &mut self,
        id: RegId,
        addr: IpAddr,
        until_ns: u64,
        generation: u64,
    ) -> Vec<RateKey> {
        let key = trust_key(addr);
        let mut changed = vec![key];
        let n = self.regs.len();
        match self.regs.entry(id) {
            Entry::Occupied(mut e) => {
                let old = e.get().key;
                e.insert(Reg {
                    key,
                    until_ns,
                    generation,
                    missed: false,
                });
                if old != key {
                    self.drop_key(old);
                    changed.push(old);
                    self.add_key(key, addr, until_ns);
                } else if let Some(k) = self.keys.get_mut(&key) {
                    k.until_ns = k.until_ns.max(until_ns);
                    k.addr = addr;
                }
            }
            Entry::Vacant(e) => {
                if n >= self.max {
                    self.refused += 1;
                    return Vec::new();
                }
                e.insert(Reg {
                    key,
                    until_ns,
                    generation,
                    missed: false,
                });
                self.add_key(key, addr, until_ns);
            }
        }
        changed
    }

    fn add_key(&mut self, key: RateKey, addr: IpAddr, until_ns: u64) {
        let k = self.keys.entry(key).or_insert(KeyTrust {
            registrations: 0,
            until_ns,
            addr,
        });
        k.registrations += 1;
        k.until_ns = k.until_ns.max(until_ns);
    }

    /// One registration fewer on `key`. While others remain the key keeps
    /// the latest expiry seen (no scan of every registration per event).
    fn drop_key(&mut self, key: RateKey) {
        if let Some(k) = self.keys.get_mut(&key) {
            k.registrations -= 1;
            if k.registrations == 0 {
                self.keys.remove(&key);
            }
        }
    }

    /// Forgets a registration; returns its key.
    pub fn remove(&mut self, id: &RegId) -> Option<RateKey> {
        let reg = self.regs.remove(id)?;
        self.drop_key(reg.key);
        Some(reg.key)
    }

    /// Forgets registrations past their time; returns the keys changed.
    pub fn sweep(&mut self, now_ns: u64) -> Vec<RateKey> {
        let gone: Vec<RegId> = self
            .regs
            .iter()
            .filter(|(_, r)| r.until_ns <= now_ns)
            .map(|(id, _)| id.clone())
            .collect();
        let mut keys: Vec<RateKey> = gone.iter().filter_map(|id| self.remove(id)).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// A listing asked for as `generation` (on a connect, and every
    /// `relist`): FreeSWITCH's table is the truth for what was learnt
    /// before it was asked for, within what the table can say. Forgotten
    /// is a registration learnt before it, missing from this complete
    /// listing and the one before, whose user (and realm) has no row at
    /// all: the core table FreeSWITCH lists keeps one row per user unless
    /// `multiple-registrations` is set in switch.conf, while a profile may
    /// keep several contacts (a desk phone and a softphone), so a user's
    /// other devices are not in it. The listed rows are taken in.
    pub fn replace_older(
        &mut self,
        current: Vec<(RegId, IpAddr, u64)>,
        generation: u64,
        complete: bool,
    ) -> Vec<RateKey> {
        let mut stale: Vec<RegId> = Vec::new();
        if complete {
            let listed: std::collections::HashSet<&RegId> =
                current.iter().map(|(id, ..)| id).collect();
            let users: std::collections::HashSet<(&str, &str)> = current
                .iter()
                .map(|((_, user, realm), ..)| (user.as_str(), realm.as_str()))
                .collect();
            for (id, r) in self.regs.iter_mut() {
                if r.generation >= generation
                    || listed.contains(id)
                    || users.contains(&(id.1.as_str(), id.2.as_str()))
                {
                    r.missed = false;
                } else if r.missed {
                    stale.push(id.clone());
                } else {
                    r.missed = true;
                }
            }
        }
        let mut keys: Vec<RateKey> = stale.iter().filter_map(|id| self.remove(id)).collect();
        for (id, addr, until) in current {
            keys.extend(self.register(id, addr, until, generation));
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn id(c: &str) -> RegId {
        (c.into(), "1000".into(), "example.org".into())
    }

    #[test]
    fn events_name_registrations_alike() {
        let reg = h(&[
            ("Event-Subclass", "sofia::register"),
            ("call-id", "c1"),
            ("from-user", "1000"),
            ("from-host", "example.org"),
            ("network-ip", "192.0.2.10"),
            ("expires", "3600"),
        ]);
        assert_eq!(
            parse_event(&reg).unwrap(),
            Some(RegEvent::Register {
                id: id("c1"),
                addr: "192.0.2.10".parse().unwrap(),
                expires: 3600
            })
        );
        let unreg = h(&[
            ("Event-Subclass", "sofia::unregister"),
            ("call-id", "c1"),
            ("from-user", "1000"),
            ("from-host", "example.org"),
        ]);
        assert_eq!(
            parse_event(&unreg).unwrap(),
            Some(RegEvent::Gone {
                id: id("c1"),
                why: "unregistered"
            })
        );
        let exp = h(&[
            ("Event-Subclass", "sofia::expire"),
            ("call-id", "c1"),
            ("user", "1000"),
            ("host", "example.org"),
        ]);
        assert_eq!(
            parse_event(&exp).unwrap(),
            Some(RegEvent::Gone {
                id: id("c1"),
                why: "expired"
            })
        );
        assert_eq!(
            parse_event(&h(&[("Event-Name", "HEARTBEAT")])).unwrap(),
            None
        );
        let bad = h(&[
            ("Event-Subclass", "sofia::register"),
            ("call-id", "c1"),
            ("from-user", "1000"),
            ("from-host", "example.org"),
            ("network-ip", "not-an-ip"),
            ("expires", "60"),
        ]);
        assert!(parse_event(&bad).is_err());
    }

    #[test]
    fn the_listing_is_read_by_its_header() {
        let body = b"reg_user,realm,token,url,expires,network_ip,network_port,network_proto,hostname,metadata\n\
1000,example.org,c1,sofia/internal/sip:1000@192.0.2.10:5060,1700000000,192.0.2.10,5060,udp,pbx,\n\
1001,example.org,c2,sofia/internal/sip:1001@[2001:db8::1]:5060,1700000100,2001:db8::1,5060,udp,pbx,\n\
broken,row\n\
\n3 total.\n";
        let l = parse_listing(body, 100).unwrap();
        let (rows, bad) = (l.rows, l.unreadable);
        assert_eq!(bad, 1);
        assert!(!l.complete, "a row could not be read");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, id("c1"));
        assert_eq!(rows[1].addr, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(rows[1].expires_at, 1_700_000_100);
        let l = parse_listing(body, 1).unwrap();
        assert_eq!((l.rows.len(), l.unreadable), (1, 2), "bounded");
        assert!(parse_listing(b"-ERR no reply\n", 10).is_err());
        assert_eq!(parse_listing(b"", 10).unwrap(), Listing::default());
        assert!(
            !parse_listing(b"", 10).unwrap().complete,
            "no total: not a listing"
        );
        // Whole: every row read, and the total counts them.
        let whole = b"reg_user,realm,token,url,expires,network_ip,network_port,network_proto,hostname,metadata\n\
1000,example.org,c1,sofia/internal/sip:1000@192.0.2.10:5060,1700000000,192.0.2.10,5060,udp,pbx,\n\
\n1 total.\n";
        let l = parse_listing(whole, 100).unwrap();
        assert!(l.complete && l.rows.len() == 1);
        assert!(!parse_listing(whole, 0).unwrap().complete, "cut at max");
        let cut = &whole[..whole.len() - 10];
        assert!(!parse_listing(cut, 100).unwrap().complete, "no total line");
        let miscounted = String::from_utf8_lossy(whole).replace("1 total.", "2 total.");
        assert!(!parse_listing(miscounted.as_bytes(), 100).unwrap().complete);
    }

    #[test]
    fn an_empty_listing_is_its_total_alone() {
        // mod_commands' show_callback prints the header with the first
        // row: no registrations is "\n0 total.\n".
        let empty = Listing {
            complete: true,
            ..Listing::default()
        };
        assert_eq!(parse_listing(b"\n0 total.\n", 10).unwrap(), empty);
        assert_eq!(parse_listing(b"0 total.", 10).unwrap(), empty);
        // Not a header, not a total: an error (the caller skips it).
        assert!(parse_listing(b"\nsomething else\n", 10).is_err());
        assert!(parse_listing(b"x total.\n", 10).is_err());
    }

    #[test]
    fn the_registry_is_bounded_and_keyed_like_the_limiter() {
        let mut r = Registry::new(2);
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(r.register(id("c1"), a, 100, 1).len(), 1);
        assert_eq!(r.register(id("c2"), a, 200, 1).len(), 1);
        assert_eq!(r.key(&trust_key(a)).unwrap().registrations, 2);
        assert_eq!(r.key(&trust_key(a)).unwrap().until_ns, 200);
        assert!(r.register(id("c3"), a, 300, 1).is_empty(), "full");
        assert_eq!(r.refused, 1);
        // A known one is renewed even when full.
        assert_eq!(r.register(id("c1"), a, 400, 1).len(), 1);
        assert_eq!(r.remove(&id("c1")), Some(trust_key(a)));
        assert!(r.key(&trust_key(a)).is_some(), "c2 still registered there");
        assert_eq!(r.sweep(250), vec![trust_key(a)]);
        assert!(r.key(&trust_key(a)).is_none());
        // IPv6: by /64.
        let v6a: IpAddr = "2001:db8:1:2::a".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2::b".parse().unwrap();
        r.register(id("c4"), v6a, 100, 1);
        r.register(id("c5"), v6b, 100, 1);
        assert_eq!(r.keys().count(), 1);
    }

    fn user_id(call: &str, user: &str) -> RegId {
        (call.into(), user.into(), "example.org".into())
    }

    #[test]
    fn a_listing_replaces_what_was_learnt_before_it_when_missing_twice() {
        let mut r = Registry::new(10);
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let b: IpAddr = "192.0.2.11".parse().unwrap();
        let c: IpAddr = "192.0.2.12".parse().unwrap();
        r.register(user_id("old", "1000"), a, 100, 1);
        r.register(user_id("new", "1001"), b, 100, 2);
        let listed = || vec![(user_id("listed", "1002"), c, 100)];
        // Missing once: kept (FreeSWITCH may not have written it yet).
        let changed = r.replace_older(listed(), 2, true);
        assert_eq!(changed, vec![trust_key(c)]);
        assert!(r.key(&trust_key(a)).is_some(), "missing once");
        // Missing again: gone.
        let changed = r.replace_older(listed(), 3, true);
        assert!(changed.contains(&trust_key(a)));
        assert!(r.key(&trust_key(a)).is_none(), "gone from FreeSWITCH");
        assert!(
            r.key(&trust_key(b)).is_some(),
            "learnt as 2: missing once (3)"
        );
        r.replace_older(listed(), 4, true);
        assert!(r.key(&trust_key(b)).is_none(), "missing from 3 and 4");
        assert!(r.key(&trust_key(c)).is_some());
        // Heard after the listing was asked for: kept.
        r.register(user_id("late", "1003"), a, 100, 6);
        r.replace_older(listed(), 5, true);
        r.replace_older(listed(), 6, true);
        assert!(r.key(&trust_key(a)).is_some(), "learnt after it was asked");
    }

    #[test]
    fn a_listing_never_forgets_a_listed_users_other_devices_nor_when_incomplete() {
        let mut r = Registry::new(10);
        let desk: IpAddr = "192.0.2.20".parse().unwrap();
        let soft: IpAddr = "192.0.2.21".parse().unwrap();
        let other: IpAddr = "192.0.2.22".parse().unwrap();
        r.register(user_id("desk", "1000"), desk, 100, 1);
        r.register(user_id("soft", "1000"), soft, 100, 1);
        r.register(user_id("gone", "1001"), other, 100, 1);
        // The core table lists one row per user: the softphone only.
        let listing = || vec![(user_id("soft", "1000"), soft, 100)];
        // Incomplete (cut, garbled): nothing forgotten, however often.
        for g in 2..6 {
            r.replace_older(listing(), g, false);
        }
        assert_eq!(r.len(), 3);
        for g in 6..8 {
            r.replace_older(listing(), g, true);
        }
        assert!(
            r.key(&trust_key(desk)).is_some(),
            "a listed user's other device"
        );
        assert!(r.key(&trust_key(other)).is_none(), "a user with no row");
    }
}
