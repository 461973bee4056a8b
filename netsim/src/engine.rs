//! The deterministic discrete-event engine: virtual time, the event queue, the nodes, and the
//! dispatch of inputs to nodes and of their outputs to the network.
//!
//! Determinism (STYLE.md, "Determinism"): one seed feeds one ChaCha8 generator per purpose
//! (`set_stream`: scenario, network, node seeds), so changing how the network draws does not
//! change the workload; events run in (time, insertion) order; every map that is iterated is a
//! `BTreeMap`; no wall clock is read. Same scenario, factory and seed: same [`Report`].
//!
//! The driver loop per node follows `meshnode::proto::io`: feed one input, drain
//! `poll_output` until `None` executing each output, then re-arm `poll_timeout`. The node sees
//! its own clock (true time plus its skew, never going back). The application is modelled as
//! acknowledging every delivered unit at once: after a drain the engine feeds
//! `Input::Acknowledge` for each `Output::Deliver`, in order, each followed by a drain.
//!
//! A crash takes the node out through [`NodeFactory::take_store`], calls `MemoryStore::crash`
//! (what was not flushed is gone), and drops every event addressed to that process; its links
//! break (see `links`). A restart builds a new process, with a new incarnation, from the store.
//! Datagrams in flight are not tied to a process: one arriving after a restart is delivered.
//!
//! Not here: the network model (`network`), the checks (`checks`), scenarios (`scenario`).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use meshnode::id::DatabaseId;
use meshnode::proto::{DatagramDest, Input, LinkId, Output, Protocol, Time};
use meshnode::store::MemoryStore;
use meshnode::wire::relay::Mailbox;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checks::Checks;
use crate::disk::DiskFull;
use crate::network::{
    self, Fault, LinkKey, Links, Network, NodeId, NodeSpec, RelaySpec, Resolved, Route,
};
use crate::relay::SimRelay;
use crate::scenario::{Scenario, SimConfig};
use crate::stats::{self, Counters, Report, RunInfo};

mod links;
mod relays;

/// The RNG streams derived from a run's seed.
pub(crate) const STREAM_SCENARIO: u64 = 1;
const STREAM_NETWORK: u64 = 2;
const STREAM_NODES: u64 = 3;
/// One-time pad material (`Output::GeneratePad`): its own stream, so making a pad does not
/// change what any other draw gives.
const STREAM_PADS: u64 = 4;

/// The generator for one purpose of a run with `seed`.
pub(crate) fn seeded(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Builds the protocol node the engine runs, and takes its store back on a crash.
pub trait NodeFactory {
    /// The protocol core.
    type Node: Protocol;

    /// Builds (or rebuilds after a crash) a node from its surviving store.
    fn build(&mut self, ctx: BuildContext<'_>) -> Self::Node;

    /// Takes the store back out of a node; on a crash the engine then calls
    /// `MemoryStore::crash` on it.
    fn take_store(&mut self, node: Self::Node) -> MemoryStore;

    /// The node's store, for tests that inspect it. `None` if the node cannot show it.
    fn store<'a>(&self, _node: &'a Self::Node) -> Option<&'a MemoryStore> {
        None
    }

    /// The protocol's name in reports.
    fn protocol(&self) -> &str {
        "custom"
    }
}

/// What [`NodeFactory::build`] gets. A struct so that fields can be added without breaking
/// factories.
#[non_exhaustive]
pub struct BuildContext<'a> {
    /// The node.
    pub id: NodeId,
    /// Its spec (name, role, addresses, peers, groups, skew, config).
    pub spec: &'a NodeSpec,
    /// Its store: empty at the first start, what survived the crash on a restart.
    pub store: MemoryStore,
    /// The node's own RNG seed (a fresh one at every start, drawn from the run's seed).
    pub seed: u64,
    /// The node's clock now (skewed).
    pub now: Time,
    /// Its disk-full switch (see [`crate::FailingStore`]).
    pub disk: DiskFull,
    /// 0 at the first start, then one more per restart.
    pub incarnation: u32,
    /// How many relays it connects to (`[[relay]]` entries; 0: not relayed).
    pub relays: u16,
}

