//! The node: one sans-IO state machine that moves transfer units to every node that needs them.
//!
//! - Discovery: IDQY on the discovery group at start and on an interval, IDRP unicast to the
//!   asker; members of another RmSystem or environment, and forgeries, are refused by the
//!   opener and counted.
//! - Links: on the LAN the peer with the smaller dbid connects (either side after repeated
//!   failures); configured peers are connected by the side that configured them. Both sides
//!   send `Hello`; a second link to the same peer is closed, keeping the one opened by the
//!   smaller dbid.
//! - Configured peers (direct IP links beyond the LAN) are tried in priority order (seed 001):
//!   a peer of priority p is tried only while every configured peer of better priority has
//!   failed, and its link is closed again once a better one is back.
//! - Eager push: a new unit (submitted here, or new to this node) is multicast once on the
//!   environment group when LAN peers exist and it fits a datagram, and sent on the links of
//!   the peers beyond the LAN (except the one it came from, and any that already report it).
//!   This forwarding of what is new is what carries units over several hops.
//! - Anti-entropy (see [`crate::proto::sync`]): each round, every up link gets a `Have` listing
//!   the origins whose held seqs changed since the last one (the first is full), so each node
//!   keeps an exact model of each peer's vector. A node that sees a peer hold what it lacks asks
//!   that one peer (`Want`, bounded, urgent first); the answer ends with `end`, and the next
//!   batch is asked for then, so catching up streams from the store with one batch in flight.
//!   Idle links carry only a keepalive `Have` every few rounds; a silent link turns the peer
//!   suspect, then down.
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
use crate::ledger::{Ledger, Logged, Receipt, Submission, SyncState};
use crate::proto::io::{
    DatagramDest, Input, LinkId, LinkKind, Output, Protocol, ReceivedDatagram, RelayOutput, Time,
};
use crate::proto::message::{decode_units, Announce, HaveEntry, Message};
use crate::proto::pads::PadBook;
use crate::proto::peers::{backoff_ms, DownReason, Peer, PeerState, Role};
use crate::proto::punch::{self, PunchAction, PunchStatus, Punches};
use crate::proto::relaypath::{PathEvent, RelayPath, RelayPathConfig};
use crate::proto::status::{LinkStatus, NodeStatus, PeerStatus, Queues};
use crate::proto::sync::{plan_want, ChangeLog, LinkSync, Outstanding};
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
    /// IDQY interval right after start or a change (a new peer, a peer lost); it doubles while
    /// nothing changes, up to `discovery_max_interval_ms`.
    pub discovery_interval_ms: u64,
    /// Longest IDQY interval once the LAN is quiet.
    pub discovery_max_interval_ms: u64,
    /// Anti-entropy interval: how often changes are reported to each peer.
    pub anti_entropy_interval_ms: u64,
    /// An idle link gets a keepalive this often; silence of three of these makes the peer
    /// suspect, six closes the link.
    pub keepalive_ms: u64,
    /// A `Want` unanswered this long is given up and asked again (maybe of another peer).
    pub want_timeout_ms: u64,
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
    /// The relay path (off while no relay is configured).
    pub relay_path: RelayPathConfig,
    /// Try UDP hole punching with peers reached over a relay ([`crate::proto::punch`]).
    pub hole_punch: bool,
    /// Length of the one-time pads made for peers beyond the LAN (0: none are made; pads
    /// from peers are still taken and used).
    pub pad_bytes: u64,
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
            discovery_max_interval_ms: 60_000,
            anti_entropy_interval_ms: 2_000,
            keepalive_ms: 10_000,
            want_timeout_ms: 30_000,
            offline_ping_ms: 300_000,
            connect_timeout_ms: 5_000,
            batch_units: 512,
            batch_bytes: 256 << 10,
            multicast_bytes: 8 << 10,
            app: "app".into(),
            rng_seed: 0,
            relay_path: RelayPathConfig::default(),
            hole_punch: true,
            pad_bytes: crate::proto::pads::DEFAULT_PAD_BYTES,
        }
    }
}

/// Counters a support engineer asks about; shown by status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeStats {
    /// Datagrams and frames refused, by reason.
    pub rejects: RejectCounters,
    /// Discovery packets from nodes of another RmSystem or environment (counted, never peered).
    pub foreign_nodes_heard: u64,
    /// Hole-punching rounds started (`CallMeMaybe` sent).
    pub punch_rounds: u64,
    /// `CallMeMaybe`s ignored: not on the sender's current relay link, or punching is off.
    pub punch_calls_ignored: u64,
    /// Units received (pushed or asked for).
    pub units_received: u64,
    /// Of those, new to this node.
    pub units_new: u64,
    /// Units refused as invalid (over the payload limit, bad encoding).
    pub units_invalid: u64,
    /// Batches the store could not take (disk full, IO error); asked for again later.
    pub store_errors: u64,
    /// Store checkpoints that failed (nothing is lost: the next start replays more of the
    /// logs); a growing number means the store's disk has a problem.
    pub checkpoint_failures: u64,
    /// Submissions the store could not take (the application was not given a receipt).
    pub submits_refused: u64,
    /// Links refused in their handshake (the other end did not prove membership, or sent
    /// junk), and links whose first frame did not open.
    pub links_refused: u64,
    /// Links closed because nothing was heard on them.
    pub links_silent: u64,
    /// `Want` requests sent, and answered for peers.
    pub wants_sent: u64,
    /// `Want` requests this node answered.
    pub wants_served: u64,
    /// `Want` requests given up after the timeout.
    pub wants_expired: u64,
    /// Times a peer's model disagreed with its total (or a `Have` was invalid) and a full
    /// `Have` was asked for.
    pub resyncs: u64,
    /// Bytes of the datagrams emitted (discovery and multicast units; each sent once per
    /// discovery interface, counted once), sealed, without UDP/IP headers.
    pub datagram_bytes_sent: u64,
    /// Bytes of the link frames emitted, sealed, without the link's own framing (length prefix,
    /// QUIC/TCP/IP headers).
    pub frame_bytes_sent: u64,
    /// One-time pads.
    pub pads: padding::PadStats,
}

/// Where a batch of units came from, for forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Local,
    Multicast,
    Link(LinkId),
}

#[derive(Debug, Clone)]
pub(crate) struct LinkInfo {
    remote: SocketAddr,
    peer: Option<DatabaseId>,
    outbound: bool,
    kind: LinkKind,
    /// Smoothed round-trip time from `Ping`/`Pong` (RFC 6298 weights), once measured.
    srtt_us: Option<u64>,
    /// When the last `Ping` went out.
    last_ping: Time,
    /// When it came up.
    since: Time,
    sync: LinkSync,
    /// Units the peer told us it will not send on this link ([`Message::Withheld`]): left out
    /// of our `Want`s here until `withheld_at` is old.
    withheld: VersionVector,
    withheld_at: Time,
    /// Units we withheld from the peer on this link (status).
    withheld_by_us: VersionVector,
    /// The peer's `Pads` arrived on this link: it is a build that knows sensitive parts, and
    /// (on a relay link) our pad cursors are past every offset it has opened.
    pads_heard: bool,
    /// New units that came in `PaddedUnits` since the last answer's end (streaming).
    padded_fresh: usize,
}

/// Most bytes of units (about 80 bytes of framing counted per unit) in one answer to a `Want`
/// on a relay link: half a session's unacknowledged bytes, and never more than three quarters
/// of what the session has room for ([`RelayPath::send_room`]; a send past its bounds would
/// close it). One answer per round trip through the relay and the mixing delays: a quarter
/// gave 20-36 % of a direct link's throughput from run to run.
const RELAY_ANSWER_BYTES: usize = crate::proto::relaypath::session::MAX_UNACKED_BYTES / 2;

/// Least time between two `Have`s for units an eager push skipped on a relay link.
const PUSH_HAVE_MS: u64 = 200;

/// A configured peer and its attempt state (kept for the node's life: seed 001 failover needs
/// to know which configured peers are failing).
#[derive(Debug, Clone)]
struct Slot {
    peer: ConfiguredPeer,
    failures: u32,
    next_attempt: Time,
    /// Learned from its hello.
    dbid: Option<DatabaseId>,
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
    /// Configured peers, best priority first.
    slots: Vec<Slot>,
    /// The next attempt of a configured peer that waits for its backoff (set by
    /// `connect_due`, which every change of slot state leads to).
    slot_timer: Option<Time>,
    /// The LAN peers to keep links with (see `lan_links_wanted`), as of the last
    /// `connect_due`.
    lan_wanted: BTreeSet<DatabaseId>,
    links: BTreeMap<LinkId, LinkInfo>,
    /// Link attempts under way: address -> deadline.
    connecting: BTreeMap<SocketAddr, Time>,
    out: VecDeque<Output>,
    now: Time,
    started: bool,
    /// When the core first saw time (for uptime).
    started_at: Time,
    next_discovery: Time,
    /// The current IDQY interval (see [`NodeConfig::discovery_interval_ms`]).
    discovery_every_ms: u64,
    next_anti_entropy: Time,
    delivered: BTreeMap<DatabaseId, u64>,
    /// Which origins changed, for `Have` deltas.
    changes: ChangeLog,
    /// Per origin, the seqs `1..=n` some main server holds as far as this node knows.
    safe: BTreeMap<DatabaseId, u64>,
    /// Ask peers for what they hold and we lack at the next round.
    replan: bool,
    stats: NodeStats,
    /// Relay sessions: links to peers through relay mailboxes.
    relay: RelayPath,
    /// Hole punching with the peers reached over a relay.
    punches: Punches,
    /// One-time pads, both directions.
    pads: PadBook,
    /// Relay links an eager push skipped (their session was near its bounds): a `Have` tells
    /// the peer at `push_have_at` (at most every [`PUSH_HAVE_MS`]), so it pulls what was not
    /// pushed at once rather than at the next anti-entropy round.
    push_skipped: BTreeSet<LinkId>,
    push_have_at: Option<Time>,
    push_have_last: Time,
    /// The link each offered pad was last sent on (sent once per link).
    pad_offered_on: BTreeMap<crate::proto::message::PadId, LinkId>,
    /// Peers a pad was asked of the driver for, and when (one request at a time; asked again
    /// after a minute if the material never came).
    pad_requested: BTreeMap<DatabaseId, Time>,
    /// Submits not answered yet, oldest first: group commits whose log sync runs on the
    /// ledger's sync thread, whose receipts and units leave only once durable
    /// ([`Node::pipeline_log_syncs`]), and refusals behind them (answers keep submission order).
    submits_syncing: VecDeque<Unanswered>,
}

