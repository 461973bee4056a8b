//! A link carries every frame, once and in order, over a WAN that loses, duplicates and
//! reorders datagrams; both ends get `LinkUp` with the right direction and remote address.

mod common;

use common::{ProbeFactory, Seen};
use netsim::scenario::{self, Scenario};
use netsim::{NodeId, NodeSpec, PathParams, Role, Simulation, Topology};

#[test]
fn frames_arrive_once_and_in_order_over_a_bad_wan() {
    let mut t = Topology::new();
    let ho = t.segment("ho", PathParams::lan());
    let store = t.segment("store", PathParams::lan());
    let mut wan = PathParams::wan();
    wan.loss = 0.2;
    wan.duplicate = 0.1;
    wan.reorder = 0.3;
    wan.reorder_us = 50_000;
    t.wan(store, ho, wan);
    let (a_addr, b_addr) = (scenario::address(1, 1), scenario::address(0, 1));
    let mut a = NodeSpec::new("a", Role::StoreServer).on(store, a_addr);
    a.config.insert("connect".into(), b_addr.to_string());
    a.config.insert("frames".into(), "500".into());
    t.node(a);
    t.node(NodeSpec::new("b", Role::HeadOffice).on(ho, b_addr));
    let mut sim = Simulation::new(Scenario::new("link", t), ProbeFactory, 11);
    sim.run_until(sim.now().plus_millis(60_000));

    let a = sim.node(NodeId(0)).unwrap();
    let b = sim.node(NodeId(1)).unwrap();
    assert_eq!(b.frame_numbers(), (0..500).collect::<Vec<u32>>());
    let up = |p: &common::Probe| {
        p.seen.iter().find_map(|(_, s)| match s {
            Seen::LinkUp { remote, outbound, .. } => Some((*remote, *outbound)),
            _ => None,
        })
    };
    assert_eq!(up(a), Some((b_addr, true)));
    assert_eq!(up(b), Some((a_addr, false)));
    // Lost frames cost retransmission time: 500 frames of 200 bytes on 20 Mbit/s would take
    // 40 ms plus 20-25 ms latency without loss.
    let last = b.seen.iter().rev().find(|(_, s)| matches!(s, Seen::Frame { .. })).unwrap().0;
    let first = b.seen.iter().find(|(_, s)| matches!(s, Seen::LinkUp { .. })).unwrap().0;
    assert!(last.0 - first.0 > 200_000, "no retransmission delay: {} us", last.0 - first.0);
    let report = sim.report();
    assert_eq!(report.frames_sent, 500);
    assert_eq!(report.frames_dropped, 0);
}
