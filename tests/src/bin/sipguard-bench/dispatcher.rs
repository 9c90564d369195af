//! `bench xdp`'s dispatcher rows: what libxdp's multi-program dispatcher
//! adds per packet, beside the empty program and sipguard alone, in the
//! same run (BPF_PROG_TEST_RUN). The dispatcher is built from libxdp's
//! installed object with sipguard's configuration, its slots holding
//! libxdp's stubs: a member put in a slot (freplace) takes the stub's place
//! behind the same call, so the dispatcher with one slot, less the empty
//! program, is the cost of sharing. sipguard itself in a slot is measured
//! only where the kernel loads freplace programs.
use crate::report::Section;
use anyhow::{bail, Result};
use aya::programs::{TestRun, TestRunOptions};
use sipguard::kernel::dispatcher::{build, config, object, probe};
use sipguard_tests::{kernel::TestProgram, packet::udp4};

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;

fn median(mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut v = (0..RUNS).map(|_| f()).collect::<Result<Vec<_>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[RUNS / 2])
}

fn member(i: u32) -> config::Member {
    config::Member {
        name: format!("slot{i}"),
        priority: i,
        chain_actions: 1 << config::XDP_PASS,
        frags: false,
    }
}

/// ns per run of a dispatcher with `slots` stub slots.
fn dispatcher_ns(bytes: &[u8], slots: u32, frame: &[u8]) -> Result<f64> {
    let members: Vec<_> = (0..slots).map(member).collect();
    let mut d = build::load(bytes, &members, true)?;
    let program = d.program()?;
    median(|| {
        let r = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..TestRunOptions::default()
        })?;
        if r.return_value != 2 {
            bail!(
                "dispatcher of {slots} slots: action {}, expected XDP_PASS",
                r.return_value
            );
        }
        Ok(r.duration.as_nanos() as f64)
    })
}

pub fn run(out: &mut Section) -> Result<()> {
    let frame = udp4([192, 0, 2, 1], 5060);
    let bytes = object::read(&object::find()?)?;
    let mut t = TestProgram::load()?;
    let floor = median(|| Ok(t.run_floor(&frame, REPEAT)?.1.as_nanos() as f64))?;
    let alone = median(|| {
        let (action, d) = t.run_repeat(&frame, REPEAT)?;
        if action != 2 {
            bail!("sipguard alone: action {action}, expected XDP_PASS");
        }
        Ok(d.as_nanos() as f64)
    })?;
    let one = dispatcher_ns(&bytes, 1, &frame)?;
    let two = dispatcher_ns(&bytes, 2, &frame)?;
    let ten = dispatcher_ns(&bytes, 10, &frame)?;
    say!(
        out,
        "\n## libxdp's dispatcher (BPF_PROG_TEST_RUN, {REPEAT} repeats, median of {RUNS}, SIP pass udp/5060 v4)\n"
    );
    say!(out, "The dispatcher is libxdp's own `xdp-dispatcher.o` with sipguard's configuration; its slots hold libxdp's stubs, whose place a member takes behind the same call. *Added* is the row less the empty program.\n");
    say!(out, "| program | ns/packet | added (ns) |");
    say!(out, "|---|---|---|");
    say!(out, "| empty XDP program | {floor:.1} | |");
    say!(
        out,
        "| sipguard alone | {alone:.1} | {:.1} |",
        alone - floor
    );
    for (slots, ns) in [(1, one), (2, two), (10, ten)] {
        say!(
            out,
            "| dispatcher, {slots} slot{} | {ns:.1} | {:.1} |",
            if slots == 1 { "" } else { "s" },
            ns - floor
        );
    }
    match probe::probe()? {
        probe::Freplace::Allowed => say!(
            out,
            "\nThis kernel loads freplace programs, but sipguard does not join dispatchers yet: sipguard in a slot is not measured.\n"
        ),
        probe::Freplace::Refused(why) => say!(
            out,
            "\nThis kernel refuses freplace programs ({why}): no member, sipguard's or libxdp's, can be put in a slot here, so sipguard in a dispatcher is not measured; its cost there would be about sipguard alone plus the one-slot dispatcher's *added*.\n"
        ),
    }
    Ok(())
}