/// Submits waiting for their answers.
enum Unanswered {
    /// A group commit waiting for its log sync.
    Syncing {
        /// One per submission.
        receipts: Vec<Receipt>,
        logged: Logged,
    },
    /// Submits refused at once, behind a group commit still syncing.
    Refused { count: usize, reason: String },
}

mod padding;

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
        let relay = RelayPath::new(
            cfg.relay_path.clone(),
            ledger.own_dbid(),
            cfg.role,
            cfg.instance,
            cfg.keys.clone(),
            cfg.rmsystem,
            &cfg.env,
        );
        let mut slots: Vec<Slot> = cfg
            .configured
            .iter()
            .map(|peer| Slot { peer: peer.clone(), failures: 0, next_attempt: Time(0), dbid: None })
            .collect();
        slots.sort_by_key(|s| s.peer.priority);
        let (pads, pad_problem) = PadBook::load(ledger.own_dbid(), &ledger);
        let mut stats = NodeStats::default();
        if let Some(problem) = pad_problem {
            tracing::warn!(%problem, "one-time pads");
            stats.pads.errors += 1;
        }
        let mut node = Node {
            rng: StdRng::seed_from_u64(cfg.rng_seed),
            cfg,
            ledger,
            lan_seal,
            lan_open,
            link_seal,
            link_open,
            peers: BTreeMap::new(),
            slots,
            slot_timer: None,
            lan_wanted: BTreeSet::new(),
            links: BTreeMap::new(),
            connecting: BTreeMap::new(),
            out: VecDeque::new(),
            now: Time(0),
            started: false,
            started_at: Time(0),
            next_discovery: Time(0),
            discovery_every_ms: 0,
            next_anti_entropy: Time(0),
            delivered,
            changes: ChangeLog::default(),
            safe: BTreeMap::new(),
            replan: false,
            stats,
            punches: Punches::default(),
            relay,
            pads,
            pad_requested: BTreeMap::new(),
            pad_offered_on: BTreeMap::new(),
            push_skipped: BTreeSet::new(),
            push_have_at: None,
            push_have_last: Time(0),
            submits_syncing: VecDeque::new(),
        };
        if node.cfg.role == Role::MainServer {
            let origins: Vec<DatabaseId> =
                node.ledger.store().version_vector().origins().copied().collect();
            node.raise_own_safe(origins);
        }
        node
    }

    /// This node's dbid.
    pub fn dbid(&self) -> DatabaseId {
        self.ledger.own_dbid()
    }

    /// The ledger (store reads).
    pub fn ledger(&self) -> &Ledger<S> {
        &self.ledger
    }

    /// Runs the fdatasyncs of local submits on the ledger's own thread (`notify` is called from
    /// it when one ends; the driver then feeds [`Input::LogsSynced`]): the node seals and writes
    /// the next group commit while the last one's sync runs, instead of waiting for it. Nothing
    /// of a batch (receipts, multicast, links) leaves before it is durable. A node with no daily
    /// logs (the simulator's) is unchanged.
    pub fn pipeline_log_syncs(&mut self, notify: Box<dyn Fn() + Send>) -> std::io::Result<()> {
        self.ledger.pipeline_syncs(notify)
    }

    /// Group commits written and waiting for their log sync (the driver takes no more submits
    /// while two wait).
    pub fn submits_syncing(&self) -> usize {
        self.submits_syncing.len()
    }

    /// The ledger, to change (tests).
    #[cfg(test)]
    pub(crate) fn ledger_mut(&mut self) -> &mut Ledger<S> {
        &mut self.ledger
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
        held.saturating_sub(self.safe.get(&own).copied().unwrap_or(0))
    }

    /// What main servers hold as far as this node knows: per origin, the contiguous prefix held
    /// by some main server (this node, a main-server peer, or what peers report).
    pub fn safe_map(&self) -> &BTreeMap<DatabaseId, u64> {
        &self.safe
    }

    /// Per peer: how many units it holds that we lack, and we hold that it lacks, from its last
    /// `Have` (status shows these).
    pub fn peer_backlog(&self, peer: &DatabaseId) -> Option<(u64, u64)> {
        let p = self.peers.get(peer)?;
        let ours = self.ledger.store().version_vector();
        let count = |m: BTreeMap<DatabaseId, Vec<std::ops::RangeInclusive<u64>>>| -> u64 {
            m.values().flatten().map(|r| r.end() - r.start() + 1).sum()
        };
        Some((count(p.vector.missing_from(ours)), count(ours.missing_from(&p.vector))))
    }

    /// A snapshot for `--status` (see [`NodeStatus`]).
    pub fn status(&self) -> NodeStatus {
        let now = self.now;
        let peers = self
            .peers
            .values()
            .map(|p| {
                let (we_lack, it_lacks) = self.peer_backlog(&p.dbid).unwrap_or_default();
                let link = p.link.filter(|_| p.linked()).and_then(|l| self.links.get(&l));
                let asking = link.is_some_and(|l| l.sync.want.is_some());
                let link_kind = match link {
                    Some(l) => LinkStatus::from(l.kind),
                    None if p.lan && p.state != PeerState::Down => LinkStatus::MulticastOnly,
                    None => LinkStatus::None,
                };
                let rtt_ms = link.and_then(|l| l.srtt_us).map(|us| us as f64 / 1000.0);
                let configured_priority = self
                    .slots
                    .iter()
                    .find(|s| s.dbid == Some(p.dbid) || p.addrs.contains(&s.peer.addr))
                    .map(|s| s.peer.priority);
                PeerStatus {
                    dbid: p.dbid.to_string(),
                    role: p.role,
                    addrs: p.addrs.iter().map(ToString::to_string).collect(),
                    lan: p.lan,
                    configured_priority,
                    state: p.state,
                    link: link_kind,
                    rtt_ms,
                    reason: (!p.linked()).then_some(p.reason),
                    last_seen_ms_ago: now.0.saturating_sub(p.last_seen.0) / 1000,
                    we_lack,
                    it_lacks,
                    failures: p.failures,
                    asking,
                    relay_session: p
                        .link
                        .filter(|l| p.linked() && l.is_relay())
                        .and_then(|l| self.relay.session_status(l)),
                    punch: self.punch_status(p),
                    pads: self.pads_status(&p.dbid, link),
                }
            })
            .collect();
        NodeStatus {
            dbid: self.dbid().to_string(),
            instance_id: self.cfg.instance.to_string(),
            role: self.cfg.role,
            listen: self.cfg.advertise.iter().map(ToString::to_string).collect(),
            discovery_group: self.cfg.discovery_group.to_string(),
            env_group: self.cfg.env_group.to_string(),
            uptime_secs: now.as_secs().saturating_sub(self.started_at.as_secs()),
            units_total: self.ledger.store().units_total(),
            disk: self.ledger.disk_syncs(),
            unsafe_backlog: self.unsafe_backlog(),
            peers,
            queues: Queues {
                outputs: self.out.len(),
                links: self.links.len(),
                connecting: self.connecting.len(),
                wants_in_flight: self.links.values().filter(|l| l.sync.want.is_some()).count(),
                submits_syncing: self.submits_syncing.len(),
            },
            counters: NodeStats {
                checkpoint_failures: self.stats.checkpoint_failures
                    + self.ledger.checkpoint_failures(),
                ..self.stats.clone()
            },
            relays: self.relay.relay_status(now),
            relay_path: self.relay.stats(),
            relay_warning: (self.cfg.relay_path.relays == 1)
                .then(|| "one relay configured: one observer sees every payload".to_string()),
        }
    }

    fn raise_safe(&mut self, origin: DatabaseId, n: u64) {
        let slot = self.safe.entry(origin).or_insert(0);
        if n > *slot {
            *slot = n;
            self.changes.touch(origin);
        }
    }

    /// A main server's own holdings are safe by definition.
    fn raise_own_safe(&mut self, origins: impl IntoIterator<Item = DatabaseId>) {
        for origin in origins {
            let n = self.ledger.store().version_vector().get(&origin).map_or(0, |r| r.contiguous());
            self.raise_safe(origin, n);
        }
    }

    fn start(&mut self, now: Time) {
        self.started = true;
        self.started_at = now;
        self.discovery_every_ms = self.cfg.discovery_interval_ms;
        let jitter = self.rng.gen_range(0..=self.cfg.discovery_interval_ms / 10 + 1);
        self.next_discovery = now.plus_millis(jitter);
        let jitter = self.rng.gen_range(0..=self.cfg.anti_entropy_interval_ms / 2);
        self.next_anti_entropy = now.plus_millis(self.cfg.anti_entropy_interval_ms + jitter);
        for slot in &mut self.slots {
            slot.next_attempt = now;
        }
        let origins: Vec<DatabaseId> =
            self.ledger.store().version_vector().origins().copied().collect();
        self.deliver_ready(origins, Vec::new());
        self.connect_due();
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
            self.stats.datagram_bytes_sent += bytes.len() as u64;
            self.out.push_back(Output::Datagram { to, bytes });
        }
    }

    fn on_announce(&mut self, from: SocketAddr, a: Announce) {
        if a.dbid == self.dbid() {
            return;
        }
        let now = self.now;
        let addrs = if a.addrs.is_empty() { vec![from] } else { a.addrs.clone() };
        let known = self.peers.contains_key(&a.dbid);
        let peer = self
            .peers
            .entry(a.dbid)
            .or_insert_with(|| Peer::new(a.dbid, a.role, addrs.clone(), true, now));
        if peer.addrs != addrs || (peer.state == PeerState::Down && peer.lan) {
            // A changed address (DHCP, a moved machine), or a lost peer heard again (a healed
            // partition, a restart): try it now rather than at the offline-ping interval.
            peer.failures = 0;
            peer.next_attempt = now;
        }
        peer.addrs = addrs;
        peer.role = a.role;
        peer.lan = true;
        peer.last_seen = now;
        // A linked peer knows us already; anyone else gets an answer.
        let answer = !a.reply && !peer.linked();
        if !known {
            self.discovery_changed();
        }
        if answer {
            self.send_announce(DatagramDest::Unicast(from), true);
        }
        self.connect_due();
    }

    /// Something changed on the LAN: query at the base interval again.
    fn discovery_changed(&mut self) {
        if self.started && self.discovery_every_ms > self.cfg.discovery_interval_ms {
            self.discovery_every_ms = self.cfg.discovery_interval_ms;
            let next = self.now.plus_millis(self.discovery_every_ms);
            self.next_discovery = self.next_discovery.min(next);
        }
    }

    // ----- links -----

    /// Whether configured slot `i` is reached: its peer (by dbid or address) has a link up.
    fn slot_up(&self, i: usize) -> bool {
        let slot = &self.slots[i];
        let by_dbid = slot.dbid.and_then(|d| self.peers.get(&d)).is_some_and(Peer::linked);
        by_dbid || self.peers.values().any(|p| p.linked() && p.addrs.contains(&slot.peer.addr))
    }

    /// Whether slot `i` should be linked now (seed 001: in order of priority): every slot of
    /// better priority is failing.
    fn slot_wanted(&self, i: usize) -> bool {
        let priority = self.slots[i].peer.priority;
        (0..self.slots.len())
            .filter(|&j| self.slots[j].peer.priority < priority)
            .all(|j| !self.slot_up(j) && self.slots[j].failures > 0)
    }

    /// The LAN peers this node keeps a link with. Multicast carries the units on a LAN; links
    /// carry anti-entropy and repair, and a full mesh would cost n(n-1)/2 links and as many
    /// `Have` streams per store. So a lane links to the LAN's servers (any role but lane) and
    /// to its two neighbours on a ring of the live LAN members ordered by dbid, which keeps the
    /// LAN connected when any one node is gone; a server links to everyone. The relation is
    /// symmetric, so both ends agree on it.
    fn lan_links_wanted(&self) -> BTreeSet<DatabaseId> {
        let own = self.dbid();
        // Live: heard (announce or frame) within three of the longest discovery intervals.
        let horizon = self.cfg.discovery_max_interval_ms.saturating_mul(3);
        let now = self.now;
        let alive = |p: &&Peer| p.lan && now.0.saturating_sub(p.last_seen.0) / 1000 <= horizon;
        if self.cfg.role != Role::Lane {
            return self.peers.values().filter(alive).map(|p| p.dbid).collect();
        }
        let mut wanted: BTreeSet<DatabaseId> = self
            .peers
            .values()
            .filter(alive)
            .filter(|p| p.role != Role::Lane)
            .map(|p| p.dbid)
            .collect();
        let ring: Vec<DatabaseId> = self
            .peers
            .values()
            .filter(alive)
            .filter(|p| p.role == Role::Lane)
            .map(|p| p.dbid)
            .chain(std::iter::once(own))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Some(i) = ring.iter().position(|d| *d == own) {
            let n = ring.len();
            if n > 1 {
                wanted.insert(ring[(i + 1) % n]);
                wanted.insert(ring[(i + n - 1) % n]);
            }
        }
        wanted.remove(&own);
        wanted
    }

    fn connect_due(&mut self) {
        let now = self.now;
        let own = self.dbid();
        self.lan_wanted = self.lan_links_wanted();
        let mut targets = Vec::new();
        for peer in self.peers.values_mut() {
            if peer.wants_link(own)
                && self.lan_wanted.contains(&peer.dbid)
                && peer.next_attempt <= now
            {
                let i = usize::try_from(peer.failures).unwrap_or(0) % peer.addrs.len();
                peer.state = PeerState::Connecting;
                targets.push(peer.addrs[i]);
            }
        }
        self.slot_timer = None;
        for i in 0..self.slots.len() {
            let addr = self.slots[i].peer.addr;
            if !self.connecting.contains_key(&addr) && !self.slot_up(i) && self.slot_wanted(i) {
                if self.slots[i].next_attempt <= now {
                    targets.push(addr);
                } else {
                    let at = self.slots[i].next_attempt;
                    self.slot_timer = Some(self.slot_timer.map_or(at, |t| t.min(at)));
                }
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

    /// Closes links to fallback peers once a configured peer of better priority is up again.
    fn fail_back(&mut self) {
        let mut close = Vec::new();
        for i in 0..self.slots.len() {
            if self.slot_up(i) && !self.slot_wanted(i) {
                let Some(peer) = self.slots[i].dbid.and_then(|d| self.peers.get(&d)) else {
                    continue;
                };
                let ours = peer.link.and_then(|l| self.links.get(&l)).is_some_and(|l| l.outbound);
                if !peer.lan && ours {
                    close.push(peer.dbid);
                }
            }
        }
        for dbid in close {
            self.close_peer(dbid, DownReason::Fallback);
        }
    }

    /// Closes LAN links this node opened that the ring no longer wants (they were opened while
    /// discovery was still filling the peer table, or a node joined between two neighbours).
    /// Links younger than two discovery intervals are kept, so a table still filling does not
    /// make links flap. Not a failure: the peer is simply idle.
    fn prune_lan_links(&mut self) {
        let settle = self.cfg.discovery_interval_ms.saturating_mul(2).saturating_mul(1000);
        let now = self.now;
        let surplus: Vec<(DatabaseId, LinkId)> = self
            .peers
            .values()
            .filter(|p| p.lan && p.linked() && !self.lan_wanted.contains(&p.dbid))
            .filter_map(|p| p.link.map(|l| (p.dbid, l)))
            .filter(|(_, l)| {
                self.links
                    .get(l)
                    .is_some_and(|i| i.outbound && now.0.saturating_sub(i.since.0) >= settle)
            })
            .filter(|(d, _)| !self.slots.iter().any(|s| s.dbid == Some(*d)))
            .collect();
        for (dbid, link) in surplus {
            self.links.remove(&link);
            self.close_link(link);
            if let Some(p) = self.peers.get_mut(&dbid) {
                p.state = PeerState::Discovered;
                p.reason = DownReason::NotNeeded;
                p.link = None;
            }
        }
    }

    fn close_peer(&mut self, dbid: DatabaseId, reason: DownReason) {
        let (now, ping) = (self.now, self.cfg.offline_ping_ms);
        let Some(peer) = self.peers.get_mut(&dbid) else { return };
        let link = peer.link;
        peer.down(reason, now, ping);
        if let Some(link) = link {
            self.links.remove(&link);
            self.close_link(link);
        }
    }

    fn slot_failed(&mut self, addr: SocketAddr) {
        let (now, ping) = (self.now, self.cfg.offline_ping_ms);
        for slot in self.slots.iter_mut().filter(|s| s.peer.addr == addr) {
            slot.failures = slot.failures.saturating_add(1);
            slot.next_attempt = now.plus_millis(backoff_ms(slot.failures, ping));
        }
    }

    fn connect_failed(&mut self, to: SocketAddr, reason: DownReason) {
        self.connecting.remove(&to);
        self.slot_failed(to);
        let (now, ping) = (self.now, self.cfg.offline_ping_ms);
        for peer in self.peers.values_mut() {
            if peer.state == PeerState::Connecting && peer.addrs.contains(&to) {
                peer.down(reason, now, ping);
            }
        }
        self.connect_due();
    }

    fn on_link_up(&mut self, link: LinkId, remote: SocketAddr, outbound: bool, kind: LinkKind) {
        if kind != LinkKind::Relay {
            self.connecting.remove(&remote);
        }
        if outbound && kind != LinkKind::Relay {
            // Until the hello arrives a configured address counts as attempted, so a link
            // that closes without one is retried with backoff, never in a loop.
            self.slot_failed(remote);
        }
        let sync = LinkSync::new(self.now);
        let since = self.now;
        self.links.insert(
            link,
            LinkInfo {
                remote,
                peer: None,
                outbound,
                kind,
                srtt_us: None,
                last_ping: since,
                since,
                sync,
                withheld: VersionVector::new(),
                withheld_at: since,
                withheld_by_us: VersionVector::new(),
                pads_heard: false,
                padded_fresh: 0,
            },
        );
        let hello =
            Message::Hello { dbid: self.dbid(), instance: self.cfg.instance, role: self.cfg.role };
        self.send_frame(link, Tag::Tubs, &hello);
    }

    fn on_link_down(&mut self, link: LinkId) {
        let Some(info) = self.links.remove(&link) else { return };
        if let Some(peer) = info.peer.filter(|_| info.kind != LinkKind::Relay) {
            self.pads.drop_incoming(&peer);
        }
        let (now, ping) = (self.now, self.cfg.offline_ping_ms);
        if let Some(peer) = info.peer.and_then(|d| self.peers.get_mut(&d)) {
            if peer.link == Some(link) {
                peer.down(DownReason::LinkClosed, now, ping);
                let dbid = peer.dbid;
                self.discovery_changed();
                // A relay session ending says nothing about dialling the peer directly.
                let dialled = info.kind != LinkKind::Relay;
                for slot in self.slots.iter_mut().filter(|s| dialled && s.dbid == Some(dbid)) {
                    slot.failures = slot.failures.saturating_add(1);
                    slot.next_attempt = now.plus_millis(backoff_ms(slot.failures, ping));
                }
            }
        }
        if info.sync.want.is_some() {
            // What was asked of that peer may be asked of another now.
            self.plan_all();
        }
        self.connect_due();
    }

    fn on_hello(&mut self, link: LinkId, dbid: DatabaseId, role: Role) {
        let own = self.dbid();
        let now = self.now;
        let Some(info) = self.links.get_mut(&link) else { return };
        if dbid == own {
            // A link to ourselves (our own address was configured or announced): close it and
            // never try that address again.
            let remote = info.remote;
            self.close_link(link);
            self.links.remove(&link);
            self.slots.retain(|s| s.peer.addr != remote);
            return;
        }
        info.peer = Some(dbid);
        let (remote, outbound, kind) = (info.remote, info.outbound, info.kind);
        if outbound && kind != LinkKind::Relay {
            for slot in self.slots.iter_mut().filter(|s| s.peer.addr == remote) {
                slot.dbid = Some(dbid);
                slot.failures = 0;
            }
        }
        // A peer first met on a link is beyond the LAN until its announcement is heard on the
        // multicast group (which is what makes it a LAN peer).
        // A relay link has no address of the peer.
        let direct = outbound && kind != LinkKind::Relay;
        let addrs = if direct { vec![remote] } else { Vec::new() };
        let peer =
            self.peers.entry(dbid).or_insert_with(|| Peer::new(dbid, role, addrs, false, now));
        if direct && !peer.addrs.contains(&remote) {
            peer.addrs.push(remote);
        }
        peer.role = role;
        peer.last_seen = now;
        if let Some(old) = peer.link.filter(|old| *old != link && peer.linked()) {
            // Two links to one peer: keep the better kind (QUIC over a TCP fallback), else the
            // one opened by the smaller dbid. Both ends see the same kinds and initiators, so
            // they keep the same link.
            let initiator = |outbound: bool| if outbound { own } else { dbid };
            let (old_outbound, old_kind) =
                self.links.get(&old).map_or((false, kind), |l| (l.outbound, l.kind));
            let keep_new = if kind != old_kind {
                kind > old_kind
            } else {
                initiator(outbound) == own.min(dbid)
                    && (initiator(old_outbound) != own.min(dbid) || outbound == old_outbound)
            };
            let drop = if keep_new { old } else { link };
            self.links.remove(&drop);
            if drop.is_relay() {
                self.relay.close(now, &mut self.rng, drop);
            } else {
                self.out.push_back(Output::Close { link: drop });
            }
            if !keep_new {
                return;
            }
        }
        peer.link = Some(link);
        peer.state = PeerState::Up;
        peer.failures = 0;
        self.send_pads(link, dbid);
        self.send_have(link, false);
        self.send_ping(link);
        self.fail_back();
        if kind == LinkKind::Relay {
            if self.cfg.hole_punch && self.punch_candidates().is_ok() {
                let mut actions = Vec::new();
                self.punches.start(now, dbid, &mut actions);
                self.punch_actions(actions);
            }
        } else {
            self.punches.direct_link_up(dbid);
        }
    }

    // ----- NAT traversal -----

    /// Our punching candidates: what the relays that are up observe.
    fn punch_candidates(&self) -> Result<Vec<SocketAddr>, String> {
        punch::candidates(&self.relay.observed())
    }

    fn punch_actions(&mut self, actions: Vec<PunchAction>) {
        for action in actions {
            match action {
                PunchAction::CallMeMaybe { peer, round } => {
                    let Ok(addrs) = self.punch_candidates() else { continue };
                    let link = self.peers.get(&peer).filter(|p| p.linked()).and_then(|p| p.link);
                    if let Some(link) = link.filter(|l| l.is_relay()) {
                        self.stats.punch_rounds += 1;
                        self.send_frame(link, Tag::Tubs, &Message::CallMeMaybe { round, addrs });
                    }
                }
                PunchAction::Punch { to } => self.out.push_back(Output::Punch { to }),
                PunchAction::Connect { to } => self.out.push_back(Output::ConnectPunched { to }),
            }
        }
    }

    /// A `CallMeMaybe` from `dbid` on `link`: heeded only on its current relay link.
    fn on_call_me_maybe(
        &mut self,
        link: LinkId,
        dbid: DatabaseId,
        round: u32,
        addrs: &[SocketAddr],
    ) {
        let current = self.peers.get(&dbid).is_some_and(|p| p.link == Some(link) && p.linked());
        if !self.cfg.hole_punch || !link.is_relay() || !current {
            self.stats.punch_calls_ignored += 1;
            return;
        }
        let mut actions = Vec::new();
        self.punches.on_call_me_maybe(self.now, self.dbid(), dbid, round, addrs, &mut actions);
        self.punch_actions(actions);
    }

    /// Next punching rounds and retries.
    fn punch_timeout(&mut self) {
        if !self.cfg.hole_punch {
            return;
        }
        let mut actions = Vec::new();
        let (peers, links) = (&self.peers, &self.links);
        let relayed = |d: &DatabaseId| {
            peers.get(d).is_some_and(|p| {
                p.linked()
                    && p.link.and_then(|l| links.get(&l)).is_some_and(|l| l.kind == LinkKind::Relay)
            })
        };
        // Rounds advance whether or not we have candidates now (a `CallMeMaybe` is only sent
        // with some), so no deadline stays in the past.
        self.punches.tick(self.now, relayed, &mut actions);
        self.punch_actions(actions);
    }

    /// The punching status of `p` while a relay carries its traffic, or after punching gave a
    /// direct link.
    fn punch_status(&self, p: &Peer) -> Option<PunchStatus> {
        let kind = p.link.filter(|_| p.linked()).and_then(|l| self.links.get(&l)).map(|l| l.kind);
        match kind {
            Some(LinkKind::Relay) => {
                if !self.cfg.hole_punch {
                    return Some(PunchStatus::unavailable(
                        "off",
                        "hole_punch = false under [relay_path], or quic = false under [links]",
                    ));
                }
                if let Err(reason) = self.punch_candidates() {
                    return Some(PunchStatus::unavailable("unavailable", &reason));
                }
                self.punches.status(self.now, &p.dbid)
            }
            Some(_) if self.punches.punched(&p.dbid) => self.punches.status(self.now, &p.dbid),
            _ => None,
        }
    }

    /// Closes a link: a driver's link by [`Output::Close`], a relay link by ending its session.
    fn close_link(&mut self, link: LinkId) {
        if link.is_relay() {
            self.relay.close(self.now, &mut self.rng, link);
        } else {
            self.out.push_back(Output::Close { link });
        }
    }

    /// Measures the link's round trip (the answer is a [`Message::Pong`]).
    fn send_ping(&mut self, link: LinkId) {
        let sent = self.now.0;
        if let Some(info) = self.links.get_mut(&link) {
            info.last_ping = self.now;
        }
        self.send_frame(link, Tag::Tubs, &Message::Ping { sent });
    }

    fn on_pong(&mut self, link: LinkId, sent: u64) {
        let now = self.now.0;
        let Some(info) = self.links.get_mut(&link) else { return };
        if sent > now || sent < info.since.0 {
            return; // not a ping of this link
        }
        let sample = now - sent;
        info.srtt_us = Some(match info.srtt_us {
            Some(srtt) => (srtt * 7 + sample) / 8,
            None => sample,
        });
    }

    fn send_frame(&mut self, link: LinkId, tag: Tag, message: &Message) {
        // Control paces transfers (one `Want` in flight): urgent on a relay link.
        self.send_frame_urgent(link, tag, message, Urgency::Urgent);
    }

    /// [`Node::send_frame`] with the urgency a relay link schedules the message by (design
    /// §2.3: a `Units` message takes that of its most urgent unit).
    fn send_frame_urgent(&mut self, link: LinkId, tag: Tag, message: &Message, urgency: Urgency) {
        if link.is_relay() {
            if matches!(message, Message::PadOffer { .. } | Message::PadComplete { .. }) {
                // Second fence (the first: pads are offered on direct links only): pad
                // material never goes into a relay payload.
                debug_assert!(false, "pad material offered on a relay link");
                self.stats.pads.offers_refused += 1;
                return;
            }
            // Relay links skip `link_seal` (design §2.1): the relay envelope seals, and the
            // session orders and deduplicates.
            if let Some(info) = self.links.get_mut(&link) {
                info.sync.last_sent = self.now;
            }
            let urgency = match urgency {
                Urgency::Urgent => 0,
                Urgency::Normal => 1,
                _ => 2,
            };
            let bytes = message.encode();
            self.relay.send(self.now, &mut self.rng, link, &bytes, urgency);
            return;
        }
        if let Ok(bytes) = self.link_seal.seal(tag, self.now.as_secs(), &message.encode()) {
            if let Some(info) = self.links.get_mut(&link) {
                info.sync.last_sent = self.now;
            }
            self.stats.frame_bytes_sent += bytes.len() as u64;
            self.out.push_back(Output::Frame { link, bytes });
        }
    }

    // ----- anti-entropy -----

    /// Sends `link` what changed in our vector since the last `Have` on it (all of it the first
    /// time); with `always`, an empty one when nothing changed (a keepalive).
    fn send_have(&mut self, link: LinkId, always: bool) {
        let Some(info) = self.links.get_mut(&link) else { return };
        let frames =
            info.sync.have(&self.changes, self.ledger.store().version_vector(), &self.safe, always);
        for frame in frames {
            self.send_frame(link, Tag::Tubs, &frame);
        }
    }

    fn on_have(
        &mut self,
        link: LinkId,
        dbid: DatabaseId,
        full: bool,
        entries: Vec<HaveEntry>,
        total: Option<u64>,
    ) {
        let (Some(info), Some(peer)) = (self.links.get_mut(&link), self.peers.get_mut(&dbid))
        else {
            return;
        };
        let applied = info.sync.apply_have(full, entries, &mut peer.vector);
        let consistent = total.is_none_or(|t| t == peer.vector.total());
        let main = peer.role == Role::MainServer;
        let (mut reported_safe, ok) = match applied {
            Ok(safe) => (safe, consistent),
            Err(_) => (Vec::new(), false),
        };
        if main {
            // What a main server holds is safe.
            for (origin, safe) in &mut reported_safe {
                let held = peer.vector.get(origin).map_or(0, |r| r.contiguous());
                *safe = (*safe).max(held);
            }
        }
        if !ok {
            self.stats.resyncs += 1;
            self.send_frame(link, Tag::Tubs, &Message::Resync);
        }
        let changed: Vec<DatabaseId> = reported_safe.iter().map(|(o, _)| *o).collect();
        for (origin, n) in reported_safe {
            self.raise_safe(origin, n);
        }
        // A full `Have` may follow a reconnect after anything: look at every origin.
        self.plan(link, (!full).then_some(changed.as_slice()));
    }

    /// Asks the peer on `link` for a batch of what it holds and we lack, unless a `Want` is in
    /// flight there already; ranges asked of other peers are left out.
    fn plan(&mut self, link: LinkId, only: Option<&[DatabaseId]>) {
        let Some(info) = self.links.get(&link) else { return };
        if info.sync.want.is_some() || !info.sync.heard() {
            return;
        }
        let Some(peer) = info.peer.and_then(|d| self.peers.get(&d)).filter(|p| p.linked()) else {
            return;
        };
        let mut exclude: Vec<&VersionVector> = self
            .links
            .iter()
            .filter(|(l, _)| **l != link)
            .filter_map(|(_, i)| i.sync.want.as_ref().map(|w| &w.ranges))
            .collect();
        if !info.withheld.is_empty() {
            exclude.push(&info.withheld);
        }
        let limit = self.want_limit(link);
        let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_mul(2);
        let ours = self.ledger.store().version_vector();
        let planned = plan_want(&peer.vector, ours, &exclude, cap, only);
        if planned.is_empty() {
            return;
        }
        let Some(info) = self.links.get_mut(&link) else { return };
        let mut ranges = VersionVector::new();
        let mut wire = Vec::with_capacity(planned.len());
        for (origin, start, end) in planned {
            // The peer named every origin it holds in a `Have`, so it has an index.
            let Some(i) = info.sync.their_index(&origin) else { continue };
            wire.push((i, start, end));
            // Bounded by `cap` seqs in total.
            for seq in start..=end {
                ranges.insert(origin, seq);
            }
        }
        if wire.is_empty() {
            return;
        }
        let deadline = self.now.plus_millis(self.cfg.want_timeout_ms);
        info.sync.want = Some(Outstanding { ranges, deadline });
        self.stats.wants_sent += 1;
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        self.send_frame(link, Tag::Tubs, &Message::Want { ranges: wire, limit });
    }

    /// Units asked for in one `Want` on `link`. A relay link is slow to answer (a round trip
    /// through the relay and the mixing delays, hundreds of ms), so one `Want` there asks for
    /// as much as one answer may carry ([`RELAY_ANSWER_BYTES`] of small units) rather than a
    /// LAN batch: at 512 units a round trip, catching up through a relay crawled.
    fn want_limit(&self, link: LinkId) -> usize {
        let batch = self.cfg.batch_units.max(1);
        if link.is_relay() {
            batch.max(RELAY_ANSWER_BYTES / 256)
        } else {
            batch
        }
    }

    fn plan_all(&mut self) {
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.plan(link, None);
        }
    }

    /// Answers a `Want`: up to `limit` of the asked units we hold, urgent first (stable, so
    /// per-origin order is kept within an urgency), the last frame marked `end`.
    fn on_want(&mut self, link: LinkId, ranges: &[(u32, u64, u64)], limit: u32) {
        let Some(info) = self.links.get(&link) else { return };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(self.want_limit(link) * 4);
        let mut candidates: Vec<TransferUnit> = Vec::new();
        for &(i, start, end) in ranges {
            let Ok(origin) = info.sync.our_origin(i) else {
                self.stats.rejects.record_reason(RejectReason::Malformed);
                continue;
            };
            let want = limit.saturating_mul(2).saturating_sub(candidates.len());
            if want == 0 || end < start {
                continue;
            }
            let span = usize::try_from(end - start).unwrap_or(usize::MAX).saturating_add(1);
            let Ok(units) = self.ledger.store().range(&origin, start, want.min(span)) else {
                continue;
            };
            candidates.extend(units.into_iter().take_while(|u| u.seq <= end));
        }
        candidates.sort_by_key(|u| match u.urgency {
            Urgency::Urgent => 0,
            Urgency::Normal => 1,
            _ => 2,
        });
        candidates.truncate(limit);
        if link.is_relay() {
            // A relay session holds at most `MAX_UNACKED_BYTES` in flight: answer with what
            // fits it; the asker asks for the next batch when this one ends.
            let (room, slots) = self.relay.send_room(link);
            // Frames of up to `batch_bytes`, a few more for `Withheld` and the end.
            let by_slots = slots.saturating_sub(4).saturating_mul(self.cfg.batch_bytes.max(1));
            let budget = RELAY_ANSWER_BYTES.min(room / 4 * 3).min(by_slots);
            let size = |u: &TransferUnit| {
                let padded = if u.sensitive.is_empty() { 0 } else { u.sensitive.len() + 64 };
                u.payload.len() + 80 + padded
            };
            let mut bytes = 0;
            let fit = candidates
                .iter()
                .take_while(|u| {
                    bytes += size(u);
                    bytes <= budget
                })
                .count();
            // One large unit goes alone if the session has room for it; with no room the
            // answer is empty and the asker asks again next round.
            let first_fits =
                slots > 4 && candidates.first().is_some_and(|u| size(u) + (64 << 10) <= room);
            candidates.truncate(if fit == 0 && first_fits { 1 } else { fit });
        }
        self.stats.wants_served += 1;
        self.send_units(link, Tag::Tuda, &candidates, true);
    }

    /// Sends `units` on `link` in frames of at most `batch_bytes`; with `end`, the last frame
    /// (an empty one if there are no units) is marked as the end of a `Want` answer.
    /// On a relay link, units with a sensitive part go under a one-time pad first, or are
    /// withheld (see `padding`); they are never sent there in the clear.
    /// A unit with a sensitive part goes to a peer only once its `Pads` showed it knows them
    /// (an older build refuses a whole `Units` frame with a version 2 unit); until then it is
    /// left out (the peer asks for it later).
    fn send_units(&mut self, link: LinkId, tag: Tag, units: &[TransferUnit], end: bool) {
        if !units.iter().any(|u| !u.sensitive.is_empty()) {
            return self.send_unit_frames(link, tag, units, end);
        }
        let heard = self.links.get(&link).is_some_and(|l| l.pads_heard);
        let plain: Vec<TransferUnit> = if !heard {
            units.iter().filter(|u| u.sensitive.is_empty()).cloned().collect()
        } else if link.is_relay() {
            self.send_sensitive_on_relay(link, tag, units).into_iter().cloned().collect()
        } else {
            return self.send_unit_frames(link, tag, units, end);
        };
        self.send_unit_frames(link, tag, &plain, end);
    }

    fn send_unit_frames(&mut self, link: LinkId, tag: Tag, units: &[TransferUnit], end: bool) {
        if units.is_empty() {
            if end {
                self.send_frame(link, tag, &Message::units(&[], true));
            }
            return;
        }
        let mut batches = batches(units, self.cfg.batch_bytes).peekable();
        while let Some(batch) = batches.next() {
            let last = batches.peek().is_none();
            let urgency = batch.iter().map(|u| u.urgency).min().unwrap_or(Urgency::Normal);
            self.send_frame_urgent(link, tag, &Message::units(batch, end && last), urgency);
        }
    }

    fn anti_entropy_round(&mut self) {
        let now = self.now;
        let mut silent = Vec::new();
        let mut expired = false;
        let up: Vec<(LinkId, DatabaseId)> = self
            .peers
            .values()
            .filter(|p| p.linked())
            .filter_map(|p| p.link.map(|l| (l, p.dbid)))
            .collect();
        for (link, dbid) in up {
            let Some(info) = self.links.get_mut(&link) else { continue };
            // Relay links are metered: a slower keepalive (design §2.4).
            let keepalive = match info.kind {
                LinkKind::Relay => self.cfg.relay_path.keepalive_ms,
                _ => self.cfg.keepalive_ms,
            };
            if info.sync.want.as_ref().is_some_and(|w| w.deadline <= now) {
                info.sync.want = None;
                self.stats.wants_expired += 1;
                expired = true;
            }
            let quiet_ms = now.0.saturating_sub(info.sync.last_heard.0) / 1000;
            let idle = now.0.saturating_sub(info.sync.last_sent.0) / 1000 >= keepalive;
            if quiet_ms >= 6 * keepalive {
                silent.push(dbid);
                continue;
            }
            if quiet_ms >= 3 * keepalive {
                if let Some(p) = self.peers.get_mut(&dbid) {
                    p.state = PeerState::Suspect;
                }
            }
            let ping_due = now.0.saturating_sub(info.last_ping.0) / 1000 >= keepalive;
            if info.sync.have_due(&self.changes) || idle {
                self.send_have(link, idle);
            }
            if ping_due {
                self.send_ping(link);
            }
        }
        for dbid in silent {
            self.stats.links_silent += 1;
            self.close_peer(dbid, DownReason::Silent);
        }
        self.expire_withheld(now);
        self.pads_round();
        if expired || std::mem::take(&mut self.replan) {
            self.plan_all();
        }
        self.fail_back();
        self.prune_lan_links();
        // Cursor moves and index state become durable at least once a round.
        if self.ledger.checkpoint().is_err() {
            self.stats.checkpoint_failures += 1;
        }
    }

    // ----- units -----

    /// Takes received units; returns how many were new (0 also when the store refused them).
    /// With `in_clear`, the units came in a datagram or a relay link's `Units`, where a
    /// sensitive part never travels: units that carry one are refused (forged, or a broken
    /// peer), so the one-time pad's MAC cannot be bypassed.
    fn on_units(&mut self, source: Source, encoded: &[Vec<u8>], in_clear: bool) -> usize {
        let mut units = match decode_units(encoded, self.ledger.payload_limit()) {
            Ok(units) => units,
            Err(_) => {
                self.stats.units_invalid += encoded.len() as u64;
                return 0;
            }
        };
        if in_clear {
            let before = units.len();
            units.retain(|u| u.sensitive.is_empty());
            let refused = (before - units.len()) as u64;
            if refused > 0 {
                self.stats.pads.sensitive_in_clear_refused += refused;
                self.stats.units_invalid += refused;
            }
        }
        self.stats.units_received += units.len() as u64;
        let now_ms = self.now.as_millis();
        let mut new_units = match self.ledger.accept_received(units, encoded, now_ms) {
            Ok(fresh) => fresh,
            Err(_) => {
                // Refused (disk full): what a peer reports holding is asked for again once the
                // store takes writes.
                self.stats.store_errors += 1;
                return 0;
            }
        };
        self.stats.units_new += new_units.len() as u64;
        // Per-origin seq order, which forwarding keeps and delivery looks units up by.
        new_units.sort_unstable_by_key(|u| (u.origin, u.seq));
        let origins: BTreeSet<DatabaseId> = new_units.iter().map(|u| u.origin).collect();
        self.held_changed(&origins);
        self.forward(source, &new_units);
        let count = new_units.len();
        self.deliver_ready(origins, new_units);
        count
    }

    fn held_changed(&mut self, origins: &BTreeSet<DatabaseId>) {
        for origin in origins {
            self.changes.touch(*origin);
        }
        if self.cfg.role == Role::MainServer {
            self.raise_own_safe(origins.iter().copied());
        }
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
        // Units too large for a datagram go to LAN peers over their links. Usually there are
        // none, and nothing is copied: this runs for every unit a node takes in.
        let max = self.cfg.multicast_bytes;
        // A sensitive part never goes into a datagram sealed with a key derived from the system
        // key: it goes over links (forward secret), like a unit too large for a datagram.
        let fits = |u: &TransferUnit| u.payload.len() + 200 <= max && u.sensitive.is_empty();
        let large: Vec<TransferUnit> = units.iter().filter(|u| !fits(u)).cloned().collect();
        if !from_lan && has_lan {
            if large.is_empty() {
                self.multicast(units);
            } else {
                let small: Vec<TransferUnit> = units.iter().filter(|u| fits(u)).cloned().collect();
                self.multicast(&small);
            }
        }
        let source_link = match source {
            Source::Link(link) => Some(link),
            _ => None,
        };
        let mut skipped = Vec::new();
        let targets: Vec<(LinkId, Vec<TransferUnit>)> = self
            .peers
            .values()
            .filter(|p| p.linked())
            .filter_map(|p| p.link.map(|l| (l, p)))
            .filter(|(l, _)| Some(*l) != source_link)
            // What came by multicast reached the LAN peers too.
            .filter(|(_, p)| !(p.lan && from_lan))
            // A relay session near its bounds gets no eager push: a `Have` soon tells the peer
            // to pull it (`push_skipped`).
            .filter(|(l, _)| {
                let push = !l.is_relay() || self.relay.can_push(*l);
                if !push {
                    skipped.push(*l);
                }
                push
            })
            .map(|(l, p)| {
                let pool = if p.lan { &large } else { units };
                let lacking =
                    pool.iter().filter(|u| !p.vector.contains(&u.origin, u.seq)).cloned().collect();
                (l, lacking)
            })
            .collect();
        for (link, lacking) in targets {
            if !lacking.is_empty() {
                self.send_units(link, Tag::Tubt, &lacking, false);
            }
        }
        if !skipped.is_empty() {
            self.push_skipped.extend(skipped);
            let due = self.push_have_last.plus_millis(PUSH_HAVE_MS).max(self.now);
            self.push_have_at.get_or_insert(due);
        }
    }

    fn multicast(&mut self, units: &[TransferUnit]) {
        let to = DatagramDest::Group(self.cfg.env_group);
        for batch in batches(units, self.cfg.multicast_bytes) {
            let message = Message::units(batch, false).encode();
            if let Ok(bytes) = self.lan_seal.seal(Tag::Tubt, self.now.as_secs(), &message) {
                self.stats.datagram_bytes_sent += bytes.len() as u64;
                self.out.push_back(Output::Datagram { to, bytes });
            }
        }
    }

    /// One group commit for `subs`; one `Accepted` (or, for a refused batch, `Refused`) per
    /// submission, in order.
    fn submit(&mut self, subs: Vec<Submission>) {
        let count = subs.len();
        let (receipts, logged) = match self.ledger.submit_logged(subs, self.now.as_millis()) {
            Ok(r) => r,
            Err(e) => {
                self.stats.store_errors += 1;
                self.stats.submits_refused += count as u64;
                let reason = e.to_string();
                if self.submits_syncing.is_empty() {
                    self.refuse(count, &reason);
                } else {
                    self.submits_syncing.push_back(Unanswered::Refused { count, reason });
                }
                return;
            }
        };
        self.submits_syncing.push_back(Unanswered::Syncing { receipts, logged });
        self.release_submits();
    }

    fn refuse(&mut self, count: usize, reason: &str) {
        let refused = (0..count).map(|_| Output::Refused { reason: reason.to_string() });
        self.out.extend(refused);
    }

    /// Hands on the group commits that are durable, oldest first, stopping at one whose sync
    /// still runs; a failed sync refuses its batch and every batch after it (not known durable).
    fn release_submits(&mut self) {
        while let Some(front) = self.submits_syncing.front() {
            let state = match front {
                Unanswered::Syncing { logged, .. } => self.ledger.sync_state(logged),
                Unanswered::Refused { .. } => SyncState::Durable,
            };
            match state {
                SyncState::Pending => return,
                SyncState::Durable => match self.submits_syncing.pop_front() {
                    Some(Unanswered::Syncing { receipts, logged }) => {
                        self.commit_durable(receipts, logged)
                    }
                    Some(Unanswered::Refused { count, reason }) => self.refuse(count, &reason),
                    None => return,
                },
                SyncState::Failed(failure) => {
                    let failure = format!("the log sync failed: {failure}");
                    for waiting in std::mem::take(&mut self.submits_syncing) {
                        match waiting {
                            Unanswered::Syncing { receipts, .. } => {
                                self.stats.store_errors += 1;
                                self.stats.submits_refused += receipts.len() as u64;
                                self.refuse(receipts.len(), &failure);
                            }
                            Unanswered::Refused { count, reason } => self.refuse(count, &reason),
                        }
                    }
                    return;
                }
            }
        }
    }

    /// A durable group commit: indexed, sent on, and answered.
    fn commit_durable(&mut self, receipts: Vec<Receipt>, logged: Logged) {
        let new_units = match self.ledger.index(logged) {
            Ok(units) => units,
            Err(_) => {
                // The units are durable in the logs (a reopen indexes them): they stay
                // accepted, and go out after the restart. The ledger refuses writes and
                // checkpoints until then.
                self.stats.store_errors += 1;
                Vec::new()
            }
        };
        // The multicast is queued before the receipts: the driver executes outputs in order,
        // and the receivers' group commit is most of the LAN's end-to-end time.
        self.forward(Source::Local, &new_units);
        self.out.extend(receipts.into_iter().map(Output::Accepted));
        let origins: BTreeSet<DatabaseId> = new_units.iter().map(|u| u.origin).collect();
        self.held_changed(&origins);
    }

    /// Moves the cursor for each acknowledgement and makes it durable with one flush; one
    /// answer per entry, in order.
    fn acknowledge_durably(&mut self, acks: Vec<(DatabaseId, u64)>) {
        let app = self.cfg.app.clone();
        match self.ledger.acknowledge_durably(&app, &acks) {
            Ok(()) => {
                for (origin, seq) in acks {
                    self.out.push_back(Output::Acknowledged { origin, seq });
                }
            }
            Err(e) => {
                self.stats.store_errors += 1;
                let reason = e.to_string();
                for (origin, seq) in acks {
                    let reason = reason.clone();
                    self.out.push_back(Output::AcknowledgeFailed { origin, seq, reason });
                }
            }
        }
    }

    /// Delivers, per origin, every held unit after the delivered one, in seq order. `fresh`
    /// holds units just accepted (so held; sorted by origin, then seq, or not at all): they are
    /// delivered from memory (moved, not copied), so the common case (units arriving in order)
    /// never reads back and decrypts what was just written; a unit from before a gap is read
    /// from the store. `fresh` is walked once per origin, not searched per unit.
    fn deliver_ready(
        &mut self,
        origins: impl IntoIterator<Item = DatabaseId>,
        mut fresh: Vec<TransferUnit>,
    ) {
        let own = self.dbid();
        for origin in origins {
            if origin == own {
                continue;
            }
            let last = self.delivered.get(&origin).copied().unwrap_or(0);
            let mut next = last + 1;
            // This origin's fresh units, in seq order.
            let mut i = fresh.partition_point(|u| u.origin < origin);
            loop {
                while fresh.get(i).is_some_and(|u| u.origin == origin && u.seq < next) {
                    i += 1;
                }
                // Each fresh unit is delivered at most once (`next` only grows), so its payload
                // can be taken.
                let in_hand = match fresh.get_mut(i) {
                    Some(u) if u.origin == origin && u.seq == next => {
                        i += 1;
                        Some(TransferUnit {
                            kind: u.kind,
                            physkey: u.physkey,
                            origin: u.origin,
                            seq: u.seq,
                            created_ms: u.created_ms,
                            urgency: u.urgency,
                            scopes: u.scopes,
                            payload: std::mem::take(&mut u.payload),
                            sensitive: std::mem::take(&mut u.sensitive),
                        })
                    }
                    _ => None,
                };
                let unit = match in_hand {
                    Some(unit) => unit,
                    None if self.ledger.store().contains(&origin, next) => {
                        match self.ledger.store().get(&origin, next) {
                            Ok(Some(unit)) => unit,
                            _ => break,
                        }
                    }
                    None => break,
                };
                self.out.push_back(Output::Deliver(unit));
                next += 1;
            }
            if next - 1 > last {
                self.delivered.insert(origin, next - 1);
            }
        }
    }

    // ----- inputs -----

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let mut units = Vec::new();
        self.open_datagram(from, bytes, &mut units);
        if !units.is_empty() {
            self.on_units(Source::Multicast, &units, true);
        }
    }

    /// A burst of datagrams: announcements as they come, the units of all of them in one
    /// batch (one group commit).
    fn on_datagrams(&mut self, datagrams: &[ReceivedDatagram]) {
        let mut units = Vec::new();
        for d in datagrams {
            self.open_datagram(d.from, &d.bytes, &mut units);
        }
        if !units.is_empty() {
            self.on_units(Source::Multicast, &units, true);
        }
    }

    /// Handles a discovery datagram, or adds the units a unit datagram carries to `units`.
    fn open_datagram(&mut self, from: SocketAddr, bytes: &[u8], units: &mut Vec<Vec<u8>>) {
        let now_secs = self.now.as_secs();
        let discovery = peek_tag(bytes).is_some_and(|t| t.is_discovery());
        if discovery {
            match self.lan_open.open_visible(bytes, now_secs) {
                Ok(opened) => match Announce::decode(&opened.plaintext) {
                    Ok(a) => self.on_announce(from, a),
                    Err(_) => self.stats.rejects.record_reason(RejectReason::Malformed),
                },
                Err(r) => {
                    if matches!(
                        r.reason(),
                        RejectReason::ForeignSystem | RejectReason::ForeignEnvironment
                    ) {
                        self.stats.foreign_nodes_heard += 1;
                    }
                    self.stats.rejects.record(&r);
                }
            }
            return;
        }
        match self.lan_open.open(bytes, now_secs) {
            Ok(opened) => match Message::decode(&opened.plaintext) {
                Ok(Message::Units { units: carried, .. }) => units.extend(carried),
                Ok(_) => self.stats.rejects.record_reason(RejectReason::UnknownType),
                Err(_) => self.stats.rejects.record_reason(RejectReason::Malformed),
            },
            Err(r) => self.stats.rejects.record(&r),
        }
    }

    fn on_frame(&mut self, link: LinkId, bytes: &[u8]) {
        if link.is_relay() {
            // A driver never owns these ids.
            self.stats.rejects.record_reason(RejectReason::Malformed);
            return;
        }
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
                    self.close_link(link);
                }
                return;
            }
        };
        let Ok(message) = message else {
            self.stats.rejects.record_reason(RejectReason::Malformed);
            return;
        };
        self.on_message(link, message);
    }

    /// A message opened from a link's frame, or handed over by a relay session.
    fn on_message(&mut self, link: LinkId, message: Message) {
        let Some(info) = self.links.get(&link) else { return };
        let peer = info.peer;
        if let Some(info) = self.links.get_mut(&link) {
            info.sync.last_heard = self.now;
        }
        if let Some(p) = peer.and_then(|d| self.peers.get_mut(&d)) {
            p.last_seen = self.now;
            if p.state == PeerState::Suspect && p.link == Some(link) {
                p.state = PeerState::Up;
            }
        }
        let Some(dbid) = peer else {
            match message {
                Message::Hello { dbid, role, .. } => self.on_hello(link, dbid, role),
                _ => self.stats.rejects.record_reason(RejectReason::Malformed),
            }
            return;
        };
        match message {
            Message::Hello { .. } => {}
            Message::Have { full, entries, total } => {
                self.on_have(link, dbid, full, entries, total)
            }
            Message::Want { ranges, limit } => self.on_want(link, &ranges, limit),
            Message::Ping { sent } => self.send_frame(link, Tag::Tubs, &Message::Pong { sent }),
            Message::Pong { sent } => self.on_pong(link, sent),
            Message::CallMeMaybe { round, addrs } => {
                self.on_call_me_maybe(link, dbid, round, &addrs)
            }
            Message::Resync => {
                if let Some(info) = self.links.get_mut(&link) {
                    info.sync.reset_reported();
                }
                self.send_have(link, true);
            }
            message @ (Message::Pads { .. }
            | Message::PadOffer { .. }
            | Message::PadComplete { .. }
            | Message::PadAccepted { .. }
            | Message::PaddedUnits { .. }
            | Message::Withheld { .. }) => self.on_pad_message(link, dbid, message),
            Message::Units { units, end } => {
                let fresh = self.on_units(Source::Link(link), &units, link.is_relay());
                if end {
                    let mut fresh = fresh;
                    if let Some(info) = self.links.get_mut(&link) {
                        info.sync.want = None;
                        // Units of this answer that came padded before its end.
                        fresh += std::mem::take(&mut info.padded_fresh);
                    }
                    if fresh > 0 {
                        // Streaming: ask for the next batch at once.
                        self.plan(link, None);
                    } else {
                        // Nothing new (the store refused the batch, or the peer no longer
                        // holds what it reported): ask again next round, not in a loop.
                        self.replan = true;
                    }
                }
            }
        }
    }
}

