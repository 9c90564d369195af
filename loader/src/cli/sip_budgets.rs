//! The invalid-message and per-method budgets as `stats` and `top` show
//! them: what the kernel applies (read back from `sip_limits`), and the
//! drops per class, from the verdict counters.
use common::{counter, method, Counter, SipBudget, SipLimits, SIP_INVALID_ON, SIP_METHODS_ON};
use serde_json::{json, Value};

/// (rate per second, burst) of a budget, as the daemon wrote it.
fn rate_burst(b: &SipBudget) -> (u64, u64) {
    if b.interval_ns == 0 {
        return (0, 0);
    }
    (
        (1_000_000_000 + b.interval_ns / 2) / b.interval_ns,
        b.tolerance_ns / b.interval_ns,
    )
}

/// The classes with a budget: (name, rate, burst).
fn methods(l: &SipLimits) -> Vec<(&'static str, u64, u64)> {
    if l.flags & SIP_METHODS_ON == 0 {
        return Vec::new();
    }
    method::NAMES
        .iter()
        .zip(&l.methods)
        .filter(|(_, b)| b.is_on())
        .map(|(n, b)| {
            let (r, burst) = rate_burst(b);
            (*n, r, burst)
        })
        .collect()
}

/// `stats`' lines.
pub fn text(l: &SipLimits) -> [String; 2] {
    let invalid = if l.flags & SIP_INVALID_ON != 0 {
        let (r, b) = rate_burst(&l.invalid);
        format!("{r} packets/s per source, burst {b}")
    } else {
        "off".to_owned()
    };
    let m = methods(l);
    let methods = if m.is_empty() {
        "none".to_owned()
    } else {
        m.iter()
            .map(|(n, r, b)| format!("{n} {r}/s burst {b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    [
        format!("invalid msgs: {invalid}"),
        format!("method budgets: {methods} (per source)"),
    ]
}

/// `stats --json`'s `sip_budgets`.
pub fn json(l: &SipLimits) -> Value {
    let invalid = (l.flags & SIP_INVALID_ON != 0).then(|| {
        let (r, b) = rate_burst(&l.invalid);
        json!({"rate": r, "burst": b})
    });
    let methods: serde_json::Map<String, Value> = methods(l)
        .into_iter()
        .map(|(n, r, b)| (n.to_owned(), json!({"rate": r, "burst": b})))
        .collect();
    json!({"invalid": invalid, "methods": methods})
}

/// Drops per class between two samples of the counters, `secs` apart:
/// ("invalid" or a method class name, per second, total).
pub fn drop_rates(
    before: &[Counter],
    after: &[Counter],
    secs: f64,
) -> Vec<(&'static str, f64, u64)> {
    let at = |c: &[Counter], i: u32| c.get(i as usize).map_or(0, |c| c.packets);
    let mut out = vec![("invalid", counter::DROP_INVALID)];
    out.extend(
        (0..method::CLASSES as u32).map(|c| (method::NAMES[c as usize], counter::DROP_METHOD + c)),
    );
    out.into_iter()
        .map(|(n, i)| {
            let total = at(after, i);
            (
                n,
                total.saturating_sub(at(before, i)) as f64 / secs.max(1e-3),
                total,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_read_back_as_written() {
        let mut l = SipLimits {
            flags: SIP_INVALID_ON | SIP_METHODS_ON,
            invalid: SipBudget::new(5, 10),
            ..SipLimits::default()
        };
        l.methods[method::OPTIONS as usize] = SipBudget::new(20, 40);
        l.methods[method::OTHER as usize] = SipBudget::new(3, 7);
        let [invalid, methods] = text(&l);
        assert_eq!(invalid, "invalid msgs: 5 packets/s per source, burst 10");
        assert_eq!(
            methods,
            "method budgets: OPTIONS 20/s burst 40, other 3/s burst 7 (per source)"
        );
        let j = json(&l);
        assert_eq!(j["methods"]["OPTIONS"]["burst"], 40);
        assert_eq!(j["invalid"]["rate"], 5);
        let off = text(&SipLimits::default());
        assert_eq!(off[0], "invalid msgs: off");
        assert!(off[1].contains("none"));
    }

    #[test]
    fn drop_rates_are_per_class() {
        let mut before = vec![Counter::default(); counter::COUNT as usize];
        let mut after = before.clone();
        before[counter::DROP_OPTIONS as usize].packets = 10;
        after[counter::DROP_OPTIONS as usize].packets = 110;
        after[counter::DROP_INVALID as usize].packets = 50;
        let r = drop_rates(&before, &after, 0.5);
        assert_eq!(r[0], ("invalid", 100.0, 50));
        assert_eq!(r[1 + method::OPTIONS as usize], ("OPTIONS", 200.0, 110));
        assert_eq!(r[1 + method::REGISTER as usize], ("REGISTER", 0.0, 0));
    }
}
