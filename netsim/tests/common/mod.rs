//! Helpers shared by netsim's tests: a scripted probe protocol that records what the engine
//! gives it, and small scenarios.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use meshnode::proto::{DatagramDest, Input, LinkId, Output, Protocol, Time};
use meshnode::store::MemoryStore;
use netsim::scenario::{self, ChainParams, ScenarioKind};
use netsim::toy::ToyFactory;
use netsim::{BuildContext, FaultSet, NodeFactory, Report, Simulation};

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Built { now: Time, incarnation: u32 },
    Datagram { from: SocketAddr, to: DatagramDest, bytes: Vec<u8> },
    Frame { link: LinkId, bytes: Vec<u8> },
    LinkUp { link: LinkId, remote: SocketAddr, outbound: bool },
    LinkDown { link: LinkId },
    ConnectFailed { to: SocketAddr },
    Timeout { now: Time },
}

/// A node that does what its spec's `config` says and records every input with its time.
///
/// Config keys: `connect` (an address to dial at start), `frames` (how many numbered frames to
/// send on an outbound link once it is up), `close` (close the link after sending them),
/// `multicast` (a group to send one datagram to at start), `echo` (answer each frame with the
/// same bytes).
pub struct Probe {
    pub seen: Vec<(Time, Seen)>,
    out: VecDeque<Output>,
    start: Option<Time>,
    config: BTreeMap<String, String>,
    store: MemoryStore,
}

impl Probe {
    fn script_start(&mut self) {
        if let Some(to) = self.config.get("connect").and_then(|a| a.parse().ok()) {
            self.out.push_back(Output::Connect { to });
        }
        if let Some(group) = self.config.get("multicast").and_then(|a| a.parse().ok()) {
            let to = DatagramDest::Group(group);
            self.out.push_back(Output::Datagram { to, bytes: b"hello".to_vec() });
        }
    }

    /// The frames received, as numbers.
    pub fn frame_numbers(&self) -> Vec<u32> {
        self.seen
            .iter()
            .filter_map(|(_, s)| match s {
                Seen::Frame { bytes, .. } => {
                    bytes.get(..4)?.try_into().ok().map(u32::from_be_bytes)
                }
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.seen.iter().filter(|(_, s)| f(s)).count()
    }
}

impl Protocol for Probe {
    fn handle(&mut self, now: Time, input: Input<'_>) {
        let seen = match input {
            Input::Datagram { from, to, bytes } => {
                Seen::Datagram { from, to, bytes: bytes.to_vec() }
            }
            Input::Frame { link, bytes } => {
                if self.config.contains_key("echo") {
                    self.out.push_back(Output::Frame { link, bytes: bytes.to_vec() });
                }
                Seen::Frame { link, bytes: bytes.to_vec() }
            }
            Input::LinkUp { link, remote, outbound, .. } => {
                if outbound {
                    let n: u32 =
                        self.config.get("frames").and_then(|n| n.parse().ok()).unwrap_or(0);
                    for i in 0..n {
                        let mut bytes = i.to_be_bytes().to_vec();
                        bytes.resize(200, 0);
                        self.out.push_back(Output::Frame { link, bytes });
                    }
                    if self.config.contains_key("close") {
                        self.out.push_back(Output::Close { link });
                    }
                }
                Seen::LinkUp { link, remote, outbound }
            }
            Input::LinkDown { link } => Seen::LinkDown { link },
            Input::ConnectFailed { to } => Seen::ConnectFailed { to },
            _ => return,
        };
        self.seen.push((now, seen));
    }

    fn handle_timeout(&mut self, now: Time) {
        if self.start.take_if(|s| *s <= now).is_some() {
            self.script_start();
        }
        self.seen.push((now, Seen::Timeout { now }));
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.start
    }
}

/// Builds [`Probe`]s.
#[derive(Default)]
pub struct ProbeFactory;

impl NodeFactory for ProbeFactory {
    type Node = Probe;

    fn build(&mut self, ctx: BuildContext<'_>) -> Probe {
        Probe {
            seen: vec![(ctx.now, Seen::Built { now: ctx.now, incarnation: ctx.incarnation })],
            out: VecDeque::new(),
            start: Some(ctx.now),
            config: ctx.spec.config.clone(),
            store: ctx.store,
        }
    }

    fn take_store(&mut self, node: Probe) -> MemoryStore {
        node.store
    }

    fn protocol(&self) -> &str {
        "probe"
    }
}

/// A small chain (2 stores x 2 lanes + head office = 7 nodes) with `units` units.
pub fn small_chain(units: u32, faults: FaultSet) -> ChainParams {
    ChainParams { stores: 2, lanes: 2, units, faults, ..ChainParams::default() }
}

/// Runs a named scenario with the toy protocol.
pub fn run_toy(kind: ScenarioKind, params: &ChainParams, seed: u64, factory: ToyFactory) -> Report {
    let scenario = scenario::build(kind, params, seed);
    Simulation::new(scenario, factory, seed).run()
}
