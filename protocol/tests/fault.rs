//! Fault specs (`KIND@PHASE`): every valid form parses to the right action and point, and every invalid one is refused with a message naming the bad part.

use protocol::{Fault, FaultAction, FaultPoint};

/// A deliberately simple size parser: plain bytes, or a number with `KiB`/`MiB`/`GiB`.
fn size(s: &str) -> Option<u64> {
    let (num, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn parse(s: &str) -> Result<Fault, String> {
    Fault::parse(s, size)
}

#[test]
fn valid_forms() {
    use FaultAction::*;
    use FaultPoint::*;
    let cases = [
        ("abort-metal-oom@load", AbortMetalOom, Load),
        ("abort-metal-oom@decode:3", AbortMetalOom, Decode(3)),
        ("segv@prefill", Segv, Prefill),
        ("kill@decode:3", Kill, Decode(3)),
        ("exit:7@load", Exit(7), Load),
        ("exit:0@prefill", Exit(0), Prefill),
        ("exit:-1@load", Exit(-1), Load),
        ("hang@decode", Hang, Decode(1)),
        ("garbage@decode:2", Garbage, Decode(2)),
        ("stall@prefill", Stall, Prefill),
        ("hang@decode:1", Hang, Decode(1)),
        ("alloc:1048576@prefill", Alloc(1_048_576), Prefill),
        ("alloc:2GiB@load", Alloc(2 << 30), Load),
        ("kill@decode:4294967295", Kill, Decode(u32::MAX)),
    ];
    for (spec, action, point) in cases {
        assert_eq!(parse(spec), Ok(Fault { action, point }), "{spec}");
    }
}

#[test]
fn the_size_parser_is_the_callers() {
    let f = Fault::parse("alloc:lots@load", |s| (s == "lots").then_some(42)).expect("parse");
    assert_eq!(f.action, FaultAction::Alloc(42));
}

#[test]
fn invalid_forms_name_the_bad_part() {
    // (spec, text the error must contain)
    let cases = [
        ("segv", "segv"),                         // no @
        ("", "KIND@PHASE"),                       // nothing
        ("boom@load", "boom"),                    // unknown kind
        ("@load", "``"),                          // empty kind
        ("segv:3@load", "segv:3"),                // argument on a kind without one
        ("exit@load", "exit"),                    // exit needs a code
        ("exit:seven@load", "seven"),             // exit code not a number
        ("exit:99999999999@load", "99999999999"), // out of range
        ("alloc:@load", "``"),                    // empty size
        ("alloc:huge@load", "huge"),              // not a size
        ("alloc:1TB@load", "1TB"),                // unknown unit for this parser
        ("segv@boot", "boot"),                    // unknown phase
        ("segv@", "``"),                          // empty phase
        ("segv@load:3", "load:3"),                // argument on a phase without one
        ("segv@decode:0", "0"),                   // decode steps are 1-based
        ("segv@decode:x", "x"),                   // not a number
        ("segv@decode:-2", "-2"),                 // negative
        ("segv@decode:", "``"),                   // empty step
        ("segv@prefill@load", "prefill@load"),    // two @
    ];
    for (spec, needle) in cases {
        let e = parse(spec).expect_err(spec);
        let quoted = if needle.starts_with('`') || needle == "KIND@PHASE" {
            needle.to_string()
        } else {
            format!("`{needle}`")
        };
        assert!(
            e.contains(&quoted),
            "{spec:?}: {e:?} does not name {quoted}"
        );
    }
}

#[test]
fn errors_list_the_accepted_forms() {
    let e = parse("boom@load").expect_err("kind");
    for k in [
        "abort-metal-oom",
        "segv",
        "kill",
        "exit:N",
        "hang",
        "alloc:SIZE",
    ] {
        assert!(e.contains(k), "{e}");
    }
    let e = parse("segv@boot").expect_err("phase");
    for p in ["load", "prefill", "decode:N"] {
        assert!(e.contains(p), "{e}");
    }
}
