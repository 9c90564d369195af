//! The LAPI's decision stream, read as it arrives, one decision at a time,
//! into small bounded records: what a hostile or broken LAPI sends costs
//! CPU, never memory. Two layers:
//!
//! * [`Capped`], under the JSON parser: a byte budget for the whole answer,
//!   every string cut at [`MAX_STRING`] bytes before the parser buffers it
//!   (a 50 MB string would otherwise sit whole in its scratch buffer), and
//!   a number of more than [`MAX_DIGITS`] characters refused.
//! * a serde `Visitor` over `{"new": [...], "deleted": [...]}` that reads
//!   each element into a [`Record`] (fields over their bound, or of the
//!   wrong type, make the record malformed: skipped, counted) and hands it
//!   on at once; beyond `max` records the rest are skipped and counted.
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess};
use std::{fmt, io};

/// Bounds of a decision's fields, in bytes: a record over any is skipped.
pub const MAX_VALUE: usize = 64;
pub const MAX_SCENARIO: usize = 256;
pub const MAX_ORIGIN: usize = 64;
pub const MAX_DURATION: usize = 32;
/// `type` and `scope` (`ban`, `Ip`, `Range`…).
pub const MAX_WORD: usize = 32;
/// Longest string the parser is given; longer ones are cut (and so refused
/// by their field's bound).
pub const MAX_STRING: usize = 1024;
/// Longest number: an id has 19 digits, a float a few more.
pub const MAX_DIGITS: usize = 40;

/// One decision as read, every field within its bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub id: i64,
    pub kind: String,
    pub scope: String,
    pub value: String,
    pub duration: String,
    pub scenario: String,
    pub origin: String,
}

/// Which list of the stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    New,
    Deleted,
}

/// What one answer held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Records handed on.
    pub read: usize,
    /// Elements that were no well-formed decision within bounds.
    pub malformed: usize,
    /// Elements beyond the cap on records.
    pub over_cap: usize,
}

/// Reads a stream answer from `r`: at most `max_bytes`, and at most `max`
/// records handed to `sink`. An answer that is no JSON object of lists,
/// or over `max_bytes`, is an error (what was handed on stays handed on;
/// the caller decides).
pub fn read(
    r: impl io::Read,
    max: usize,
    max_bytes: u64,
    sink: &mut dyn FnMut(List, Record),
) -> anyhow::Result<Tally> {
    let capped = io::BufReader::with_capacity(1 << 16, Capped::new(r, max_bytes));
    let mut de = serde_json::Deserializer::from_reader(capped);
    let mut st = State {
        max,
        tally: Tally::default(),
        sink,
    };
    de.deserialize_any(Top(&mut st))?;
    de.end()?;
    Ok(st.tally)
}

struct State<'a> {
    max: usize,
    tally: Tally,
    sink: &'a mut dyn FnMut(List, Record),
}

/// The answer: an object whose `new` and `deleted` are lists (or null).
struct Top<'s, 'a>(&'s mut State<'a>);

impl<'de> de::Visitor<'de> for Top<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with `new` and `deleted` lists")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let list = match key.as_str() {
                "new" => List::New,
                "deleted" => List::Deleted,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            map.next_value_seed(ListSeed(self.0, list))?;
        }
        Ok(())
    }
}

struct ListSeed<'s, 'a>(&'s mut State<'a>, List);

impl<'de> DeserializeSeed<'de> for ListSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for ListSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of decisions, or null")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (st, list) = (self.0, self.1);
        loop {
            if st.tally.read >= st.max {
                match seq.next_element::<IgnoredAny>()? {
                    Some(_) => st.tally.over_cap += 1,
                    None => return Ok(()),
                }
                continue;
            }
            match seq.next_element::<Element>()? {
                Some(Element(Some(rec))) => {
                    st.tally.read += 1;
                    (st.sink)(list, rec);
                }
                Some(Element(None)) => st.tally.malformed += 1,
                None => return Ok(()),
            }
        }
    }
}

/// One element of a list: a record, or `None` when it is none.
struct Element(Option<Record>);

impl<'de> de::Deserialize<'de> for Element {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

/// Anything that is not what was expected is drained, never an error: one
/// odd element costs that element, not the answer.
macro_rules! lenient_scalars {
    ($none:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($none)
        }
    };
}

