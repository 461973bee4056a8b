//! The node: one sans-IO state machine that moves transfer units to every node that needs them.
//!
//! - Discovery: IDQY on the discovery group at start and on an interval, IDRP unicast to the
//!   asker; members of another RmSystem or environment, and forgeries, are refused by the
//!   opener and counted.
//! - Links: on the LAN the peer with the smaller dbid connects (either side after repeated
//!   failures); configured peers are connected by the side that configured them. Both sides
//!   send `Hello`; a second link to the same peer is closed, keeping the one opened by the
//!   smaller dbid.
//! - Eager push: a new unit (submitted here, or new to this node) is multicast once on the
//!   environment group when LAN peers exist and it fits a datagram, and sent on the links of
//!   the peers beyond the LAN (except the one it came from). This forwarding of what is new is
//!   what carries units over several hops.
//! - Anti-entropy: on an interval each up link gets a `Digest` of our version vector; a peer
//!   whose vector differs answers with its `Vector`; the receiver sends what the other lacks in
//!   bounded batches (urgent units first) and its own vector when it lacks something too. A
//!   batch marked `more` is answered by a vector, so catching up streams from the store batch
//!   by batch with bounded memory.
//! - Delivery: units of other origins are handed to the application in per-origin order from
//!   the durable cursor; `Acknowledge` moves the cursor.
//!
//! No sockets, no clock reads, no global RNG: time comes with each input and the RNG is seeded
//! from the config.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::crypto::{KeySchedule, NonceSequence, Purpose};
use crate::id::{DatabaseId, DeviceId, Environment, InstanceId, RmSystem};
use crate::ledger::{Ledger, Submission};
use crate::proto::io::{DatagramDest, Input, LinkId, Output, Protocol, Time};
use crate::proto::message::{decode_units, Announce, Message};
use crate::proto::peers::{backoff_ms, DownReason, Peer, PeerState, Role};
use crate::store::{Store, VersionVector};
use crate::unit::{TransferUnit, Urgency};
use crate::wire::{
    peek_tag, DatagramOpener, DatagramSealer, RejectCounters, RejectReason, Tag,
    DEFAULT_MAX_FRAME_LEN,
};

/// A peer given in the configuration (a direct IP link beyond the LAN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredPeer {
    /// Where it accepts links.
    pub addr: SocketAddr,
    /// Lower is preferred (seed 001: "tried in order of priority").
    pub priority: u32,
    /// What it is.
    pub role: Role,
}

/// Everything a node is told at start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The system.
    pub rmsystem: RmSystem,
    /// Its environment.
    pub env: Environment,
    /// This machine.
    pub device: DeviceId,
    /// This process.
    pub instance: InstanceId,
    /// This node's role.
    pub role: Role,
    /// The system's keys.
    pub keys: KeySchedule,
    /// The shared discovery group (seed: 239.192.6.83).
    pub discovery_group: SocketAddr,
    /// The environment's group, where units are multicast.
    pub env_group: SocketAddr,
    /// Where this node accepts links (announced in IDQY/IDRP).
    pub advertise: Vec<SocketAddr>,
    /// Direct peers beyond the LAN.
    pub configured: Vec<ConfiguredPeer>,
    /// IDQY interval.
    pub discovery_interval_ms: u64,
    /// Anti-entropy interval.
    pub anti_entropy_interval_ms: u64,
    /// How often an offline peer is tried after the first quick retries (seed 001: 5 min).
    pub offline_ping_ms: u64,
    /// How long a link attempt may take.
    pub connect_timeout_ms: u64,
    /// Most units in one anti-entropy batch.
    pub batch_units: usize,
    /// Most bytes of units in one frame.
    pub batch_bytes: usize,
    /// Most bytes of units in one multicast datagram.
    pub multicast_bytes: usize,
    /// The application whose delivery cursor this node keeps.
    pub app: String,
    /// Seed of the node's RNG (jitter).
    pub rng_seed: u64,
}

impl NodeConfig {
    /// A config with the default intervals and limits.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rmsystem: RmSystem,
        env: Environment,
        keys: KeySchedule,
        role: Role,
        device: DeviceId,
        instance: InstanceId,
        discovery_group: SocketAddr,
        env_group: SocketAddr,
    ) -> NodeConfig {
        NodeConfig {
            rmsystem,
            env,
            device,
            instance,
            role,
            keys,
            discovery_group,
            env_group,
            advertise: Vec::new(),
            configured: Vec::new(),
            discovery_interval_ms: 5_000,
            anti_entropy_interval_ms: 2_000,
            offline_ping_ms: 300_000,
            connect_timeout_ms: 5_000,
            batch_units: 512,
            batch_bytes: 256 << 10,
            multicast_bytes: 8 << 10,
            app: "app".into(),
            rng_seed: 0,
        }
    }
}

