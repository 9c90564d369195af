//! How this box's exports are named in CrowdSec, so that any sipguard
//! bouncer can tell what they rest on and whose they are:
//! `sipguard/<jail> machine=<id>`, and ` ports-only` after it for a ban on
//! packet evidence (a flood, a scanner: a source anyone can forge). The
//! LAPI keeps a decision's scenario as sent and lists it in the stream.
//!
//! A writer of the LAPI could forge the marks: `ports-only` only narrows a
//! ban, and `machine=` with this box's id only makes its bouncer skip a
//! decision (the writer could as well delete it).
use crate::bans::Scope;

pub const PREFIX: &str = "sipguard/";
const MACHINE: &str = "machine=";
const PORTS_ONLY: &str = "ports-only";

/// The scenario of an export of `jail`'s ban by `machine`.
pub fn scenario(jail: &str, machine: &str, scope: Scope) -> String {
    let mut s = format!("{PREFIX}{jail} {MACHINE}{machine}");
    if scope == Scope::PortsOnly {
        s.push(' ');
        s.push_str(PORTS_ONLY);
    }
    s
}

/// What a sipguard scenario says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark<'a> {
    /// The machine that exported it (empty: not said).
    pub machine: &'a str,
    pub ports_only: bool,
}

/// The marks of a scenario; `None` when it is no sipguard export.
pub fn parse(scenario: &str) -> Option<Mark<'_>> {
    let mut words = scenario.split(' ');
    words.next()?.strip_prefix(PREFIX)?;
    let mut m = Mark {
        machine: "",
        ports_only: false,
    };
    for w in words {
        if let Some(id) = w.strip_prefix(MACHINE) {
            m.machine = id;
        } else if w == PORTS_ONLY {
            m.ports_only = true;
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip() {
        let s = scenario("sip-flood", "box-a", Scope::PortsOnly);
        assert_eq!(s, "sipguard/sip-flood machine=box-a ports-only");
        assert_eq!(
            parse(&s),
            Some(Mark {
                machine: "box-a",
                ports_only: true
            })
        );
        let log = scenario("freeswitch", "b", Scope::Ports);
        assert_eq!(
            parse(&log),
            Some(Mark {
                machine: "b",
                ports_only: false
            })
        );
        assert_eq!(parse("crowdsecurity/ssh-bf"), None);
        assert_eq!(parse("manual 'ban' from 'sipguard/x machine=a'"), None);
        assert_eq!(parse("sipguard/freeswitch").unwrap().machine, "");
    }
}
