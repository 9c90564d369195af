//! Every read of what others can write goes through a small Lua script
//! that bounds it on the server. The `redis` crate reads a reply value
//! whole, whatever its size, and whoever can write to a shared Redis can
//! XADD a stream entry or HSET a snapshot entry of hundreds of megabytes:
//! read plainly, that lands in this daemon's memory before any check. The
//! scripts replace any field, member or entry past `MAX_VALUE` (or an
//! entry with more than `MAX_FIELDS` fields) by a marker the reader counts
//! as `oversized`, and cap the entries per call, so no reply is larger than
//! about `XRANGE_COUNT * MAX_FIELDS * 2 * MAX_VALUE` (1.6 MiB).
//!
//! A script cannot block (`XREAD BLOCK` is refused inside one, and its
//! plain form returns the fields whole), so the reader polls the stream
//! every `POLL` (200 ms): one EVALSHA of an XRANGE past the last entry seen,
//! O(log N) when nothing is new.
//!
//! The scripts are loaded once per connection (SCRIPT LOAD) and run with
//! EVALSHA (EVAL again after a SCRIPT FLUSH). A Redis that refuses them (an
//! ACL without `@scripting`, scripting disabled) is not read at all: the
//! reader fails closed and says why (`refused` in `status`).
use anyhow::{bail, Result};
use redis::Value;
use std::time::Duration;

/// Longest field, field name, sorted-set member or snapshot entry taken
/// (the longest valid entry text is `entry::MAX_TEXT` + a MAC).
pub const MAX_VALUE: usize = 1024;
/// Most field-value pairs of a stream entry taken (a member writes 2).
pub const MAX_FIELDS: usize = 8;
/// Stream entries read per call.
pub const XRANGE_COUNT: usize = 100;
/// How often the stream is polled.
pub const POLL: Duration = Duration::from_millis(200);

/// The last entry's ID (`0-0` for an empty or missing stream), without its
/// fields.
const LAST_ID: &str = r"
local r = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #r == 0 then return '0-0' end
return r[1][1]
";

/// Up to ARGV[2] entries after ARGV[1]; each `{id, 1, {fields}}` or, past
/// the bounds (ARGV[3] bytes a field, ARGV[4] pairs), `{id, 0}`.
const READ_STREAM: &str = r"
local bound, pairs = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))) do
  local f, ok = e[2], #e[2] <= 2 * pairs
  if ok then
    for _, v in ipairs(f) do
      if #v > bound then ok = false break end
    end
  end
  if ok then out[i] = {e[1], 1, f} else out[i] = {e[1], 0} end
end
return out
";

/// A page of the sorted set KEYS[1] (score above ARGV[1], offset ARGV[2],
/// count ARGV[3]) with each member's entry in the hash KEYS[2]: `{1,
/// member, entry}`, `{2, member}` (no entry), or `{0}` (the member or its
/// entry past ARGV[4] bytes; the entry's length is asked first, so it is
/// never loaded).
const SNAPSHOT_PAGE: &str = r"
local bound = tonumber(ARGV[4])
local out = {}
for i, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'LIMIT', tonumber(ARGV[2]), tonumber(ARGV[3]))) do
  if #m > bound or redis.call('HSTRLEN', KEYS[2], m) > bound then
    out[i] = {0}
  else
    local v = redis.call('HGET', KEYS[2], m)
    if v then out[i] = {1, m, v} else out[i] = {2, m} end
  end
end
return out
";

/// Removes up to ARGV[2] members of KEYS[1] scored below ARGV[1] and their
/// entries in KEYS[2], on the server (nobody's member is read here); how
/// many.
const TRIM: &str = r"
local ended = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ended > 0 then
  redis.call('ZREM', KEYS[1], unpack(ended))
  redis.call('HDEL', KEYS[2], unpack(ended))
end
return #ended
";

/// The scripts as loaded on one connection (their SHA1s, as SCRIPT LOAD
/// gives them).
pub struct Scripts {
    sha: [String; 4],
}

const CODE: [&str; 4] = [LAST_ID, READ_STREAM, SNAPSHOT_PAGE, TRIM];

impl Scripts {
    /// Loads every script on a new connection. An error the server gives
    /// (not a lost connection) is a refusal: see `Refused`.
    pub fn load(con: &mut redis::Connection) -> Result<Self> {
        let mut sha: [String; 4] = Default::default();
        for (sha, code) in sha.iter_mut().zip(CODE) {
            *sha = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(code)
                .query(con)
                .map_err(|e| refusal(e, true))?;
        }
        Ok(Self { sha })
    }

