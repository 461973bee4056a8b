//! How links end: `Close` (both ends learn, frames already sent still arrive), an unknown or
//! unreachable address (`ConnectFailed` after the timeout), a partition and a crash (the live
//! ends learn after the failure-detection delay).

mod common;

use common::{Probe, ProbeFactory, Seen};
use meshnode::proto::Time;
use netsim::scenario::{self, Scenario};
use netsim::{Fault, NodeId, NodeSpec, PathParams, Role, Simulation, Topology};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);

/// a dials b on one LAN with `config` on a.
fn pair(config: &[(&str, &str)]) -> Simulation<ProbeFactory> {
    let mut t = Topology::new();
    let seg = t.segment("lan", PathParams::lan());
    let mut a = NodeSpec::new("a", Role::Lane).on(seg, scenario::address(1, 10));
    for (k, v) in config {
        a.config.insert(k.to_string(), v.to_string());
    }
    t.node(a);
    t.node(NodeSpec::new("b", Role::StoreServer).on(seg, scenario::address(1, 1)));
    Simulation::new(Scenario::new("links", t), ProbeFactory, 1)
}

fn downs(p: &Probe) -> Vec<Time> {
    p.seen.iter().filter(|(_, s)| matches!(s, Seen::LinkDown { .. })).map(|(t, _)| *t).collect()
}

fn run_ms(sim: &mut Simulation<ProbeFactory>, ms: u64) {
    let until = sim.now().plus_millis(ms);
    sim.run_until(until);
}

#[test]
fn close_delivers_what_was_sent_then_both_ends_go_down() {
    let b = scenario::address(1, 1).to_string();
    let mut sim = pair(&[("connect", &b), ("frames", "10"), ("close", "")]);
    run_ms(&mut sim, 1_000);
    let (pa, pb) = (sim.node(A).unwrap(), sim.node(B).unwrap());
    assert_eq!(pb.frame_numbers(), (0..10).collect::<Vec<u32>>());
    assert_eq!(downs(pa).len(), 1);
    assert_eq!(downs(pb).len(), 1);
    let last_frame = pb.seen.iter().rev().find(|(_, s)| matches!(s, Seen::Frame { .. })).unwrap().0;
    assert!(downs(pb)[0] >= last_frame);
    assert_eq!(sim.report().links_down, 2);
}

#[test]
fn unknown_address_fails_after_the_timeout() {
    let mut sim = pair(&[("connect", "10.9.9.9:7070")]);
    let start = sim.now();
    run_ms(&mut sim, 10_000);
    let pa = sim.node(A).unwrap();
    let failed: Vec<_> =
        pa.seen.iter().filter(|(_, s)| matches!(s, Seen::ConnectFailed { .. })).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, start.plus_millis(3_000));
}

#[test]
fn partition_takes_the_link_down_after_detection() {
    let b = scenario::address(1, 1).to_string();
    let mut sim = pair(&[("connect", &b)]);
    run_ms(&mut sim, 1_000);
    let cut = sim.now();
    sim.apply(Fault::Partition { id: 1, nodes: vec![A] });
    run_ms(&mut sim, 5_000);
    for node in [A, B] {
        let d = downs(sim.node(node).unwrap());
        assert_eq!(d, vec![cut.plus_millis(1_000)], "node {node:?}");
    }
}

#[test]
fn crash_takes_the_link_down_at_the_peer() {
    let b = scenario::address(1, 1).to_string();
    let mut sim = pair(&[("connect", &b)]);
    run_ms(&mut sim, 1_000);
    let cut = sim.now();
    sim.apply(Fault::Crash(B));
    run_ms(&mut sim, 5_000);
    assert_eq!(downs(sim.node(A).unwrap()), vec![cut.plus_millis(1_000)]);
    sim.apply(Fault::Restart(B));
    let pb = sim.node(B).unwrap();
    assert!(matches!(pb.seen[0].1, Seen::Built { incarnation: 1, .. }));
    assert!(downs(pb).is_empty());
}
