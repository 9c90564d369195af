//! `cargo xtask bench xdp`, admission control (issue 23): what the
//! invalid-message budget, the per-method budgets, trusted sources and
//! overload shedding cost per packet, each case beside the limiter-only
//! clean path of today in the same run. Every case is a real verdict, and
//! each measured run is checked against the program's own verdict counters,
//! so a case cannot silently measure another path.
use crate::report::Section;
use anyhow::{bail, Context as _, Result};
use common::{
    counter, method, rate_key_v4, Config, SipBudget, SipLimits, TrustConfig, TrustEntry,
    CONFIG_OVERLOADED, SIP_METHODS_ON, TRUST_OPERATOR,
};
use sipguard::kernel::{clock, trust::TrustMaps};
use sipguard_tests::{kernel::TestProgram, packet::*};

/// As the rate limiter's section (xdp.rs).
const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;
/// Packets sent before each measured run: a new source's state made, a
/// budget that a drop case measures spent.
const WARM_UP: u32 = 1_000;
/// Packets of a measured run of a drop case that may pass anyway: what its
/// budget earns back while the run lasts (0.2 s at 20/s: 4).
const REFILL_SLACK: u64 = 100;
/// The bound on what admission control adds to the clean path.
const TARGET_NS: f64 = 10.0;
const PASS: u32 = 2;
const DROP: u32 = 1;

/// The limiter on and never over (as xdp.rs's `limiter_on`): 500/s with a
/// burst no run spends; the shipped burst (2000) would drop within a run.
fn limiter_on() -> Config {
    Config::default().with_rate(500, u32::MAX)
}

/// A budget no run spends (see `limiter_on`).
const NEVER_OVER: (u32, u32) = (500, u32::MAX);

/// One case: the program's settings, the packet, and the verdict it must get.
struct Case {
    name: String,
    src: [u8; 4],
    frame: Vec<u8>,
    config: Config,
    limits: SipLimits,
    tiers: TrustConfig,
    /// The source is in the `trusted` map.
    trusted: bool,
    /// The verdict counter every measured packet must land in.
    verdict: u32,
    action: u32,
    /// Part of the clean path held to `TARGET_NS`.
    clean: bool,
    /// A method class whose budget state the source must have after a run
    /// (the packet was charged to that budget, not only classified).
    charged: Option<u32>,
}

fn sip(src: [u8; 4], body: &[u8]) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(src, UDP, 0, 0, &udp_with(5060, body)))
}

const REGISTER: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:100@example.com>;tag=1\r\nTo: <sip:100@example.com>\r\n\
Call-ID: 1@192.0.2.1\r\nCSeq: 1 REGISTER\r\nContact: <sip:100@192.0.2.1:5060>\r\n\
Expires: 3600\r\nContent-Length: 0\r\n\r\n";
const OPTIONS: &[u8] = b"OPTIONS sip:100@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
/// An HTTP probe to the SIP port: a method token, but no SIP URI scheme.
const INVALID: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const CRLF2: &[u8] = b"\r\n\r\n";
/// A STUN binding request (RFC 5389): no attributes, the magic cookie.
const STUN: &[u8] = &[
    0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
];

