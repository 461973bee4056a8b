//! The simulated network: LAN segments (multicast domains), WAN links between sites, which
//! address is reachable from which node over which route, the serialization queues, the table
//! of links, and the fault state (WAN links down, partitions, nodes cut off from the WAN).
//!
//! Model, and its limits:
//! - A LAN segment is one multicast domain. A node attached to it has one address on it. A
//!   unicast datagram or a link between two nodes of one segment takes the LAN route.
//! - A WAN link joins two segments (a store LAN and the head office LAN). Any node on one side
//!   reaches any node on the other over it, unless either node is WAN-blocked. There is no
//!   routing over more than one WAN link: store to store goes through a node that forwards.
//! - A LAN route serializes on the sender's network interface (one queue per node and
//!   segment); a WAN route serializes on the WAN link (one queue per direction, shared by every
//!   node behind it). Then latency plus uniform jitter. Queue lengths are counted in messages.
//! - Datagrams may be lost, duplicated and reordered (an extra random delay). Links are
//!   reliable and in order: loss shows up as retransmission delay and head-of-line blocking.
//! - A partition is a set of nodes that cannot talk to the nodes outside it.
//!
//! Not here: time and the event queue (`engine`), what nodes do with what arrives. No IP
//! headers, no congestion control, no NAT.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

use meshnode::proto::LinkId;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Index of a node in its [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NodeId(pub u32);

/// Index of a LAN segment in its [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u32);

/// Index of a WAN link in its [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WanId(pub u32);

/// Delay, bandwidth and impairments of a LAN segment or of each direction of a WAN link.
#[derive(Debug, Clone, PartialEq)]
pub struct PathParams {
    /// Fixed one-way latency, microseconds.
    pub latency_us: u64,
    /// Uniform extra latency in `0..=jitter_us`.
    pub jitter_us: u64,
    /// Bits per second; 0 means no serialization delay and no queue.
    pub rate_bps: u64,
    /// Probability that a datagram is lost (on a link: that a frame needs a retransmission).
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram or frame is held back by up to `reorder_us` more.
    pub reorder: f64,
    /// Largest extra delay of a reordered message.
    pub reorder_us: u64,
}

impl PathParams {
    /// A switched office LAN: 100-500 µs, 1 Gbit/s, no impairments.
    pub fn lan() -> Self {
        PathParams {
            latency_us: 100,
            jitter_us: 400,
            rate_bps: 1_000_000_000,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_us: 0,
        }
    }

    /// A store's internet line to head office: 20-25 ms, 20 Mbit/s, no impairments.
    pub fn wan() -> Self {
        PathParams {
            latency_us: 20_000,
            jitter_us: 5_000,
            rate_bps: 20_000_000,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_us: 0,
        }
    }
}

/// A LAN segment.
#[derive(Debug, Clone)]
pub struct SegmentSpec {
    /// For reports.
    pub name: String,
    /// Its LAN.
    pub params: PathParams,
}

/// A WAN link between two segments.
#[derive(Debug, Clone)]
pub struct WanSpec {
    /// For reports.
    pub name: String,
    /// One end.
    pub a: SegmentId,
    /// The other end.
    pub b: SegmentId,
    /// Each direction.
    pub params: PathParams,
}

/// What a node is in the retail chain (the core will read it from its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[non_exhaustive]
pub enum Role {
    /// A main server: what it holds is safe.
    HeadOffice,
    /// A store's server.
    StoreServer,
    /// A checkout lane.
    Lane,
    /// A laptop that is often away.
    Laptop,
}

/// A configured peer of a node (direct IP in the node's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Where to reach it.
    pub addr: SocketAddr,
    /// What it is.
    pub role: Role,
    /// Lower is preferred; 0 is the usual peer, higher ones are fallbacks.
    pub priority: u8,
}

/// One node of a topology: everything the factory needs to build it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Unique name, for reports.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Its address on each attached segment.
    pub addrs: Vec<(SegmentId, SocketAddr)>,
    /// Configured peers.
    pub peers: Vec<PeerSpec>,
    /// Multicast groups it joins (discovery, environment).
    pub groups: Vec<SocketAddr>,
    /// Its clock reads true time plus this, microseconds (a day is 86_400_000_000).
    pub skew_us: i64,
    /// Cut off from every WAN link from the start (a lane behind a firewall).
    pub wan_blocked: bool,
    /// Free-form settings for the factory.
    pub config: BTreeMap<String, String>,
    /// Connects to every relay of the topology (design §5.3).
    pub relayed: bool,
}