/// One event a trace records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// Simulated time, microseconds since the run's start.
    pub at_us: u64,
    /// What happened.
    pub kind: &'static str,
    /// The node it happened to (or the link key, the fault or workload index).
    pub subject: u32,
}

enum Event {
    Submit(u32),
    Fault(u32),
    Timer {
        node: NodeId,
        generation: u64,
    },
    /// The payload waits in `Simulation::datagrams` so that events stay small.
    Datagram {
        to: NodeId,
        slot: u32,
    },
    Frame {
        link: LinkKey,
        side: u8,
        bytes: Vec<u8>,
    },
    Fin {
        link: LinkKey,
        side: u8,
    },
    Handshake {
        link: LinkKey,
    },
    LinkDown {
        link: LinkKey,
        side: u8,
    },
    ConnectFailed {
        node: NodeId,
        incarnation: u32,
        to: SocketAddr,
    },
    RelayPost {
        relay: u16,
        mailbox: Mailbox,
        broadcast: bool,
        bytes: Vec<u8>,
    },
    RelayDeliver {
        relay: u16,
        node: NodeId,
        incarnation: u32,
        mailbox: Mailbox,
        bytes: Vec<u8>,
    },
    RelayUp {
        relay: u16,
        node: NodeId,
        incarnation: u32,
    },
    /// Pad material the node asked for (`Output::GeneratePad`), from the pad stream.
    PadMaterial {
        node: NodeId,
        incarnation: u32,
        peer: DatabaseId,
        material: Vec<u8>,
    },
}

struct DatagramEvent {
    from_node: NodeId,
    route: Route,
    src: SocketAddr,
    dest: DatagramDest,
    bytes: Rc<Vec<u8>>,
}

impl Event {
    /// Name, number and subject, for the trace.
    fn tag(&self) -> (&'static str, u64, u32) {
        match self {
            Event::Submit(i) => ("submit", 1, *i),
            Event::Fault(i) => ("fault", 2, *i),
            Event::Timer { node, .. } => ("timer", 3, node.0),
            Event::Datagram { to, .. } => ("datagram", 4, to.0),
            Event::Frame { link, .. } => ("frame", 5, *link),
            Event::Fin { link, .. } => ("fin", 6, *link),
            Event::Handshake { link } => ("handshake", 7, *link),
            Event::LinkDown { link, .. } => ("link_down", 8, *link),
            Event::ConnectFailed { node, .. } => ("connect_failed", 9, node.0),
            Event::RelayPost { relay, .. } => ("relay_post", 10, u32::from(*relay)),
            Event::RelayDeliver { node, .. } => ("relay_deliver", 11, node.0),
            Event::RelayUp { node, .. } => ("relay_up", 12, node.0),
            Event::PadMaterial { node, .. } => ("pad_material", 13, node.0),
        }
    }
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so the max-heap pops the earliest (time, insertion) first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The event queue: earliest first, ties in insertion order.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Scheduled>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Scheduled { at, seq: self.seq, event });
    }
}

struct Slot<N> {
    node: Option<N>,
    /// The store while the node is down.
    down_store: Option<MemoryStore>,
    incarnation: u32,
    skew: i64,
    last_time: u64,
    timer: Option<u64>,
    timer_gen: u64,
    next_link: u64,
    links: BTreeMap<LinkId, LinkKey>,
    disk: DiskFull,
    outstanding: u64,
}

