//! A small deterministic harness for the core (like quinn's `Pair`): a perfect network of a
//! few nodes, stepped to the earliest deadline. netsim runs the full fault model; these tests
//! pin the core's own behaviour.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::crypto::{KeySchedule, SystemKey};
use crate::id::{DatabaseId, DeviceId, InstanceId};
use crate::ledger::{Ledger, Submission};
use crate::proto::io::{DatagramDest, Input, LinkId, LinkKind, Output, Protocol, Time};
use crate::proto::node::{ConfiguredPeer, Node, NodeConfig};
use crate::proto::peers::{PeerState, Role};
use crate::store::{MemoryStore, Store};
use crate::unit::{FileScopes, UnitKind, Urgency};

enum Event {
    Datagram { from: SocketAddr, bytes: Vec<u8> },
    Frame { link: LinkId, bytes: Vec<u8> },
    LinkUp { link: LinkId, remote: SocketAddr, outbound: bool, kind: LinkKind },
    LinkDown { link: LinkId },
    ConnectFailed { to: SocketAddr },
}

pub(crate) struct Harness {
    pub nodes: Vec<Node<MemoryStore>>,
    addrs: Vec<SocketAddr>,
    lan: Vec<bool>,
    /// Extra reachability beyond the LAN (configured WAN links), both ways.
    wan: Vec<(usize, usize)>,
    /// Cut nodes: nothing reaches them.
    pub cut: Vec<bool>,
    /// Nodes that miss every multicast datagram (a flaky LAN port), links still work.
    pub deaf: Vec<bool>,
    queue: BTreeMap<(Time, u64), (usize, Event)>,
    seq: u64,
    links: BTreeMap<(usize, LinkId), (usize, LinkId)>,
    next_link: u64,
    pub now: Time,
    pub delivered: Vec<Vec<(DatabaseId, u64)>>,
    pub accepted: Vec<(DatabaseId, u64)>,
}

/// A sealer of LAN datagrams with the harness system's own key, as a member (or a forger who
/// holds the key) seals them, with nonces of `instance`.
fn member_lan_sealer(instance: u8) -> crate::wire::DatagramSealer {
    crate::wire::DatagramSealer::new(
        keys(),
        crate::crypto::Purpose::LanDatagram,
        "1,2,3,4".parse().unwrap(),
        &"live".parse().unwrap(),
        crate::crypto::NonceSequence::new(InstanceId([instance; 16])),
    )
}

pub(crate) fn keys() -> KeySchedule {
    KeySchedule::new(
        &SystemKey::from_bytes([5; 32]),
        "1,2,3,4".parse().unwrap(),
        &"live".parse().unwrap(),
        86_400,
    )
}

impl Harness {
    /// Nodes `0..n` with roles; `lan[i]` puts node i on the one LAN; `wan` pairs are configured
    /// direct links (the first configures the second).
    pub fn new(roles: &[Role], lan: &[bool], wan: &[(usize, usize)]) -> Harness {
        Harness::with_priorities(roles, lan, wan, &BTreeMap::new())
    }

