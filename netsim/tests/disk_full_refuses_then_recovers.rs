//! While a node's disk is full it refuses submissions and drops what it receives; once it has
//! room again anti-entropy fills the gap and the chain converges.

mod common;

use netsim::scenario::{self, ScenarioKind};
use netsim::toy::ToyFactory;
use netsim::{Fault, FaultSet, NodeId, Simulation};

#[test]
fn full_disk_refuses_and_recovers() {
    let params = common::small_chain(300, FaultSet::default());
    let mut s = scenario::build(ScenarioKind::Chain, &params, 5);
    // Node 2 is a lane of store 1.
    let lane = NodeId(2);
    s.fault_at(10_000_000, Fault::DiskFull { node: lane, full: true });
    s.fault_at(40_000_000, Fault::DiskFull { node: lane, full: false });
    let mut sim = Simulation::new(s, ToyFactory::default(), 5);
    let report = sim.run();
    assert!(report.passed, "{report:#?}");
    assert!(report.submits_unanswered > 0, "the lane refused nothing");
    assert_eq!(report.units_acknowledged + report.submits_unanswered, 300);
    let toy = sim.node(lane).unwrap();
    assert!(toy.stats().refused > 0);
    assert!(toy.stats().store_errors > 0);
    // Recovery waited for a full sync after the disk came back.
    assert!(report.sim_ms_end > 40_000);
}
