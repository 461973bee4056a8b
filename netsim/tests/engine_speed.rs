//! The engine's own cost per event, with a protocol that does almost nothing: every node
//! keeps one 200-byte frame bouncing on a link to its neighbour, and multicasts on a timer.
//! Run with `cargo test -p netsim --release --test engine_speed -- --ignored --nocapture`.

use std::collections::VecDeque;
use std::time::Instant;

use meshnode::proto::{DatagramDest, Input, Output, Protocol, Time};
use meshnode::store::MemoryStore;
use netsim::scenario::{self, Scenario};
use netsim::{BuildContext, NodeFactory, NodeSpec, PathParams, Role, Simulation, Topology};

struct Bouncer {
    out: VecDeque<Output>,
    next: Time,
    store: MemoryStore,
}

impl Protocol for Bouncer {
    fn handle(&mut self, _now: Time, input: Input<'_>) {
        match input {
            Input::LinkUp { link, outbound: true, .. } => {
                self.out.push_back(Output::Frame { link, bytes: vec![0; 200] });
            }
            Input::Frame { link, bytes } => {
                self.out.push_back(Output::Frame { link, bytes: bytes.to_vec() });
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        if self.next <= now {
            self.next = now.plus_millis(10);
            let to = DatagramDest::Group(scenario::group());
            self.out.push_back(Output::Datagram { to, bytes: vec![0; 100] });
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        Some(self.next)
    }
}

struct Factory {
    next: Vec<std::net::SocketAddr>,
}

impl NodeFactory for Factory {
    type Node = Bouncer;

    fn build(&mut self, ctx: BuildContext<'_>) -> Bouncer {
        let to = self.next[ctx.id.0 as usize];
        Bouncer { out: VecDeque::from([Output::Connect { to }]), next: ctx.now, store: ctx.store }
    }

    fn take_store(&mut self, node: Bouncer) -> MemoryStore {
        node.store
    }
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn engine_events_per_second() {
    // 50 nodes on 5 LANs of 10, each LAN WAN-linked to the first.
    let mut t = Topology::new();
    let segs: Vec<_> = (0..5).map(|i| t.segment(format!("s{i}"), PathParams::lan())).collect();
    for s in &segs[1..] {
        t.wan(*s, segs[0], PathParams::wan());
    }
    let addr = |i: u32| scenario::address(i / 10, 10 + (i % 10) as u8);
    for i in 0..50 {
        t.node(NodeSpec::new(format!("n{i}"), Role::Lane).on(segs[(i / 10) as usize], addr(i)));
    }
    let next = (0..50).map(|i| addr((i + 7) % 50)).collect();
    let mut sim = Simulation::new(Scenario::new("speed", t), Factory { next }, 1);
    let started = Instant::now();
    let until = sim.now().plus_millis(60_000);
    sim.run_until(until);
    let wall = started.elapsed();
    let events = sim.report().events;
    let rate = events as f64 / wall.as_secs_f64();
    println!("engine: {events} events in {wall:?}: {rate:.0} events/s");
    assert!(events > 100_000);
}
