//! A crash loses exactly what the node had not flushed; after the restart the node fetches it
//! again and re-delivers what its durable cursor did not cover, which is not a duplicate.

mod common;

use meshnode::proto::Time;
use meshnode::store::Store;
use meshnode::unit::Urgency;
use netsim::scenario::{self, Scenario};
use netsim::toy::{self, ToyConfig, ToyFactory};
use netsim::{Fault, NodeId, NodeSpec, PathParams, Role, Simulation, Topology};

const SECOND: u64 = 1_000_000;

fn pair() -> Scenario {
    let mut t = Topology::new();
    let seg = t.segment("lan", PathParams::lan());
    let a_addr = scenario::address(1, 1);
    t.node(NodeSpec::new("a", Role::StoreServer).on(seg, a_addr));
    t.node(NodeSpec::new("b", Role::Lane).on(seg, scenario::address(1, 10)).peer(
        a_addr,
        Role::StoreServer,
        0,
    ));
    let mut s = Scenario::new("crash", t);
    for i in 0..5 {
        s.submit_at(SECOND + i, NodeId(0), scenario::submission(i, 100, Urgency::Normal));
    }
    s
}

#[test]
fn crash_drops_unflushed_units_and_they_come_back() {
    let (a, b) = (NodeId(0), NodeId(1));
    // b flushes ten seconds after a change: long enough to crash it in between.
    let factory =
        ToyFactory { config: ToyConfig { flush_us: 10 * SECOND, ..ToyConfig::default() } };
    let mut sim = Simulation::new(pair(), factory, 1);
    let start = sim.now();
    sim.run_until(start.plus_micros(2 * SECOND));
    let origin = toy::dbid(a);
    let b_store = sim.store(b).unwrap();
    assert_eq!(b_store.version_vector().count(&origin), 5);
    assert!(b_store.unflushed() > 0);
    assert_eq!(sim.report().delivered_copies, 5);

    sim.apply(Fault::Crash(b));
    // Nothing of it was durable: all five units and the cursor are gone.
    let down = sim.store(b).unwrap();
    assert_eq!(down.units_total(), 0);
    assert!(down.cursor(toy::APP).unwrap().is_empty());
    // The origin flushed before it acknowledged: it still has them.
    assert_eq!(sim.store(a).unwrap().version_vector().count(&origin), 5);

    sim.apply(Fault::Restart(b));
    sim.run_until(start.plus_micros(5 * SECOND));
    let report = sim.report();
    assert!(report.passed, "{report:#?}");
    assert_eq!(report.redelivered_after_crash, 5);
    assert_eq!(report.duplicates_delivered, 0);

    // After a flush a crash loses nothing: no unit, no cursor, so no replay.
    sim.run_until(start.plus_micros(20 * SECOND));
    assert_eq!(sim.store(b).unwrap().unflushed(), 0);
    sim.apply(Fault::Crash(b));
    assert_eq!(sim.store(b).unwrap().version_vector().count(&origin), 5);
    assert_eq!(sim.store(b).unwrap().cursor(toy::APP).unwrap().get(&origin), Some(&5));
    sim.apply(Fault::Restart(b));
    sim.run_until(start.plus_micros(30 * SECOND));
    let report = sim.report();
    assert!(report.passed, "{report:#?}");
    assert_eq!(report.redelivered_after_crash, 5);
    assert_eq!(report.crashes, 2);
    assert_eq!(report.restarts, 2);
}

#[test]
fn restart_sees_a_new_incarnation() {
    let mut sim = Simulation::new(pair(), ToyFactory::default(), 1);
    let start = sim.now();
    sim.run_until(Time(start.0 + SECOND));
    sim.apply(Fault::Crash(NodeId(1)));
    assert!(sim.node(NodeId(1)).is_none());
    sim.apply(Fault::Restart(NodeId(1)));
    assert!(sim.node(NodeId(1)).is_some());
}
