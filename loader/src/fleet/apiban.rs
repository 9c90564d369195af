//! The APIBAN feed (apiban.org): SIP scanners and attackers reported by its
//! honeypots. `POST {url}get` with `Authorization: Bearer KEY` and
//! `{"set":"sip","id":"LAST"}` answers the addresses added since `LAST` and
//! the `ID` to ask from next, a page at a time, until "no new bans". The
//! last ID is kept in the state file, so a restart asks only for what is
//! new; each address is banned for the 7 days APIBAN keeps it.
use super::{deliver, sleep_or_stop, Inbound, InboundTx, RemoteDecision};
use anyhow::{bail, Context as _, Result};
use std::{
    collections::VecDeque,
    io::Read as _,
    sync::mpsc,
    time::{Duration, Instant},
};

pub const ORIGIN: &str = "apiban";
/// How long APIBAN keeps an address, and so how long it is banned.
pub const BAN_FOR: Duration = Duration::from_secs(7 * 86_400);
/// APIBAN allows 11 requests per 2 minutes.
const RATE: (usize, Duration) = (11, Duration::from_secs(120));
/// Pages read per poll before waiting for the next one.
const MAX_PAGES: usize = 100;
/// Largest answer read (a page of 250 addresses is ~10 kB).
const MAX_BODY: u64 = 1 << 20;
/// The first ID: everything APIBAN holds.
pub const FIRST_ID: &str = "100";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub key: String,
    pub set: String,
    pub interval: Duration,
}

/// A page: the addresses and where to go on from.
#[derive(Debug, PartialEq)]
pub enum Page {
    Bans {
        addresses: Vec<String>,
        next: String,
    },
    NoNewBans,
}

/// Longest `ID` taken (APIBAN's are a few digits).
const MAX_ID: usize = 32;
/// Addresses taken from one page (APIBAN sends up to 250).
const MAX_ADDRESSES: usize = 5_000;
/// Longest address string (an IPv6 range is under 50 bytes).
const MAX_ADDRESS: usize = 64;

/// Reads an answer; anything else is an error (and the cursor stays).
/// Bounded: the body's size (by the caller), the addresses per page (the
/// page is refused beyond), each address's length (skipped beyond), and
/// the `ID`, which is kept and written into log lines.
pub fn parse_page(body: &[u8]) -> Result<Page> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(default, borrow)]
        ipaddress: Option<Vec<std::borrow::Cow<'a, str>>>,
        #[serde(rename = "ID", default)]
        id: Option<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).context("not an APIBAN answer")?;
    let list = raw.ipaddress.context("no `ipaddress` list")?;
    let id = match &raw.id {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if list.iter().any(|a| a == "no new bans") || id == "none" || list.is_empty() {
        return Ok(Page::NoNewBans);
    }
    if id.is_empty() || id.len() > MAX_ID || !id.bytes().all(|c| c.is_ascii_alphanumeric()) {
        bail!(
            "no usable `ID` to go on from ({:?}: at most {MAX_ID} letters or digits)",
            crate::text::escape(crate::text::bounded(&id, MAX_ID))
        );
    }
    if list.len() > MAX_ADDRESSES {
        bail!("{} addresses in one page, over {MAX_ADDRESSES}", list.len());
    }
    Ok(Page::Bans {
        addresses: list
            .into_iter()
            .filter(|a| a.len() <= MAX_ADDRESS)
            .map(|a| a.into_owned())
            .collect(),
        next: id,
    })
}

/// Requests no faster than APIBAN allows.
struct Pace(VecDeque<Instant>);

impl Pace {
    fn wait(&mut self, stop: &mpsc::Receiver<()>) -> bool {
        if self.0.len() >= RATE.0 {
            let oldest = self.0.pop_front().expect("non-empty");
            let until = oldest + RATE.1;
            if sleep_or_stop(stop, until.saturating_duration_since(Instant::now())) {
                return true;
            }
        }
        self.0.push_back(Instant::now());
        false
    }
}

/// Starts the feed, supervised (a panic costs a restart, from the last
/// cursor handed to the daemon).
pub fn start(s: Settings, cursor: String, tx: InboundTx, stop: mpsc::Receiver<()>) {
    super::supervise("apiban", stop, move |stop| {
        run(&s, cursor.clone(), &tx, stop);
        Ok(())
    });
}