/// Counters a support engineer asks about; shown by status.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// Datagrams and frames refused, by reason.
    pub rejects: RejectCounters,
    /// Units received (pushed or by anti-entropy).
    pub units_received: u64,
    /// Of those, new to this node.
    pub units_new: u64,
    /// Units refused as invalid (over the payload limit, bad encoding).
    pub units_invalid: u64,
    /// Batches the store could not take (disk full, IO error); retried by anti-entropy.
    pub store_errors: u64,
    /// Links closed because the other end never proved membership.
    pub links_refused: u64,
}

/// Where a batch of units came from, for forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Local,
    Multicast,
    Link(LinkId),
}

#[derive(Debug, Clone)]
struct LinkInfo {
    remote: SocketAddr,
    peer: Option<DatabaseId>,
    outbound: bool,
}

#[derive(Debug, Clone)]
struct Attempt {
    failures: u32,
    next_attempt: Time,
}

/// The protocol core of one node over a ledger on store `S`.
pub struct Node<S: Store> {
    cfg: NodeConfig,
    ledger: Ledger<S>,
    rng: StdRng,
    lan_seal: DatagramSealer,
    lan_open: DatagramOpener,
    link_seal: DatagramSealer,
    link_open: DatagramOpener,
    peers: BTreeMap<DatabaseId, Peer>,
    /// Configured addresses not (yet) known as a peer, with their attempt state.
    configured: BTreeMap<SocketAddr, Attempt>,
    links: BTreeMap<LinkId, LinkInfo>,
    /// Link attempts under way: address -> deadline.
    connecting: BTreeMap<SocketAddr, Time>,
    out: VecDeque<Output>,
    now: Time,
    started: bool,
    next_discovery: Time,
    next_anti_entropy: Time,
    delivered: BTreeMap<DatabaseId, u64>,
    stats: NodeStats,
}

impl<S: Store> Node<S> {
    /// A node over `ledger` (which writes as this node's dbid).
    pub fn new(cfg: NodeConfig, ledger: Ledger<S>) -> Node<S> {
        let keys = cfg.keys.clone();
        let lan_seal = DatagramSealer::new(
            keys.clone(),
            Purpose::LanDatagram,
            cfg.rmsystem,
            &cfg.env,
            NonceSequence::new(cfg.instance),
        );
        let lan_open =
            DatagramOpener::new(keys.clone(), Purpose::LanDatagram, cfg.rmsystem, &cfg.env);
        let link_seal = DatagramSealer::new(
            keys.clone(),
            Purpose::Link,
            cfg.rmsystem,
            &cfg.env,
            NonceSequence::new(cfg.instance),
        )
        .with_max_len(DEFAULT_MAX_FRAME_LEN);
        let link_open = DatagramOpener::new(keys, Purpose::Link, cfg.rmsystem, &cfg.env)
            .with_max_len(DEFAULT_MAX_FRAME_LEN);
        let delivered = ledger.store().cursor(&cfg.app).unwrap_or_default();
        Node {
            rng: StdRng::seed_from_u64(cfg.rng_seed),
            cfg,
            ledger,
            lan_seal,
            lan_open,
            link_seal,
            link_open,
            peers: BTreeMap::new(),
            configured: BTreeMap::new(),
            links: BTreeMap::new(),
            connecting: BTreeMap::new(),
            out: VecDeque::new(),
            now: Time(0),
            started: false,
            next_discovery: Time(0),
            next_anti_entropy: Time(0),
            delivered,
            stats: NodeStats::default(),
        }
    }

    /// This node's dbid.
    pub fn dbid(&self) -> DatabaseId {
        self.ledger.own_dbid()
    }

    /// The ledger (store reads).
    pub fn ledger(&self) -> &Ledger<S> {
        &self.ledger
    }

    /// Takes the ledger back (the simulator crashes a node this way).
    pub fn into_ledger(self) -> Ledger<S> {
        self.ledger
    }