    /// Like [`Harness::new`], with a priority for some configured peers.
    pub fn with_priorities(
        roles: &[Role],
        lan: &[bool],
        wan: &[(usize, usize)],
        priorities: &BTreeMap<(usize, usize), u32>,
    ) -> Harness {
        let start = Time::from_millis(1_700_000_000_000);
        let addrs: Vec<SocketAddr> =
            (0..roles.len()).map(|i| format!("10.0.0.{}:7000", i + 1).parse().unwrap()).collect();
        let mut nodes = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let dbid = DatabaseId::from_bytes(format!("NODE{i:011}").as_bytes()).unwrap();
            let mut cfg = NodeConfig::new(
                "1,2,3,4".parse().unwrap(),
                "live".parse().unwrap(),
                keys(),
                *role,
                DeviceId([i as u8; 16]),
                InstanceId([i as u8 + 1; 16]),
                "239.192.6.83:7083".parse().unwrap(),
                "239.192.6.20:7083".parse().unwrap(),
            );
            cfg.advertise = vec![addrs[i]];
            cfg.rng_seed = i as u64;
            for (a, b) in wan {
                if *a == i {
                    cfg.configured.push(ConfiguredPeer {
                        addr: addrs[*b],
                        priority: priorities.get(&(*a, *b)).copied().unwrap_or(10),
                        role: roles[*b],
                    });
                }
            }
            let ledger = Ledger::without_logs(MemoryStore::new(), dbid, 1 << 20).unwrap();
            nodes.push(Node::new(cfg, ledger));
        }
        Harness {
            delivered: vec![Vec::new(); nodes.len()],
            cut: vec![false; nodes.len()],
            deaf: vec![false; nodes.len()],
            nodes,
            addrs,
            lan: lan.to_vec(),
            wan: wan.to_vec(),
            queue: BTreeMap::new(),
            seq: 0,
            links: BTreeMap::new(),
            next_link: 1,
            now: start,
            accepted: Vec::new(),
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        a != b
            && !self.cut[a]
            && !self.cut[b]
            && ((self.lan[a] && self.lan[b])
                || self.wan.iter().any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a)))
    }

    fn push(&mut self, at: Time, node: usize, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (node, event));
    }

    pub fn submit(&mut self, node: usize, payload: &[u8], urgency: Urgency) {
        let sub = Submission {
            kind: UnitKind::Tubt,
            urgency,
            scopes: FileScopes::NONE,
            physkey: None,
            payload: payload.to_vec(),
            sensitive: Vec::new(),
        };
        let now = self.now;
        self.nodes[node].handle(now, Input::Submit(sub));
        self.drain(node);
    }

    fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].poll_output() {
            let now = self.now;
            match out {
                Output::Datagram { to: DatagramDest::Group(_), bytes } => {
                    for j in 0..self.nodes.len() {
                        let reached = self.lan[i] && self.lan[j] && !self.cut[i] && !self.cut[j];
                        if j != i && reached && !self.deaf[j] {
                            let from = self.addrs[i];
                            self.push(
                                now.plus_micros(200),
                                j,
                                Event::Datagram { from, bytes: bytes.clone() },
                            );
                        }
                    }
                }
                Output::Datagram { to: DatagramDest::Unicast(addr), bytes } => {
                    if let Some(j) = self.addrs.iter().position(|a| *a == addr) {
                        if self.reachable(i, j) {
                            let from = self.addrs[i];
                            self.push(now.plus_micros(200), j, Event::Datagram { from, bytes });
                        }
                    }
                }
                // No relays (so no punching, and no pads) in this harness.
                Output::Punch { .. } | Output::ConnectPunched { .. } => {}
                Output::GeneratePad { .. } => {}
                Output::Connect { to } => match self.addrs.iter().position(|a| *a == to) {
                    Some(j) if self.reachable(i, j) => self.add_link(i, j, LinkKind::Simulated),
                    _ => self.push(now.plus_millis(1), i, Event::ConnectFailed { to }),
                },
                Output::Frame { link, bytes } => {
                    if let Some(&(j, lj)) = self.links.get(&(i, link)) {
                        if self.reachable(i, j) {
                            self.push(now.plus_micros(500), j, Event::Frame { link: lj, bytes });
                        } else {
                            self.links.remove(&(i, link));
                            self.links.remove(&(j, lj));
                            self.push(now.plus_millis(1), i, Event::LinkDown { link });
                            self.push(now.plus_millis(1), j, Event::LinkDown { link: lj });
                        }
                    }
                }
                Output::Close { link } => {
                    if let Some((j, lj)) = self.links.remove(&(i, link)) {
                        self.links.remove(&(j, lj));
                        self.push(now.plus_micros(500), j, Event::LinkDown { link: lj });
                    }
                }
                Output::Deliver(unit) => {
                    self.delivered[i].push((unit.origin, unit.seq));
                    self.nodes[i]
                        .handle(now, Input::Acknowledge { origin: unit.origin, seq: unit.seq });
                }
                Output::Accepted(r) => self.accepted.push((r.origin, r.seq)),
                Output::Refused { reason } => panic!("memory store refused a submission: {reason}"),
                Output::Acknowledged { .. } | Output::AcknowledgeFailed { .. } => {}
            }
        }
    }

    /// A link opened by `i` to `j` comes up in a millisecond (what a driver does after a
    /// `Connect`, or on its own when it upgrades a link to a better transport).
    pub fn add_link(&mut self, i: usize, j: usize, kind: LinkKind) {
        let now = self.now;
        let (la, lb) = (LinkId(self.next_link), LinkId(self.next_link + 1));
        self.next_link += 2;
        self.links.insert((i, la), (j, lb));
        self.links.insert((j, lb), (i, la));
        let (ai, aj) = (self.addrs[i], self.addrs[j]);
        self.push(
            now.plus_millis(1),
            i,
            Event::LinkUp { link: la, remote: aj, outbound: true, kind },
        );
        self.push(
            now.plus_millis(1),
            j,
            Event::LinkUp { link: lb, remote: ai, outbound: false, kind },
        );
    }

    /// Node `i` restarts over `store` (same dbid and settings, a new process): its links go
    /// down, and what it had queued is gone.
    pub fn restart(&mut self, i: usize, store: MemoryStore) {
        let mut cfg = self.nodes[i].config().clone();
        // A new process: its own instance id (what its datagrams' nonces start from).
        let instance = cfg.instance.0;
        cfg.instance = InstanceId(std::array::from_fn(|b| instance[b].wrapping_add(0x40)));
        let dbid = self.nodes[i].dbid();
        let ledger = Ledger::without_logs(store, dbid, 1 << 20).unwrap();
        self.nodes[i] = Node::new(cfg, ledger);
        let gone: Vec<((usize, LinkId), (usize, LinkId))> = self
            .links
            .iter()
            .filter(|((a, _), (b, _))| *a == i || *b == i)
            .map(|(k, v)| (*k, *v))
            .collect();
        let now = self.now;
        for ((a, la), (b, lb)) in gone {
            self.links.remove(&(a, la));
            if b != i {
                self.push(now.plus_millis(1), b, Event::LinkDown { link: lb });
            }
        }
        self.queue.retain(|_, (node, _)| *node != i);
    }

    /// Every payload node `i` holds.
    pub fn payloads(&self, i: usize) -> std::collections::BTreeSet<Vec<u8>> {
        let store = self.nodes[i].ledger().store();
        let mut out = std::collections::BTreeSet::new();
        for (origin, range) in store.version_vector().iter() {
            for (start, end) in range.held_ranges() {
                for seq in start..=end {
                    out.insert(store.get(origin, seq).unwrap().unwrap().payload);
                }
            }
        }
        out
    }

    /// Link pairs open between `i` and `j`.
    pub fn links_between(&self, i: usize, j: usize) -> usize {
        self.links.iter().filter(|((a, _), (b, _))| *a == i && *b == j).count()
    }

    /// Steps until `until` (virtual time).
    pub fn run_until(&mut self, until: Time) {
        loop {
            let next_event = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = (0..self.nodes.len())
                .filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t, i)))
                .min();
            let (at, is_event) = match (next_event, next_timer) {
                (Some(e), Some((t, _))) if e <= t => (e, true),
                (Some(e), None) => (e, true),
                (_, Some((t, _))) => (t, false),
                (None, None) => return,
            };
            if at > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(at);
            let now = self.now;
            if is_event {
                let key = *self.queue.keys().next().unwrap();
                let (i, event) = self.queue.remove(&key).unwrap();
                let input = match &event {
                    Event::Datagram { from, bytes } => Input::Datagram {
                        from: *from,
                        to: DatagramDest::Unicast(self.addrs[i]),
                        bytes,
                    },
                    Event::Frame { link, bytes } => Input::Frame { link: *link, bytes },
                    Event::LinkUp { link, remote, outbound, kind } => Input::LinkUp {
                        link: *link,
                        remote: *remote,
                        outbound: *outbound,
                        kind: *kind,
                    },
                    Event::LinkDown { link } => Input::LinkDown { link: *link },
                    Event::ConnectFailed { to } => Input::ConnectFailed { to: *to },
                };
                self.nodes[i].handle(now, input);
                self.drain(i);
            } else if let Some((_, i)) = next_timer {
                self.nodes[i].handle_timeout(now);
                self.drain(i);
            }
        }
    }

    pub fn holds_all(&self) -> bool {
        let totals: Vec<u64> =
            self.nodes.iter().map(|n| n.ledger().store().units_total()).collect();
        totals.iter().all(|t| *t == self.accepted.len() as u64)
    }
}

fn assert_exactly_once_in_order(h: &Harness) {
    for (i, delivered) in h.delivered.iter().enumerate() {
        let mut last: BTreeMap<DatabaseId, u64> = BTreeMap::new();
        for (origin, seq) in delivered {
            let prev = last.insert(*origin, *seq).unwrap_or(0);
            assert_eq!(*seq, prev + 1, "node {i}: {origin} seq {seq} after {prev}");
        }
        let own = h.nodes[i].dbid();
        let expected = h.accepted.iter().filter(|(o, _)| *o != own).count();
        assert_eq!(
            delivered.len(),
            expected,
            "node {i} delivered {} of {expected}",
            delivered.len()
        );
    }
}

