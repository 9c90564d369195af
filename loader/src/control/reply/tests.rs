//! The replies keep the JSON that `json!` made before they were typed:
//! `status --json` and `list --json` are read by scripts.
use super::*;
use serde_json::json;

/// A status with one of everything: a log jail, a pseudo-jail, a ban of
/// each kind, an origin from elsewhere, FreeSWITCH's discovery.
fn status() -> Status {
    let ban = |address: &str, expires_in_secs: Option<u64>| BanEntry {
        address: address.into(),
        all_ports: expires_in_secs.is_none(),
        expires_in_secs,
        line: "SIP auth failure".into(),
        ports_only: false,
        reason: "3 failures".into(),
    };
    let actions = |banned: Vec<BanEntry>, pseudo: bool| Actions {
        currently_banned: banned.len(),
        banned,
        banned_not_listed: 0,
        refused_never_ban: pseudo.then_some(2),
        skipped_over_budget: pseudo.then_some(1),
        total_banned: 7,
    };
    Status {
        bans: 2,
        dry_run: false,
        fleet: Fleet {
            redis: json!({"refused": null, "rejected": {"unsigned": 0}, "restarts": {}}),
            workers: json!({}),
        },
        freeswitch: Some(Freeswitch {
            conf_dir: "/etc/freeswitch".into(),
            log: Some(Found {
                from: "switch.conf.xml: log-dir".into(),
                value: "/var/log/freeswitch/freeswitch.log".into(),
            }),
            ports: vec![Found {
                from: "internal.xml: sip-port".into(),
                value: 5060,
            }],
            trunks: vec![Trunk {
                addresses: vec!["198.51.100.20".parse().unwrap()],
                from: "gw.xml: proxy".into(),
                gateway: "carrier".into(),
                host: "sip.carrier.example".into(),
            }],
            warnings: vec!["cannot read x.xml".into()],
        }),
        jails: vec![
            JailStatus {
                actions: actions(vec![ban("192.0.2.7", Some(600))], false),
                filter: Some(Filter {
                    ambiguous: 1,
                    currently_failed: 3,
                    files: vec!["/var/log/freeswitch/freeswitch.log".into()],
                    ignored: 4,
                    lines: 100,
                    skewed: 5,
                    skipped_long_lines: 6,
                    too_old: 7,
                    total_failed: 41,
                }),
                name: "freeswitch".into(),
            },
            JailStatus {
                actions: actions(vec![ban("192.0.2.0/24", None)], true),
                filter: None,
                name: "manual".into(),
            },
        ],
        ports: vec![5060, 5080],
        remote: [(
            "crowdsec".to_owned(),
            RemoteOrigin {
                bans: 10,
                ipv4_addresses: 12,
                ipv6_64s: 0,
                over_cap: 1,
                refused_never_ban: 2,
            },
        )]
        .into(),
        sip_budget_drops: Some([("invalid".to_owned(), 4), ("OPTIONS".to_owned(), 9)].into()),
        trust: json!({"esl": {"state": "connected"}, "registrations": 3}),
    }
}

