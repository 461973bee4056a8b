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

/// The real core answers every submission while the disk is full: `Refused`, never silence;
/// what it missed meanwhile is asked for again once the disk has room.
#[test]
fn real_core_refuses_while_full_and_catches_up() {
    let params = common::small_chain(300, FaultSet::default());
    let mut s = scenario::build(ScenarioKind::Chain, &params, 5);
    let lane = NodeId(2);
    s.fault_at(10_000_000, Fault::DiskFull { node: lane, full: true });
    s.fault_at(40_000_000, Fault::DiskFull { node: lane, full: false });
    let mut sim = Simulation::new(s, netsim::CoreFactory::default(), 5);
    let report = sim.run();
    assert!(report.passed, "{report:#?}");
    assert!(report.submits_refused > 0, "the lane refused nothing");
    assert_eq!(report.submits_unanswered, 0, "every submission was answered");
    assert_eq!(report.units_acknowledged + report.submits_refused, 300);
    let node = sim.node(lane).unwrap();
    assert!(node.stats().store_errors > 0);
    assert_eq!(node.status().counters.submits_refused, report.submits_refused);
}
