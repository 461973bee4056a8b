//! The full retail chain with the real core: 100 stores of a server and 9 lanes, plus head
//! office (1,001 nodes), 10,000 units, no faults. Every node delivers every unit exactly once,
//! in order, and the traffic stays a small constant per delivered copy (no flooding storm).
//! Release build: see docs/PERFORMANCE.md for its time and memory (every node's in-memory
//! store holds every unit).

use netsim::scenario::{self, ChainParams, ScenarioKind};
use netsim::{CoreFactory, FaultSet, Simulation};

#[test]
#[ignore = "slow: 1,001 nodes; scripts/test --slow runs it"]
fn slow_core_chain_1001_nodes_10k_units_converges() {
    let params = ChainParams {
        stores: 100,
        lanes: 9,
        units: 10_000,
        faults: FaultSet::default(),
        ..ChainParams::default()
    };
    let scenario = scenario::build(ScenarioKind::Chain, &params, 7);
    let report = Simulation::new(scenario, CoreFactory::default(), 7).run();
    assert!(report.passed, "{report:#?}");
    assert_eq!(report.nodes, 1001);
    assert_eq!(report.units_acknowledged, 10_000);
    assert_eq!(report.delivered_copies, 10_000 * 1000);
    assert!(
        report.bytes_per_unit_copy <= 1.3 * report.unit_bytes,
        "{} bytes per copy for {}-byte units",
        report.bytes_per_unit_copy,
        report.unit_bytes
    );
}
