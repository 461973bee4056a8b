//! A toy sync protocol, to exercise the engine until the real core (`meshnode::proto`) exists:
//! naive flooding plus version-vector anti-entropy over links, multicast of own units on the
//! LAN, a delivery cursor in the store, and switchable bugs so tests can see the checks catch
//! them.
//!
//! - Submit: store and flush the unit, then `Accepted`, then push it (multicast and every
//!   link). Refused (no output) while the disk is full.
//! - A unit from a peer: stored if new (flushed on a timer, so a crash can lose it), forwarded
//!   on every other link, delivered in per-origin order behind the cursor. Own units are not
//!   delivered (the application submitted them).
//! - Anti-entropy: a node sends its version vector on link up and every `full_sync_us`; the
//!   receiver sends back up to `batch` units the sender lacks, then `MORE` if it stopped short,
//!   which makes the sender send its vector again at once.
//! - Links: connects to its priority-0 peers; to the others (fallbacks) only while no
//!   priority-0 link is up or being dialled, and closes fallback links once a priority-0 link
//!   is up. Retries every `reconnect_us`.
//!
//! Not a design for the real core: it floods, keeps no peer state worth the name, encrypts
//! nothing and trusts what it receives (beyond decoding it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use meshnode::id::{DatabaseId, Physkey};
use meshnode::ledger::{Receipt, Submission};
use meshnode::proto::{DatagramDest, Input, LinkId, Output, Protocol, Time};
use meshnode::store::{MemoryStore, Store, VersionVector};
use meshnode::unit::{TransferUnit, DEFAULT_PAYLOAD_LIMIT};

use crate::disk::FailingStore;
use crate::engine::{BuildContext, NodeFactory};
use crate::network::{NodeId, PeerSpec};

/// The application name of the toy's delivery cursor.
pub const APP: &str = "toy";
const TAG_UNIT: u8 = 1;
const TAG_VECTOR: u8 = 2;
const TAG_MORE: u8 = 3;

/// A deliberate bug, for tests of the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToyBug {
    /// Ignores units from the network whose seq is a multiple of `n` (they are lost).
    DropEveryNth(u64),
    /// Delivers units whose seq is a multiple of `n` twice.
    DeliverTwice(u64),
    /// Delivers each unit when it arrives, not in seq order.
    DeliverOnArrival,
    /// Says `Accepted` without flushing (a crash then loses acknowledged units).
    AcceptBeforeDurable,
}

/// Toy settings.
#[derive(Debug, Clone)]
pub struct ToyConfig {
    /// Received units and cursor moves are flushed this long after the first change.
    pub flush_us: u64,
    /// The vector is sent on every link this often anyway.
    pub full_sync_us: u64,
    /// Missing peers are dialled again this often.
    pub reconnect_us: u64,
    /// Units sent in answer to one vector.
    pub batch: usize,
    /// A deliberate bug.
    pub bug: Option<ToyBug>,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig {
            flush_us: 50_000,
            full_sync_us: 60_000_000,
            reconnect_us: 5_000_000,
            batch: 1000,
            bug: None,
        }
    }
}

/// Builds [`ToyNode`]s.
#[derive(Debug, Clone, Default)]
pub struct ToyFactory {
    /// Settings of every node.
    pub config: ToyConfig,
}

impl ToyFactory {
    /// A factory whose nodes have `bug`.
    pub fn with_bug(bug: ToyBug) -> Self {
        ToyFactory { config: ToyConfig { bug: Some(bug), ..ToyConfig::default() } }
    }
}

impl NodeFactory for ToyFactory {
    type Node = ToyNode;

    fn build(&mut self, ctx: BuildContext<'_>) -> ToyNode {
        ToyNode::new(ctx, self.config.clone())
    }

    fn take_store(&mut self, node: ToyNode) -> MemoryStore {
        node.store.into_inner()
    }