impl<S: Store> Node<S> {
    // ----- relay path -----

    /// Hands the relay path's events to the node: links up and down, messages. Returns
    /// whether the peers may have changed (a link went up or down, or a message came on a
    /// link whose peer is not known yet: the `Hello`), as `handle` decides for frames.
    fn relay_events(&mut self) -> bool {
        let mut peers_may_change = false;
        while let Some(event) = self.relay.poll_event() {
            match event {
                PathEvent::LinkUp { link, outbound, .. } => {
                    let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
                    self.on_link_up(link, nowhere, outbound, LinkKind::Relay);
                    peers_may_change = true;
                }
                PathEvent::Message { link, bytes } => {
                    peers_may_change |= self.links.get(&link).is_none_or(|l| l.peer.is_none());
                    match Message::decode(&bytes) {
                        Ok(message) => self.on_message(link, message),
                        Err(_) => self.stats.rejects.record_reason(RejectReason::Malformed),
                    }
                }
                PathEvent::LinkDown { link } => {
                    self.on_link_down(link);
                    peers_may_change = true;
                }
            }
        }
        peers_may_change
    }

    /// The peers that should get a relay session (design §2.6): members heard by presence or
    /// met on a link, not on our LAN, with no direct link; main servers first, then the
    /// members whose dbid hash is closest to ours (a stable sparse graph).
    fn relay_wanted(&self) -> Vec<DatabaseId> {
        let own = self.dbid();
        let mut candidates: BTreeMap<DatabaseId, Role> =
            self.relay.members(self.now).into_iter().collect();
        for p in self.peers.values().filter(|p| !p.lan) {
            candidates.entry(p.dbid).or_insert(p.role);
        }
        let direct = |d: &DatabaseId| {
            self.peers.get(d).is_some_and(|p| {
                p.lan
                    || (p.linked()
                        && p.link
                            .and_then(|l| self.links.get(&l))
                            .is_some_and(|l| l.kind != LinkKind::Relay))
            })
        };
        let mut wanted: Vec<(bool, u64, DatabaseId)> = candidates
            .into_iter()
            .filter(|(d, _)| *d != own && !direct(d))
            .map(|(d, role)| (role != Role::MainServer, d.tag() ^ own.tag(), d))
            .collect();
        wanted.sort();
        wanted.truncate(self.cfg.relay_path.max_sessions);
        wanted.into_iter().map(|(_, _, d)| d).collect()
    }