impl<'de> de::Visitor<'de> for ElementVisitor {
    type Value = Element;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decision")
    }

    lenient_scalars!(Element(None));

    fn visit_unit<E>(self) -> Result<Element, E> {
        Ok(Element(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Element, E> {
        Ok(Element(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Element, E> {
        Ok(Element(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Element, E> {
        Ok(Element(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Element, A::Error> {
        let mut r = Record::default();
        let mut ok = true;
        while let Some(key) = map.next_key::<Key>()? {
            let field = map.next_value::<Field>()?;
            let (slot, max) = match key {
                Key::Id => {
                    match field {
                        Field::Int(id) => r.id = id,
                        _ => ok = false,
                    }
                    continue;
                }
                Key::Other => continue,
                Key::Type => (&mut r.kind, MAX_WORD),
                Key::Scope => (&mut r.scope, MAX_WORD),
                Key::Value => (&mut r.value, MAX_VALUE),
                Key::Duration => (&mut r.duration, MAX_DURATION),
                Key::Scenario => (&mut r.scenario, MAX_SCENARIO),
                Key::Origin => (&mut r.origin, MAX_ORIGIN),
            };
            match field {
                Field::Text(t) if t.len() <= max => *slot = t,
                // A null field is an absent one (the LAPI omits nothing).
                Field::Null => {}
                _ => ok = false,
            }
        }
        let ok = ok && !r.value.is_empty() && !r.scope.is_empty();
        Ok(Element(ok.then_some(r)))
    }
}

/// A decision's key; unknown ones (`until`, `uuid`, `simulated`…) are
/// skipped without being held.
enum Key {
    Id,
    Type,
    Scope,
    Value,
    Duration,
    Scenario,
    Origin,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "id" => Key::Id,
                    "type" => Key::Type,
                    "scope" => Key::Scope,
                    "value" => Key::Value,
                    "duration" => Key::Duration,
                    "scenario" => Key::Scenario,
                    "origin" => Key::Origin,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A field's value, kept only when it is a short string or an integer.
enum Field {
    Text(String),
    Int(i64),
    Null,
    Other,
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> de::Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decision's field")
    }

    lenient_scalars!(Field::Other);

    fn visit_unit<E>(self) -> Result<Field, E> {
        Ok(Field::Null)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Field, E> {
        Ok(Field::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Field, E> {
        Ok(i64::try_from(v).map_or(Field::Other, Field::Int))
    }
    fn visit_str<E>(self, v: &str) -> Result<Field, E> {
        // Copied only when it can fit the largest field.
        Ok(if v.len() <= MAX_SCENARIO {
            Field::Text(v.to_owned())
        } else {
            Field::Other
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
}

/// Where the lexer of [`Capped`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    Outside,
    InString,
    Escape,
    /// In a `\uXXXX` escape: hex digits left.
    Unicode(u8),
}

/// A reader that passes JSON on with every string cut to [`MAX_STRING`]
/// bytes and refuses numbers over [`MAX_DIGITS`] and answers over its
/// budget. Strings are cut only where the kept part is still valid JSON:
/// before a character (never inside a UTF-8 sequence or an escape, never
/// between the halves of a surrogate pair); the rest is dropped up to the
/// closing quote, which is kept.
pub struct Capped<R> {
    inner: R,
    budget: u64,
    max_bytes: u64,
    lex: Lex,
    /// Bytes of the current string passed on.
    len: usize,
    dropping: bool,
    /// The last escape was the first half of a surrogate pair.
    high_surrogate: bool,
    hex: u32,
    digits: usize,
}

impl<R: io::Read> Capped<R> {
    pub fn new(inner: R, max_bytes: u64) -> Self {
        Self {
            inner,
            budget: max_bytes,
            max_bytes,
            lex: Lex::Outside,
            len: 0,
            dropping: false,
            high_surrogate: false,
            hex: 0,
            digits: 0,
        }
    }

    /// Filters `buf` in place; returns how many bytes are kept.
    fn filter(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut kept = 0;
        for i in 0..buf.len() {
            let b = buf[i];
            let keep = self.step(b)?;
            if keep {
                buf[kept] = b;
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// One byte through the lexer; whether it is passed on.
    fn step(&mut self, b: u8) -> io::Result<bool> {
        match self.lex {
            Lex::Outside => {
                if b == b'"' {
                    self.lex = Lex::InString;
                    self.len = 0;
                    self.high_surrogate = false;
                    self.digits = 0;
                } else if b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E') {
                    self.digits += 1;
                    if self.digits > MAX_DIGITS {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a number of over {MAX_DIGITS} characters"),
                        ));
                    }
                } else {
                    self.digits = 0;
                }
                return Ok(true);
            }
            Lex::InString => {
                let starts_char = (b & 0xC0) != 0x80;
                if !self.dropping
                    && self.len >= MAX_STRING
                    && b != b'"'
                    && starts_char
                    && !self.high_surrogate
                {
                    self.dropping = true;
                }
                match b {
                    b'"' => {
                        self.lex = Lex::Outside;
                        self.dropping = false;
                    }
                    b'\\' => self.lex = Lex::Escape,
                    _ => self.high_surrogate = false,
                }
            }
            Lex::Escape => {
                self.lex = if b == b'u' {
                    self.hex = 0;
                    Lex::Unicode(4)
                } else {
                    self.high_surrogate = false;
                    Lex::InString
                };
            }
            Lex::Unicode(left) => {
                self.hex = self.hex * 16 + char::from(b).to_digit(16).unwrap_or(0);
                self.lex = if left == 1 {
                    self.high_surrogate = (0xD800..0xDC00).contains(&self.hex);
                    Lex::InString
                } else {
                    Lex::Unicode(left - 1)
                };
            }
        }
        if self.dropping {
            return Ok(false);
        }
        self.len += 1;
        Ok(true)
    }
}

impl<R: io::Read> io::Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let want = buf
                .len()
                .min(usize::try_from(self.budget + 1).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut buf[..want])?;
            if n == 0 {
                return Ok(0);
            }
            if n as u64 > self.budget {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the answer is over {} bytes", self.max_bytes),
                ));
            }
            self.budget -= n as u64;
            let kept = self.filter(&mut buf[..n])?;
            // All of it dropped (inside a long string): read on rather
            // than return 0, which would read as the end.
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &[u8], max: usize) -> (anyhow::Result<Tally>, Vec<(List, Record)>) {
        let mut got = Vec::new();
        let t = read(text, max, 1 << 30, &mut |l, r| got.push((l, r)));
        (t, got)
    }

    fn capped(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut Capped::new(text, 1 << 30), &mut out).unwrap();
        out
    }

    #[test]
    fn decisions_are_read_one_at_a_time_into_bounded_records() {
        let text = br#"{"deleted":[{"id":3,"type":"ban","scope":"Ip","value":"192.0.2.3","duration":"-1s","scenario":"x","origin":"cscli","until":"2030"}],
            "new":[{"id":1,"type":"ban","scope":"Ip","value":"192.0.2.1","duration":"1h","scenario":"crowdsecurity/ssh-bf","origin":"crowdsec","simulated":false,"uuid":"u"},
                   {}, 7, "x", null, [1,[2]], {"id":"9","scope":"Ip","value":"192.0.2.9"},
                   {"scope":"Ip","value":"192.0.2.10","scenario":{"a":[1]}},
                   {"scope":"Ip","value":"2001:0db8:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0001"},
                   {"id":2,"type":"ban","scope":"Range","value":"2001:db8::/64","duration":"2h","scenario":null,"origin":"cscli"}],
            "other":{"deep":[1,2,3]}}"#;
        let (t, got) = all(text, 1000);
        assert_eq!(
            t.unwrap(),
            Tally {
                read: 3,
                malformed: 8,
                over_cap: 0
            }
        );
        assert_eq!(got[0].0, List::Deleted);
        assert_eq!(got[1].1.scenario, "crowdsecurity/ssh-bf");
        assert_eq!((got[2].1.id, got[2].1.scenario.as_str()), (2, ""));
        // Over the cap: the rest skipped, counted.
        let (t, got) = all(text, 2);
        assert_eq!(t.unwrap().over_cap, 9);
        assert_eq!(got.len(), 2);
        // Not a stream: an error.
        for bad in [&b"[1,2]"[..], b"{\"new\":7}", b"{\"new\":[", b"<html>"] {
            assert!(all(bad, 10).0.is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(all(b"null", 10).0.unwrap(), Tally::default());
    }

    #[test]
    fn long_strings_are_cut_before_the_parser_and_long_numbers_refused() {
        let long = "é".repeat(5000);
        let text = format!(
            r#"{{"new":[{{"scope":"Ip","value":"{long}"}},{{"scope":"Ip","value":"192.0.2.1","scenario":"{}"}}],"{}":1}}"#,
            "\\n\\u00e9\\ud83d\\ude00".repeat(1000),
            "k".repeat(100_000)
        );
        let out = capped(text.as_bytes());
        assert!(out.len() < 4 * MAX_STRING, "{}", out.len());
        let v: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
        assert!(v["new"][0]["value"].as_str().unwrap().len() <= MAX_STRING + 4);
        let (t, _) = all(text.as_bytes(), 10);
        assert_eq!(
            t.unwrap(),
            Tally {
                read: 0,
                malformed: 2,
                over_cap: 0
            }
        );
        // Strings at the bound pass whole.
        let ok = format!(r#"["{}"]"#, "a".repeat(MAX_STRING));
        assert_eq!(capped(ok.as_bytes()), ok.as_bytes());
        let digits = format!(r#"{{"new":[{{"id":{}}}]}}"#, "1".repeat(1000));
        assert!(all(digits.as_bytes(), 10).0.is_err());
        // The byte budget.
        let mut got = 0;
        let big = format!(r#"{{"new":[{}{{}}]}}"#, "{},".repeat(1000));
        assert!(read(big.as_bytes(), 10, 100, &mut |_, _| got += 1).is_err());
    }
}