    fn store<'a>(&self, node: &'a ToyNode) -> Option<&'a MemoryStore> {
        Some(node.store.inner())
    }

    fn protocol(&self) -> &str {
        "toy"
    }
}

/// What a toy node counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToyStats {
    /// Submissions refused (disk full).
    pub refused: u64,
    /// Store writes that failed.
    pub store_errors: u64,
    /// Messages that did not decode.
    pub decode_errors: u64,
}

struct Peer {
    remote: SocketAddr,
    priority: Option<u8>,
}

/// One toy node.
pub struct ToyNode {
    dbid: DatabaseId,
    store: FailingStore,
    cfg: ToyConfig,
    peers: Vec<PeerSpec>,
    groups: Vec<SocketAddr>,
    links: BTreeMap<LinkId, Peer>,
    connecting: BTreeSet<SocketAddr>,
    delivered: BTreeMap<DatabaseId, u64>,
    dirty: bool,
    flush_at: Option<Time>,
    full_at: Time,
    reconnect_at: Option<Time>,
    out: VecDeque<Output>,
    stats: ToyStats,
}

/// The toy's dbid for node `id`: stable across restarts.
pub fn dbid(id: NodeId) -> DatabaseId {
    // Fifteen characters of A-Z0-9: always a valid dbid.
    format!("TOY{:012}", id.0).parse().unwrap_or_else(|_| unreachable!("valid dbid"))
}

impl ToyNode {
    fn new(ctx: BuildContext<'_>, cfg: ToyConfig) -> Self {
        let store = FailingStore::new(ctx.store, ctx.disk);
        let delivered = store.cursor(APP).unwrap_or_default();
        let mut node = ToyNode {
            dbid: dbid(ctx.id),
            store,
            peers: ctx.spec.peers.clone(),
            groups: ctx.spec.groups.clone(),
            links: BTreeMap::new(),
            connecting: BTreeSet::new(),
            delivered,
            dirty: false,
            flush_at: None,
            full_at: ctx.now.plus_micros(cfg.full_sync_us),
            reconnect_at: Some(ctx.now),
            out: VecDeque::new(),
            stats: ToyStats::default(),
            cfg,
        };
        // Units held beyond the durable cursor go to the application again.
        let origins: Vec<DatabaseId> = node.store.version_vector().origins().copied().collect();
        for origin in origins {
            node.deliver_from(origin);
        }
        node
    }

    /// This node's dbid.
    pub fn dbid(&self) -> DatabaseId {
        self.dbid
    }

    /// What it counted.
    pub fn stats(&self) -> &ToyStats {
        &self.stats
    }

    fn submit(&mut self, now: Time, sub: Submission) {
        if let Some(key) = sub.physkey {
            if let Ok(Some((origin, seq))) = self.store.find_physkey(&key) {
                let receipt = Receipt { origin, seq, physkey: key, existing: true };
                self.out.push_back(Output::Accepted(receipt));
                return;
            }
        }
        let seq = self.store.next_seq(&self.dbid);
        let Some(physkey) =
            sub.physkey.or_else(|| Physkey::generate(now.as_millis(), &self.dbid, seq))
        else {
            self.stats.refused += 1;
            return;
        };
        let unit = TransferUnit {
            kind: sub.kind,
            physkey,
            origin: self.dbid,
            seq,
            created_ms: now.as_millis(),
            urgency: sub.urgency,
            scopes: sub.scopes,
            payload: sub.payload,
            sensitive: Vec::new(),
        };
        if self.store.insert_batch(std::slice::from_ref(&unit), &[]).is_err() {
            self.stats.refused += 1;
            return;
        }
        if self.cfg.bug == Some(ToyBug::AcceptBeforeDurable) {
            self.mark_dirty(now);
        } else if self.store.flush().is_err() {
            self.stats.refused += 1;
            return;
        }
        let receipt = Receipt { origin: self.dbid, seq, physkey, existing: false };
        self.out.push_back(Output::Accepted(receipt));
        let bytes = encode_unit(&unit);
        for &group in &self.groups {
            self.out.push_back(Output::Datagram {
                to: DatagramDest::Group(group),
                bytes: bytes.clone(),
            });
        }
        self.push(&bytes, None);
    }