    /// The peer table.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// The counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Own units no main server is known to hold yet (seed 001: "Only transactions send to a
    /// Main Server are considered to be synchronized and are considered to be save").
    pub fn unsafe_backlog(&self) -> u64 {
        let own = self.dbid();
        let held = self.ledger.store().version_vector().count(&own);
        let safe = self.safe_map().get(&own).copied().unwrap_or(0);
        held.saturating_sub(safe)
    }

    /// What main servers hold as far as this node knows: per origin, the contiguous prefix held
    /// by some main server (this node, a main-server peer's vector, or what peers report).
    pub fn safe_map(&self) -> BTreeMap<DatabaseId, u64> {
        let mut safe: BTreeMap<DatabaseId, u64> = BTreeMap::new();
        let mut merge = |origin: DatabaseId, n: u64| {
            let slot = safe.entry(origin).or_insert(0);
            *slot = (*slot).max(n);
        };
        let contiguous = |v: &VersionVector| -> Vec<(DatabaseId, u64)> {
            v.iter().map(|(o, r)| (*o, r.contiguous())).collect()
        };
        if self.cfg.role == Role::MainServer {
            for (o, n) in contiguous(self.ledger.store().version_vector()) {
                merge(o, n);
            }
        }
        for peer in self.peers.values() {
            if peer.role == Role::MainServer {
                for (o, n) in peer.vector.as_ref().map(contiguous).unwrap_or_default() {
                    merge(o, n);
                }
            }
            for (o, n) in &peer.safe {
                merge(*o, *n);
            }
        }
        safe
    }

