//! The engine carries the full retail chain: 100 stores of 10 lanes and a server, plus head
//! office (1,101 nodes), 10,000 units, with the toy protocol. Release build: about 2.5 minutes
//! and 4.5 GiB (every node's in-memory store holds every unit).

mod common;

use netsim::scenario::{ChainParams, ScenarioKind};
use netsim::toy::ToyFactory;
use netsim::FaultSet;

#[test]
#[ignore = "slow: 1,101 nodes; scripts/test --slow runs it"]
fn slow_toy_chain_1101_nodes_converges() {
    let params = ChainParams {
        stores: 100,
        lanes: 10,
        units: 10_000,
        faults: FaultSet::default(),
        ..ChainParams::default()
    };
    let report = common::run_toy(ScenarioKind::Chain, &params, 7, ToyFactory::default());
    assert!(report.passed, "{report:#?}");
    assert_eq!(report.nodes, 1101);
    assert_eq!(report.delivered_copies, 10_000 * 1100);
}