    /// Sends a unit message on every link but `except`.
    fn push(&mut self, bytes: &[u8], except: Option<LinkId>) {
        for &link in self.links.keys() {
            if Some(link) != except {
                self.out.push_back(Output::Frame { link, bytes: bytes.to_vec() });
            }
        }
    }

    fn on_message(&mut self, now: Time, from: Option<LinkId>, bytes: &[u8]) {
        match bytes.split_first() {
            Some((&TAG_UNIT, body)) => match TransferUnit::decode(body, DEFAULT_PAYLOAD_LIMIT) {
                Ok(unit) => self.on_unit(now, from, unit, bytes),
                Err(_) => self.stats.decode_errors += 1,
            },
            Some((&TAG_VECTOR, body)) => match (VersionVector::decode(body), from) {
                (Ok(theirs), Some(link)) => self.answer(link, &theirs),
                _ => self.stats.decode_errors += 1,
            },
            Some((&TAG_MORE, _)) => {
                if let Some(link) = from {
                    self.send_vector(link);
                }
            }
            _ => self.stats.decode_errors += 1,
        }
    }

    fn on_unit(&mut self, now: Time, from: Option<LinkId>, unit: TransferUnit, bytes: &[u8]) {
        if let Some(ToyBug::DropEveryNth(n)) = self.cfg.bug {
            if unit.origin != self.dbid && unit.seq % n == 0 {
                return;
            }
        }
        if self.store.contains(&unit.origin, unit.seq) {
            return;
        }
        if self.store.insert_batch(std::slice::from_ref(&unit), &[]).is_err() {
            self.stats.store_errors += 1;
            return;
        }
        self.mark_dirty(now);
        self.push(bytes, from);
        if self.cfg.bug == Some(ToyBug::DeliverOnArrival) {
            if unit.origin != self.dbid {
                self.out.push_back(Output::Deliver(unit));
            }
        } else {
            self.deliver_from(unit.origin);
        }
    }

    /// Sends on `link` up to `batch` units that `theirs` lacks.
    fn answer(&mut self, link: LinkId, theirs: &VersionVector) {
        let mut budget = self.cfg.batch;
        let missing = self.store.version_vector().missing_from(theirs);
        'outer: for (origin, ranges) in missing {
            for range in ranges {
                if budget == 0 {
                    self.out.push_back(Output::Frame { link, bytes: vec![TAG_MORE] });
                    break 'outer;
                }
                let Ok(units) = self.store.range(&origin, *range.start(), budget) else { continue };
                for unit in units.into_iter().take_while(|u| u.seq <= *range.end()) {
                    budget -= 1;
                    self.out.push_back(Output::Frame { link, bytes: encode_unit(&unit) });
                }
            }
        }
    }

    /// Delivers held units of `origin` after the cursor, in order.
    fn deliver_from(&mut self, origin: DatabaseId) {
        if origin == self.dbid || self.cfg.bug == Some(ToyBug::DeliverOnArrival) {
            return;
        }
        let mut next = self.delivered.get(&origin).copied().unwrap_or(0) + 1;
        while let Ok(Some(unit)) = self.store.get(&origin, next) {
            if let Some(ToyBug::DeliverTwice(n)) = self.cfg.bug {
                if next % n == 0 {
                    self.out.push_back(Output::Deliver(unit.clone()));
                }
            }
            self.out.push_back(Output::Deliver(unit));
            self.delivered.insert(origin, next);
            next += 1;
        }
    }

    fn mark_dirty(&mut self, now: Time) {
        self.dirty = true;
        self.flush_at.get_or_insert(now.plus_micros(self.cfg.flush_us));
    }

    fn send_vector(&mut self, link: LinkId) {
        let mut bytes = vec![TAG_VECTOR];
        bytes.extend_from_slice(&self.store.version_vector().encode());
        self.out.push_back(Output::Frame { link, bytes });
    }

    /// Dials the peers it should have and has not; schedules a retry if any is missing.
    fn reconnect(&mut self, now: Time) {
        let linked: BTreeSet<SocketAddr> = self.links.values().map(|p| p.remote).collect();
        let mut missing = false;
        for fallback in [false, true] {
            if fallback {
                let best =
                    |a: &SocketAddr| self.peers.iter().any(|p| p.priority == 0 && p.addr == *a);
                if linked.iter().chain(&self.connecting).any(best) {
                    break;
                }
            }
            for i in 0..self.peers.len() {
                let peer = &self.peers[i];
                if (peer.priority > 0) != fallback || linked.contains(&peer.addr) {
                    continue;
                }
                missing = true;
                let addr = peer.addr;
                if self.connecting.insert(addr) {
                    self.out.push_back(Output::Connect { to: addr });
                }
            }
        }
        self.reconnect_at = missing.then(|| now.plus_micros(self.cfg.reconnect_us));
    }
}