impl NodeSpec {
    /// A node with no address yet.
    pub fn new(name: impl Into<String>, role: Role) -> Self {
        NodeSpec {
            name: name.into(),
            role,
            addrs: Vec::new(),
            peers: Vec::new(),
            groups: Vec::new(),
            skew_us: 0,
            wan_blocked: false,
            config: BTreeMap::new(),
            relayed: false,
        }
    }

    /// Attaches it to `segment` with address `addr`.
    pub fn on(mut self, segment: SegmentId, addr: SocketAddr) -> Self {
        self.addrs.push((segment, addr));
        self
    }

    /// Adds a configured peer.
    pub fn peer(mut self, addr: SocketAddr, role: Role, priority: u8) -> Self {
        self.peers.push(PeerSpec { addr, role, priority });
        self
    }

    /// Joins a multicast group.
    pub fn group(mut self, group: SocketAddr) -> Self {
        self.groups.push(group);
        self
    }

    /// Connects to every relay of the topology.
    pub fn relayed(mut self) -> Self {
        self.relayed = true;
        self
    }

    /// Its first address (the one peers are configured with).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addrs.first().map(|(_, a)| *a)
    }
}

/// Segments, WAN links and nodes. Ids are indexes in the order things were added.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// LAN segments.
    pub segments: Vec<SegmentSpec>,
    /// WAN links.
    pub wans: Vec<WanSpec>,
    /// Nodes.
    pub nodes: Vec<NodeSpec>,
    /// Rendezvous relays ([`crate::relay::SimRelay`]), in `[[relay]]` order.
    pub relays: Vec<RelaySpec>,
}

/// A rendezvous relay of the simulation: reached by every relayed node over a path of its own
/// (both legs, node to relay and relay to node, follow `params`: loss, duplication and
/// reordering model redelivery and the reordering of several relays).
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// Its name.
    pub name: String,
    /// Each leg.
    pub params: PathParams,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a LAN segment.
    pub fn segment(&mut self, name: impl Into<String>, params: PathParams) -> SegmentId {
        self.segments.push(SegmentSpec { name: name.into(), params });
        SegmentId(index_u32(self.segments.len() - 1))
    }

    /// Adds a WAN link between two segments.
    pub fn wan(&mut self, a: SegmentId, b: SegmentId, params: PathParams) -> WanId {
        let name = format!("{}-{}", self.segment_name(a), self.segment_name(b));
        self.wans.push(WanSpec { name, a, b, params });
        WanId(index_u32(self.wans.len() - 1))
    }

    /// Adds a relay; relayed nodes know relays by their position.
    pub fn relay(&mut self, name: impl Into<String>, params: PathParams) -> u16 {
        self.relays.push(RelaySpec { name: name.into(), params });
        u16::try_from(self.relays.len() - 1).unwrap_or(u16::MAX)
    }

    /// Adds a node.
    pub fn node(&mut self, spec: NodeSpec) -> NodeId {
        self.nodes.push(spec);
        NodeId(index_u32(self.nodes.len() - 1))
    }

    /// The nodes attached to `segment`, ascending.
    pub fn members(&self, segment: SegmentId) -> Vec<NodeId> {
        let on = |n: &NodeSpec| n.addrs.iter().any(|(s, _)| *s == segment);
        (0..self.nodes.len())
            .filter(|&i| on(&self.nodes[i]))
            .map(|i| NodeId(index_u32(i)))
            .collect()
    }

    fn segment_name(&self, s: SegmentId) -> &str {
        self.segments.get(s.0 as usize).map_or("?", |s| s.name.as_str())
    }
}

/// A fault or repair in a scenario's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// A WAN link fails (a store's internet is down).
    WanDown(WanId),
    /// It works again.
    WanUp(WanId),
    /// `nodes` can no longer talk to the nodes outside the set, until [`Fault::Heal`] `id`.
    Partition {
        /// Names this partition for the heal.
        id: u32,
        /// One side.
        nodes: Vec<NodeId>,
    },
    /// Ends partition `id`.
    Heal {
        /// The partition.
        id: u32,
    },
    /// The node's process dies: what its store had not flushed is lost.
    Crash(NodeId),
    /// A crashed node starts again from its store.
    Restart(NodeId),
    /// The node's disk is full (store writes fail) or has room again.
    DiskFull {
        /// The node.
        node: NodeId,
        /// Full or not.
        full: bool,
    },
    /// The node loses (or regains) its WAN access, keeping its LAN.
    WanBlock {
        /// The node.
        node: NodeId,
        /// Blocked or not.
        blocked: bool,
    },
    /// Relay `0` stops: its connections drop, posts in flight to it are lost, its store stays.
    RelayDown(u16),
    /// Relay `0` runs again (from its store); relayed nodes reconnect.
    RelayUp(u16),
    /// Every WAN link up, no partition, no full disk, every crashed node restarted. WAN
    /// blocks stay (they are topology, not a fault).
    HealAll,
}

