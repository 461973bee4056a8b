//! The relay path (design §5.3): two stores with no direct link, each on its own LAN, reach
//! each other only through rendezvous relays. They learn of each other by presence, open a
//! relay session, and converge: every unit delivered exactly once, in per-origin order, over
//! relay legs that lose, duplicate and reorder payloads.

use meshnode::proto::LinkStatus;
use meshnode::store::Store;
use meshnode::unit::Urgency;
use netsim::scenario::{self, Planned, Scenario};
use netsim::{
    CoreFactory, Fault, NodeId, NodeSpec, PathParams, Report, Role, Simulation, Topology,
};

const SECOND: u64 = 1_000_000;
const STORE1: NodeId = NodeId(0);
const STORE2: NodeId = NodeId(1);

fn clean_leg() -> PathParams {
    PathParams {
        latency_us: 20_000,
        jitter_us: 5_000,
        rate_bps: 0,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_us: 0,
    }
}

fn lossy_leg() -> PathParams {
    PathParams { loss: 0.05, duplicate: 0.05, reorder: 0.2, reorder_us: 300_000, ..clean_leg() }
}

/// Two stores on separate LANs with no WAN link between them, both relayed through `relays`
/// relays; `units` units submitted at each store over the first minute.
fn scenario(relays: usize, leg: PathParams, units: u64, faults: Vec<(u64, Fault)>) -> Scenario {
    let mut t = Topology::new();
    let s1 = t.segment("store1", PathParams::lan());
    let s2 = t.segment("store2", PathParams::lan());
    for r in 0..relays {
        t.relay(format!("r{}", r + 1), leg.clone());
    }
    for (seg, store) in [(s1, 1), (s2, 2)] {
        let spec = NodeSpec::new(format!("store{store}"), Role::StoreServer)
            .on(seg, scenario::address(store, 1))
            .group(scenario::group())
            .relayed();
        t.node(spec);
    }
    let mut s = Scenario::new("relay_path", t);
    for i in 0..units {
        for (k, node) in [STORE1, STORE2].into_iter().enumerate() {
            let index = i * 2 + k as u64;
            let urgency = if i % 7 == 0 { Urgency::Urgent } else { Urgency::Normal };
            s.workload.push(Planned {
                at_us: 5 * SECOND + i * 60 * SECOND / units.max(1),
                node,
                submission: scenario::submission(index, 200 + (i as usize * 37) % 3_000, urgency),
            });
        }
    }
    s.faults = faults;
    s
}

fn check(report: &Report, units: u64, what: &str) {
    assert!(report.passed, "{what}: {report:?}");
    assert!(report.timer_spins < 100, "{what}: a timer due at once, again and again: {report:?}");
    assert_eq!(report.lost, 0, "{what}");
    assert_eq!(report.duplicates_delivered, 0, "{what}");
    assert_eq!(report.out_of_order_delivered, 0, "{what}");
    assert_eq!(report.delivered_copies, 2 * units, "{what}: each store delivers the other's");
}

fn link_to_other(sim: &Simulation<CoreFactory>, node: NodeId) -> LinkStatus {
    let status = sim.node(node).expect("up").status();
    assert_eq!(status.peers.len(), 1, "{:?}", status.peers);
    status.peers[0].link
}

#[test]
fn relay_path_exactly_once() {
    let units = 150;
    for seed in 1..=6 {
        let mut sim =
            Simulation::new(scenario(2, lossy_leg(), units, vec![]), CoreFactory::default(), seed);
        let report = sim.run();
        check(&report, units, &format!("seed {seed}"));
        assert_eq!(link_to_other(&sim, STORE1), LinkStatus::Relay, "seed {seed}");
        assert_eq!(link_to_other(&sim, STORE2), LinkStatus::Relay, "seed {seed}");
        let status = sim.node(STORE1).unwrap().status();
        let session = status.peers[0].relay_session.expect("a relay session");
        assert!(session.stats.delivered > 0, "seed {seed}");
        assert_eq!(status.relays.len(), 2);
        assert!(
            status.relays.iter().all(|r| r.state == "up" && r.posted > 0),
            "{:?}",
            status.relays
        );
        assert!(status.relay_path.payloads_refused == 0, "seed {seed}: {:?}", status.relay_path);
        // The lossy legs made the session work for it: resends and dropped duplicates.
        assert!(session.stats.retransmits > 0, "seed {seed}: {session:?}");
        assert!(session.stats.duplicates > 0, "seed {seed}: {session:?}");
    }
}

#[test]
fn relay_down_is_avoided() {
    let units = 120;
    let down_at = 30 * SECOND;
    for seed in 1..=3 {
        let faults = vec![(down_at, Fault::RelayDown(0))];
        let mut sim =
            Simulation::new(scenario(2, clean_leg(), units, faults), CoreFactory::default(), seed);
        sim.run_until(sim.now().plus_micros(down_at));
        let r1_before = sim.relay(0).unwrap().stats;
        let r2_before = sim.relay(1).unwrap().stats;
        assert!(r1_before.posted > 0 && r2_before.posted > 0, "seed {seed}: both relays used");
        let report = sim.run();
        check(&report, units, &format!("seed {seed}"));
        let r1 = sim.relay(0).unwrap();
        let r2 = sim.relay(1).unwrap();
        assert!(!r1.up);
        assert_eq!(
            r1.stats.posted, r1_before.posted,
            "seed {seed}: nothing stored at a down relay"
        );
        assert!(
            r1.stats.lost_while_down <= 5,
            "seed {seed}: only posts already in flight are lost"
        );
        assert!(
            r2.stats.delivered > r2_before.delivered + 20,
            "seed {seed}: traffic continued over r2: {r2_before:?} -> {:?}",
            r2.stats
        );
        let status = sim.node(STORE1).unwrap().status();
        assert_eq!(status.relays[0].state, "down");
        assert_eq!(status.relays[1].state, "up");
        assert_eq!(link_to_other(&sim, STORE1), LinkStatus::Relay);
    }
}

