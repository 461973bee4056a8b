//! Same seed: byte-identical report and trace. Another seed: another trace.

mod common;

use netsim::scenario::{self, ScenarioKind};
use netsim::toy::ToyFactory;
use netsim::{FaultSet, Simulation};

fn run(seed: u64) -> (String, Vec<String>) {
    let params = common::small_chain(200, FaultSet::ALL);
    let mut sim = Simulation::new(
        scenario::build(ScenarioKind::Chain, &params, seed),
        ToyFactory::default(),
        seed,
    );
    sim.record_trace();
    let report = sim.run();
    let trace =
        sim.trace().iter().map(|e| format!("{} {} {}", e.at_us, e.kind, e.subject)).collect();
    (serde_json::to_string(&report).unwrap(), trace)
}

#[test]
fn same_seed_is_byte_identical() {
    let (a, trace_a) = run(42);
    let (b, trace_b) = run(42);
    assert_eq!(a, b);
    assert_eq!(trace_a, trace_b);
    assert!(trace_a.len() > 1000);
}

#[test]
fn another_seed_is_another_run() {
    let (a, trace_a) = run(42);
    let (b, trace_b) = run(43);
    assert_ne!(a, b);
    assert_ne!(trace_a, trace_b);
    let hash =
        |json: &str| serde_json::from_str::<serde_json::Value>(json).unwrap()["trace_hash"].clone();
    assert_ne!(hash(&a), hash(&b));
}
