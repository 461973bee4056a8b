//! A protocol that drops units is caught: not converged, units lost, the run fails.

mod common;

use netsim::scenario::ScenarioKind;
use netsim::toy::{ToyBug, ToyFactory};
use netsim::FaultSet;

#[test]
fn dropped_units_are_reported_lost() {
    let mut params = common::small_chain(100, FaultSet::default());
    params.settle_us = 120_000_000;
    let report = common::run_toy(
        ScenarioKind::Chain,
        &params,
        3,
        ToyFactory::with_bug(ToyBug::DropEveryNth(7)),
    );
    assert!(!report.passed);
    assert!(!report.converged);
    assert!(report.sim_ms_to_converge.is_none());
    // Every unit whose seq is a multiple of 7 never left its origin.
    assert!(report.lost > 0, "{report:#?}");
    assert!(report.missing_copies >= report.lost * 6);
    assert_eq!(report.duplicates_delivered, 0);
    // Nothing after the hole is delivered either (delivery waits for the gap), never out of order.
    assert_eq!(report.out_of_order_delivered, 0);
    // The run went to its time limit.
    assert!(report.sim_ms_end >= 60_000 + 120_000 - 1_000, "{}", report.sim_ms_end);
}
