//! A multicast datagram reaches every other node of the sender's segment, and no one else.

mod common;

use common::{ProbeFactory, Seen};
use meshnode::proto::DatagramDest;
use netsim::scenario::{self, Scenario};
use netsim::{NodeId, NodeSpec, PathParams, Role, Simulation, Topology};

#[test]
fn multicast_reaches_the_lan_only() {
    let mut t = Topology::new();
    let lan = t.segment("store", PathParams::lan());
    let other = t.segment("ho", PathParams::lan());
    t.wan(lan, other, PathParams::wan());
    let a_addr = scenario::address(1, 10);
    let mut a = NodeSpec::new("a", Role::Lane).on(lan, a_addr);
    a.config.insert("multicast".into(), scenario::group().to_string());
    t.node(a);
    t.node(NodeSpec::new("b", Role::Lane).on(lan, scenario::address(1, 11)));
    t.node(NodeSpec::new("c", Role::StoreServer).on(lan, scenario::address(1, 1)));
    t.node(NodeSpec::new("ho", Role::HeadOffice).on(other, scenario::address(0, 1)));
    let mut sim = Simulation::new(Scenario::new("multicast", t), ProbeFactory, 3);
    sim.run_until(sim.now().plus_millis(100));
    let got = |n: u32| {
        sim.node(NodeId(n)).unwrap().count(|s| {
            matches!(s, Seen::Datagram { from, to: DatagramDest::Group(g), bytes }
                if *from == a_addr && *g == scenario::group() && bytes == b"hello")
        })
    };
    assert_eq!((got(0), got(1), got(2), got(3)), (0, 1, 1, 0));
    let report = sim.report();
    assert_eq!((report.datagrams_sent, report.multicasts_sent), (1, 1));
}