    fn send_safe(&mut self) {
        let held: Vec<(DatabaseId, u64)> = self.safe_map().into_iter().collect();
        if held.is_empty() {
            return;
        }
        let message = Message::Safe { held };
        let encoded = message.encode();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&blake3::hash(&encoded).as_bytes()[..16]);
        let links: Vec<(DatabaseId, LinkId)> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Up && p.safe_sent != Some(digest))
            .filter_map(|p| p.link.map(|l| (p.dbid, l)))
            .collect();
        for (dbid, link) in links {
            self.send_frame(link, Tag::Tubs, &message);
            if let Some(p) = self.peers.get_mut(&dbid) {
                p.safe_sent = Some(digest);
            }
        }
    }

    fn start(&mut self, now: Time) {
        self.started = true;
        let jitter = self.rng.gen_range(0..=self.cfg.discovery_interval_ms / 10 + 1);
        self.next_discovery = now.plus_millis(jitter);
        self.next_anti_entropy = now.plus_millis(self.cfg.anti_entropy_interval_ms);
        for peer in &self.cfg.configured {
            self.configured.insert(peer.addr, Attempt { failures: 0, next_attempt: now });
        }
        let origins: Vec<DatabaseId> =
            self.ledger.store().version_vector().origins().copied().collect();
        self.deliver_ready(origins);
    }

    // ----- discovery -----

    fn announce(&self, reply: bool) -> Announce {
        Announce {
            dbid: self.dbid(),
            device: self.cfg.device,
            instance: self.cfg.instance,
            role: self.cfg.role,
            addrs: self.cfg.advertise.clone(),
            reply,
        }
    }

    fn send_announce(&mut self, to: DatagramDest, reply: bool) {
        let tag = if reply { Tag::Idrp } else { Tag::Idqy };
        let body = self.announce(reply).encode();
        if let Ok(bytes) = self.lan_seal.seal_visible(tag, self.now.as_secs(), &body) {
            self.out.push_back(Output::Datagram { to, bytes });
        }
    }

    fn on_announce(&mut self, from: SocketAddr, a: Announce) {
        if a.dbid == self.dbid() {
            return;
        }
        let now = self.now;
        let addrs = if a.addrs.is_empty() { vec![from] } else { a.addrs.clone() };
        let peer = self
            .peers
            .entry(a.dbid)
            .or_insert_with(|| Peer::new(a.dbid, a.role, addrs.clone(), true, now));
        peer.addrs = addrs;
        peer.role = a.role;
        peer.lan = true;
        peer.last_seen = now;
        if !a.reply {
            self.send_announce(DatagramDest::Unicast(from), true);
        }
        self.connect_due();
    }

    // ----- links -----

    fn connect_due(&mut self) {
        let now = self.now;
        let own = self.dbid();
        let mut targets = Vec::new();
        for peer in self.peers.values_mut() {
            if peer.wants_link(own) && peer.next_attempt <= now {
                let i = usize::try_from(peer.failures).unwrap_or(0) % peer.addrs.len();
                peer.state = PeerState::Connecting;
                targets.push(peer.addrs[i]);
            }
        }
        for (addr, attempt) in &self.configured {
            if attempt.next_attempt <= now && !self.connecting.contains_key(addr) {
                targets.push(*addr);
            }
        }
        for to in targets {
            if self.connecting.contains_key(&to) {
                continue;
            }
            self.connecting.insert(to, now.plus_millis(self.cfg.connect_timeout_ms));
            self.out.push_back(Output::Connect { to });
        }
    }

    fn connect_failed(&mut self, to: SocketAddr, reason: DownReason) {
        self.connecting.remove(&to);
        let (now, ping) = (self.now, self.cfg.offline_ping_ms);
        if let Some(attempt) = self.configured.get_mut(&to) {
            attempt.failures += 1;
            attempt.next_attempt = now.plus_millis(backoff_ms(attempt.failures, ping));
        }
        for peer in self.peers.values_mut() {
            if peer.state == PeerState::Connecting && peer.addrs.contains(&to) {
                peer.down(reason, now, ping);
            }
        }
    }

    fn on_link_up(&mut self, link: LinkId, remote: SocketAddr, outbound: bool) {
        self.connecting.remove(&remote);
        // Until the hello arrives a configured address counts as attempted, so a link that
        // closes without one is retried with backoff, never in a loop.
        let ping = self.cfg.offline_ping_ms;
        if let Some(attempt) = self.configured.get_mut(&remote) {
            attempt.failures += 1;
            attempt.next_attempt = self.now.plus_millis(backoff_ms(attempt.failures, ping));
        }
        self.links.insert(link, LinkInfo { remote, peer: None, outbound });
        let hello =
            Message::Hello { dbid: self.dbid(), instance: self.cfg.instance, role: self.cfg.role };
        self.send_frame(link, Tag::Tubs, &hello);
    }

    fn on_link_down(&mut self, link: LinkId) {
        let Some(info) = self.links.remove(&link) else { return };
        let (now, ping) = (self.now, self.cfg.offline_ping_ms);
        if let Some(peer) = info.peer.and_then(|d| self.peers.get_mut(&d)) {
            if peer.link == Some(link) {
                peer.down(DownReason::LinkClosed, now, ping);
            }
        }
    }

    fn on_hello(&mut self, link: LinkId, dbid: DatabaseId, role: Role) {
        let own = self.dbid();
        let now = self.now;
        let Some(info) = self.links.get_mut(&link) else { return };
        if dbid == own {
            // A link to ourselves (our own address was configured or announced): close it and
            // never try that address again.
            let remote = info.remote;
            self.out.push_back(Output::Close { link });
            self.links.remove(&link);
            self.configured.remove(&remote);
            return;
        }
        info.peer = Some(dbid);
        let (remote, outbound) = (info.remote, info.outbound);
        let was_configured = self.configured.remove(&remote).is_some();
        // A peer first met on a link is beyond the LAN until its announcement is heard on the
        // multicast group (which is what makes it a LAN peer).
        let addrs = if outbound { vec![remote] } else { Vec::new() };
        let peer =
            self.peers.entry(dbid).or_insert_with(|| Peer::new(dbid, role, addrs, false, now));
        if was_configured {
            peer.lan = false;
            if !peer.addrs.contains(&remote) {
                peer.addrs.push(remote);
            }
        }
        peer.role = role;
        peer.last_seen = now;
        if let Some(old) = peer.link.filter(|old| *old != link && peer.state == PeerState::Up) {
            // Two links to one peer: keep the one opened by the smaller dbid, on both sides.
            let initiator = |outbound: bool| if outbound { own } else { dbid };
            let old_outbound = self.links.get(&old).is_some_and(|l| l.outbound);
            let keep_new = initiator(outbound) == own.min(dbid)
                && (initiator(old_outbound) != own.min(dbid) || outbound == old_outbound);
            let drop = if keep_new { old } else { link };
            if keep_new {
                peer.link = Some(link);
            }
            self.links.remove(&drop);
            self.out.push_back(Output::Close { link: drop });
            if !keep_new {
                return;
            }
        }
        peer.link = Some(link);
        peer.state = PeerState::Up;
        peer.failures = 0;
        self.send_digest(link, false);
    }

    fn send_frame(&mut self, link: LinkId, tag: Tag, message: &Message) {
        if let Ok(bytes) = self.link_seal.seal(tag, self.now.as_secs(), &message.encode()) {
            self.out.push_back(Output::Frame { link, bytes });
        }
    }

    // ----- anti-entropy -----

    fn vector_digest(&self) -> [u8; 16] {
        let encoded = self.ledger.store().version_vector().encode();
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::hash(&encoded).as_bytes()[..16]);
        out
    }

    fn send_digest(&mut self, link: LinkId, same: bool) {
        let digest = self.vector_digest();
        self.send_frame(link, Tag::Tubs, &Message::Digest { digest, same });
    }

    fn send_vector(&mut self, link: LinkId) {
        let vector = self.ledger.store().version_vector().encode();
        self.send_frame(link, Tag::Tubs, &Message::Vector { vector });
    }

    /// Sends `link` a batch of what `theirs` lacks, urgent first, marked `more` when the batch
    /// limit left some out.
    fn send_missing(&mut self, link: LinkId, theirs: &VersionVector) {
        let missing = self.ledger.store().version_vector().missing_from(theirs);
        let limit = self.cfg.batch_units;
        let mut candidates: Vec<TransferUnit> = Vec::new();
        let mut more = false;
        'outer: for (origin, ranges) in &missing {
            for range in ranges {
                let want = limit.saturating_mul(2).saturating_sub(candidates.len());
                if want == 0 {
                    more = true;
                    break 'outer;
                }
                let Ok(units) = self.ledger.store().range(origin, *range.start(), want) else {
                    continue;
                };
                let taken = units.into_iter().take_while(|u| u.seq <= *range.end());
                candidates.extend(taken);
            }
        }
        if candidates.is_empty() {
            return;
        }
        // Urgent first (stable: per-origin order is kept within an urgency).
        candidates.sort_by_key(|u| match u.urgency {
            Urgency::Urgent => 0,
            Urgency::Normal => 1,
            _ => 2,
        });
        if candidates.len() > limit {
            candidates.truncate(limit);
            more = true;
        }
        self.send_units(link, Tag::Tuda, &candidates, more);
    }

    fn send_units(&mut self, link: LinkId, tag: Tag, units: &[TransferUnit], more: bool) {
        let mut start = 0;
        while start < units.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < units.len()
                && (end == start || bytes + units[end].payload.len() + 80 <= self.cfg.batch_bytes)
            {
                bytes += units[end].payload.len() + 80;
                end += 1;
            }
            let last = end == units.len();
            self.send_frame(link, tag, &Message::units(&units[start..end], more && last));
            start = end;
        }
    }

    fn anti_entropy_round(&mut self) {
        let links: Vec<LinkId> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Up)
            .filter_map(|p| p.link)
            .collect();
        for link in links {
            self.send_digest(link, false);
        }
        self.send_safe();
        // Cursor moves and index state become durable at least once a round.
        let _ = self.ledger.checkpoint();
    }

    // ----- units -----

    fn on_units(&mut self, source: Source, encoded: &[Vec<u8>]) {
        let units = match decode_units(encoded, self.ledger.payload_limit()) {
            Ok(units) => units,
            Err(_) => {
                self.stats.units_invalid += encoded.len() as u64;
                return;
            }
        };
        self.stats.units_received += units.len() as u64;
        let by_name: BTreeMap<(DatabaseId, u64), TransferUnit> =
            units.iter().map(|u| ((u.origin, u.seq), u.clone())).collect();
        let fresh = match self.ledger.accept_batch(units, self.now.as_millis()) {
            Ok(fresh) => fresh,
            Err(_) => {
                self.stats.store_errors += 1;
                return;
            }
        };
        self.stats.units_new += fresh.len() as u64;
        let new_units: Vec<TransferUnit> =
            fresh.iter().filter_map(|name| by_name.get(name).cloned()).collect();
        let origins: BTreeSet<DatabaseId> = fresh.iter().map(|(o, _)| *o).collect();
        self.forward(source, &new_units);
        self.deliver_ready(origins);
    }

    fn forward(&mut self, source: Source, units: &[TransferUnit]) {
        if units.is_empty() {
            return;
        }
        let from_lan = match source {
            Source::Local => false,
            Source::Multicast => true,
            Source::Link(link) => self
                .links
                .get(&link)
                .and_then(|l| l.peer)
                .and_then(|d| self.peers.get(&d))
                .is_some_and(|p| p.lan),
        };
        let has_lan = self.peers.values().any(|p| p.lan);
        let (small, large): (Vec<TransferUnit>, Vec<TransferUnit>) =
            units.iter().cloned().partition(|u| u.payload.len() + 200 <= self.cfg.multicast_bytes);
        if !from_lan && has_lan && !small.is_empty() {
            self.multicast(&small);
        }
        let source_link = match source {
            Source::Link(link) => Some(link),
            _ => None,
        };
        let targets: Vec<(LinkId, bool)> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Up)
            .filter_map(|p| p.link.map(|l| (l, p.lan)))
            .filter(|(l, _)| Some(*l) != source_link)
            .collect();
        for (link, lan) in targets {
            if !lan {
                self.send_units(link, Tag::Tubt, units, false);
            } else if !from_lan && !large.is_empty() {
                self.send_units(link, Tag::Tubt, &large, false);
            }
        }
    }

    fn multicast(&mut self, units: &[TransferUnit]) {
        let mut batch: Vec<TransferUnit> = Vec::new();
        let mut bytes = 0;
        let to = DatagramDest::Group(self.cfg.env_group);
        for unit in units {
            let len = unit.payload.len() + 80;
            if !batch.is_empty() && bytes + len > self.cfg.multicast_bytes {
                let message = Message::units(&batch, false).encode();
                if let Ok(bytes) = self.lan_seal.seal(Tag::Tubt, self.now.as_secs(), &message) {
                    self.out.push_back(Output::Datagram { to, bytes });
                }
                batch.clear();
                bytes = 0;
            }
            batch.push(unit.clone());
            bytes += len;
        }
        if !batch.is_empty() {
            let message = Message::units(&batch, false).encode();
            if let Ok(bytes) = self.lan_seal.seal(Tag::Tubt, self.now.as_secs(), &message) {
                self.out.push_back(Output::Datagram { to, bytes });
            }
        }
    }

    fn submit(&mut self, sub: Submission) {
        let receipts = match self.ledger.submit_batch(vec![sub], self.now.as_millis()) {
            Ok(r) => r,
            Err(_) => {
                self.stats.store_errors += 1;
                return;
            }
        };
        let mut new_units = Vec::new();
        for receipt in receipts {
            if !receipt.existing {
                if let Ok(Some(unit)) = self.ledger.store().get(&receipt.origin, receipt.seq) {
                    new_units.push(unit);
                }
            }
            self.out.push_back(Output::Accepted(receipt));
        }
        self.forward(Source::Local, &new_units);
    }

    fn deliver_ready(&mut self, origins: impl IntoIterator<Item = DatabaseId>) {
        let own = self.dbid();
        for origin in origins {
            if origin == own {
                continue;
            }
            let mut next = self.delivered.get(&origin).copied().unwrap_or(0) + 1;
            while self.ledger.store().contains(&origin, next) {
                match self.ledger.store().get(&origin, next) {
                    Ok(Some(unit)) => self.out.push_back(Output::Deliver(unit)),
                    _ => break,
                }
                self.delivered.insert(origin, next);
                next += 1;
            }
        }
    }

    // ----- inputs -----

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let now_secs = self.now.as_secs();
        let discovery = peek_tag(bytes).is_some_and(|t| t.is_discovery());
        if discovery {
            match self.lan_open.open_visible(bytes, now_secs) {
                Ok(opened) => match Announce::decode(&opened.plaintext) {
                    Ok(a) => self.on_announce(from, a),
                    Err(_) => self.stats.rejects.record_reason(RejectReason::Malformed),
                },
                Err(r) => self.stats.rejects.record(&r),
            }
            return;
        }
        match self.lan_open.open(bytes, now_secs) {
            Ok(opened) => match Message::decode(&opened.plaintext) {
                Ok(Message::Units { units, .. }) => self.on_units(Source::Multicast, &units),
                Ok(_) => self.stats.rejects.record_reason(RejectReason::UnknownType),
                Err(_) => self.stats.rejects.record_reason(RejectReason::Malformed),
            },
            Err(r) => self.stats.rejects.record(&r),
        }
    }

    fn on_frame(&mut self, link: LinkId, bytes: &[u8]) {
        let Some(info) = self.links.get(&link) else { return };
        let peer = info.peer;
        let message = match self.link_open.open(bytes, self.now.as_secs()) {
            Ok(opened) => Message::decode(&opened.plaintext),
            Err(r) => {
                self.stats.rejects.record(&r);
                if peer.is_none() {
                    // The other end has not proved membership: it gets nothing more.
                    self.stats.rejects.record_reason(RejectReason::NonMemberLink);
                    self.stats.links_refused += 1;
                    self.links.remove(&link);
                    self.out.push_back(Output::Close { link });
                }
                return;
            }
        };
        let Ok(message) = message else {
            self.stats.rejects.record_reason(RejectReason::Malformed);
            return;
        };
        if let Some(p) = peer.and_then(|d| self.peers.get_mut(&d)) {
            p.last_seen = self.now;
        }
        match message {
            Message::Hello { dbid, role, .. } => self.on_hello(link, dbid, role),
            _ if peer.is_none() => self.stats.rejects.record_reason(RejectReason::Malformed),
            Message::Digest { digest, same } => {
                if digest == self.vector_digest() {
                    let mine = self.ledger.store().version_vector().clone();
                    if let Some(p) = peer.and_then(|d| self.peers.get_mut(&d)) {
                        p.vector = Some(mine);
                    }
                    if !same {
                        self.send_digest(link, true);
                    }
                } else if !same {
                    self.send_vector(link);
                }
            }
            Message::Vector { vector } => {
                let Ok(theirs) = VersionVector::decode(&vector) else {
                    self.stats.rejects.record_reason(RejectReason::Malformed);
                    return;
                };
                self.send_missing(link, &theirs);
                let lacking = !theirs.missing_from(self.ledger.store().version_vector()).is_empty();
                if let Some(p) = peer.and_then(|d| self.peers.get_mut(&d)) {
                    p.vector = Some(theirs);
                }
                if lacking {
                    self.send_vector(link);
                }
            }
            Message::Safe { held } => {
                if let Some(p) = peer.and_then(|d| self.peers.get_mut(&d)) {
                    p.safe = held.into_iter().collect();
                }
            }
            Message::Units { units, more } => {
                self.on_units(Source::Link(link), &units);
                if more {
                    self.send_vector(link);
                }
            }
        }
    }
}