    /// Runs script `i` (EVALSHA; EVAL when the server lost it, e.g. after
    /// a SCRIPT FLUSH).
    fn run(
        &self,
        con: &mut redis::Connection,
        i: usize,
        keys: &[&str],
        args: &[String],
    ) -> Result<Value> {
        let call = |cmd: &str, first: &str, con: &mut redis::Connection| {
            redis::cmd(cmd)
                .arg(first)
                .arg(keys.len())
                .arg(keys)
                .arg(args)
                .query::<Value>(con)
        };
        match call("EVALSHA", &self.sha[i], con) {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                call("EVAL", CODE[i], con)
            }
            r => r,
        }
        .map_err(|e| refusal(e, false))
    }

    /// The stream's last entry ID.
    pub fn last_id(&self, con: &mut redis::Connection, stream: &str) -> Result<String> {
        stream_id(Some(&self.run(con, 0, &[stream], &[])?))
    }

    /// Up to `XRANGE_COUNT` entries after `after`, with their IDs.
    pub fn read_stream(
        &self,
        con: &mut redis::Connection,
        stream: &str,
        after: &str,
    ) -> Result<Vec<(String, StreamEntry)>> {
        let args = [
            after.to_owned(),
            XRANGE_COUNT.to_string(),
            MAX_VALUE.to_string(),
            MAX_FIELDS.to_string(),
        ];
        let v = self.run(con, 1, &[stream], &args)?;
        let mut out = Vec::new();
        for e in items(&v).iter().take(XRANGE_COUNT) {
            let e = items(e);
            let id = stream_id(e.first())?;
            let entry = match e.get(1) {
                Some(Value::Int(1)) => {
                    let f = items(e.get(2).unwrap_or(&Value::Nil));
                    StreamEntry::Fields(
                        f.chunks_exact(2)
                            .take(MAX_FIELDS)
                            .map(|p| (owned(&p[0]), owned(&p[1])))
                            .collect(),
                    )
                }
                _ => StreamEntry::Oversized,
            };
            out.push((id, entry));
        }
        Ok(out)
    }

    /// One page of the members of `bans` scored above `min` (`(ms`), with
    /// their entries in `entries`.
    pub fn snapshot_page(
        &self,
        con: &mut redis::Connection,
        (bans, entries): (&str, &str),
        min: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Member>> {
        let args = [
            min.to_owned(),
            offset.to_string(),
            count.to_string(),
            MAX_VALUE.to_string(),
        ];
        let v = self.run(con, 2, &[bans, entries], &args)?;
        Ok(items(&v)
            .iter()
            .take(count)
            .map(|m| match items(m) {
                [Value::Int(1), m, e] => Member::Entry(owned(m), owned(e)),
                [Value::Int(2), _] => Member::Missing,
                _ => Member::Oversized,
            })
            .collect())
    }

    /// Removes up to `page` members of `bans` scored below `before_ms` and
    /// their entries in `entries`; how many went.
    pub fn trim(
        &self,
        con: &mut redis::Connection,
        (bans, entries): (&str, &str),
        before_ms: i64,
        page: usize,
    ) -> Result<usize> {
        let args = [format!("({before_ms}"), page.to_string()];
        match self.run(con, 3, &[bans, entries], &args)? {
            Value::Int(n) => Ok(usize::try_from(n).unwrap_or(0)),
            _ => bail!("not a count in the answer"),
        }
    }
}

/// The Redis answered a script command with an error of its own (an ACL
/// without `@scripting`, scripting disabled, an unknown command).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the Redis refuses the fleet's scripts ({}): the fleet reads it only through bounded scripts, so it follows nothing until EVAL, EVALSHA and SCRIPT are allowed to its user",
            self.0
        )
    }
}

impl std::error::Error for Refused {}

/// A script command's error: a `Refused` when the server said no (any
/// error it gives to SCRIPT LOAD, `any`; an ACL's NOPERM to EVALSHA), the
/// error itself otherwise (a lost connection, a key of another type).
fn refusal(e: redis::RedisError, any: bool) -> anyhow::Error {
    let said_no = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
        || (any && matches!(e.kind(), redis::ErrorKind::Server(_)));
    if !said_no {
        return e.into();
    }
    let text = crate::text::escape(&e.to_string()).into_owned();
    Refused(crate::text::bounded(&text, 200).to_owned()).into()
}

/// A stream entry as the script gives it.
pub enum StreamEntry {
    /// Its field-value pairs (each within `MAX_VALUE`).
    Fields(Vec<(Vec<u8>, Vec<u8>)>),
    /// Past the bounds: not sent.
    Oversized,
}

/// A snapshot member as the script gives it.
pub enum Member {
    /// The member and its entry.
    Entry(Vec<u8>, Vec<u8>),
    /// A member without an entry.
    Missing,
    /// The member or its entry past `MAX_VALUE`: not sent.
    Oversized,
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

fn owned(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// Longest stream ID (`ms-seq`, two u64).
const MAX_ID: usize = 41;

/// A stream ID as Redis gives it (`ms-seq`); anything else is an answer
/// that no Redis gives: the connection is dropped.
fn stream_id(v: Option<&Value>) -> Result<String> {
    let id = v.map(owned).unwrap_or_default();
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id.iter().all(|b| b.is_ascii_digit() || *b == b'-')
        && id.iter().filter(|b| **b == b'-').count() == 1;
    if !ok {
        bail!("not a stream entry ID in the answer");
    }
    Ok(String::from_utf8_lossy(&id).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_from_a_hostile_answer_are_refused() {
        assert_eq!(
            stream_id(Some(&Value::BulkString(b"1700000000000-3".to_vec()))).unwrap(),
            "1700000000000-3"
        );
        for bad in [&b"\xff\xfe"[..], b"", b"1-2-3", b"abc", &[b'1'; 60]] {
            assert!(stream_id(Some(&Value::BulkString(bad.to_vec()))).is_err());
        }
        assert!(stream_id(Some(&Value::Int(3))).is_err());
        assert!(stream_id(None).is_err());
    }

    #[test]
    fn server_errors_are_refusals_and_lost_connections_are_not() {
        let nope = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "no permissions to run the 'evalsha' command",
        ));
        let e = refusal(nope, false);
        assert!(e.downcast_ref::<Refused>().is_some(), "{e}");
        assert!(e.to_string().contains("refuses the fleet's scripts"));
        let unknown = || {
            redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "unknown command 'SCRIPT'",
            ))
        };
        assert!(refusal(unknown(), true).downcast_ref::<Refused>().is_some());
        assert!(refusal(unknown(), false)
            .downcast_ref::<Refused>()
            .is_none());
        let lost = || redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(refusal(lost(), true).downcast_ref::<Refused>().is_none());
    }
}