/// How a message travels: the LAN of one segment, or one WAN link in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Lan { segment: SegmentId, attach: u8 },
    Wan { wan: WanId, dir: u8 },
}

/// Where an address led.
pub(crate) enum Resolved {
    /// No node has that address.
    NoSuchAddress,
    /// The node is there but no route works now.
    Unreachable,
    /// The node, the route and our source address on it.
    Route { to: NodeId, route: Route, src: SocketAddr },
}

/// A FIFO transmitter: a network interface or one direction of a WAN link.
#[derive(Debug, Default)]
struct Serializer {
    busy_until: u64,
    /// Departure times of messages not yet gone, ascending.
    pending: VecDeque<u64>,
}

impl Serializer {
    /// Queues `len` bytes at `now`; returns the departure time and the queue length.
    fn enqueue(&mut self, now: u64, len: usize, rate_bps: u64) -> (u64, usize) {
        if rate_bps == 0 {
            return (now, 0);
        }
        while self.pending.front().is_some_and(|&t| t <= now) {
            self.pending.pop_front();
        }
        let bits = (len as u128) * 8 * 1_000_000;
        let serialize_us = u64::try_from(bits.div_ceil(u128::from(rate_bps))).unwrap_or(u64::MAX);
        let depart = self.busy_until.max(now).saturating_add(serialize_us);
        self.busy_until = depart;
        self.pending.push_back(depart);
        (depart, self.pending.len())
    }
}

struct WanState {
    params: PathParams,
    up: bool,
    ser: [Serializer; 2],
}

/// The network's static shape and fault state.
pub(crate) struct Network {
    segment_params: Vec<PathParams>,
    members: Vec<Vec<(NodeId, SocketAddr)>>,
    wans: Vec<WanState>,
    /// (from, to) -> the WAN link and the direction from `from` to `to`.
    wan_between: BTreeMap<(SegmentId, SegmentId), (WanId, u8)>,
    /// Lookups only (never iterated), so a HashMap cannot leak into behaviour.
    addrs: HashMap<SocketAddr, (NodeId, SegmentId)>,
    attach: Vec<Vec<(SegmentId, SocketAddr)>>,
    nic: Vec<Vec<Serializer>>,
    up: Vec<bool>,
    blocked: Vec<bool>,
    partitions: BTreeMap<u32, Vec<bool>>,
    /// Longest queue each node's messages joined.
    pub(crate) max_queue: Vec<usize>,
}

impl Network {
    pub(crate) fn new(topology: &Topology) -> Self {
        let n = topology.nodes.len();
        let mut members = vec![Vec::new(); topology.segments.len()];
        let mut addrs = HashMap::new();
        for (i, node) in topology.nodes.iter().enumerate() {
            for &(segment, addr) in &node.addrs {
                if let Some(m) = members.get_mut(segment.0 as usize) {
                    m.push((NodeId(index_u32(i)), addr));
                }
                addrs.insert(addr, (NodeId(index_u32(i)), segment));
            }
        }
        let mut wan_between = BTreeMap::new();
        for (i, w) in topology.wans.iter().enumerate() {
            wan_between.insert((w.a, w.b), (WanId(index_u32(i)), 0));
            wan_between.insert((w.b, w.a), (WanId(index_u32(i)), 1));
        }
        Network {
            segment_params: topology.segments.iter().map(|s| s.params.clone()).collect(),
            members,
            wans: topology
                .wans
                .iter()
                .map(|w| WanState { params: w.params.clone(), up: true, ser: Default::default() })
                .collect(),
            wan_between,
            addrs,
            attach: topology.nodes.iter().map(|n| n.addrs.clone()).collect(),
            nic: topology
                .nodes
                .iter()
                .map(|n| n.addrs.iter().map(|_| Serializer::default()).collect())
                .collect(),
            up: vec![true; n],
            blocked: topology.nodes.iter().map(|n| n.wan_blocked).collect(),
            partitions: BTreeMap::new(),
            max_queue: vec![0; n],
        }
    }

