//! WAN outages and partitions during the workload break links; after the heal every node
//! converges.

mod common;

use netsim::scenario::{self, Chain, ScenarioKind};
use netsim::toy::ToyFactory;
use netsim::{Fault, FaultSet, Simulation};

#[test]
fn partitions_heal_and_the_chain_converges() {
    let params = common::small_chain(300, FaultSet::default());
    let mut s = scenario::build(ScenarioKind::Chain, &params, 6);
    let chain = Chain::new(2, 2);
    let store1 = &chain.stores[0];
    s.fault_at(10_000_000, Fault::WanDown(store1.wan));
    s.fault_at(40_000_000, Fault::WanUp(store1.wan));
    s.fault_at(20_000_000, Fault::Partition { id: 7, nodes: vec![chain.stores[1].lanes[0]] });
    s.fault_at(50_000_000, Fault::Heal { id: 7 });
    let report = Simulation::new(s, ToyFactory::default(), 6).run();
    assert!(report.passed, "{report:#?}");
    assert!(report.links_down >= 2, "{}", report.links_down);
    assert!(report.connects_failed > 0);
    assert_eq!(report.last_fault_ms, Some(50_000));
    assert!(report.sim_ms_after_last_fault.is_some());
}