#[test]
fn lan_nodes_discover_link_and_converge() {
    let mut h =
        Harness::new(&[Role::Lane, Role::Lane, Role::StoreServer], &[true, true, true], &[]);
    h.run_until(h.now.plus_millis(3_000));
    for n in &h.nodes {
        assert_eq!(n.peers().filter(|p| p.state == PeerState::Up).count(), 2, "all peers up");
    }
    for i in 0..30 {
        h.submit(i % 3, format!("sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(100));
    assert!(h.holds_all(), "eager multicast push converges without waiting for anti-entropy");
    assert_exactly_once_in_order(&h);
}

#[test]
fn a_lane_reaches_head_office_through_its_store_server() {
    // 0, 1: lanes; 2: store server; 3: head office, configured only at the store server.
    let roles = [Role::Lane, Role::Lane, Role::StoreServer, Role::MainServer];
    let mut h = Harness::new(&roles, &[true, true, true, false], &[(2, 3)]);
    h.run_until(h.now.plus_millis(3_000));
    for i in 0..20 {
        h.submit(0, format!("sale {i}").as_bytes(), Urgency::Normal);
        h.submit(3, format!("price {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(1_000));
    assert!(h.holds_all());
    assert_exactly_once_in_order(&h);
    // The store server knows head office holds its own units, and tells the lanes what head
    // office holds of theirs: nothing is unsafe anywhere.
    h.submit(2, b"cash up", Urgency::Normal);
    assert!(h.nodes[0].unsafe_backlog() > 0 || h.nodes[2].unsafe_backlog() > 0);
    h.run_until(h.now.plus_millis(5_000));
    for (i, node) in h.nodes.iter().enumerate() {
        assert_eq!(node.unsafe_backlog(), 0, "node {i}");
    }
}

#[test]
fn anti_entropy_heals_a_partition_with_a_backlog() {
    let roles = [Role::Lane, Role::StoreServer, Role::MainServer];
    let mut h = Harness::new(&roles, &[true, true, false], &[(1, 2)]);
    h.run_until(h.now.plus_millis(3_000));
    h.cut[2] = true;
    for i in 0..2000 {
        let urgency = if i % 500 == 499 { Urgency::Urgent } else { Urgency::Normal };
        h.submit(0, format!("offline sale {i}").as_bytes(), urgency);
    }
    h.run_until(h.now.plus_millis(10_000));
    assert_eq!(h.nodes[2].ledger().store().units_total(), 0);
    h.cut[2] = false;
    // The store server pings the offline head office every 5 minutes (seed 001) after its
    // first quick retries, so the heal is noticed within that.
    h.run_until(h.now.plus_millis(330_000));
    assert!(h.holds_all(), "head office catches up after the heal");
    assert_exactly_once_in_order(&h);
}

fn up_peers(h: &Harness, i: usize) -> Vec<DatabaseId> {
    h.nodes[i].peers().filter(|p| p.linked()).map(|p| p.dbid).collect()
}

#[test]
fn a_large_lan_keeps_a_ring_not_a_mesh() {
    // 0: store server; 1..=8: lanes.
    let mut roles = vec![Role::StoreServer];
    roles.extend([Role::Lane; 8]);
    let mut h = Harness::new(&roles, &[true; 9], &[]);
    h.run_until(h.now.plus_millis(30_000));
    assert_eq!(up_peers(&h, 0).len(), 8, "the store server links every lane");
    for i in 1..=8 {
        let up = up_peers(&h, i);
        assert!(up.len() <= 3, "lane {i}: server and two ring neighbours, got {}", up.len());
        assert!(up.contains(&h.nodes[0].dbid()), "lane {i} links the store server");
    }
    for i in 0..40 {
        h.submit(1 + i % 8, format!("sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(100));
    assert!(h.holds_all());
    // Without the store server the lanes still reach each other over the ring.
    h.cut[0] = true;
    h.deaf[3] = true;
    for i in 0..10 {
        h.submit(5, format!("offline sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(10_000));
    for i in 1..=8 {
        assert_eq!(h.nodes[i].ledger().store().units_total(), 50, "lane {i}");
    }
}

#[test]
fn a_missed_multicast_is_fetched_once() {
    let mut roles = vec![Role::StoreServer];
    roles.extend([Role::Lane; 5]);
    let mut h = Harness::new(&roles, &[true; 6], &[]);
    h.run_until(h.now.plus_millis(30_000));
    h.deaf[2] = true;
    for i in 0..20 {
        h.submit(4, format!("sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(100));
    assert_eq!(h.nodes[2].ledger().store().units_total(), 0);
    h.deaf[2] = false;
    // The next sales arrive by multicast at once; they wait behind the 20 missed ones, and
    // status says so.
    for i in 20..25 {
        h.submit(4, format!("sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(20));
    let status = h.nodes[2].status();
    assert_eq!(status.origins_with_gaps, 1);
    let gap = &status.gaps[0];
    assert_eq!(gap.origin, h.nodes[4].dbid().to_string());
    assert_eq!((gap.waiting_for, gap.held_beyond), (1, 5), "{gap:?}");
    // The next `Have` from any neighbour shows what lane 2 lacks; it asks one of them.
    h.run_until(h.now.plus_millis(5_000));
    assert!(h.holds_all());
    assert_eq!(h.nodes[2].status().origins_with_gaps, 0);
    let stats = h.nodes[2].stats();
    assert_eq!(stats.units_received, 25, "each unit came once, not once per neighbour");
    assert!(stats.wants_sent >= 1);
    assert_exactly_once_in_order(&h);
}

#[test]
fn configured_peers_fail_over_in_priority_order_and_back() {
    // 0: lane, configured with its store server (1, priority 0) and head office (2,
    // priority 1); the server is also on its LAN, head office is not.
    let roles = [Role::Lane, Role::StoreServer, Role::MainServer];
    let priorities = BTreeMap::from([((0, 1), 0), ((0, 2), 1)]);
    let mut h = Harness::with_priorities(
        &roles,
        &[true, true, false],
        &[(0, 1), (0, 2), (1, 2)],
        &priorities,
    );
    h.run_until(h.now.plus_millis(10_000));
    let (server, office) = (h.nodes[1].dbid(), h.nodes[2].dbid());
    assert!(up_peers(&h, 0).contains(&server));
    assert!(!up_peers(&h, 0).contains(&office), "head office is only a fallback");
    h.cut[1] = true;
    h.run_until(h.now.plus_millis(20_000));
    assert!(up_peers(&h, 0).contains(&office), "the lane fails over to head office");
    h.submit(0, b"sale while the server is down", Urgency::Normal);
    h.run_until(h.now.plus_millis(1_000));
    assert_eq!(h.nodes[2].ledger().store().units_total(), 1);
    assert_eq!(h.nodes[0].unsafe_backlog(), 0, "head office holds it: safe");
    h.cut[1] = false;
    h.run_until(h.now.plus_millis(120_000));
    assert!(up_peers(&h, 0).contains(&server), "back to the store server");
    let office_peer = h.nodes[0].peers().find(|p| p.dbid == office).unwrap();
    assert_eq!(office_peer.reason, crate::proto::DownReason::Fallback);
    assert!(h.holds_all());
    // Status says the same, with the configured priorities.
    let status = h.nodes[0].status();
    let office_status = status.peers.iter().find(|p| p.dbid == office.to_string()).unwrap();
    assert_eq!(office_status.reason, Some(crate::proto::DownReason::Fallback));
    assert_eq!(office_status.configured_priority, Some(1));
    let server_status = status.peers.iter().find(|p| p.dbid == server.to_string()).unwrap();
    assert!(server_status.is_up() && server_status.reason.is_none());
    assert_eq!((server_status.we_lack, server_status.it_lacks), (0, 0));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["role"], "lane");
    assert_eq!(json["counters"]["rejects"]["foreign_system"], 0);
}

#[test]
fn foreign_systems_and_forgeries_are_counted_never_peered() {
    use crate::crypto::{NonceSequence, Purpose};
    use crate::proto::message::Announce;
    use crate::wire::{DatagramSealer, RejectReason, Tag};
    let mut h = Harness::new(&[Role::Lane], &[true], &[]);
    let now = h.now;
    let announce = Announce {
        dbid: DatabaseId::from_bytes(b"FOREIGN00000001").unwrap(),
        device: DeviceId([9; 16]),
        instance: InstanceId([9; 16]),
        role: Role::StoreServer,
        addrs: vec!["10.0.0.99:7000".parse().unwrap()],
        reply: false,
    };
    let sealed = |system: &str, key: u8| {
        let keys = KeySchedule::new(
            &SystemKey::from_bytes([key; 32]),
            system.parse().unwrap(),
            &"live".parse().unwrap(),
            86_400,
        );
        let mut sealer = DatagramSealer::new(
            keys,
            Purpose::LanDatagram,
            system.parse().unwrap(),
            &"live".parse().unwrap(),
            NonceSequence::new(InstanceId([9; 16])),
        );
        sealer.seal_visible(Tag::Idqy, now.as_secs(), &announce.encode()).unwrap()
    };
    let from: SocketAddr = "10.0.0.99:7000".parse().unwrap();
    let to = DatagramDest::Group("239.192.6.83:7083".parse().unwrap());
    // Another RmSystem, then our system with a wrong key (a forgery).
    for bytes in [sealed("9,9,9,9", 5), sealed("1,2,3,4", 6)] {
        h.nodes[0].handle(now, Input::Datagram { from, to, bytes: &bytes });
    }
    h.nodes[0].handle(now, Input::Datagram { from, to, bytes: b"garbage" });
    let node = &h.nodes[0];
    assert_eq!(node.peers().count(), 0, "nobody was peered");
    assert_eq!(node.stats().foreign_nodes_heard, 1);
    assert_eq!(node.stats().rejects.get(RejectReason::ForeignSystem), 1);
    assert_eq!(node.stats().rejects.get(RejectReason::BadTag), 1);
    assert_eq!(node.stats().rejects.total(), 3);
}

/// Datagrams sealed with the system's own key whose content is wrong (a member's bug, or a
/// newer build's message on the unit group) are counted by what is wrong, in the status's
/// rejection counters, and change nothing.
#[test]
fn sealed_datagrams_with_wrong_content_are_counted_as_malformed_or_unknown_type() {
    use crate::wire::{RejectReason, Tag};
    let mut h = Harness::new(&[Role::Lane], &[true], &[]);
    let now = h.now;
    let mut sealer = member_lan_sealer(9);
    let secs = now.as_secs();
    let not_units = crate::proto::message::Message::Compared { upto: 5 }.encode();
    let datagrams = [
        sealer.seal(Tag::Tubt, secs, &not_units).unwrap(),
        sealer.seal(Tag::Tubt, secs, b"\xff\xff\xff not a message").unwrap(),
        sealer.seal_visible(Tag::Idqy, secs, b"\xff\xff not an announcement").unwrap(),
    ];
    let from: SocketAddr = "10.0.0.99:7000".parse().unwrap();
    for (bytes, group) in
        datagrams.iter().zip(["239.192.6.20:7083", "239.192.6.20:7083", "239.192.6.83:7083"])
    {
        let to = DatagramDest::Group(group.parse().unwrap());
        h.nodes[0].handle(now, Input::Datagram { from, to, bytes });
    }
    let node = &h.nodes[0];
    assert_eq!(node.stats().rejects.get(RejectReason::UnknownType), 1);
    assert_eq!(node.stats().rejects.get(RejectReason::Malformed), 2);
    assert_eq!(node.stats().rejects.total(), 3);
    assert_eq!(node.peers().count(), 0, "nobody was peered");
    let json = serde_json::to_value(node.status()).unwrap();
    assert_eq!(json["counters"]["rejects"]["unknown_type"], 1);
    assert_eq!(json["counters"]["rejects"]["malformed"], 2);
}

/// Relay link ids belong to the core (design §2.1): a driver's frame or link on one is refused
/// and counted, never opened; a core without relays posts nothing.
#[test]
fn driver_frames_on_relay_link_ids_are_refused() {
    use crate::proto::io::RelayIndex;
    use crate::wire::relay::Mailbox;
    use crate::wire::RejectReason;
    let mut h = Harness::new(&[Role::Lane], &[true], &[]);
    let now = h.now;
    let link = LinkId(LinkId::RELAY_BIT | 1);
    assert!(link.is_relay() && !LinkId(1).is_relay());
    h.nodes[0].handle(now, Input::Frame { link, bytes: b"anything" });
    assert_eq!(h.nodes[0].stats().rejects.get(RejectReason::Malformed), 1);
    // Nor may a driver bring a relay link up or down, by id or by kind.
    let remote = "192.0.2.7:4000".parse().unwrap();
    for (link, kind) in [(link, LinkKind::Quic), (LinkId(77), LinkKind::Relay)] {
        h.nodes[0].handle(now, Input::LinkUp { link, remote, outbound: true, kind });
        let hello = outputs(&mut h.nodes[0])
            .into_iter()
            .any(|o| matches!(o, Output::Frame { link: to, .. } if to == link));
        assert!(!hello, "no hello on a refused link {link:?}");
    }
    h.nodes[0].handle(now, Input::LinkDown { link });
    assert_eq!(h.nodes[0].stats().rejects.get(RejectReason::Malformed), 4);
    // No relays configured: relay inputs are ignored and nothing is posted.
    let relay = RelayIndex(0);
    h.nodes[0].handle(now, Input::RelayUp { relay, observed: "192.0.2.1:1".parse().unwrap() });
    let mailbox = Mailbox([0; 16]);
    h.nodes[0].handle(now, Input::RelayPayload { relay, mailbox, bytes: &[0; 1024] });
    assert_eq!(h.nodes[0].poll_relay_output(), None);
    assert!(h.nodes[0].status().relays.is_empty());
    assert_eq!(h.nodes[0].status().relay_path.payloads_received, 0);
}

/// The core stays sans-IO: no runtime, no clock, no sockets, no files, no global RNG in any
/// of its modules (the driver passes time in; the RNG is seeded from the config).
#[test]
fn the_core_reads_no_clock_and_owns_no_io() {
    let sources = [
        ("io.rs", include_str!("io.rs")),
        ("message.rs", include_str!("message.rs")),
        ("mod.rs", include_str!("mod.rs")),
        ("node.rs", include_str!("node.rs")),
        ("node/padding.rs", include_str!("node/padding.rs")),
        ("pads.rs", include_str!("pads.rs")),
        ("peers.rs", include_str!("peers.rs")),
        ("punch.rs", include_str!("punch.rs")),
        ("relaypath/mod.rs", include_str!("relaypath/mod.rs")),
        ("relaypath/envelope.rs", include_str!("relaypath/envelope.rs")),
        ("relaypath/fragment.rs", include_str!("relaypath/fragment.rs")),
        ("relaypath/session.rs", include_str!("relaypath/session.rs")),
        ("relaypath/mixer.rs", include_str!("relaypath/mixer.rs")),
        ("status.rs", include_str!("status.rs")),
        ("sync.rs", include_str!("sync.rs")),
    ];
    let forbidden = [
        "tokio",
        "std::time",
        "SystemTime",
        "Instant",
        "thread_rng",
        "OsRng",
        "from_entropy",
        "UdpSocket",
        "TcpStream",
        "TcpListener",
        "std::fs",
        "std::thread",
    ];
    for (file, text) in sources {
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        for (i, line) in code.enumerate() {
            for word in forbidden {
                assert!(!line.contains(word), "src/proto/{file} (code line {i}) uses {word}");
            }
        }
    }
}

#[test]
fn a_peer_with_two_links_keeps_the_better_kind_on_both_ends() {
    use crate::proto::status::LinkStatus;
    let mut h = Harness::new(&[Role::Lane, Role::Lane], &[true, true], &[]);
    h.run_until(h.now.plus_millis(3_000));
    assert_eq!(h.links_between(0, 1), 1);
    let link_of = |h: &Harness, i: usize| h.nodes[i].status().peers[0].link;
    // The TCP fallback, then QUIC works again (opened by either end): QUIC stays.
    for (tcp_from, quic_from) in [(0, 1), (1, 0), (0, 0), (1, 1)] {
        h.add_link(tcp_from, 1 - tcp_from, LinkKind::Tcp);
        h.run_until(h.now.plus_millis(100));
        assert_eq!(h.links_between(0, 1), 1, "one link per peer");
        h.add_link(quic_from, 1 - quic_from, LinkKind::Quic);
        h.run_until(h.now.plus_millis(100));
        assert_eq!(h.links_between(0, 1), 1, "one link per peer");
        assert_eq!((link_of(&h, 0), link_of(&h, 1)), (LinkStatus::Quic, LinkStatus::Quic));
        // A later TCP link (the other end's fallback attempt) gives way to the QUIC one.
        h.add_link(1 - quic_from, quic_from, LinkKind::Tcp);
        h.run_until(h.now.plus_millis(100));
        assert_eq!(h.links_between(0, 1), 1);
        assert_eq!((link_of(&h, 0), link_of(&h, 1)), (LinkStatus::Quic, LinkStatus::Quic));
    }
    h.submit(0, b"sale", Urgency::Normal);
    h.run_until(h.now.plus_millis(12_000));
    assert!(h.holds_all());
    let rtt = h.nodes[0].status().peers[0].rtt_ms.expect("a ping was answered");
    assert!(rtt > 0.0 && rtt < 10.0, "rtt {rtt} ms over a 0.5 ms simulated link");
}

/// The environment-group multicasts among `node`'s outputs until now, as another node on the
/// LAN receives them.
fn group_datagrams(node: &mut Node<MemoryStore>) -> Vec<crate::proto::io::ReceivedDatagram> {
    let mut datagrams = Vec::new();
    while let Some(out) = node.poll_output() {
        if let Output::Datagram { to: DatagramDest::Group(_), bytes } = out {
            datagrams.push(crate::proto::io::ReceivedDatagram {
                from: "10.0.0.1:7000".parse().unwrap(),
                to: DatagramDest::Group("239.192.6.20:7083".parse().unwrap()),
                bytes,
            });
        }
    }
    datagrams
}

#[test]
fn a_burst_of_multicast_datagrams_is_taken_in_one_batch_like_one_by_one() {
    use crate::proto::io::ReceivedDatagram;
    let mut h = Harness::new(&[Role::Lane, Role::Lane, Role::Lane], &[true, true, true], &[]);
    h.run_until(h.now.plus_millis(3_000));
    let now = h.now;
    let mut datagrams = Vec::new();
    for i in 0..40 {
        let sub = Submission {
            kind: UnitKind::Tubt,
            urgency: Urgency::Normal,
            scopes: FileScopes::NONE,
            physkey: None,
            payload: vec![i as u8; 3_000],
            sensitive: Vec::new(),
        };
        h.nodes[0].handle(now, Input::Submit(sub));
        datagrams.extend(group_datagrams(&mut h.nodes[0]));
    }
    assert!(datagrams.len() >= 40, "one multicast per submit at least");
    // Node 1 takes them one by one, node 2 as one burst (with a junk datagram in it).
    for d in &datagrams {
        h.nodes[1].handle(now, Input::Datagram { from: d.from, to: d.to, bytes: &d.bytes });
    }
    let mut burst = datagrams.clone();
    burst.insert(7, ReceivedDatagram { bytes: b"junk".to_vec(), ..datagrams[0].clone() });
    h.nodes[2].handle(now, Input::Datagrams(burst));
    for i in [1, 2] {
        let mut delivered = Vec::new();
        while let Some(out) = h.nodes[i].poll_output() {
            if let Output::Deliver(unit) = out {
                delivered.push(unit.seq);
            }
        }
        assert_eq!(delivered, (1..=40).collect::<Vec<u64>>(), "node {i} delivers all, in order");
        assert_eq!(h.nodes[i].ledger().store().units_total(), 40);
    }
    assert_eq!(h.nodes[2].status().counters.rejects.total(), 1, "the junk is counted");
}

fn sale(payload: &[u8]) -> Submission {
    Submission {
        kind: UnitKind::Tubt,
        urgency: Urgency::Normal,
        scopes: FileScopes::NONE,
        physkey: None,
        payload: payload.to_vec(),
        sensitive: Vec::new(),
    }
}

fn outputs(node: &mut Node<MemoryStore>) -> Vec<Output> {
    std::iter::from_fn(|| node.poll_output()).collect()
}

/// A batch is one group commit answered by one `Accepted` per submission, in order; a refused
/// batch answers each submission `Refused` and stores nothing of it.
#[test]
fn a_submit_batch_is_one_commit_answered_in_order() {
    let mut h = Harness::new(&[Role::Lane], &[true], &[]);
    let now = h.now;
    let node = &mut h.nodes[0];
    let own = node.dbid();
    let batch: Vec<Submission> = (0..5u8).map(|i| sale(&[i; 16])).collect();
    node.handle(now, Input::SubmitBatch(batch));
    let receipts: Vec<_> = outputs(node)
        .into_iter()
        .filter_map(|o| match o {
            Output::Accepted(r) => Some(r),
            Output::Refused { reason } => panic!("refused: {reason}"),
            _ => None,
        })
        .collect();
    let seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "one receipt per submission, in order");
    assert!(receipts.iter().all(|r| r.origin == own && !r.existing));
    for (i, r) in receipts.iter().enumerate() {
        let unit = node.ledger().store().get(&own, r.seq).unwrap().expect("unit held");
        assert_eq!(unit.payload, vec![i as u8; 16]);
    }
    assert_eq!(node.ledger().store().unflushed(), 0, "the batch is durable when answered");

    // One submission over the payload limit refuses the whole batch; nothing is stored.
    let limit = node.ledger().payload_limit();
    let bad = vec![sale(b"fine"), sale(&vec![0; limit + 1]), sale(b"fine too")];
    node.handle(now, Input::SubmitBatch(bad));
    let answers = outputs(node);
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(answers.iter().all(|o| matches!(o, Output::Refused { .. })), "{answers:?}");
    assert_eq!(node.ledger().store().units_total(), 5, "nothing of a refused batch is stored");
    assert_eq!(node.stats().submits_refused, 3);

    // The next batch goes on where the accepted one ended; an empty batch answers nothing.
    node.handle(now, Input::SubmitBatch(Vec::new()));
    assert!(outputs(node).iter().all(|o| !matches!(o, Output::Accepted(_))));
    node.handle(now, Input::Submit(sale(b"six")));
    let six: Vec<u64> = outputs(node)
        .into_iter()
        .filter_map(|o| if let Output::Accepted(r) = o { Some(r.seq) } else { None })
        .collect();
    assert_eq!(six, vec![6]);
}

/// An acknowledgement batch moves the cursor (never back) and is durable when answered.
#[test]
fn an_acknowledge_batch_is_durable_when_answered() {
    let mut h = Harness::new(&[Role::Lane], &[true], &[]);
    let now = h.now;
    let node = &mut h.nodes[0];
    let a = DatabaseId::from_bytes(b"ORIGINAAAAAAAAA").unwrap();
    let b = DatabaseId::from_bytes(b"ORIGINBBBBBBBBB").unwrap();
    node.handle(now, Input::AcknowledgeBatch(vec![(a, 3), (b, 1), (a, 2)]));
    let answers = outputs(node);
    let expected = vec![
        Output::Acknowledged { origin: a, seq: 3 },
        Output::Acknowledged { origin: b, seq: 1 },
        Output::Acknowledged { origin: a, seq: 2 },
    ];
    assert_eq!(answers, expected, "one answer per entry, in order");
    let store = node.ledger().store();
    assert_eq!(store.unflushed(), 0, "the cursor is on disk when the answer comes");
    let cursor = store.cursor("app").unwrap();
    assert_eq!(cursor.get(&a), Some(&3), "an older acknowledgement does not move it back");
    assert_eq!(cursor.get(&b), Some(&1));
}

/// A sensitive part travels over links only: on a LAN it reaches the peer over its link (after
/// the peer's `Pads` showed it knows sensitive parts), never in a multicast datagram; and a
/// datagram that carries one (a forgery by a key holder, or a broken node) is refused.
#[test]
fn a_sensitive_part_never_travels_in_a_datagram() {
    use crate::proto::message::Message;
    use crate::wire::Tag;
    let mut h = Harness::new(&[Role::Lane, Role::Lane], &[true, true], &[]);
    let until = h.now.plus_millis(10_000);
    h.run_until(until);
    let sub = Submission {
        kind: UnitKind::Tubt,
        urgency: Urgency::Normal,
        scopes: FileScopes::NONE,
        physkey: None,
        payload: b"staff 17 changed password".to_vec(),
        sensitive: b"hunter2".to_vec(),
    };
    let now = h.now;
    h.nodes[0].handle(now, Input::Submit(sub));
    let outs = outputs(&mut h.nodes[0]);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Datagram { .. })),
        "no datagram for a sensitive unit: {outs:?}"
    );
    let frames: Vec<(LinkId, Vec<u8>)> = outs
        .into_iter()
        .filter_map(|o| match o {
            Output::Frame { link, bytes } => Some((link, bytes)),
            _ => None,
        })
        .collect();
    assert!(!frames.is_empty(), "pushed over the link");
    for (link, bytes) in frames {
        if let Some(&(j, lj)) = h.links.get(&(0, link)) {
            h.nodes[j].handle(now, Input::Frame { link: lj, bytes: &bytes });
        }
    }
    let origin = h.nodes[0].dbid();
    let held = h.nodes[1].ledger().store().get(&origin, 1).unwrap().expect("held by node 1");
    assert_eq!(held.sensitive, b"hunter2");

    // A datagram with a sensitive unit, sealed with the system's LAN key: refused.
    let mut forged = held.clone();
    forged.seq = 2;
    forged.sensitive = b"injected".to_vec();
    let mut sealer = member_lan_sealer(77);
    let message = Message::units(&[forged], false).encode();
    let bytes = sealer.seal(Tag::Tubt, now.as_secs(), &message).unwrap();
    let from = h.addrs[0];
    let to = DatagramDest::Group("239.192.6.20:7083".parse().unwrap());
    h.nodes[1].handle(now, Input::Datagram { from, to, bytes: &bytes });
    assert!(!h.nodes[1].ledger().store().contains(&origin, 2));
    assert_eq!(h.nodes[1].stats().pads.sensitive_in_clear_refused, 1);
}

/// A lane node over a real ledger (DATI logs and the sled store) in `dir`, of the harness's
/// system and environment (so the harness's datagrams open).
pub(crate) fn node_on_disk(dir: &std::path::Path) -> Node<crate::store::SledStore> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let secrets = crate::datadir::SystemSecrets::generate(
        &mut rng,
        Some("1,2,3,4".parse().unwrap()),
        "live".parse().unwrap(),
    );
    let dir = crate::datadir::DataDir::init(dir, &secrets, &mut rng).unwrap();
    let (ledger, _) = Ledger::open(&dir, InstanceId([7; 16])).unwrap();
    let mut cfg = NodeConfig::new(
        "1,2,3,4".parse().unwrap(),
        "live".parse().unwrap(),
        keys(),
        Role::Lane,
        DeviceId([7; 16]),
        InstanceId([7; 16]),
        "239.192.6.83:7083".parse().unwrap(),
        "239.192.6.20:7083".parse().unwrap(),
    );
    cfg.rng_seed = 7;
    Node::new(cfg, ledger)
}

fn sales(range: std::ops::Range<usize>) -> Vec<Submission> {
    range.map(crate::ledger::tests::sale).collect()
}

/// The answers to submits among the outputs of `node` until now, in order: the seq of each
/// receipt, `None` for a refusal.
fn answers<S: Store>(node: &mut Node<S>) -> Vec<Option<u64>> {
    let mut answers = Vec::new();
    while let Some(out) = node.poll_output() {
        match out {
            Output::Accepted(r) => answers.push(Some(r.seq)),
            Output::Refused { .. } => answers.push(None),
            _ => {}
        }
    }
    answers
}

/// Feeds `LogsSynced` as the sync thread signals, until nothing waits (with a deadline).
fn until_synced<S: Store>(node: &mut Node<S>, signals: &std::sync::mpsc::Receiver<()>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while node.syncing() > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        signals.recv_timeout(left).expect("the sync thread signals within 30 s");
        node.handle(Time::from_millis(1_764_633_600_000), Input::LogsSynced);
    }
}

/// A node on disk whose log syncs wait for the gate (declared after the node, so dropped
/// first); the receiver gets a signal after each sync job.
fn gated_node(
    dir: &std::path::Path,
) -> (Node<crate::store::SledStore>, crate::ledger::tests::Gate, std::sync::mpsc::Receiver<()>) {
    let mut node = node_on_disk(dir);
    let (gate, gated) = crate::ledger::tests::Gate::shut();
    let (tx, signals) = std::sync::mpsc::channel();
    let notify = Box::new(move || {
        let _ = tx.send(());
    });
    node.ledger_mut().pipeline_syncs_with(notify, gated).unwrap();
    (node, gate, signals)
}

/// With log syncs pipelined, a group commit is answered (and indexed) only after its sync
/// ended and the driver said so; two batches may wait at once, and they and a submit refused
/// at once behind them are answered in submission order.
#[test]
fn pipelined_submits_are_answered_only_once_durable_in_order() {
    // The sync thread's jobs wait for the gate: the test decides when the disk is done.
    let root = tempfile::tempdir().unwrap();
    let (mut node, gate, signals) = gated_node(root.path());
    let now = Time::from_millis(1_764_633_600_000);
    // The first batch names the origin's log file: synced whole, answered at once.
    node.handle(now, Input::SubmitBatch(sales(0..3)));
    assert_eq!(answers(&mut node), [Some(1), Some(2), Some(3)]);
    node.handle(now, Input::SubmitBatch(sales(3..5)));
    node.handle(now, Input::SubmitBatch(sales(5..6)));
    let mut oversized = sales(6..7);
    oversized[0].payload = vec![0; node.ledger().payload_limit() + 1];
    node.handle(now, Input::SubmitBatch(oversized));
    assert_eq!(node.submits_syncing(), 3);
    assert_eq!(node.status().queues.submits_syncing, 3, "status shows what waits for the disk");
    node.handle(now, Input::LogsSynced);
    assert_eq!(answers(&mut node), [], "nothing answered before its sync ends");
    assert_eq!(node.ledger().store().units_total(), 3, "nor indexed");
    gate.open();
    until_synced(&mut node, &signals);
    assert_eq!(answers(&mut node), [Some(4), Some(5), Some(6), None], "in submission order");
    assert_eq!(node.ledger().store().units_total(), 6);
}

/// A failed log sync refuses its group commit and every one after it.
#[test]
fn a_failed_log_sync_refuses_its_batch_and_the_later_ones() {
    let root = tempfile::tempdir().unwrap();
    let mut node = node_on_disk(root.path());
    let (tx, signals) = std::sync::mpsc::channel();
    let failing = Box::new(crate::ledger::tests::failing_sync);
    let notify = Box::new(move || {
        let _ = tx.send(());
    });
    node.ledger_mut().pipeline_syncs_with(notify, failing).unwrap();
    let now = Time::from_millis(1_764_633_600_000);
    node.handle(now, Input::SubmitBatch(sales(0..3)));
    assert_eq!(answers(&mut node), [Some(1), Some(2), Some(3)]);
    node.handle(now, Input::SubmitBatch(sales(3..5)));
    node.handle(now, Input::SubmitBatch(sales(5..6)));
    until_synced(&mut node, &signals);
    assert_eq!(answers(&mut node), [None, None, None]);
    assert_eq!(node.stats().submits_refused, 3);
    assert_eq!(node.ledger().store().units_total(), 3);
}

/// Units received from a peer are delivered and held (the control socket reads them through
/// `Node::unit`) before this node's own log sync ends, and indexed (claimed in its vector) only
/// once it has: their origin made them durable before sending them. A copy arriving meanwhile
/// is not taken twice, and the status shows what waits for the disk.
#[test]
fn received_units_are_delivered_before_their_log_sync_and_indexed_after() {
    use crate::proto::io::ReceivedDatagram;
    // The origin: a node of the same system, whose multicasts are taken by hand.
    let mut h = Harness::new(&[Role::Lane, Role::Lane], &[true, true], &[]);
    h.run_until(h.now.plus_millis(3_000));
    let now = h.now;
    let mut datagrams = Vec::new();
    for i in 0..5 {
        h.nodes[0].handle(now, Input::Submit(sale(format!("sale {i}").as_bytes())));
        datagrams.extend(group_datagrams(&mut h.nodes[0]));
    }
    assert_eq!(datagrams.len(), 5, "one multicast per submit");
    let origin = h.nodes[0].dbid();

    let root = tempfile::tempdir().unwrap();
    let (mut node, gate, signals) = gated_node(root.path());
    let take = |node: &mut Node<_>, d: &ReceivedDatagram| {
        node.handle(now, Input::Datagram { from: d.from, to: d.to, bytes: &d.bytes });
    };
    for d in &datagrams {
        take(&mut node, d);
    }
    let delivered: Vec<u64> = std::iter::from_fn(|| node.poll_output())
        .filter_map(|o| match o {
            Output::Deliver(unit) => Some(unit.seq),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [1, 2, 3, 4, 5], "all delivered, in order, before the disk is done");
    // The first named the origin's log file (synced whole); the rest wait for the gate.
    assert_eq!(node.ledger().store().units_total(), 1, "only the first is indexed");
    assert_eq!(node.status().queues.received_syncing, 4);
    assert_eq!(node.syncing(), 4);
    assert_eq!(node.submits_syncing(), 0, "received units do not hold up submits");
    let held = node.unit(&origin, 5).unwrap().expect("held while its sync runs");
    assert_eq!(held.payload, b"sale 4");
    for d in &datagrams {
        take(&mut node, d);
    }
    assert_eq!(node.stats().units_new, 5, "copies arriving meanwhile are not taken again");
    assert!(std::iter::from_fn(|| node.poll_output()).all(|o| !matches!(o, Output::Deliver(_))));
    gate.open();
    until_synced(&mut node, &signals);
    assert_eq!(node.ledger().store().units_total(), 5);
    assert_eq!(node.status().queues.received_syncing, 0);
    assert_eq!(node.unit(&origin, 5).unwrap().map(|u| u.payload), Some(b"sale 4".to_vec()));
}

/// A lane and a store server: the lane sells "sale 0" to "sale 9", all reach the server, and
/// the lane's data directory is put back in place to its state after the first five (a VM
/// snapshot reverted: the same dbid).
fn lane_reverted_after_ten_sales() -> Harness {
    let roles = [Role::Lane, Role::StoreServer];
    let mut h = Harness::new(&roles, &[true, true], &[]);
    h.run_until(h.now.plus_millis(3_000));
    for i in 0..5 {
        h.submit(0, format!("sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(3_000));
    let snapshot = h.nodes[0].ledger().store().clone();
    for i in 5..10 {
        h.submit(0, format!("sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(3_000));
    assert_eq!(h.nodes[1].ledger().store().units_total(), 10);
    let server = h.nodes[1].dbid();
    assert!(h.nodes[0].ledger().confirmed_own(&server) >= 5, "the peer's holdings were recorded");
    h.restart(0, snapshot);
    h
}

/// A lane's data directory is rolled back (its VM snapshot reverted) after its last units
/// reached the store server, and it sells offline before it meets the store server again: the
/// seqs it hands out again are held there by the units it made before the revert.
#[test]
fn a_rolled_back_directory_skips_taken_seqs_and_issues_the_colliding_units_again() {
    let mut h = lane_reverted_after_ten_sales();
    h.cut[0] = true;
    for i in 0..3 {
        h.submit(0, format!("sold after the revert {i}").as_bytes(), Urgency::Normal);
    }
    assert_eq!(h.nodes[0].ledger().own_head(), 8, "seqs 6-8 are handed out again");
    h.run_until(h.now.plus_millis(1_000));
    h.cut[0] = false;
    h.run_until(h.now.plus_millis(30_000));

    let own = h.nodes[0].dbid();
    let at_server = h.payloads(1);
    for i in 0..3 {
        let payload = format!("sold after the revert {i}").into_bytes();
        assert!(at_server.contains(&payload), "unit {i} sold after the revert reached the server");
    }
    for i in 0..10 {
        assert!(at_server.contains(format!("sale {i}").as_bytes()), "sale {i} is still held");
    }
    // The lane holds the server's units under 6-8 too: the server's next `Have` made the lane
    // offer 6-8 for comparison, and the server sent its own units of those seqs back.
    let at_lane = h.payloads(0);
    for i in 0..10 {
        assert!(at_lane.contains(format!("sale {i}").as_bytes()), "the lane holds sale {i}");
    }
    let stats = h.nodes[0].stats().clone();
    assert_eq!(stats.own_conflicts, 2, "seen by heads, then by content");
    // 6-8 collided; whatever lay above the recorded confirmation went again too; then the
    // server's three, and not ours again.
    assert!((6..=11).contains(&stats.units_reissued), "{}", stats.units_reissued);
    let conflict = h.nodes[0].status().own_conflict.expect("status shows the conflict");
    assert_eq!((conflict.differing, conflict.their_head, conflict.reissued), (3, 8, 3));
    assert_eq!(conflict.seen_at, h.nodes[1].dbid().to_string());

    // New units take fresh seqs and reach the server; both ends hold the same seqs.
    h.submit(0, b"the next sale", Urgency::Normal);
    h.run_until(h.now.plus_millis(3_000));
    assert!(h.payloads(1).contains(b"the next sale".as_slice()));
    assert!(h.nodes[0].ledger().own_head() > 10 + stats.units_reissued);
    assert_eq!(
        h.nodes[0].ledger().store().version_vector().get(&own),
        h.nodes[1].ledger().store().version_vector().get(&own)
    );
}

/// The revert of the test above, but the lane sells more while cut off than the revert took
/// back: by heads the server looks behind the lane, and only the content shows the conflict.
#[test]
fn a_rolled_back_directory_that_sold_past_its_old_head_is_found_by_content() {
    let mut h = lane_reverted_after_ten_sales();
    h.cut[0] = true;
    for i in 0..8 {
        h.submit(0, format!("sold after the revert {i}").as_bytes(), Urgency::Normal);
    }
    assert_eq!(h.nodes[0].ledger().own_head(), 13, "seqs 6-10 are handed out again, and 11-13");
    h.run_until(h.now.plus_millis(1_000));
    h.cut[0] = false;
    h.run_until(h.now.plus_millis(30_000));

    // Every sale is held at both ends: the server's 6-10 came back to the lane as rivals, and
    // both units of each of those seqs went again under new seqs.
    for i in [0, 1] {
        let held = h.payloads(i);
        for n in 0..10 {
            assert!(held.contains(format!("sale {n}").as_bytes()), "node {i} holds sale {n}");
        }
        for n in 0..8 {
            let sold = format!("sold after the revert {n}");
            assert!(held.contains(sold.as_bytes()), "node {i} holds {sold}");
        }
    }
    let stats = h.nodes[0].stats().clone();
    assert!(stats.own_conflicts >= 1);
    assert_eq!(stats.units_reissued, 10, "ours and theirs of seqs 6-10, once each");
    assert_eq!(h.nodes[1].stats().units_diverged, 5);
    let conflict = h.nodes[0].status().own_conflict.expect("status shows the conflict");
    assert_eq!((conflict.differing, conflict.their_head), (5, 10));
    assert_eq!(conflict.seen_at, h.nodes[1].dbid().to_string());
    let own = h.nodes[0].dbid();
    assert_eq!(
        h.nodes[0].ledger().store().version_vector().get(&own),
        h.nodes[1].ledger().store().version_vector().get(&own)
    );
}

/// The same revert, but a LAN neighbour that never had the lane's last units before the revert
/// takes (and confirms) what the lane sells after it, before the store server is back: those
/// units must still go to the server, which holds other units under their seqs.
#[test]
fn units_a_neighbour_confirmed_after_a_revert_still_reach_the_server_that_holds_their_seqs() {
    let roles = [Role::Lane, Role::Lane, Role::StoreServer];
    let mut h = Harness::new(&roles, &[true, true, false], &[(0, 2)]);
    h.run_until(h.now.plus_millis(3_000));
    for i in 0..5 {
        h.submit(0, format!("sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(3_000));
    assert!(h.holds_all());
    let snapshot = h.nodes[0].ledger().store().clone();
    h.cut[1] = true;
    for i in 5..10 {
        h.submit(0, format!("sale {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(3_000));
    assert_eq!(h.nodes[2].ledger().store().units_total(), 10);

    h.restart(0, snapshot);
    h.cut[1] = false;
    h.cut[2] = true;
    h.run_until(h.now.plus_millis(3_000));
    for i in 0..3 {
        h.submit(0, format!("sold after the revert {i}").as_bytes(), Urgency::Normal);
    }
    h.run_until(h.now.plus_millis(5_000));
    assert_eq!(h.nodes[1].ledger().store().units_total(), 8, "the neighbour took 6-8");
    let neighbour = h.nodes[1].dbid();
    assert!(h.nodes[0].ledger().confirmed_own(&neighbour) >= 8, "and confirmed them");
    assert_eq!(h.nodes[0].stats().own_conflicts, 0);

    h.cut[2] = false;
    h.run_until(h.now.plus_millis(330_000));
    assert_eq!(h.nodes[0].stats().own_conflicts, 2, "seen by heads, then by content");
    let at_server = h.payloads(2);
    for i in 0..3 {
        let payload = format!("sold after the revert {i}").into_bytes();
        assert!(at_server.contains(&payload), "unit {i} sold after the revert reached the server");
    }
    // The server's units under 6-8 went back to the lane and out again under new seqs: every
    // node holds every sale.
    for node in 0..3 {
        let held = h.payloads(node);
        for i in 0..10 {
            assert!(held.contains(format!("sale {i}").as_bytes()), "node {node} holds sale {i}");
        }
    }
}