    /// The route from node `from` to address `to`, if any works now (both nodes up, not
    /// partitioned, the WAN link up and neither end WAN-blocked). LAN is preferred.
    pub(crate) fn resolve(&self, from: NodeId, to: SocketAddr) -> Resolved {
        let Some(&(target, dst_segment)) = self.addrs.get(&to) else {
            return Resolved::NoSuchAddress;
        };
        let attach = &self.attach[from.0 as usize];
        let mut found = None;
        if let Some(i) = attach.iter().position(|(s, _)| *s == dst_segment) {
            found = Some((Route::Lan { segment: dst_segment, attach: i as u8 }, attach[i].1));
        } else {
            for &(segment, src) in attach {
                if let Some(&(wan, dir)) = self.wan_between.get(&(segment, dst_segment)) {
                    let route = Route::Wan { wan, dir };
                    if self.route_ok(from, target, route) {
                        found = Some((route, src));
                        break;
                    }
                }
            }
        }
        match found {
            Some((route, src)) if self.reachable(from, target, route) => {
                Resolved::Route { to: target, route, src }
            }
            _ => Resolved::Unreachable,
        }
    }

    /// Whether the network lets `a` and `b` talk over `route` now, whatever their processes.
    pub(crate) fn route_ok(&self, a: NodeId, b: NodeId, route: Route) -> bool {
        if self.partitioned(a, b) {
            return false;
        }
        match route {
            Route::Lan { .. } => true,
            Route::Wan { wan, .. } => {
                self.wans[wan.0 as usize].up
                    && !self.blocked[a.0 as usize]
                    && !self.blocked[b.0 as usize]
            }
        }
    }

    /// [`Network::route_ok`] and both nodes up.
    pub(crate) fn reachable(&self, a: NodeId, b: NodeId, route: Route) -> bool {
        self.up[a.0 as usize] && self.up[b.0 as usize] && self.route_ok(a, b, route)
    }

    /// Whether an active partition separates `a` and `b`.
    pub(crate) fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        self.partitions.values().any(|p| p[a.0 as usize] != p[b.0 as usize])
    }

    /// The route back from `to` to the node that used `route`.
    pub(crate) fn reverse(&self, route: Route, to: NodeId) -> Route {
        match route {
            Route::Lan { segment, .. } => {
                let attach = self.attach[to.0 as usize].iter().position(|(s, _)| *s == segment);
                Route::Lan { segment, attach: attach.unwrap_or(0) as u8 }
            }
            Route::Wan { wan, dir } => Route::Wan { wan, dir: 1 - dir },
        }
    }

    pub(crate) fn params(&self, route: Route) -> &PathParams {
        match route {
            Route::Lan { segment, .. } => &self.segment_params[segment.0 as usize],
            Route::Wan { wan, .. } => &self.wans[wan.0 as usize].params,
        }
    }

    /// Serializes `len` bytes sent by `sender` over `route` at `now`; returns the departure.
    pub(crate) fn enqueue(&mut self, sender: NodeId, route: Route, len: usize, now: u64) -> u64 {
        let (depart, queue) = match route {
            Route::Lan { segment, attach } => {
                let rate = self.segment_params[segment.0 as usize].rate_bps;
                let nic = &mut self.nic[sender.0 as usize];
                match nic.get_mut(usize::from(attach)) {
                    Some(s) => s.enqueue(now, len, rate),
                    None => (now, 0),
                }
            }
            Route::Wan { wan, dir } => {
                let w = &mut self.wans[wan.0 as usize];
                w.ser[usize::from(dir & 1)].enqueue(now, len, w.params.rate_bps)
            }
        };
        let max = &mut self.max_queue[sender.0 as usize];
        *max = (*max).max(queue);
        depart
    }

    /// The sender's attachments: (segment, its address there).
    pub(crate) fn attachments(&self, node: NodeId) -> &[(SegmentId, SocketAddr)] {
        &self.attach[node.0 as usize]
    }

    /// The nodes on `segment` with their addresses there.
    pub(crate) fn members(&self, segment: SegmentId) -> &[(NodeId, SocketAddr)] {
        &self.members[segment.0 as usize]
    }

    pub(crate) fn set_up(&mut self, node: NodeId, up: bool) {
        self.up[node.0 as usize] = up;
    }

    pub(crate) fn set_wan(&mut self, wan: WanId, up: bool) {
        if let Some(w) = self.wans.get_mut(wan.0 as usize) {
            w.up = up;
        }
    }

    pub(crate) fn set_blocked(&mut self, node: NodeId, blocked: bool) {
        if let Some(b) = self.blocked.get_mut(node.0 as usize) {
            *b = blocked;
        }
    }

    pub(crate) fn partition(&mut self, id: u32, nodes: &[NodeId]) {
        let mut side = vec![false; self.up.len()];
        for n in nodes {
            if let Some(s) = side.get_mut(n.0 as usize) {
                *s = true;
            }
        }
        self.partitions.insert(id, side);
    }

    pub(crate) fn heal(&mut self, id: u32) {
        self.partitions.remove(&id);
    }

    /// Every WAN link up and no partition.
    pub(crate) fn heal_all(&mut self) {
        self.partitions.clear();
        for w in &mut self.wans {
            w.up = true;
        }
    }
}