/// A simulation run: a scenario, a node factory and a seed.
pub struct Simulation<F: NodeFactory> {
    factory: F,
    scenario: String,
    seed: u64,
    specs: Vec<NodeSpec>,
    names: Vec<String>,
    slots: Vec<Slot<F::Node>>,
    net: Network,
    links: Links,
    queue: Queue,
    datagrams: Vec<Option<DatagramEvent>>,
    free_datagrams: Vec<u32>,
    now: u64,
    config: SimConfig,
    rng_net: ChaCha8Rng,
    rng_nodes: ChaCha8Rng,
    rng_pads: ChaCha8Rng,
    workload: Vec<(NodeId, Option<meshnode::ledger::Submission>)>,
    faults: Vec<Fault>,
    pending_scenario: usize,
    outstanding: u64,
    checks: Checks,
    counters: Counters,
    acks: VecDeque<(DatabaseId, u64)>,
    trace_hash: u64,
    trace: Option<Vec<TraceEntry>>,
    firing: Option<NodeId>,
    relay_specs: Vec<RelaySpec>,
    relays: Vec<SimRelay>,
}

impl<F: NodeFactory> Simulation<F> {
    /// Builds every node of `scenario` at its start time and schedules its workload and faults.
    pub fn new(scenario: Scenario, factory: F, seed: u64) -> Self {
        let topology = scenario.topology;
        let start = scenario.config.start.0;
        let mut queue = Queue::default();
        let mut workload = Vec::with_capacity(scenario.workload.len());
        for (i, planned) in scenario.workload.into_iter().enumerate() {
            queue.push(start.saturating_add(planned.at_us), Event::Submit(i as u32));
            workload.push((planned.node, Some(planned.submission)));
        }
        let mut faults = Vec::with_capacity(scenario.faults.len());
        for (i, (at, fault)) in scenario.faults.into_iter().enumerate() {
            queue.push(start.saturating_add(at), Event::Fault(i as u32));
            faults.push(fault);
        }
        let slots = topology
            .nodes
            .iter()
            .map(|spec| Slot {
                node: None,
                down_store: Some(MemoryStore::new()),
                incarnation: 0,
                skew: spec.skew_us,
                last_time: 0,
                timer: None,
                timer_gen: 0,
                next_link: 1,
                links: BTreeMap::new(),
                disk: DiskFull::new(),
                outstanding: 0,
            })
            .collect();
        let mut sim = Simulation {
            scenario: scenario.name,
            seed,
            names: topology.nodes.iter().map(|n| n.name.clone()).collect(),
            net: Network::new(&topology),
            checks: Checks::new(topology.nodes.len()),
            specs: topology.nodes,
            factory,
            slots,
            links: Links::default(),
            pending_scenario: workload.len() + faults.len(),
            queue,
            datagrams: Vec::new(),
            free_datagrams: Vec::new(),
            now: start,
            config: scenario.config,
            rng_net: seeded(seed, STREAM_NETWORK),
            rng_nodes: seeded(seed, STREAM_NODES),
            rng_pads: seeded(seed, STREAM_PADS),
            workload,
            faults,
            outstanding: 0,
            counters: Counters::default(),
            acks: VecDeque::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: None,
            firing: None,
            relays: topology.relays.iter().map(|_| SimRelay::new()).collect(),
            relay_specs: topology.relays,
        };
        for i in 0..sim.slots.len() {
            sim.start_node(NodeId(i as u32));
        }
        sim
    }

    /// Records every event from now on (see [`Simulation::trace`]).
    pub fn record_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The events recorded since [`Simulation::record_trace`].
    pub fn trace(&self) -> &[TraceEntry] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Runs until every scenario event has happened and every node holds every acknowledged
    /// unit, or the time limit, or nothing is left to do; then reports.
    pub fn run(&mut self) -> Report {
        while !self.finished() {
            if !self.step() {
                if !self.queue.heap.is_empty() {
                    // Stopped by the time limit: the run lasted until then.
                    let limit = self.config.start.0.saturating_add(self.config.time_limit_us);
                    self.now = self.now.max(limit);
                }
                break;
            }
        }
        self.report()
    }

