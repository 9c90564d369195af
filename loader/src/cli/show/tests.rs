//! What `status` and `list` print.
use super::*;

const HOSTILE: &str = "evil\x1b[2J\rgone\u{9b}31m";

fn clean(text: &str) {
    assert!(
        !text.contains(['\x1b', '\r', '\u{9b}']),
        "raw control characters: {text:?}"
    );
    assert!(text.contains("evil\\u{1b}[2J\\u{d}gone"), "{text}");
}

#[test]
fn status_escapes_text_from_outside() {
    let ban = json!({"address": HOSTILE, "all_ports": false, "expires_in_secs": null,
                     "line": HOSTILE, "ports_only": false, "reason": HOSTILE});
    let data: Status = serde_json::from_value(json!({
        "jails": [{
            "name": HOSTILE,
            "filter": {"currently_failed": 1, "total_failed": 2, "files": [HOSTILE],
                       "ambiguous": 0, "ignored": 0, "lines": 3, "skewed": 0,
                       "skipped_long_lines": 0, "too_old": 0},
            "actions": {"currently_banned": 1, "total_banned": 1,
                        "banned": [ban], "banned_not_listed": 0},
        }],
        "bans": 1,
        "dry_run": false,
        "ports": [5060],
        "remote": {HOSTILE: {"bans": 3, "ipv4_addresses": 3, "ipv6_64s": 0,
                             "over_cap": 0, "refused_never_ban": 0}},
        "freeswitch": {"conf_dir": HOSTILE, "ports": [{"value": 5060, "from": HOSTILE}],
                       "trunks": [{"gateway": HOSTILE, "host": HOSTILE,
                                   "addresses": ["192.0.2.9"], "from": HOSTILE}],
                       "log": {"value": HOSTILE, "from": HOSTILE}, "warnings": [HOSTILE]},
        "fleet": {"redis": null, "workers": {}},
    }))
    .unwrap();
    let text = status_text(&data, false);
    clean(&text);
    // Every place a hostile text can be shown is shown, escaped (a
    // trunk's addresses are addresses: they cannot carry any).
    assert_eq!(text.matches("evil\\u{1b}").count(), 12, "{text}");
    clean(&status_text(&data, true));
}

#[test]
fn list_escapes_a_ban_s_jail_and_reason() {
    let mut notes = BanNotes::new();
    let page = json!({"notes": [["192.0.2.1", HOSTILE, format!("3 failures: {HOSTILE}")]]});
    let page = serde_json::from_value(page).unwrap();
    assert_eq!(add_notes(&mut notes, page), 1);
    let (jail, reason) = shown_note(&notes, "192.0.2.1");
    clean(&jail);
    clean(&reason);
    assert_eq!(shown_note(&notes, "192.0.2.2"), Default::default());
    // JSON output keeps the raw text: serde escapes it as JSON.
    assert_eq!(notes["192.0.2.1"].0, HOSTILE);
}

/// A status whose `trust` is what the daemon sends (every key), each
/// number distinct, so each can be looked for in the text.
fn trusting_status() -> Status {
    serde_json::from_value(json!({
        "jails": [], "bans": 0, "dry_run": false, "ports": [5060], "remote": {},
        "freeswitch": null, "fleet": {"redis": null, "workers": {}},
        "trust": {
            "esl": {"state": "down", "address": "127.0.0.1:8021", "from": "[trust] esl",
                    "last_error": "connection refused", "connects": 11, "events": 12,
                    "bad_events": 13, "refused_peers": 14},
            "registrations": 21, "registered_addresses": 22, "registrations_refused": 23,
            "operator": 24, "map_write_failures": 25, "trusted": 26,
            "overload": {"overloaded": true, "entered": 31, "sip_packets_per_second": 32,
                         "overload_pps": 33, "shed": 34},
        },
        "sip_budget_drops": {"invalid": 41, "REGISTER": 42, "INVITE": 43, "OPTIONS": 44,
                             "SUBSCRIBE": 45, "other": 46},
    }))
    .unwrap()
}

/// Every leaf of a JSON value, with its path.
fn leaves(v: &serde_json::Value, path: String, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                leaves(v, format!("{path}.{k}"), out);
            }
        }
        _ => out.push((path, v.clone())),
    }
}

/// The text `status` shows what `status --json` has about trust, the
/// overload and the budgets' drops: each value is in it.
#[test]
fn status_shows_all_of_trust_and_the_budgets_drops() {
    let data = trusting_status();
    let text = status_text(&data, false);
    let mut all = Vec::new();
    leaves(&data.trust, "trust".into(), &mut all);
    let drops = serde_json::to_value(&data.sip_budget_drops).unwrap();
    leaves(&drops, "sip_budget_drops".into(), &mut all);
    assert_eq!(all.len(), 25);
    for (path, v) in all {
        let shown = match &v {
            serde_json::Value::Bool(true) => "YES".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            _ => v.to_string(),
        };
        assert!(text.contains(&shown), "{path} = {v} not shown:\n{text}");
    }
    for (name, n) in [("invalid", 41), ("INVITE", 43), ("other", 46)] {
        assert!(text.contains(&format!("{name} {n}")), "{text}");
    }
    assert!(text.contains("34 packet(s) shed"), "{text}");
}

/// Without an overload threshold the overload is off, its shedding still
/// counted; an event socket turned off shows no connection counts.
#[test]
fn status_without_overload_or_event_socket() {
    let mut data = trusting_status();
    data.trust["overload"]["overload_pps"] = json!(0);
    data.trust["esl"] = json!({"state": "off", "connects": 0, "events": 0,
                               "bad_events": 0, "refused_peers": 0});
    data.dry_run = true;
    let text = status_text(&data, false);
    assert!(
        text.contains("off (overload_pps = 0); 34 packet(s) shed"),
        "{text}"
    );
    assert!(text.contains("event socket off"), "{text}");
    assert!(!text.contains("refused peer"), "{text}");
    assert!(text.contains("(would-be drops)"), "{text}");
}
