//! Overload shedding end to end: a flood from one source pushes the box
//! over `[trust] overload_pps`; the daemon sets the overload flag, the
//! flooder is held to `untrusted_rate` without being banned for it, a
//! trusted phone keeps its packets, and the state ends once calm, told in
//! the log, `status` and the metrics.
use anyhow::Result;
use sipguard_tests::{
    fixture::{wait_until, Setup},
    netns::*,
};
use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

/// Every 5 ms for `secs`: `flood` datagrams from `flooder` to `to`, and
/// one from `phone` to `phone_to`; returns (phone sent, phone received).
fn run(
    flooder: &UdpSocket,
    to: &UdpSocket,
    phone: &UdpSocket,
    phone_to: &UdpSocket,
    flood: usize,
    secs: f64,
) -> Result<(usize, usize)> {
    let (dst, pdst) = (to.local_addr()?, phone_to.local_addr()?);
    to.set_nonblocking(true)?;
    phone_to.set_nonblocking(true)?;
    let mut buf = [0u8; 2048];
    let (mut sent, mut got) = (0, 0);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs && sent < 100_000 {
        for _ in 0..flood {
            flooder.send_to(b"OPTIONS sip:flood@x SIP/2.0\r\n\r\n", dst)?;
        }
        phone.send_to(b"OPTIONS sip:phone@x SIP/2.0\r\n\r\n", pdst)?;
        sent += 1;
        std::thread::sleep(Duration::from_millis(5));
        while to.recv(&mut buf).is_ok() {}
        while phone_to.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    while phone_to.recv(&mut buf).is_ok() {
        got += 1;
    }
    Ok((sent, got))
}

#[test]
fn overload_sheds_the_untrusted_and_keeps_the_trusted() -> Result<()> {
    let config = "[flood]\nrate = 1000\nburst = 1000\nescalate_after = 2\n\
         [trust]\noverload_pps = 300\nuntrusted_rate = 10\nuntrusted_burst = 10\n";
    let mut s = Setup::new(config)?;
    // The webhook receiver lives in the server's namespace, where the daemon runs.
    let web = sipguard_tests::http::Server::recorder(&s.pair.server)?;
    s.sb.write_config(&format!(
        "[notify]\nwebhooks = [\"{}\"]\n{config}",
        web.url("/hook")
    ))?;
    s.restart()?;
    let pair = &s.pair;
    s.cli(&["trust", OTHER_V4])?;
    let sip = udp_socket(&pair.server, addr(SERVER_V4, 5060))?;
    let phone_sip = udp_socket(&pair.server, addr(SERVER_V4, 5080))?;
    let flooder = udp_socket(&pair.client, addr(CLIENT_V4, 0))?;
    let phone = udp_socket(&pair.client, addr(OTHER_V4, 0))?;
    // ~2 000 packets/s from the flooder, ~200/s from the phone, 3 s.
    let (sent, got) = run(&flooder, &sip, &phone, &phone_sip, 10, 3.0)?;
    let status: serde_json::Value = serde_json::from_str(&s.cli(&["status", "--json"])?)?;
    assert_eq!(status["trust"]["overload"]["overloaded"], true, "{status}");
    let shed = s.counter("drop_shed")?;
    assert!(shed > 2000, "the flooder was shed: {shed}");
    // `status` shows what was shed, JSON and text alike (the flood is over).
    assert_eq!(status["trust"]["overload"]["shed"], shed, "{status}");
    let human = s.cli(&["status"])?;
    assert!(
        human.contains("YES: untrusted sources shed")
            && human.contains(&format!("{shed} packet(s) shed"))
            && human.contains("Over budget:         invalid 0, REGISTER 0"),
        "{human}"
    );
    assert!(
        got * 100 >= sent * 95,
        "the trusted phone kept >= 95 % of its packets: {got} of {sent}"
    );
    assert!(s.banned()?.is_empty(), "nobody banned for being shed");
    assert!(
        s.daemon.log().contains("overloaded: "),
        "{}",
        s.daemon.log()
    );
    // Calm: the state ends (below 80 % for 2 s).
    wait_until(10, "overload over", || {
        let v: serde_json::Value = serde_json::from_str(&s.cli(&["status", "--json"])?)?;
        Ok(v["trust"]["overload"]["overloaded"] == false)
    })?;
    assert!(s.daemon.log().contains("overload over: "));
    let events: Vec<String> = std::iter::from_fn(|| web.next(Duration::from_secs(5)))
        .take(2)
        .map(|p| serde_json::from_str::<serde_json::Value>(&p.body).unwrap()["event"].to_string())
        .collect();
    assert_eq!(events, ["\"overload\"", "\"overload_end\""], "notified");
    assert_eq!(s.metric("sipguard_overload_entered_total")?, Some(1.0));
    assert_eq!(s.metric("sipguard_overloaded")?, Some(0.0));
    Ok(())
}
