//! One-time pads on the relay path (design §4, §5.3): a unit with a sensitive part never
//! crosses a relay in the clear. Without a pad it is withheld (the peer is told, and status
//! shows it) until a direct link carries it and hands a pad over; with the pad, later
//! sensitive units cross the relay under it, and arrive intact, exactly once, in order.

use meshnode::proto::LinkStatus;
use meshnode::store::Store;
use meshnode::unit::Urgency;
use netsim::scenario::{self, Planned, Scenario};
use netsim::{CoreFactory, Fault, NodeId, NodeSpec, PathParams, Role, Simulation, Topology};

const SECOND: u64 = 1_000_000;
const STORE1: NodeId = NodeId(0);
const STORE2: NodeId = NodeId(1);

fn leg() -> PathParams {
    PathParams {
        latency_us: 20_000,
        jitter_us: 5_000,
        rate_bps: 0,
        loss: 0.02,
        duplicate: 0.02,
        reorder: 0.1,
        reorder_us: 200_000,
    }
}

fn secret(index: u64) -> Vec<u8> {
    format!("password-{index}").into_bytes()
}

/// `count` units at store 1 from `from_s` on, one a second; every other one has a sensitive
/// part.
fn submit(s: &mut Scenario, first: u64, count: u64, from_s: u64) {
    for i in first..first + count {
        let mut submission = scenario::submission(i, 300, Urgency::Normal);
        if i % 2 == 0 {
            submission.sensitive = secret(i);
        }
        s.workload.push(Planned { at_us: (from_s + i - first) * SECOND, node: STORE1, submission });
    }
}

fn peer_link(sim: &Simulation<CoreFactory>, node: NodeId) -> LinkStatus {
    sim.node(node).expect("up").status().peers[0].link
}

#[test]
fn a_sensitive_unit_waits_then_flows_under_a_pad() {
    for seed in 1..=3 {
        let mut t = Topology::new();
        let s1 = t.segment("store1", PathParams::lan());
        let s2 = t.segment("store2", PathParams::lan());
        t.relay("r1", leg());
        t.relay("r2", leg());
        let wan = t.wan(s1, s2, PathParams::wan());
        let store2 = scenario::address(2, 1);
        t.node(
            NodeSpec::new("store1", Role::StoreServer)
                .on(s1, scenario::address(1, 1))
                .group(scenario::group())
                .relayed()
                .peer(store2, Role::StoreServer, 1),
        );
        t.node(
            NodeSpec::new("store2", Role::StoreServer)
                .on(s2, store2)
                .group(scenario::group())
                .relayed(),
        );
        let mut s = Scenario::new("relay_pads", t);
        submit(&mut s, 0, 20, 10);
        submit(&mut s, 20, 20, 200);
        s.faults = vec![
            (0, Fault::WanDown(wan)),
            (90 * SECOND, Fault::WanUp(wan)),
            (160 * SECOND, Fault::WanDown(wan)),
        ];
        let mut sim = Simulation::new(s, CoreFactory::default(), seed);

        // Relay only, no pad yet: the ordinary units cross, the sensitive ones wait.
        sim.run_until(sim.now().plus_micros(80 * SECOND));
        assert_eq!(peer_link(&sim, STORE2), LinkStatus::Relay, "seed {seed}");
        let waiting = sim.node(STORE2).unwrap().status().peers[0].pads.clone();
        let waiting = waiting.expect("status shows the withheld units");
        assert_eq!(waiting.withheld_from_us, 10, "seed {seed}: {waiting:?}");
        let origin = sim.node(STORE1).unwrap().dbid();
        let store = sim.node(STORE2).unwrap().ledger().store();
        assert!(store.contains(&origin, 2), "seed {seed}: an ordinary unit crossed");
        assert!(!store.contains(&origin, 1), "seed {seed}: a sensitive one did not");
        let sender = sim.node(STORE1).unwrap().status().counters.pads;
        assert!(sender.units_withheld >= 10, "seed {seed}: {sender:?}");
        assert_eq!(sender.padded_sent, 0, "seed {seed}");

        // A direct link: the withheld units cross it, and pads are handed over both ways.
        sim.run_until(sim.now().plus_micros(70 * SECOND));
        assert_eq!(peer_link(&sim, STORE1), LinkStatus::Sim, "seed {seed}");
        let store = sim.node(STORE2).unwrap().ledger().store();
        assert_eq!(store.next_seq(&origin), 21, "seed {seed}: all 20 units held");
        for node in [STORE1, STORE2] {
            let pads = sim.node(node).unwrap().status().peers[0].pads.clone().unwrap();
            assert_eq!(pads.out_left, meshnode::proto::pads::DEFAULT_PAD_BYTES, "seed {seed}");
            assert_eq!(pads.in_bytes, meshnode::proto::pads::DEFAULT_PAD_BYTES, "seed {seed}");
        }

        // The WAN goes again: later sensitive units cross the relay under the pad.
        let report = sim.run();
        assert!(report.passed, "seed {seed}: {report:?}");
        assert_eq!(report.lost, 0, "seed {seed}");
        assert_eq!(report.duplicates_delivered, 0, "seed {seed}");
        assert_eq!(report.out_of_order_delivered, 0, "seed {seed}");
        assert_eq!(report.delivered_copies, 40, "seed {seed}");
        assert_eq!(report.pads_generated, 2, "seed {seed}");
        assert_eq!(peer_link(&sim, STORE2), LinkStatus::Relay, "seed {seed}");
        let sender = sim.node(STORE1).unwrap().status().counters.pads;
        let receiver = sim.node(STORE2).unwrap().status().counters.pads;
        assert!(sender.padded_sent >= 10, "seed {seed}: {sender:?}");
        assert_eq!(receiver.padded_received, 10, "seed {seed}: {receiver:?}");
        assert_eq!(receiver.padded_refused, 0, "seed {seed}: {receiver:?}");
        let store = sim.node(STORE2).unwrap().ledger().store();
        for seq in 1..=40u64 {
            let unit = store.get(&origin, seq).unwrap().expect("held");
            let index = seq - 1;
            let expected = if index % 2 == 0 { secret(index) } else { Vec::new() };
            assert_eq!(unit.sensitive, expected, "seed {seed}: unit {seq}");
        }
        let left = sim.node(STORE1).unwrap().status().peers[0].pads.clone().unwrap().out_left;
        assert!(left < meshnode::proto::pads::DEFAULT_PAD_BYTES, "seed {seed}: the pad was used");
    }
}