/// One relay only; it stops mid-transfer for two minutes and restarts from its store: nothing
/// is lost, nothing delivered twice (design §5.3 `relay_restart_loses_nothing`).
#[test]
fn relay_restart_loses_nothing() {
    let units = 100;
    for seed in 1..=3 {
        let faults = vec![(30 * SECOND, Fault::RelayDown(0)), (150 * SECOND, Fault::RelayUp(0))];
        let mut sim =
            Simulation::new(scenario(1, lossy_leg(), units, faults), CoreFactory::default(), seed);
        sim.run_until(sim.now().plus_micros(149 * SECOND));
        let held = |sim: &Simulation<CoreFactory>, n| sim.store(n).unwrap().units_total();
        let (mid1, mid2) = (held(&sim, STORE1), held(&sim, STORE2));
        assert!(mid1 < 2 * units && mid2 < 2 * units, "seed {seed}: the outage held units back");
        let report = sim.run();
        check(&report, units, &format!("seed {seed}"));
        assert!(sim.relay(0).unwrap().up);
        let status = sim.node(STORE2).unwrap().status();
        assert_eq!(status.relay_warning.as_deref().map(|w| w.contains("one observer")), Some(true));
    }
}

/// A store crashes and restarts (a new process, a new session id): the relay session to it is
/// replaced once the new one is confirmed, and everything still arrives exactly once.
#[test]
fn a_restarted_peer_gets_a_new_session() {
    let units = 100;
    for seed in 1..=3 {
        let faults =
            vec![(25 * SECOND, Fault::Crash(STORE2)), (40 * SECOND, Fault::Restart(STORE2))];
        let mut sim =
            Simulation::new(scenario(2, lossy_leg(), units, faults), CoreFactory::default(), seed);
        let report = sim.run();
        assert!(report.passed, "seed {seed}: {report:?}");
        assert_eq!(report.lost, 0, "seed {seed}");
        assert_eq!(report.out_of_order_delivered, 0, "seed {seed}");
        assert_eq!(report.duplicates_delivered, 0, "seed {seed}");
        assert_eq!(link_to_other(&sim, STORE1), LinkStatus::Relay, "seed {seed}");
        assert_eq!(link_to_other(&sim, STORE2), LinkStatus::Relay, "seed {seed}");
        // The new process got records of the old session (dropped as stale).
        let stale = sim.node(STORE2).unwrap().status().relay_path.stale;
        assert!(stale > 0, "seed {seed}");
    }
}

/// A direct link that comes up later retires the relay session (design §2.6: sessions are not
/// kept beside a working direct link; "keep the better kind" closes the relay link).
#[test]
fn a_direct_link_retires_the_relay_session() {
    let units = 50;
    for seed in 1..=3 {
        let mut s = scenario(2, clean_leg(), units, vec![]);
        let (seg1, seg2) = (netsim::SegmentId(0), netsim::SegmentId(1));
        let wan = s.topology.wan(seg1, seg2, PathParams::wan());
        s.faults = vec![(0, Fault::WanDown(wan)), (90 * SECOND, Fault::WanUp(wan))];
        let store2 = scenario::address(2, 1);
        s.topology.nodes[0] = s.topology.nodes[0].clone().peer(store2, Role::StoreServer, 1);
        let mut sim = Simulation::new(s, CoreFactory::default(), seed);
        sim.run_until(sim.now().plus_micros(80 * SECOND));
        assert_eq!(link_to_other(&sim, STORE1), LinkStatus::Relay, "seed {seed}: relay first");
        let report = sim.run();
        check(&report, units, &format!("seed {seed}"));
        sim.run_until(sim.now().plus_micros(300 * SECOND));
        for node in [STORE1, STORE2] {
            assert_eq!(link_to_other(&sim, node), LinkStatus::Sim, "seed {seed}");
            let status = sim.node(node).unwrap().status();
            assert!(status.peers[0].relay_session.is_none(), "seed {seed}");
        }
        // No session traffic after the direct link took over: only presence every 10 min.
        let posted = sim.relay(0).unwrap().stats.posted + sim.relay(1).unwrap().stats.posted;
        sim.run_until(sim.now().plus_micros(300 * SECOND));
        let later = sim.relay(0).unwrap().stats.posted + sim.relay(1).unwrap().stats.posted;
        assert!(later - posted <= 4, "seed {seed}: {posted} -> {later}");
    }
}

/// A burst (1,500 units submitted at once at one store) does not overflow the relay session:
/// eager pushes stop near its bounds, `Want` answers fit it, anti-entropy carries the rest.
#[test]
fn a_burst_does_not_overflow_the_session() {
    let mut s = scenario(2, lossy_leg(), 1, vec![]);
    for i in 0..1_500u64 {
        s.workload.push(Planned {
            at_us: 20 * SECOND,
            node: STORE1,
            submission: scenario::submission(1_000 + i, 200, Urgency::Normal),
        });
    }
    let mut sim = Simulation::new(s, CoreFactory::default(), 4);
    let report = sim.run();
    assert!(report.passed, "{report:?}");
    assert_eq!(report.delivered_copies, 2 + 1_500);
    assert_eq!(report.duplicates_delivered + report.out_of_order_delivered, 0);
    for node in [STORE1, STORE2] {
        let status = sim.node(node).unwrap().status();
        assert_eq!(status.relay_path.overflows, 0, "{:?}", status.relay_path);
        assert_eq!(status.peers[0].link, LinkStatus::Relay);
    }
}