/// The same status as the daemon built it with `json!` before: the shape
/// the README's `status --json` names (`filter.ambiguous`, `skewed`,
/// `refused_never_ban`, `over_cap` per origin, `fleet.redis.rejected`,
/// `fleet.workers`), nulls and absent keys included.
fn as_json_built_it() -> serde_json::Value {
    let ban = |address: &str, expires: serde_json::Value| {
        json!({
            "address": address,
            "expires_in_secs": expires,
            "reason": "3 failures",
            "line": "SIP auth failure",
            "all_ports": expires.is_null(),
            "ports_only": false,
        })
    };
    json!({
        "jails": [
            {
                "name": "freeswitch",
                "filter": {
                    "currently_failed": 3, "total_failed": 41,
                    "files": ["/var/log/freeswitch/freeswitch.log"],
                    "lines": 100, "ignored": 4, "too_old": 7, "skewed": 5,
                    "ambiguous": 1, "skipped_long_lines": 6,
                },
                "actions": {
                    "currently_banned": 1, "total_banned": 7,
                    "banned": [ban("192.0.2.7", json!(600))],
                    "banned_not_listed": 0,
                },
            },
            {
                "name": "manual",
                "filter": null,
                "actions": {
                    "currently_banned": 1, "total_banned": 7,
                    "skipped_over_budget": 1, "refused_never_ban": 2,
                    "banned": [ban("192.0.2.0/24", json!(null))],
                    "banned_not_listed": 0,
                },
            },
        ],
        "bans": 2,
        "dry_run": false,
        "trust": {"esl": {"state": "connected"}, "registrations": 3},
        "sip_budget_drops": {"invalid": 4, "OPTIONS": 9},
        "ports": [5060, 5080],
        "freeswitch": {
            "conf_dir": "/etc/freeswitch",
            "ports": [{"value": 5060, "from": "internal.xml: sip-port"}],
            "trunks": [{"gateway": "carrier", "host": "sip.carrier.example",
                        "addresses": ["198.51.100.20"], "from": "gw.xml: proxy"}],
            "log": {"value": "/var/log/freeswitch/freeswitch.log",
                    "from": "switch.conf.xml: log-dir"},
            "warnings": ["cannot read x.xml"],
        },
        "remote": {"crowdsec": {"bans": 10, "ipv4_addresses": 12, "ipv6_64s": 0,
                                "refused_never_ban": 2, "over_cap": 1}},
        "fleet": {
            "redis": {"refused": null, "rejected": {"unsigned": 0}, "restarts": {}},
            "workers": {},
        },
    })
}

#[test]
fn status_keeps_its_json_byte_for_byte() {
    let typed = status();
    let before = as_json_built_it();
    // Same bytes, compact and pretty (`status --json` prints it pretty).
    assert_eq!(
        serde_json::to_string(&typed).unwrap(),
        serde_json::to_string(&before).unwrap()
    );
    assert_eq!(
        serde_json::to_string_pretty(&typed).unwrap(),
        serde_json::to_string_pretty(&before).unwrap()
    );
    // And it reads back as itself, from the daemon's answer line.
    let line =
        serde_json::to_string(&Response::ok(Reply::Status(Box::new(typed.clone())))).unwrap();
    let back: Response<Status> = serde_json::from_str(&line).unwrap();
    assert_eq!(back.data, Some(typed));
}

#[test]
fn without_freeswitch_it_is_null() {
    let mut s = status();
    s.freeswitch = None;
    let v = serde_json::to_value(&s).unwrap();
    assert!(v.as_object().unwrap()["freeswitch"].is_null());
    assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
}

#[test]
fn other_replies_keep_their_json() {
    let cases = [
        (
            Reply::Banned(Banned {
                banned: "192.0.2.7".into(),
            }),
            json!({"banned": "192.0.2.7"}),
        ),
        (
            Reply::Unbanned(Unbanned {
                fleet: false,
                origins: vec!["crowdsec".into()],
                unbanned: "192.0.2.7".into(),
            }),
            json!({"unbanned": "192.0.2.7", "origins": ["crowdsec"], "fleet": false}),
        ),
        (
            Reply::Allowed(Allowed {
                allowed: "10.0.0.0/8".into(),
            }),
            json!({"allowed": "10.0.0.0/8"}),
        ),
        (
            Reply::Disallowed(Disallowed {
                disallowed: "10.0.0.0/8".into(),
            }),
            json!({"disallowed": "10.0.0.0/8"}),
        ),
        (
            Reply::Reloaded(Reloaded { reloaded: true }),
            json!({"reloaded": true}),
        ),
        (
            Reply::Notes(Notes {
                notes: vec![Note {
                    address: "192.0.2.7".into(),
                    jail: "freeswitch".into(),
                    reason: "3 failures".into(),
                }],
            }),
            json!({"notes": [["192.0.2.7", "freeswitch", "3 failures"]]}),
        ),
    ];
    for (reply, before) in cases {
        let line = serde_json::to_string(&reply).unwrap();
        assert_eq!(line, serde_json::to_string(&before).unwrap());
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), reply);
    }
}

/// A refusal: the error, and data null, as before.
#[test]
fn a_refusal_has_null_data() {
    let r = Response::<Reply>::err(&anyhow::anyhow!("no jail named 'x'"));
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"ok":false,"error":"no jail named 'x'","data":null}"#
    );
    let back: Response<Status> = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!((back.ok, back.data), (false, None));
}
