//! End to end: the Prometheus endpoint, scraped over HTTP inside the
//! server's namespace after real traffic, agrees with `sipguard stats` and
//! `status`, and exposes no addresses.
use anyhow::Result;
use sipguard_tests::{
    fixture::{append, failures, sample, wait_until, Setup, FREESWITCH_JAIL},
    netns::*,
};

#[test]
fn metrics_agree_with_stats_after_real_traffic() -> Result<()> {
    let s = Setup::new(FREESWITCH_JAIL)?;
    let sip = udp_socket(&s.pair.server, addr(SERVER_V4, 5060))?;
    let attacker = udp_socket(&s.pair.client, addr(CLIENT_V4, 0))?;
    let phone = udp_socket(&s.pair.client, addr(OTHER_V4, 0))?;

    append(&s.sb, &failures(CLIENT_V4, 3))?;
    wait_until(5, "banned by the log", || Ok(s.banned()? == [CLIENT_V4]))?;
    assert_eq!(udp_delivered(&attacker, &sip, 40)?, 0);
    assert_eq!(udp_delivered(&phone, &sip, 25)?, 25);
    s.cli(&["ban", "2001:db8::/64", "--for", "1h"])?;
    s.cli(&["unban", "2001:db8::/64"])?;

    let (status, text) = s.http_get("/metrics")?;
    assert!(status.contains("200 OK"), "{status}");
    let stats = s.json(&["stats"])?;
    for action in ["drop_banned", "pass_not_banned"] {
        let series = format!("sipguard_xdp_packets_total{{action=\"{action}\"}}");
        assert_eq!(
            sample(&text, &series),
            stats["counters"][action]["packets"].as_f64(),
            "{series}\n{text}"
        );
        let series = format!("sipguard_xdp_bytes_total{{action=\"{action}\"}}");
        assert_eq!(
            sample(&text, &series),
            stats["counters"][action]["bytes"].as_f64(),
            "{series}"
        );
    }
    assert!(sample(&text, "sipguard_xdp_packets_total{action=\"drop_banned\"}") >= Some(40.0));
    for (series, want) in [
        (
            "sipguard_active_bans{jail=\"freeswitch\",family=\"ipv4\"}",
            1.0,
        ),
        (
            "sipguard_bans_total{jail=\"freeswitch\",cause=\"log\"}",
            1.0,
        ),
        ("sipguard_bans_total{jail=\"manual\",cause=\"manual\"}", 1.0),
        (
            "sipguard_unbans_total{jail=\"manual\",cause=\"operator\"}",
            1.0,
        ),
        (
            "sipguard_log_lines_total{jail=\"freeswitch\",result=\"matched\"}",
            3.0,
        ),
        (
            "sipguard_log_lines_total{jail=\"freeswitch\",result=\"read\"}",
            3.0,
        ),
        ("sipguard_ban_latency_seconds_count", 1.0),
        ("sipguard_map_entries{map=\"banned_v4\"}", 1.0),
        ("sipguard_map_capacity{map=\"banned_v4\"}", 1048576.0),
        ("sipguard_dry_run", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
    }
    assert!(text.contains("sipguard_build_info{version=\""));
    // A latency is a fraction of a second, not a stalled loop.
    assert!(sample(&text, "sipguard_ban_latency_seconds_sum") < Some(1.0));
    // No address in any series.
    assert!(
        !text.contains(CLIENT_V4) && !text.contains("2001:db8"),
        "{text}"
    );

    // Only GET /metrics (and /) are served.
    assert!(s.http_get("/nothing")?.0.contains("404"));
    Ok(())
}

#[test]
fn metrics_can_be_moved_or_turned_off() -> Result<()> {
    let s = Setup::new(&format!(
        "[metrics]\nlisten = \"127.0.0.1:9799\"\n{FREESWITCH_JAIL}"
    ))?;
    assert!(http_get_ok(&s, "127.0.0.1:9799"));
    assert!(!http_get_ok(&s, "127.0.0.1:9713"));
    drop(s);
    let s = Setup::new(&format!("[metrics]\nenabled = false\n{FREESWITCH_JAIL}"))?;
    assert!(!http_get_ok(&s, "127.0.0.1:9713"));
    // A listen address that is not one is a configuration error.
    s.sb.write_config("[metrics]\nlisten = \"localhost\"\n")?;
    let err = s.cli(&["reload"]).unwrap_err().to_string();
    assert!(err.contains("listen"), "{err}");
    Ok(())
}

fn http_get_ok(s: &Setup, host: &str) -> bool {
    sipguard_tests::fixture::http_get(&s.pair.server, host, "/metrics")
        .is_ok_and(|(status, _)| status.contains("200"))
}

/// The dashboard in the repository asks only for series the daemon exposes.
#[test]
fn the_grafana_dashboard_uses_exposed_series() -> Result<()> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../loader/dist/grafana-dashboard.json"
    ))?;
    let dash: serde_json::Value = serde_json::from_str(&text)?;
    let exposed = [
        "sipguard_xdp_packets_total",
        "sipguard_xdp_bytes_total",
        "sipguard_active_bans",
        "sipguard_bans_total",
        "sipguard_unbans_total",
        "sipguard_log_lines_total",
        "sipguard_ban_latency_seconds_bucket",
        "sipguard_map_entries",
        "sipguard_map_capacity",
        "sipguard_xdp_lost_reports_total",
        "sipguard_bans_refused_total",
        "sipguard_dry_run",
        "sipguard_build_info",
        "sipguard_sip_packets_per_second",
        "sipguard_overloaded",
        "sipguard_trusted_sources",
        "sipguard_overload_entered_total",
    ];
    let mut seen = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("sipguard_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                assert!(exposed.contains(&name.as_str()), "{name} is not exposed");
                seen += 1;
            }
        }
    }
    assert!(seen >= 12);
    Ok(())
}