    /// Whether the run is done: no scenario event left, every node holds every acknowledged
    /// unit, and every submission was answered or had `submit_grace_us` to be (a core refuses
    /// a submission without saying so today; see the crate docs). Ending in the grace period
    /// moves the clock to its end.
    fn finished(&mut self) -> bool {
        if self.pending_scenario > 0 || !self.checks.all_held() {
            return false;
        }
        if self.outstanding == 0 {
            return true;
        }
        let last = self.counters.last_submit_us.unwrap_or(self.now);
        let grace_end = last.saturating_add(self.config.submit_grace_us);
        if self.queue.heap.peek().is_some_and(|e| e.at <= grace_end) {
            return false;
        }
        self.now = self.now.max(grace_end);
        true
    }

    /// Runs every event up to `until` (true time), whatever the checks say.
    pub fn run_until(&mut self, until: Time) {
        while self.queue.heap.peek().is_some_and(|e| e.at <= until.0) && self.step() {}
        self.now = self.now.max(until.0);
    }

    /// Processes the next event; false if there is none before the time limit.
    pub fn step(&mut self) -> bool {
        let limit = self.config.start.0.saturating_add(self.config.time_limit_us);
        if self.queue.heap.peek().is_none_or(|e| e.at > limit) {
            return false;
        }
        let Some(Scheduled { at, event, .. }) = self.queue.heap.pop() else {
            return false;
        };
        self.now = at;
        self.counters.events += 1;
        let (kind, code, subject) = event.tag();
        for word in [at, code, u64::from(subject)] {
            self.trace_hash = (self.trace_hash ^ word).wrapping_mul(0x0100_0000_01b3);
        }
        if let Some(trace) = &mut self.trace {
            trace.push(TraceEntry { at_us: at.saturating_sub(self.config.start.0), kind, subject });
        }
        self.dispatch(event);
        true
    }

    /// True simulated time.
    pub fn now(&self) -> Time {
        Time(self.now)
    }

    /// The node, if it is up.
    pub fn node(&self, id: NodeId) -> Option<&F::Node> {
        self.slots.get(id.0 as usize)?.node.as_ref()
    }

    /// The node's store as the factory shows it (or, while it is down, what survived).
    pub fn store(&self, id: NodeId) -> Option<&MemoryStore> {
        let slot = self.slots.get(id.0 as usize)?;
        match &slot.node {
            Some(node) => self.factory.store(node),
            None => slot.down_store.as_ref(),
        }
    }

    /// Relay `i` of the topology.
    pub fn relay(&self, i: u16) -> Option<&SimRelay> {
        self.relays.get(usize::from(i))
    }

    /// The factory.
    pub fn factory(&self) -> &F {
        &self.factory
    }

    /// The nodes' specs.
    pub fn specs(&self) -> &[NodeSpec] {
        &self.specs
    }

    /// Applies a fault now (tests; scenarios schedule theirs).
    pub fn apply(&mut self, fault: Fault) {
        self.apply_fault(&fault);
    }

    /// Feeds a submission to `node` now (tests; scenarios schedule theirs).
    pub fn submit(&mut self, node: NodeId, submission: meshnode::ledger::Submission) {
        self.submit_now(node, submission);
    }