pub fn run(out: &mut Section) -> Result<()> {
    // The shipped values, from the built-in configuration itself.
    let shipped = sipguard::config::Config::parse(sipguard::config::DEFAULT_TOML, "built-in")?;
    let invalid_only = shipped.flood.sip_limits();
    if invalid_only.flags == 0 {
        bail!("the built-in configuration has no invalid-message budget to measure");
    }
    let mut all_on = invalid_only;
    all_on.flags |= SIP_METHODS_ON;
    all_on.methods[method::REGISTER as usize] = SipBudget::new(NEVER_OVER.0, NEVER_OVER.1);
    all_on.methods[method::OPTIONS as usize] = SipBudget::new(1, 1);
    let shipped_tiers = shipped.trust.kernel();
    // Trusted: the shipped rate with a burst no run spends (the shipped
    // 20 000 would be spent within a run); overload: the shipped budget.
    let (untrusted_rate, untrusted_burst) =
        (shipped.trust.untrusted_rate, shipped.trust.untrusted_burst);
    let tiers = TrustConfig {
        // The daemon renews a one-second lease; the bench holds it on.
        overload_until_ns: u64::MAX,
        ..TrustConfig::new(
            (shipped.trust.trusted_rate, u32::MAX),
            (untrusted_rate, untrusted_burst),
        )
    };
    let overloaded = Config {
        flags: CONFIG_OVERLOADED,
        ..limiter_on()
    };
    let normal_1pps = Config::default().with_rate(1, 1);

    let a = [192, 0, 2, 1];
    let register = sip(a, REGISTER);
    let case = |name: String, src: [u8; 4], frame: Vec<u8>| Case {
        name,
        src,
        frame,
        config: limiter_on(),
        limits: all_on,
        tiers: shipped_tiers,
        trusted: false,
        verdict: counter::PASS_NOT_BANNED,
        action: PASS,
        clean: false,
        charged: None,
    };
    let cases = [
        Case {
            limits: SipLimits::default(),
            tiers: TrustConfig::default(),
            ..case(
                "baseline: limiter on, admission off (no budgets, no trust config), REGISTER pass"
                    .into(),
                a,
                register.clone(),
            )
        },
        Case {
            limits: invalid_only,
            tiers: TrustConfig::default(),
            clean: true,
            ..case(
                format!(
                    "+ invalid-message budget (shipped: {}/s, burst {}), REGISTER pass",
                    shipped.flood.invalid_rate, shipped.flood.invalid_burst
                ),
                a,
                register.clone(),
            )
        },
        Case {
            tiers: TrustConfig::default(),
            clean: true,
            charged: Some(method::REGISTER),
            ..case(
                format!(
                    "+ per-method budgets (REGISTER {}/s, a burst no run spends), REGISTER under its budget, pass",
                    NEVER_OVER.0
                ),
                a,
                register.clone(),
            )
        },
        Case {
            clean: true,
            ..case(
                format!(
                    "+ trust config (shipped: trusted {}/s burst {}), source not trusted, pass",
                    shipped.trust.trusted_rate, shipped.trust.trusted_burst
                ),
                a,
                register.clone(),
            )
        },
        Case {
            clean: true,
            trusted: true,
            ..case(
                "+ trust config, source in `trusted`, under the normal budget: pass (trust not looked up)"
                    .into(),
                a,
                register.clone(),
            )
        },
        Case {
            config: normal_1pps,
            tiers,
            trusted: true,
            verdict: counter::PASS_TRUSTED,
            ..case(
                format!(
                    "trusted source over the normal budget (1/s), on the trusted one ({}/s): pass_trusted",
                    shipped.trust.trusted_rate
                ),
                [192, 0, 2, 2],
                sip([192, 0, 2, 2], REGISTER),
            )
        },
        Case {
            config: overloaded,
            tiers,
            trusted: true,
            verdict: counter::PASS_TRUSTED,
            ..case(
                "overload in force: trusted source under trusted_rate: pass_trusted".into(),
                [192, 0, 2, 3],
                sip([192, 0, 2, 3], REGISTER),
            )
        },
        Case {
            config: overloaded,
            tiers,
            verdict: counter::DROP_SHED,
            action: DROP,
            ..case(
                format!(
                    "overload in force: untrusted source over untrusted_rate (shipped: {untrusted_rate}/s, burst {untrusted_burst}): drop_shed"
                ),
                [192, 0, 2, 4],
                sip([192, 0, 2, 4], REGISTER),
            )
        },
        Case {
            verdict: counter::DROP_INVALID,
            action: DROP,
            ..case(
                "invalid payload (an HTTP GET) over the invalid budget: drop_invalid".into(),
                [192, 0, 2, 5],
                sip([192, 0, 2, 5], INVALID),
            )
        },
        Case {
            verdict: counter::DROP_OPTIONS,
            action: DROP,
            ..case(
                "OPTIONS over its budget (1/s, burst 1): drop_options".into(),
                [192, 0, 2, 6],
                sip([192, 0, 2, 6], OPTIONS),
            )
        },
        case(
            "CRLF CRLF keepalive, invalid budget on: pass".into(),
            a,
            sip(a, CRLF2),
        ),
        case(
            "STUN binding request, invalid budget on: pass".into(),
            a,
            sip(a, STUN),
        ),
    ];

    let mut t = TestProgram::load()?;
    let mut trust = TrustMaps::open(t.pin())?;
    // Each run measures every case once, in turn: a machine that drifts
    // during the section moves all cases alike, not the later ones.
    let mut floor = Vec::with_capacity(RUNS);
    let mut times = vec![Vec::with_capacity(RUNS); cases.len()];
    for _ in 0..RUNS {
        floor.push(t.run_floor(&register, REPEAT)?.1.as_nanos() as f64);
        for (c, times) in cases.iter().zip(&mut times) {
            times.push(measure(&mut t, &mut trust, c).with_context(|| c.name.clone())?);
        }
    }
    let floor = median(&mut floor);
    let spread = {
        let base = &times[0];
        let (lo, hi) = base
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        hi - lo
    };
    // What a case adds: the median over runs of its time minus row 1's in
    // the same run (a run that was slow throughout cancels out).
    let added: Vec<f64> = times
        .iter()
        .map(|v| {
            let mut d: Vec<f64> = v.iter().zip(&times[0]).map(|(x, b)| x - b).collect();
            median(&mut d)
        })
        .collect();
    let ns: Vec<f64> = times.iter_mut().map(|v| median(v)).collect();

    say!(out, "\n## Admission control cost (SIP/UDP from one source per case, {REPEAT} repeats, median of {RUNS})\n");
    say!(out, "Issue 23's budgets beside today's clean path (row 1) in the same run; each of the {RUNS} runs measures every case once, in turn. The limiter is on and never over in every case (500/s, a burst no run spends) unless the case says otherwise; from row 3 on the per-method budgets (REGISTER never over, OPTIONS 1/s burst 1) and the shipped invalid budget are on. The last column is the median over the runs of the case's time minus row 1's in the same run. Every measured packet was checked to land in the verdict counter the case names (a drop case may pass the few packets its budget earns back during a run, at most {REFILL_SLACK}).\n");
    say!(
        out,
        "| case | ns/packet | × empty program | added over the baseline row |"
    );
    say!(out, "|---|---:|---:|---:|");
    say!(out, "| empty XDP program (floor) | {floor:.1} | 1.00 | |");
    for (i, (c, ns)) in cases.iter().zip(&ns).enumerate() {
        let added = if i == 0 {
            String::new()
        } else {
            format!("{:+.1} ns", added[i])
        };
        say!(
            out,
            "| {}. {} | {ns:.1} | {:.2} | {added} |",
            i + 1,
            c.name,
            ns / floor
        );
    }
    let clean: Vec<(usize, f64)> = cases
        .iter()
        .zip(&added)
        .enumerate()
        .filter(|(_, (c, _))| c.clean)
        .map(|(i, (_, d))| (i + 1, *d))
        .collect();
    let worst = clean.iter().map(|&(_, d)| d).fold(f64::MIN, f64::max);
    let verdict = if worst <= TARGET_NS { "met" } else { "not met" };
    say!(
        out,
        "\nThe clean path's added cost (rows {} against row 1): {}; the issue's target is +{TARGET_NS:.0} ns: {verdict} (worst {worst:+.1} ns; row 1 itself moved by {spread:.1} ns between the runs).",
        clean
            .iter()
            .map(|(i, _)| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        clean
            .iter()
            .map(|(i, d)| format!("row {i} {d:+.1} ns"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(())
}

/// Applies the case's settings, warms it up, and times one run of `REPEAT`
/// packets; fails unless the run got the case's verdict.
fn measure(t: &mut TestProgram, trust: &mut TrustMaps, c: &Case) -> Result<f64> {
    t.maps.set_config(c.config)?;
    t.maps.set_sip_limits(c.limits)?;
    trust.set_config(c.tiers)?;
    let key = rate_key_v4(c.src);
    if c.trusted {
        trust.trust(
            key,
            TrustEntry {
                expires_at_ns: 0,
                trusted_at_ns: clock::mono_now_ns(),
                origin: TRUST_OPERATOR,
                _pad: 0,
            },
        )?;
    } else {
        trust.untrust(&key)?;
    }
    t.run_repeat(&c.frame, WARM_UP)?;
    let before = t.counters()?[c.verdict as usize].packets;
    let (action, d) = t.run_repeat(&c.frame, REPEAT)?;
    let got = t.counters()?[c.verdict as usize].packets - before;
    if action != c.action {
        bail!("XDP action {action}, expected {}", c.action);
    }
    let slack = if c.action == DROP { REFILL_SLACK } else { 0 };
    if got + slack < u64::from(REPEAT) {
        bail!(
            "only {got} of {REPEAT} packets got counter {}",
            counter::NAMES[c.verdict as usize]
        );
    }
    if let Some(class) = c.charged {
        let states = t.maps.sip_rate_states()?;
        if !states.iter().any(|(k, _)| k.key == key && k.class == class) {
            bail!("no budget state for class {class}: the packets were not charged to it");
        }
    }
    Ok(d.as_nanos() as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