fn run(s: &Settings, mut cursor: String, tx: &InboundTx, stop: &mpsc::Receiver<()>) {
    let agent = super::http_agent();
    let mut pace = Pace(VecDeque::new());
    let url = format!("{}/get", s.url.trim_end_matches('/'));
    loop {
        for _ in 0..MAX_PAGES {
            if pace.wait(stop) {
                return;
            }
            match fetch(&agent, &url, s, &cursor) {
                Ok(Page::NoNewBans) => break,
                Ok(Page::Bans { addresses, next }) => {
                    let mut bans = Vec::new();
                    let mut refused = 0;
                    for a in &addresses {
                        match crate::addr::parse_ban_net(a) {
                            Ok(net) => bans.push(RemoteDecision {
                                net,
                                left: Some(BAN_FOR),
                                reason: format!("APIBAN {} list", s.set),
                                // A third-party list: never widened to every
                                // port, even when this box bans on all ports.
                                scope: crate::bans::Scope::PortsOnly,
                            }),
                            Err(_) => refused += 1,
                        }
                    }
                    if refused > 0 {
                        tracing::warn!(
                            "APIBAN: {refused} entry(ies) that are no address to ban, skipped"
                        );
                    }
                    tracing::info!("APIBAN: {} new ban(s) up to ID {next}", bans.len());
                    if !deliver(tx, ORIGIN, bans) {
                        return;
                    }
                    if next == cursor {
                        break; // no progress: wait for the next poll
                    }
                    cursor = next;
                    let msg = Inbound::Cursor {
                        feed: ORIGIN.into(),
                        value: cursor.clone(),
                    };
                    if tx.blocking_send(msg).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "APIBAN: {}; bans in force stay, next try in {} s",
                        crate::text::redact_in(&format!("{e:#}"), &s.url),
                        s.interval.as_secs()
                    );
                    break;
                }
            }
        }
        if sleep_or_stop(stop, s.interval) {
            return;
        }
    }
}

fn fetch(agent: &ureq::Agent, url: &str, s: &Settings, id: &str) -> Result<Page> {
    let resp = agent
        .post(url)
        .set("Authorization", &format!("Bearer {}", s.key))
        .send_json(serde_json::json!({ "set": s.set, "id": id }));
    let resp = match resp {
        Ok(r) => r,
        // APIBAN answers "no new bans" with a 404 and the usual body.
        Err(ureq::Error::Status(404, r)) => r,
        Err(ureq::Error::Status(code @ (401 | 403), _)) => {
            bail!("the key was refused ({code}): check [apiban] key")
        }
        Err(e) => return Err(e.into()),
    };
    let resp = super::no_redirect(resp)?;
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)?;
    if body.len() as u64 > MAX_BODY {
        bail!("an answer over {MAX_BODY} bytes");
    }
    parse_page(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        assert_eq!(
            parse_page(br#"{"ipaddress":["192.0.2.1","2001:db8::1"],"ID":"1234"}"#).unwrap(),
            Page::Bans {
                addresses: vec!["192.0.2.1".into(), "2001:db8::1".into()],
                next: "1234".into()
            }
        );
        assert_eq!(
            parse_page(br#"{"ipaddress":["no new bans"],"ID":"none"}"#).unwrap(),
            Page::NoNewBans
        );
        assert_eq!(
            parse_page(br#"{"ipaddress":["1.2.3.4"],"ID":77}"#).unwrap(),
            Page::Bans {
                addresses: vec!["1.2.3.4".into()],
                next: "77".into()
            }
        );
        let long_id = format!(r#"{{"ipaddress":["1.2.3.4"],"ID":"{}"}}"#, "9".repeat(33));
        let many = format!(
            r#"{{"ipaddress":[{}"1.2.3.4"],"ID":"5"}}"#,
            "\"1.2.3.4\",".repeat(MAX_ADDRESSES)
        );
        for bad in [
            &b"<html>"[..],
            br#"{"ID":"5"}"#,
            br#"{"ipaddress":["1.2.3.4"],"ID":"../x"}"#,
            br#"{"ipaddress":["1.2.3.4"],"ID":"12\u001b[31m"}"#,
            br#"{"ipaddress":[1,2],"ID":"5"}"#,
            long_id.as_bytes(),
            many.as_bytes(),
        ] {
            assert!(parse_page(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // An over-long entry is skipped; the page stands.
        let long_entry = format!(
            r#"{{"ipaddress":["{}","192.0.2.1"],"ID":"6"}}"#,
            "1".repeat(65)
        );
        assert_eq!(
            parse_page(long_entry.as_bytes()).unwrap(),
            Page::Bans {
                addresses: vec!["192.0.2.1".into()],
                next: "6".into()
            }
        );
    }
}