impl<S: Store> Protocol for Node<S> {
    fn handle(&mut self, now: Time, input: Input<'_>) {
        self.now = self.now.max(now);
        if !self.started {
            self.start(self.now);
        }
        match input {
            Input::Datagram { from, bytes, .. } => self.on_datagram(from, bytes),
            Input::Frame { link, bytes } => self.on_frame(link, bytes),
            Input::LinkUp { link, remote, outbound } => self.on_link_up(link, remote, outbound),
            Input::LinkDown { link } => self.on_link_down(link),
            Input::ConnectFailed { to } => self.connect_failed(to, DownReason::ConnectFailed),
            Input::Submit(sub) => self.submit(sub),
            Input::Acknowledge { origin, seq } => {
                let app = self.cfg.app.clone();
                if self.ledger.acknowledge(&app, &origin, seq).is_err() {
                    self.stats.store_errors += 1;
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        if !self.started {
            self.start(self.now);
        }
        let now = self.now;
        if now >= self.next_discovery {
            self.send_announce(DatagramDest::Group(self.cfg.discovery_group), false);
            let jitter = self.rng.gen_range(0..=self.cfg.discovery_interval_ms / 5);
            self.next_discovery = now.plus_millis(self.cfg.discovery_interval_ms + jitter);
        }
        if now >= self.next_anti_entropy {
            self.anti_entropy_round();
            self.next_anti_entropy = now.plus_millis(self.cfg.anti_entropy_interval_ms);
        }
        let expired: Vec<SocketAddr> = self
            .connecting
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(a, _)| *a)
            .collect();
        for to in expired {
            self.connect_failed(to, DownReason::ConnectTimeout);
        }
        self.connect_due();
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        if !self.started {
            return Some(self.now);
        }
        let mut next = self.next_discovery.min(self.next_anti_entropy);
        for deadline in self.connecting.values() {
            next = next.min(*deadline);
        }
        let own = self.dbid();
        for peer in self.peers.values() {
            if peer.wants_link(own) {
                next = next.min(peer.next_attempt.max(self.now));
            }
        }
        for (addr, attempt) in &self.configured {
            if !self.connecting.contains_key(addr) {
                next = next.min(attempt.next_attempt.max(self.now));
            }
        }
        Some(next)
    }
}
