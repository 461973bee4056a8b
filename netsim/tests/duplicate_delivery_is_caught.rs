//! A protocol that delivers a unit twice is caught.

mod common;

use netsim::scenario::ScenarioKind;
use netsim::toy::{ToyBug, ToyFactory};
use netsim::FaultSet;

#[test]
fn second_delivery_is_a_duplicate() {
    let params = common::small_chain(100, FaultSet::default());
    let report = common::run_toy(
        ScenarioKind::Chain,
        &params,
        4,
        ToyFactory::with_bug(ToyBug::DeliverTwice(5)),
    );
    assert!(!report.passed);
    assert!(report.duplicates_delivered > 0, "{report:#?}");
    // Delivered everything, so it converged: the duplicate alone fails the run.
    assert!(report.converged);
    assert_eq!(report.redelivered_after_crash, 0);
}