    /// Sends the `Have`s owed to relay links an eager push skipped (see `push_skipped`).
    fn push_haves(&mut self, now: Time) {
        if self.push_have_at.is_none_or(|at| at > now) || self.push_skipped.is_empty() {
            return;
        }
        let mut full = BTreeSet::new();
        for link in std::mem::take(&mut self.push_skipped) {
            if !self.links.contains_key(&link) {
                continue;
            }
            if self.relay.send_room(link).1 > 0 {
                self.send_have(link, false);
            } else {
                // No room yet: try again shortly rather than at the next round.
                full.insert(link);
            }
        }
        // The next one waits at least `PUSH_HAVE_MS`: a full session is not flooded.
        self.push_have_last = now;
        self.push_have_at = (!full.is_empty()).then(|| now.plus_millis(PUSH_HAVE_MS));
        self.push_skipped = full;
    }

    fn relay_timeout(&mut self) {
        if !self.relay.enabled() {
            return;
        }
        self.relay_want();
        self.relay.handle_timeout(self.now, &mut self.rng);
        self.relay_events();
    }

    /// Opens the relay sessions wanted now (the relay path opens only what is missing).
    fn relay_want(&mut self) {
        let wanted = self.relay_wanted();
        self.relay.want(self.now, &mut self.rng, &wanted);
    }
}

