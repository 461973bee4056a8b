//! A protocol that acknowledges before its unit is durable loses it in a crash: the checks
//! report it lost, and the origin then reuses the seq for another unit.

mod common;

use meshnode::unit::Urgency;
use netsim::scenario::{self, Scenario};
use netsim::toy::{ToyBug, ToyFactory};
use netsim::{Fault, NodeSpec, PathParams, Role, Simulation, Topology};

const SECOND: u64 = 1_000_000;

#[test]
fn acknowledged_then_crashed_is_lost() {
    let mut t = Topology::new();
    let seg = t.segment("lan", PathParams::lan());
    let a_addr = scenario::address(1, 1);
    let a = t.node(NodeSpec::new("a", Role::StoreServer).on(seg, a_addr));
    let b = t.node(NodeSpec::new("b", Role::Lane).on(seg, scenario::address(1, 10)).peer(
        a_addr,
        Role::StoreServer,
        0,
    ));
    let mut s = Scenario::new("early-ack", t);
    // a is cut off, acknowledges three units it has not flushed, crashes and comes back.
    s.fault_at(SECOND, Fault::Partition { id: 1, nodes: vec![a] });
    for i in 0..3 {
        s.submit_at(2 * SECOND + i, a, scenario::submission(i, 100, Urgency::Normal));
    }
    s.fault_at(2 * SECOND + 10, Fault::Crash(a));
    s.fault_at(3 * SECOND, Fault::Restart(a));
    s.fault_at(4 * SECOND, Fault::Heal { id: 1 });
    // Its next unit gets seq 1 again.
    s.submit_at(5 * SECOND, a, scenario::submission(9, 100, Urgency::Normal));
    s.config.time_limit_us = 60 * SECOND;
    let report = Simulation::new(s, ToyFactory::with_bug(ToyBug::AcceptBeforeDurable), 2).run();
    assert!(!report.passed);
    assert_eq!(report.units_acknowledged, 3);
    assert_eq!(report.reused_seq, 1, "{report:#?}");
    // b got the new seq 1, not the acknowledged one.
    assert_eq!(report.mismatched_delivered, 1);
    assert!(report.lost >= 2);
    let _ = b;
}
