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
//! Each of these has a submodule of its own (`discovery`, `links`, `nat`, `anti_entropy`,
//! `units`, `submits`, `inputs`, `relay`, `padding`); this file holds the node's state, its
//! status and the [`Protocol`] entry points that dispatch to them.
//!
//! No sockets, no clock reads, no global RNG: time comes with each input and the RNG is seeded
//! from the config.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use self::own_origin::OwnConflict;
use crate::crypto::{KeySchedule, NonceSequence, Purpose};
use crate::id::{DatabaseId, DeviceId, Environment, InstanceId, RmSystem};
use crate::ledger::{Ledger, Logged, Receipt};
use crate::proto::io::{
    DatagramDest, Input, LinkId, LinkKind, Output, Protocol, RelayOutput, Time,
};
use crate::proto::pads::PadBook;
use crate::proto::peers::{DownReason, Peer, PeerState, Role};
use crate::proto::punch::Punches;
use crate::proto::relaypath::{RelayPath, RelayPathConfig};
use crate::proto::status::{LinkStatus, NodeStatus, PeerStatus, Queues};
use crate::proto::sync::{ChangeLog, LinkSync};
use crate::store::{Store, VersionVector};
use crate::unit::TransferUnit;
use crate::wire::{
    peek_tag, DatagramOpener, DatagramSealer, RejectCounters, RejectReason, DEFAULT_MAX_FRAME_LEN,
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
    /// Times own units were seen held elsewhere beyond this node's head (a data directory
    /// rolled back in place, or in use on two machines; see [`OwnConflict`]).
    pub own_conflicts: u64,
    /// Own units issued again under new seqs after such a conflict.
    pub units_reissued: u64,
    /// Units held here under seqs a peer offered as other units of its own (it handed the seqs
    /// out twice); ours went back to it.
    pub units_diverged: u64,
    /// Own units sent to peers for comparison on new links.
    pub own_units_offered: u64,
    /// Bytes of the datagrams emitted (discovery and multicast units; each sent once per
    /// discovery interface, counted once), sealed, without UDP/IP headers.
    pub datagram_bytes_sent: u64,
    /// Bytes of the link frames emitted, sealed, without the link's own framing (length prefix,
    /// QUIC/TCP/IP headers).
    pub frame_bytes_sent: u64,
    /// One-time pads.
    pub pads: padding::PadStats,
}

/// The comparison of own units a peer holds, on one link ([`own_origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnOffer {
    /// Not offered yet: the peer's first `Have` offers.
    NotYet,
    /// Offered up to this seq; the peer's `Have`s confirm nothing until it has compared.
    Pending(u64),
    /// Compared (or nothing to offer): the peer's `Have`s confirm what they report.
    Done,
    /// The comparison was cut short or its answer could not be taken: nothing more is
    /// confirmed on this link, and the next link offers again.
    Lost,
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
    /// Units the peer told us it will not send on this link ([`Message::Withheld`](crate::proto::message::Message::Withheld)): left out
    /// of our `Want`s here until `withheld_at` is old.
    withheld: VersionVector,
    withheld_at: Time,
    /// Units we withheld from the peer on this link (status).
    withheld_by_us: VersionVector,
    /// Where the comparison of own units the peer holds stands on this link ([`own_origin`]).
    own_offer: OwnOffer,
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
    /// Batches waiting for their log sync, oldest first, indexed in this order: group commits
    /// whose receipts and units leave only once durable ([`Node::pipeline_log_syncs`]),
    /// refusals behind them (answers keep submission order), and received units (delivered and
    /// sent on already; indexed once durable).
    submits_syncing: VecDeque<Unanswered>,
    /// The last time own units were seen beyond this node's head ([`own_origin`]).
    own_conflict: Option<OwnConflict>,
    /// Own seqs up to here were skipped or issued again for a conflict since start.
    own_conflict_handled: u64,
    /// Physkeys of own units issued again since start for a conflict ([`own_origin`]), ours and
    /// those a peer sent back: each goes again once (two machines sharing one data directory
    /// would otherwise issue each other's copies again for ever); at most `REISSUE_MAX`, then
    /// started afresh.
    reissued_keys: std::collections::HashSet<crate::id::Physkey>,
}

/// Batches waiting for their log sync.
enum Unanswered {
    /// Units received from peers, logged ([`Ledger::receive_logged`]); looked up here until
    /// they are indexed.
    Received(Logged),
    /// A group commit waiting for its log sync.
    Syncing {
        /// One per submission.
        receipts: Vec<Receipt>,
        logged: Logged,
    },
    /// Submits refused at once, behind a group commit still syncing.
    Refused { count: usize, reason: String },
}

mod anti_entropy;
mod discovery;
mod inputs;
mod links;
mod nat;
mod own_origin;
mod padding;
mod relay;
mod submits;
mod units;

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
            own_conflict: None,
            own_conflict_handled: 0,
            reissued_keys: std::collections::HashSet::new(),
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
        self.submits_syncing.iter().filter(|u| !matches!(u, Unanswered::Received(_))).count()
    }

    /// Batches, submitted or received, waiting for their log sync (a stopping driver waits
    /// for none to be left).
    pub fn syncing(&self) -> usize {
        self.submits_syncing.len()
    }

    /// The unit `seq` of `origin` if this node holds it: in the store, or received and still
    /// waiting for its log sync. What the control socket sends a subscriber.
    pub fn unit(
        &self,
        origin: &DatabaseId,
        seq: u64,
    ) -> Result<Option<TransferUnit>, crate::store::StoreError> {
        if self.ledger.receiving().contains(origin, seq) {
            for waiting in &self.submits_syncing {
                if let Unanswered::Received(logged) = waiting {
                    if let Some(unit) = logged.unit(origin, seq) {
                        return Ok(Some(unit.clone()));
                    }
                }
            }
        }
        self.ledger.store().get(origin, seq)
    }

    /// What the node was started with (tests: a restart with the same settings).
    #[cfg(test)]
    pub(crate) fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The ledger, to change (tests).
    #[cfg(test)]
    pub(crate) fn ledger_mut(&mut self) -> &mut Ledger<S> {
        &mut self.ledger
    }

    /// Why the store refuses all writes, if it does (see [`Ledger::failure`]): the driver
    /// stops the node on it.
    pub fn store_failure(&self) -> Option<&str> {
        self.ledger.failure()
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
                    own_confirmed: self.ledger.confirmed_own(&p.dbid),
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
        let (gaps, origins_with_gaps) = super::status::gaps(
            self.ledger.store().version_vector(),
            self.ledger.receiving(),
            &self.dbid(),
            self.peers.values().filter(|p| p.linked()).map(|p| &p.vector),
        );
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
                submits_syncing: self.submits_syncing(),
                received_syncing: self.ledger.receiving().total(),
            },
            counters: NodeStats {
                checkpoint_failures: self.stats.checkpoint_failures
                    + self.ledger.checkpoint_failures(),
                ..self.stats.clone()
            },
            relays: self.relay.relay_status(now),
            relay_path: self.relay.stats(),
            own_conflict: self.own_conflict.clone(),
            gaps,
            origins_with_gaps,
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
            | Input::LogsSynced
            | Input::Stopping => false,
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
            Input::Stopping => {
                // Nothing is connected or asked for after this.
                self.close_relay_links();
                return;
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