/// Splits `units` into runs of at most `max_bytes` (about 80 bytes of framing and header per
/// unit counted), at least one unit each, in order.
fn batches(units: &[TransferUnit], max_bytes: usize) -> impl Iterator<Item = &[TransferUnit]> {
    let mut rest = units;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && (n == 0 || bytes + rest[n].payload.len() + 80 <= max_bytes) {
            bytes += rest[n].payload.len() + 80;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

impl<S: Store> Protocol for Node<S> {
    fn handle(&mut self, now: Time, input: Input<'_>) {
        self.now = self.now.max(now);
        if !self.started {
            self.start(self.now);
        }
        // Only these can change which links are wanted; units and frames on a link (the hot
        // path) cannot, and anything they make due is picked up by the next timer.
        let mut peers_may_change = match &input {
            Input::Datagram { bytes, .. } => peek_tag(bytes).is_none_or(|t| t.is_discovery()),
            Input::Datagrams(all) => {
                all.iter().any(|d| peek_tag(&d.bytes).is_none_or(|t| t.is_discovery()))
            }
            Input::Frame { link, .. } => self.links.get(link).is_none_or(|l| l.peer.is_none()),
            Input::Submit(_)
            | Input::Acknowledge { .. }
            | Input::LinkRejected { .. }
            | Input::LogsSynced => false,
            // Decided by what the payload brought (below).
            Input::RelayPayload { .. } => false,
            _ => true,
        };
        match input {
            Input::Datagram { from, bytes, .. } => self.on_datagram(from, bytes),
            Input::Datagrams(all) => self.on_datagrams(&all),
            Input::Frame { link, bytes } => self.on_frame(link, bytes),
            // Relay links are the relay path's (its events bring them up and down); a driver
            // never owns their ids nor the kind (like `on_frame`).
            Input::LinkUp { link, kind, .. } if link.is_relay() || kind == LinkKind::Relay => {
                self.stats.rejects.record_reason(RejectReason::Malformed);
            }
            Input::LinkDown { link } if link.is_relay() => {
                self.stats.rejects.record_reason(RejectReason::Malformed);
            }
            Input::LinkUp { link, remote, outbound, kind } => {
                self.on_link_up(link, remote, outbound, kind)
            }
            Input::LinkRejected { reason, in_handshake } => {
                self.stats.rejects.record_reason(reason);
                if in_handshake {
                    self.stats.links_refused += 1;
                }
            }
            Input::LinkDown { link } => self.on_link_down(link),
            Input::ConnectFailed { to } => self.connect_failed(to, DownReason::ConnectFailed),
            Input::Submit(sub) => self.submit(vec![sub]),
            Input::SubmitBatch(subs) => self.submit(subs),
            Input::LogsSynced => self.release_submits(),
            Input::Acknowledge { origin, seq } => {
                let app = self.cfg.app.clone();
                if self.ledger.acknowledge(&app, &origin, seq).is_err() {
                    self.stats.store_errors += 1;
                }
                return;
            }
            Input::AcknowledgeBatch(acks) => {
                self.acknowledge_durably(acks);
                return;
            }
            Input::RelayUp { relay, observed } => {
                let before = self.relay.observed();
                self.relay.relay_up(self.now, &mut self.rng, relay, observed);
                if !before.iter().any(|(_, a)| *a == observed) {
                    self.punches.address_changed(self.now);
                }
                self.relay_timeout();
            }
            Input::RelayDown { relay } => self.relay.relay_down(self.now, &mut self.rng, relay),
            Input::RelayRefused { relay, reason } => self.relay.relay_refused(relay, reason),
            Input::RelayPayload { relay, mailbox, bytes } => {
                // The hot path of relay links: only what a payload can change runs. The
                // wanted sessions only if it brought a member or began or ended a session;
                // no relay timers (a payload makes none due; `handle_timeout` runs them).
                if self.relay.on_payload(self.now, &mut self.rng, relay, mailbox, bytes) {
                    self.relay_want();
                }
                peers_may_change = self.relay_events();
            }
            Input::RelayPostRefused { relay, reason } => {
                self.relay.post_refused(self.now, &mut self.rng, relay, reason)
            }
            Input::PadMaterial { peer, mut material } => {
                self.on_pad_material(peer, &material);
                zeroize::Zeroize::zeroize(&mut material);
            }
        }
        peers_may_change |= self.relay_events();
        if peers_may_change {
            self.connect_due();
        }
        // After the units are in the change log (a submit logs them after forwarding).
        let now = self.now;
        self.push_haves(now);
    }

    fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        if !self.started {
            self.start(self.now);
        }
        let now = self.now;
        if now >= self.next_discovery {
            self.send_announce(DatagramDest::Group(self.cfg.discovery_group), false);
            let every = self.discovery_every_ms.max(1);
            let jitter = self.rng.gen_range(0..=every / 5);
            self.next_discovery = now.plus_millis(every + jitter);
            self.discovery_every_ms =
                every.saturating_mul(2).min(self.cfg.discovery_max_interval_ms.max(every));
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
        self.relay_timeout();
        self.punch_timeout();
        self.push_haves(now);
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
            if peer.wants_link(own) && self.lan_wanted.contains(&peer.dbid) {
                next = next.min(peer.next_attempt.max(self.now));
            }
        }
        if let Some(at) = self.slot_timer {
            next = next.min(at.max(self.now));
        }
        if let Some(at) = self.relay.poll_timeout() {
            next = next.min(at.max(self.now));
        }
        if let Some(at) = self.punches.poll_timeout().filter(|_| self.cfg.hole_punch) {
            next = next.min(at.max(self.now));
        }
        if let Some(at) = self.push_have_at {
            next = next.min(at.max(self.now));
        }
        Some(next)
    }

    fn poll_relay_output(&mut self) -> Option<RelayOutput> {
        self.relay.poll_output()
    }
}

#[cfg(test)]
mod batch_tests {
    use super::batches;
    use crate::unit::tests::sample_unit;

    #[test]
    fn batches_respect_the_byte_limit_and_keep_order() {
        let units: Vec<_> = (1..=10).map(|i| sample_unit(i, &[0u8; 120])).collect();
        let sizes: Vec<usize> = batches(&units, 650).map(<[_]>::len).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1], "200 bytes counted per unit");
        let seqs: Vec<u64> = batches(&units, 650).flatten().map(|u| u.seq).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        let big = [sample_unit(1, &[0u8; 5000])];
        assert_eq!(batches(&big, 650).count(), 1, "an oversized unit still goes, alone");
        assert_eq!(batches(&[], 650).count(), 0);
    }
}
