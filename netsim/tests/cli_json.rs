//! The command line prints one JSON object per run, the same bytes for the same seed, and a
//! seed summary for a range.

use std::process::Command;

fn netsim(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netsim")).args(args).output().expect("run netsim");
    (out.status.success(), String::from_utf8(out.stdout).expect("utf-8"))
}

#[test]
fn same_seed_prints_the_same_json() {
    let args = [
        "run",
        "--stores",
        "2",
        "--lanes",
        "2",
        "--units",
        "50",
        "--faults",
        "all",
        "--seed",
        "7",
        "--json",
        "--deterministic",
    ];
    let (ok, a) = netsim(&args);
    assert!(ok, "{a}");
    let (_, b) = netsim(&args);
    assert_eq!(a, b);
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    for key in [
        "converged",
        "lost",
        "duplicates_delivered",
        "out_of_order_delivered",
        "sim_ms_to_converge",
        "messages_sent",
        "bytes_sent",
        "unit_bytes",
        "bytes_per_unit_copy",
        "max_queue_len",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["protocol"], "meshnode");
    assert_eq!(v["passed"], true, "the real core converges: {a}");
    assert!(v.get("events_per_sec").is_none());
    let (_, timed) = netsim(&args[..args.len() - 1]);
    let v: serde_json::Value = serde_json::from_str(&timed).unwrap();
    assert!(v["events_per_sec"].as_u64().unwrap() > 0);
}

#[test]
fn seed_range_prints_a_summary() {
    let (ok, out) = netsim(&[
        "run",
        "--stores",
        "2",
        "--lanes",
        "1",
        "--units",
        "20",
        "--faults",
        "all",
        "--seeds",
        "1..3",
        "--deterministic",
    ]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["seeds"], 3);
    assert_eq!(v["failed"], serde_json::json!([]));
}