/// When a datagram sent at `depart` arrives: none (lost), one, or two (duplicated).
pub(crate) fn datagram_arrivals(
    p: &PathParams,
    depart: u64,
    rng: &mut ChaCha8Rng,
) -> [Option<u64>; 2] {
    if p.loss > 0.0 && rng.gen::<f64>() < p.loss {
        return [None, None];
    }
    let first = Some(one_way(p, depart, rng));
    let second = if p.duplicate > 0.0 && rng.gen::<f64>() < p.duplicate {
        Some(one_way(p, depart, rng))
    } else {
        None
    };
    [first, second]
}

/// When a frame sent at `depart` arrives, before in-order delivery: each loss costs one
/// retransmission timeout (at least `min_rto_us`, else two one-way latencies plus jitter).
pub(crate) fn frame_arrival(
    p: &PathParams,
    depart: u64,
    min_rto_us: u64,
    rng: &mut ChaCha8Rng,
) -> u64 {
    let mut at = one_way(p, depart, rng);
    if p.loss > 0.0 {
        let rto = min_rto_us.max(2 * (p.latency_us + p.jitter_us));
        // Give up counting after a few: a link that loses everything is a partition.
        for _ in 0..6 {
            if rng.gen::<f64>() >= p.loss {
                break;
            }
            at = at.saturating_add(rto);
        }
    }
    at
}

/// Latency, jitter and reordering delay of one message.
fn one_way(p: &PathParams, depart: u64, rng: &mut ChaCha8Rng) -> u64 {
    let mut at = depart.saturating_add(p.latency_us);
    if p.jitter_us > 0 {
        at = at.saturating_add(rng.gen_range(0..=p.jitter_us));
    }
    if p.reorder > 0.0 && p.reorder_us > 0 && rng.gen::<f64>() < p.reorder {
        at = at.saturating_add(rng.gen_range(1..=p.reorder_us));
    }
    at
}

/// Key of a link in [`Links`].
pub(crate) type LinkKey = u32;

/// One end of a link.
#[derive(Debug)]
pub(crate) struct LinkEnd {
    pub(crate) node: NodeId,
    /// The node's incarnation when the link was made (a restarted node is another process).
    pub(crate) incarnation: u32,
    /// The node's id for the link, once up.
    pub(crate) local: Option<LinkId>,
    /// This end's address as the other end sees it.
    pub(crate) addr: SocketAddr,
    /// Frames still arrive at this end (and it may send).
    pub(crate) open: bool,
    /// This end was told `LinkDown` (or was dead when it would have been).
    pub(crate) down_sent: bool,
}

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Connect sent, LinkUp not yet.
    Handshaking,
    /// Both ends may send.
    Open,
    /// One end closed; frames already sent to the other end still arrive, then it gets a FIN.
    Closing,
    /// The path or a process failed; the ends learn it after the failure-detection delay.
    Broken,
    /// Gone.
    Closed,
}

/// A simulated stream between two nodes. Side 0 opened it.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) ends: [LinkEnd; 2],
    /// The route of frames sent by side `i`.
    pub(crate) routes: [Route; 2],
    pub(crate) state: LinkState,
    /// The arrival time of the last frame scheduled to side `i` (frames arrive in order).
    pub(crate) last_arrival: [u64; 2],
}

/// Every link ever made (keys are never reused) and the set of live ones.
#[derive(Debug, Default)]
pub(crate) struct Links {
    all: Vec<Link>,
    live: BTreeSet<LinkKey>,
}

impl Links {
    pub(crate) fn insert(&mut self, link: Link) -> LinkKey {
        self.all.push(link);
        let key = index_u32(self.all.len() - 1);
        self.live.insert(key);
        key
    }

