//! Each node reads true time plus its skew (up to a day either way), and its timers fire at
//! the true time that matches.

mod common;

use common::{ProbeFactory, Seen};
use netsim::scenario::{self, Scenario};
use netsim::{NodeId, NodeSpec, PathParams, Role, Simulation, Topology};

const DAY: i64 = 86_400_000_000;

#[test]
fn nodes_see_their_skewed_clock() {
    let mut t = Topology::new();
    let seg = t.segment("lan", PathParams::lan());
    for (i, skew) in [0, DAY, -DAY, 1_500].into_iter().enumerate() {
        let mut spec =
            NodeSpec::new(format!("n{i}"), Role::Lane).on(seg, scenario::address(1, 10 + i as u8));
        spec.skew_us = skew;
        t.node(spec);
    }
    let mut sim = Simulation::new(Scenario::new("skew", t), ProbeFactory, 1);
    let start = sim.now();
    sim.run_until(start.plus_millis(10));
    for (i, skew) in [0, DAY, -DAY, 1_500].into_iter().enumerate() {
        let p = sim.node(NodeId(i as u32)).unwrap();
        let expect = meshnode::proto::Time(start.0.saturating_add_signed(skew));
        assert!(matches!(p.seen[0].1, Seen::Built { now, .. } if now == expect), "node {i}");
        // The probe's first timer is due at its build time: it fires at once, on its clock.
        assert!(p
            .seen
            .iter()
            .any(|(t, s)| matches!(s, Seen::Timeout { now } if *now == expect && *t == expect)));
    }
}