    /// The report of the run so far.
    pub fn report(&self) -> Report {
        let mut counters = self.counters.clone();
        counters.submits_unanswered += self.outstanding;
        let max_queue = self.net.max_queue.clone();
        let info = RunInfo {
            protocol: self.factory.protocol(),
            scenario: &self.scenario,
            seed: self.seed,
            names: &self.names,
            start_us: self.config.start.0,
            end_us: self.now,
            max_queue: &max_queue,
            trace_hash: self.trace_hash,
        };
        stats::build(info, &counters, &self.checks.counts, &self.checks.finish())
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Submit(i) => {
                self.pending_scenario -= 1;
                let Some((node, slot)) = self.workload.get_mut(i as usize) else { return };
                if let Some(submission) = slot.take() {
                    let node = *node;
                    self.submit_now(node, submission);
                }
            }
            Event::Fault(i) => {
                self.pending_scenario -= 1;
                if let Some(fault) = self.faults.get(i as usize).cloned() {
                    self.apply_fault(&fault);
                }
            }
            Event::Timer { node, generation } => {
                let slot = &mut self.slots[node.0 as usize];
                if slot.timer_gen != generation || slot.node.is_none() {
                    return;
                }
                slot.timer = None;
                self.firing = Some(node);
                self.feed(node, |n, t| n.handle_timeout(t));
                self.firing = None;
            }
            Event::Datagram { to, slot } => self.on_datagram(to, slot),
            Event::Frame { link, side, bytes } => self.on_frame(link, side, &bytes),
            Event::Fin { link, side } => self.on_link_down(link, side),
            Event::Handshake { link } => self.on_handshake(link),
            Event::LinkDown { link, side } => self.on_link_down(link, side),
            Event::ConnectFailed { node, incarnation, to } => {
                if self.slots[node.0 as usize].incarnation == incarnation {
                    self.counters.connects_failed += 1;
                    self.feed(node, |n, t| n.handle(t, Input::ConnectFailed { to }));
                }
            }
            Event::RelayPost { relay, mailbox, broadcast, bytes } => {
                self.on_relay_post(relay, mailbox, broadcast, bytes)
            }
            Event::RelayDeliver { relay, node, incarnation, mailbox, bytes } => {
                self.on_relay_deliver(relay, node, incarnation, mailbox, &bytes)
            }
            Event::RelayUp { relay, node, incarnation } => {
                self.on_relay_up(relay, node, incarnation)
            }
            Event::PadMaterial { node, incarnation, peer, material } => {
                if self.slots[node.0 as usize].incarnation == incarnation {
                    self.counters.pads_generated += 1;
                    self.feed(node, |n, t| n.handle(t, Input::PadMaterial { peer, material }));
                }
            }
        }
    }

    fn submit_now(&mut self, node: NodeId, submission: meshnode::ledger::Submission) {
        let Some(slot) = self.slots.get_mut(node.0 as usize) else { return };
        if slot.node.is_none() {
            self.counters.submits_skipped += 1;
            return;
        }
        slot.outstanding += 1;
        self.outstanding += 1;
        self.counters.submits += 1;
        self.counters.first_submit_us.get_or_insert(self.now);
        self.counters.last_submit_us = Some(self.now);
        self.feed(node, |n, t| n.handle(t, Input::Submit(submission)));
    }

    /// The node's clock now: true time plus skew, never going back.
    fn node_time(&mut self, id: NodeId) -> Time {
        let slot = &mut self.slots[id.0 as usize];
        let t = self.now.saturating_add_signed(slot.skew).max(slot.last_time);
        slot.last_time = t;
        Time(t)
    }

    /// Feeds one input (if the node is up), then drains and re-arms its timer.
    fn feed(&mut self, id: NodeId, f: impl FnOnce(&mut F::Node, Time)) {
        let t = self.node_time(id);
        let Some(node) = self.slots[id.0 as usize].node.as_mut() else { return };
        f(node, t);
        self.drain(id);
    }

    fn drain(&mut self, id: NodeId) {
        let i = id.0 as usize;
        loop {
            loop {
                let Some(node) = self.slots[i].node.as_mut() else { return };
                let Some(out) = node.poll_output() else { break };
                self.execute(id, out);
            }
            loop {
                let Some(node) = self.slots[i].node.as_mut() else { return };
                let Some(out) = node.poll_relay_output() else { break };
                self.execute_relay(id, out);
            }
            let Some((origin, seq)) = self.acks.pop_front() else { break };
            let t = self.node_time(id);
            if let Some(node) = self.slots[i].node.as_mut() {
                node.handle(t, Input::Acknowledge { origin, seq });
            }
        }
        self.arm_timer(id);
    }

    fn arm_timer(&mut self, id: NodeId) {
        let slot = &mut self.slots[id.0 as usize];
        let Some(node) = slot.node.as_ref() else { return };
        let Some(wake) = node.poll_timeout() else {
            if slot.timer.take().is_some() {
                slot.timer_gen += 1;
            }
            return;
        };
        let back = slot.skew.checked_neg().unwrap_or(i64::MAX);
        let mut at = wake.0.saturating_add_signed(back).max(self.now);
        if at == self.now && self.firing == Some(id) {
            // The timer just ran and wants to run again at once: let time move.
            at += 1;
            self.counters.timer_spins += 1;
        }
        if slot.timer != Some(at) {
            slot.timer = Some(at);
            slot.timer_gen += 1;
            self.queue.push(at, Event::Timer { node: id, generation: slot.timer_gen });
        }
    }

    fn execute(&mut self, id: NodeId, out: Output) {
        match out {
            Output::Datagram { to, bytes } => self.send_datagram(id, to, bytes),
            Output::Frame { link, bytes } => self.send_frame(id, link, bytes),
            Output::Connect { to } => self.connect(id, to),
            Output::Close { link } => self.close(id, link),
            Output::Accepted(receipt) => {
                let slot = &mut self.slots[id.0 as usize];
                if slot.outstanding > 0 {
                    slot.outstanding -= 1;
                    self.outstanding -= 1;
                }
                self.checks.on_accepted(id, self.now, &receipt);
            }
            Output::Deliver(unit) => {
                self.checks.on_deliver(id, self.now, &unit);
                self.acks.push_back((unit.origin, unit.seq));
            }
            Output::Refused { .. } => {
                let slot = &mut self.slots[id.0 as usize];
                if slot.outstanding > 0 {
                    slot.outstanding -= 1;
                    self.outstanding -= 1;
                }
                self.counters.submits_refused += 1;
            }
            // netsim models no NAT, so a punched path never opens and peers reached over a
            // relay stay on it (the real binary's netns tests cover punching).
            Output::Punch { .. } | Output::ConnectPunched { .. } => {}
            Output::GeneratePad { peer, len } => {
                let mut material = vec![0u8; len.min(16 << 20)];
                self.rng_pads.fill_bytes(&mut material);
                let incarnation = self.slots[id.0 as usize].incarnation;
                let event = Event::PadMaterial { node: id, incarnation, peer, material };
                self.queue.push(self.now, event);
            }
            _ => self.counters.unknown_outputs += 1,
        }
    }

    fn start_node(&mut self, id: NodeId) {
        let i = id.0 as usize;
        let now = self.node_time(id);
        let slot = &mut self.slots[i];
        if slot.node.is_some() {
            return;
        }
        let store = slot.down_store.take().unwrap_or_default();
        let ctx = BuildContext {
            id,
            spec: &self.specs[i],
            store,
            seed: self.rng_nodes.next_u64(),
            now,
            disk: slot.disk.clone(),
            incarnation: slot.incarnation,
            relays: if self.specs[i].relayed {
                u16::try_from(self.relay_specs.len()).unwrap_or(u16::MAX)
            } else {
                0
            },
        };
        slot.node = Some(self.factory.build(ctx));
        self.net.set_up(id, true);
        self.drain(id);
        self.connect_relays(id);
    }

    fn crash(&mut self, id: NodeId) {
        let slot = &mut self.slots[id.0 as usize];
        let Some(node) = slot.node.take() else { return };
        let mut store = self.factory.take_store(node);
        store.crash();
        slot.down_store = Some(store);
        slot.incarnation += 1;
        slot.links.clear();
        slot.timer = None;
        slot.timer_gen += 1;
        self.counters.submits_unanswered += slot.outstanding;
        self.outstanding -= slot.outstanding;
        slot.outstanding = 0;
        self.counters.crashes += 1;
        self.net.set_up(id, false);
        self.checks.on_crash(id);
        self.break_links();
        self.disconnect_relays(id);
    }

    fn apply_fault(&mut self, fault: &Fault) {
        self.counters.last_fault_us = Some(self.now);
        match fault {
            Fault::WanDown(wan) => {
                self.net.set_wan(*wan, false);
                self.break_links();
            }
            Fault::WanUp(wan) => self.net.set_wan(*wan, true),
            Fault::Partition { id, nodes } => {
                self.net.partition(*id, nodes);
                self.break_links();
            }
            Fault::Heal { id } => self.net.heal(*id),
            Fault::Crash(node) => self.crash(*node),
            Fault::Restart(node) => self.restart(*node),
            Fault::DiskFull { node, full } => {
                if let Some(slot) = self.slots.get(node.0 as usize) {
                    slot.disk.set(*full);
                }
            }
            Fault::WanBlock { node, blocked } => {
                self.net.set_blocked(*node, *blocked);
                self.break_links();
            }
            Fault::RelayDown(relay) => self.relay_down(*relay),
            Fault::RelayUp(relay) => self.relay_up(*relay),
            Fault::HealAll => {
                self.net.heal_all();
                for i in 0..self.slots.len() {
                    self.slots[i].disk.set(false);
                    self.restart(NodeId(i as u32));
                }
            }
        }
    }

    fn restart(&mut self, id: NodeId) {
        if self.slots.get(id.0 as usize).is_some_and(|s| s.node.is_none()) {
            self.counters.restarts += 1;
            self.start_node(id);
        }
    }

    fn send_datagram(&mut self, from: NodeId, to: DatagramDest, bytes: Vec<u8>) {
        let len = bytes.len();
        self.counters.datagrams_sent += 1;
        self.counters.datagram_bytes += len as u64;
        let bytes = Rc::new(bytes);
        let now = self.now;
        match to {
            DatagramDest::Unicast(addr) => {
                let Resolved::Route { to: target, route, src } = self.net.resolve(from, addr)
                else {
                    self.counters.datagrams_dropped += 1;
                    return;
                };
                let depart = self.net.enqueue(from, route, len, now);
                self.schedule_datagram(from, target, route, src, to, depart, &bytes);
            }
            DatagramDest::Group(_) => {
                self.counters.multicasts_sent += 1;
                for a in 0..self.net.attachments(from).len() {
                    let (segment, src) = self.net.attachments(from)[a];
                    let route = Route::Lan { segment, attach: a as u8 };
                    let depart = self.net.enqueue(from, route, len, now);
                    for m in 0..self.net.members(segment).len() {
                        let (member, _) = self.net.members(segment)[m];
                        if member == from {
                            continue;
                        }
                        if !self.net.reachable(from, member, route) {
                            self.counters.datagrams_dropped += 1;
                            continue;
                        }
                        self.schedule_datagram(from, member, route, src, to, depart, &bytes);
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn schedule_datagram(
        &mut self,
        from_node: NodeId,
        to: NodeId,
        route: Route,
        src: SocketAddr,
        dest: DatagramDest,
        depart: u64,
        bytes: &Rc<Vec<u8>>,
    ) {
        let arrivals =
            network::datagram_arrivals(self.net.params(route), depart, &mut self.rng_net);
        if arrivals[0].is_none() {
            self.counters.datagrams_dropped += 1;
        }
        for at in arrivals.into_iter().flatten() {
            let d = DatagramEvent { from_node, route, src, dest, bytes: Rc::clone(bytes) };
            let slot = match self.free_datagrams.pop() {
                Some(slot) => {
                    self.datagrams[slot as usize] = Some(d);
                    slot
                }
                None => {
                    self.datagrams.push(Some(d));
                    (self.datagrams.len() - 1) as u32
                }
            };
            self.queue.push(at, Event::Datagram { to, slot });
        }
    }

    fn on_datagram(&mut self, to: NodeId, slot: u32) {
        let Some(d) = self.datagrams.get_mut(slot as usize).and_then(Option::take) else { return };
        self.free_datagrams.push(slot);
        if !self.net.reachable(d.from_node, to, d.route) {
            self.counters.datagrams_dropped += 1;
            return;
        }
        self.counters.datagrams_delivered += 1;
        let (from, dest, bytes) = (d.src, d.dest, &d.bytes);
        self.feed(to, |n, t| n.handle(t, Input::Datagram { from, to: dest, bytes }));
    }
}
