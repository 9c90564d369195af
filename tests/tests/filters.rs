//! The built-in filters for other SIP servers: `asterisk` against every
//! sample of fail2ban's own asterisk filter (with fail2ban's expected host),
//! through the library and through `sipguard test-filter`; `asterisk` and
//! `kamailio` jails banning from real log files through the daemon.
use anyhow::{Context as _, Result};
use sipguard::logs::filter::{Filter, Outcome};
use sipguard_tests::{
    daemon::cli_ok,
    fixture::{wait_until, Setup},
    netns::*,
    Sandbox,
};
use std::{collections::BTreeMap, io::Write as _};

/// fail2ban's sample log for a filter: each line with the host fail2ban
/// expects (`None`: must not match), from its `# failJSON:` comments.
fn fail2ban_samples(name: &str) -> Result<Vec<(String, Option<String>)>> {
    let path = format!("/usr/lib/python3/dist-packages/fail2ban/tests/files/logs/{name}");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("{path}: fail2ban's samples (cargo xtask setup installs fail2ban)")
    })?;
    let mut out = Vec::new();
    let mut expect: Option<serde_json::Value> = None;
    for line in text.lines() {
        if let Some(json) = line.strip_prefix("# failJSON:") {
            expect = Some(serde_json::from_str(json.trim())?);
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else if let Some(e) = expect.take() {
            let host = (e["match"] == true).then(|| e["host"].as_str().unwrap_or("").to_owned());
            out.push((line.to_owned(), host));
        }
    }
    Ok(out)
}

#[test]
fn asterisk_matches_every_fail2ban_sample_with_its_host() -> Result<()> {
    let samples = fail2ban_samples("asterisk")?;
    assert!(samples.len() >= 40, "{} samples", samples.len());
    let filter = Filter::builtin("asterisk")?;
    for (line, want) in &samples {
        let got = match filter.check(line) {
            Outcome::Hit { host, .. } => Some(host.to_string()),
            _ => None,
        };
        assert_eq!(&got, want, "{line}");
    }
    // The same through the CLI, as an operator tries it.
    let sb = Sandbox::bare()?;
    let log = sb.path("asterisk.log");
    let text: String = samples.iter().map(|(l, _)| format!("{l}\n")).collect();
    std::fs::write(&log, text)?;
    let out = cli_ok(
        &sb,
        &[
            "test-filter",
            log.to_str().unwrap(),
            "--filter",
            "asterisk",
            "--json",
        ],
    )?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for host in samples.iter().filter_map(|(_, h)| h.clone()) {
        *want.entry(host).or_default() += 1;
    }
    let got: BTreeMap<String, u64> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_owned(),
                h["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // FreeSWITCH's filter finds nothing in Asterisk's log.
    let out = cli_ok(
        &sb,
        &[
            "test-filter",
            log.to_str().unwrap(),
            "--filter",
            "freeswitch",
            "--json",
        ],
    )?;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)?["matched"],
        0
    );
    Ok(())
}

#[test]
fn asterisk_and_kamailio_jails_ban_through_the_daemon() -> Result<()> {
    let s = Setup::new(
        r#"
[jails.asterisk]
logpath = "{dir}/asterisk.log"
filter = "asterisk"
maxretry = 3
bantime = "1h"

[jails.kamailio]
logpath = "{dir}/kamailio.log"
filter = "kamailio"
maxretry = 2
bantime = "1h"
"#,
    )?;
    let now = chrono::Local::now();
    let stamp = now.format("%Y-%m-%d %H:%M:%S");
    let syslog = now.format("%b %e %H:%M:%S");
    let mut asterisk = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.sb.path("asterisk.log"))?;
    for i in 0..3 {
        writeln!(
            asterisk,
            "[{stamp}] NOTICE[1638] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:10{i}@x>' failed for '{CLIENT_V4}:5060' (callid: c{i}) - Failed to authenticate"
        )?;
    }
    let mut kamailio = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.sb.path("kamailio.log"))?;
    for _ in 0..2 {
        writeln!(
            kamailio,
            "{syslog} sbc /usr/sbin/kamailio[77]: ALERT: <script>: ALERT: pike blocking INVITE from sip:a@b (IP:{OTHER_V4}:5060)"
        )?;
    }
    drop((asterisk, kamailio));
    wait_until(5, "both banned", || {
        let mut b = s.banned()?;
        b.sort();
        Ok(b == [CLIENT_V4, OTHER_V4])
    })?;
    let st = s.json(&["status"])?;
    let jails: Vec<&str> = st["jails"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["actions"]["currently_banned"] == 1)
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert_eq!(jails, ["asterisk", "kamailio"]);
    Ok(())
}
