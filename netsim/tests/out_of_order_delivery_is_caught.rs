//! A protocol that delivers units in arrival order is caught when the network reorders.

mod common;

use meshnode::unit::Urgency;
use netsim::scenario::{self, Scenario};
use netsim::toy::{ToyBug, ToyFactory};
use netsim::{NodeSpec, PathParams, Role, Simulation, Topology};

#[test]
fn reordered_arrival_is_out_of_order_delivery() {
    let mut t = Topology::new();
    let mut lan = PathParams::lan();
    lan.reorder = 0.3;
    lan.reorder_us = 5_000;
    let seg = t.segment("lan", lan);
    let a = t.node(
        NodeSpec::new("a", Role::Lane).on(seg, scenario::address(1, 10)).group(scenario::group()),
    );
    t.node(
        NodeSpec::new("b", Role::Lane).on(seg, scenario::address(1, 11)).group(scenario::group()),
    );
    let mut s = Scenario::new("reorder", t);
    for i in 0..200 {
        s.submit_at(1_000_000 + i * 200, a, scenario::submission(i, 50, Urgency::Normal));
    }
    let bad = Simulation::new(s.clone(), ToyFactory::with_bug(ToyBug::DeliverOnArrival), 9).run();
    assert!(bad.out_of_order_delivered > 0, "{bad:#?}");
    assert!(!bad.passed);
    // The correct toy holds back what arrives early.
    let good = Simulation::new(s, ToyFactory::default(), 9).run();
    assert!(good.passed, "{good:#?}");
    assert_eq!(good.out_of_order_delivered, 0);
}
