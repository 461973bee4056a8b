//! A fault-free chain converges: every node delivers every acknowledged unit once, in order.

mod common;

use netsim::scenario::ScenarioKind;
use netsim::toy::ToyFactory;
use netsim::FaultSet;

#[test]
fn fault_free_chain_converges() {
    let params = common::small_chain(300, FaultSet::default());
    let report = common::run_toy(ScenarioKind::Chain, &params, 1, ToyFactory::default());
    assert!(report.passed, "{report:#?}");
    assert!(report.converged);
    assert_eq!(report.units_acknowledged, 300);
    assert_eq!(report.lost, 0);
    // 7 nodes: each unit reaches the 6 that did not submit it.
    assert_eq!(report.delivered_copies, 300 * 6);
    assert_eq!(report.duplicates_delivered + report.out_of_order_delivered, 0);
    let converge = report.sim_ms_to_converge.expect("converged");
    assert!(converge < 1_000, "took {converge} ms after the last submit");
    assert!(report.unit_bytes > 200.0);
    // The run stops once converged, long before the time limit.
    assert!(report.sim_ms_end < 61_000, "ended at {} ms", report.sim_ms_end);
}