impl Protocol for ToyNode {
    fn handle(&mut self, now: Time, input: Input<'_>) {
        match input {
            Input::Datagram { bytes, .. } => self.on_message(now, None, bytes),
            Input::Frame { link, bytes } => self.on_message(now, Some(link), bytes),
            Input::LinkUp { link, remote, outbound, .. } => {
                self.connecting.remove(&remote);
                let priority =
                    self.peers.iter().find(|p| outbound && p.addr == remote).map(|p| p.priority);
                self.links.insert(link, Peer { remote, priority });
                self.send_vector(link);
                if priority == Some(0) {
                    // The preferred peer is back: drop the fallbacks.
                    let fallbacks: Vec<LinkId> = self
                        .links
                        .iter()
                        .filter(|(_, p)| p.priority.is_some_and(|p| p > 0))
                        .map(|(l, _)| *l)
                        .collect();
                    for link in fallbacks {
                        self.links.remove(&link);
                        self.out.push_back(Output::Close { link });
                    }
                }
            }
            Input::LinkDown { link } if self.links.remove(&link).is_some() => {
                self.reconnect_at.get_or_insert(now.plus_micros(self.cfg.reconnect_us));
            }
            Input::ConnectFailed { to } => {
                self.connecting.remove(&to);
                // Try the fallbacks now if the preferred peer failed.
                self.reconnect(now);
            }
            Input::Submit(sub) => self.submit(now, sub),
            Input::Acknowledge { origin, seq } => {
                if self.store.set_cursor(APP, &origin, seq).is_ok() {
                    self.mark_dirty(now);
                } else {
                    self.stats.store_errors += 1;
                }
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush_at = None;
            if self.dirty {
                match self.store.flush() {
                    Ok(()) => self.dirty = false,
                    Err(_) => {
                        self.stats.store_errors += 1;
                        self.flush_at = Some(now.plus_micros(self.cfg.flush_us));
                    }
                }
            }
        }
        if self.full_at <= now {
            self.full_at = now.plus_micros(self.cfg.full_sync_us);
            let all: Vec<LinkId> = self.links.keys().copied().collect();
            for link in all {
                self.send_vector(link);
            }
        }
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.reconnect(now);
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        let full = (!self.links.is_empty()).then_some(self.full_at);
        [self.flush_at, full, self.reconnect_at].into_iter().flatten().min()
    }
}

fn encode_unit(unit: &TransferUnit) -> Vec<u8> {
    let mut bytes = vec![TAG_UNIT];
    bytes.extend_from_slice(&unit.encode());
    bytes
}