    pub(crate) fn get(&self, key: LinkKey) -> Option<&Link> {
        self.all.get(key as usize)
    }

    pub(crate) fn get_mut(&mut self, key: LinkKey) -> Option<&mut Link> {
        self.all.get_mut(key as usize)
    }

    /// Marks a link gone.
    pub(crate) fn close(&mut self, key: LinkKey) {
        if let Some(l) = self.all.get_mut(key as usize) {
            l.state = LinkState::Closed;
            l.ends[0].open = false;
            l.ends[1].open = false;
        }
        self.live.remove(&key);
    }

    /// Live links, ascending.
    pub(crate) fn live(&self) -> Vec<LinkKey> {
        self.live.iter().copied().collect()
    }
}

/// Topologies hold far fewer than 2^32 of anything.
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn two_sites() -> (Topology, WanId) {
        let mut t = Topology::new();
        let ho = t.segment("ho", PathParams::lan());
        let store = t.segment("store", PathParams::lan());
        let wan = t.wan(store, ho, PathParams::wan());
        t.node(NodeSpec::new("ho", Role::HeadOffice).on(ho, addr("10.0.0.1:7070")));
        t.node(NodeSpec::new("srv", Role::StoreServer).on(store, addr("10.1.0.1:7070")));
        t.node(NodeSpec::new("lane", Role::Lane).on(store, addr("10.1.0.10:7070")));
        (t, wan)
    }

    #[test]
    fn routes_prefer_lan_and_respect_faults() {
        let (t, wan) = two_sites();
        let mut net = Network::new(&t);
        let lane = NodeId(2);
        assert!(matches!(
            net.resolve(lane, addr("10.1.0.1:7070")),
            Resolved::Route { route: Route::Lan { .. }, .. }
        ));
        match net.resolve(lane, addr("10.0.0.1:7070")) {
            Resolved::Route { to, route: Route::Wan { dir, .. }, src } => {
                assert_eq!(to, NodeId(0));
                assert_eq!(dir, 0);
                assert_eq!(src, addr("10.1.0.10:7070"));
            }
            _ => panic!("expected a WAN route"),
        }
        assert!(matches!(net.resolve(lane, addr("10.9.9.9:1")), Resolved::NoSuchAddress));
        net.set_wan(wan, false);
        assert!(matches!(net.resolve(lane, addr("10.0.0.1:7070")), Resolved::Unreachable));
        net.set_wan(wan, true);
        net.set_blocked(lane, true);
        assert!(matches!(net.resolve(lane, addr("10.0.0.1:7070")), Resolved::Unreachable));
        assert!(matches!(net.resolve(lane, addr("10.1.0.1:7070")), Resolved::Route { .. }));
        net.partition(1, &[lane]);
        assert!(matches!(net.resolve(lane, addr("10.1.0.1:7070")), Resolved::Unreachable));
        net.heal(1);
        net.set_up(NodeId(1), false);
        assert!(matches!(net.resolve(lane, addr("10.1.0.1:7070")), Resolved::Unreachable));
    }

    #[test]
    fn serializer_queues_at_the_rate() {
        let mut s = Serializer::default();
        // 1250 bytes at 10 Mbit/s = 1 ms each.
        assert_eq!(s.enqueue(0, 1250, 10_000_000), (1000, 1));
        assert_eq!(s.enqueue(0, 1250, 10_000_000), (2000, 2));
        assert_eq!(s.enqueue(1500, 1250, 10_000_000), (3000, 2));
        assert_eq!(s.enqueue(5000, 1250, 10_000_000), (6000, 1));
        assert_eq!(s.enqueue(5000, 1250, 0), (5000, 0));
    }

    #[test]
    fn impairments_follow_the_params() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut p = PathParams::lan();
        for _ in 0..100 {
            let [a, b] = datagram_arrivals(&p, 0, &mut rng);
            let a = a.unwrap();
            assert!((100..=500).contains(&a));
            assert!(b.is_none());
        }
        p.loss = 1.0;
        assert_eq!(datagram_arrivals(&p, 0, &mut rng), [None, None]);
        p.loss = 0.0;
        p.duplicate = 1.0;
        assert!(datagram_arrivals(&p, 0, &mut rng)[1].is_some());
        p.loss = 1.0;
        // Every try lost: six retransmission timeouts of 200 ms.
        assert!(frame_arrival(&p, 0, 200_000, &mut rng) >= 1_200_100);
    }
}
