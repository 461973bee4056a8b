//! The relay path (design `docs/design/internet-mesh.md` §2): between two peers with no direct
//! link, a relay session carries core messages as sealed, padded payloads through mailboxes on
//! the relays. [`RelayPath`] owns the sessions and the relays' state; `Node` sees each open
//! session as one more link ([`LinkKind::Relay`](crate::proto::LinkKind), ids
//! `1 << 63 | n`), so Hello/Have/Want/Units and the "keep the better kind" rule are unchanged.
//!
//! - [`envelope`]: what a relay sees of a payload, the records inside, mailbox pseudonyms.
//! - [`fragment`]: splitting messages into fragments and reassembling them.
//! - [`session`]: the reliable, ordered session over lossy, duplicating relays.
//! - [`mixer`]: composing payloads, their delays and relays.
//! - `relays`: the relays coming and going, their post backoff, subscriptions and posting.
//! - `fuzzing` (feature `fuzzing`): the bodies of the `relay_payload` and `relay_reassembly`
//!   fuzz targets.
//!
//! Not here: which peers get a session (the node decides and calls [`RelayPath::want`]), hole
//! punching and pads (later steps), and any IO: posts and subscriptions are
//! [`RelayOutput`]s for the driver.

pub mod envelope;
pub mod fragment;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mixer;
mod relays;
pub mod session;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use rand::Rng;

use self::envelope::{mailbox_day, Envelope, Record, RelayPlain, MAILBOX_DAY_SECS};
use self::mixer::{choose_relay, compose, Delays};
use self::session::{Session, SessionStats, State, HANDSHAKE_LIFETIME_MS};
use crate::crypto::KeySchedule;
use crate::id::{DatabaseId, Environment, InstanceId, RmSystem};
use crate::proto::io::{LinkId, RelayIndex, RelayOutput, Time};
use crate::proto::peers::Role;
use crate::wire::relay::{Mailbox, RefuseReason};

/// Most members remembered from presence; past it the least recently heard is forgotten
/// (a member is heard again within its presence interval, 10 min by default).
pub const MAX_MEMBERS: usize = 1_024;

/// Days either side of today whose mailboxes are subscribed (clock skew, design §2.5).
pub const SUBSCRIBED_DAYS: u64 = 2;

/// How long a post must go unrefused before it counts as taken: a relay refuses a post within
/// a round trip (the core has no `Posted` input, design §2.8).
pub const POST_TAKEN_MS: u64 = 10_000;

/// First backoff of a relay after it refused a post, ms (doubling to [`POST_BACKOFF_MAX_MS`]).
pub const POST_BACKOFF_MS: u64 = 30_000;
/// Longest backoff of a relay after refused posts, ms.
pub const POST_BACKOFF_MAX_MS: u64 = 600_000;

/// Settings of the relay path (`[relay_path]`, design §2.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPathConfig {
    /// How many relays are configured (`[[relay]]`); 0 turns the relay path off.
    pub relays: u16,
    /// Most sessions this node opens.
    pub max_sessions: usize,
    /// Keepalive of relay links, ms (silence of six closes them).
    pub keepalive_ms: u64,
    /// Longest random payload delays per urgency, ms.
    pub delays: Delays,
    /// How long relays keep our payloads, at most: the TTL asked of a relay is also capped by
    /// [`RelayPath::payload_ttl_secs`] (how long the recipient can still open a payload).
    pub payload_ttl_secs: u32,
    /// How often presence is broadcast, ms.
    pub presence_every_ms: u64,
    /// Presence older than this (by its `sent_ms`) is ignored, and its post expires then.
    pub presence_ttl_secs: u32,
}

impl Default for RelayPathConfig {
    fn default() -> Self {
        RelayPathConfig {
            relays: 0,
            max_sessions: 8,
            keepalive_ms: 60_000,
            delays: Delays::default(),
            // Two days: what the recipient can still use (`RelayPath::payload_ttl_secs`).
            payload_ttl_secs: 172_800,
            presence_every_ms: 600_000,
            presence_ttl_secs: 1_800,
        }
    }
}

/// What the relay path tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// A session is open: a link to `peer`.
    LinkUp {
        /// The link.
        link: LinkId,
        /// The peer.
        peer: DatabaseId,
        /// Whether we opened it.
        outbound: bool,
    },
    /// A message arrived on a link (in order, once per session).
    Message {
        /// The link.
        link: LinkId,
        /// `Message::encode` bytes.
        bytes: Vec<u8>,
    },
    /// A link's session ended.
    LinkDown {
        /// The link.
        link: LinkId,
    },
}

/// Counters of the relay path (status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayPathStats {
    /// Payloads posted.
    pub payloads_sent: u64,
    /// Payloads delivered to us.
    pub payloads_received: u64,
    /// Payloads that did not open (wrong class, key, mailbox, tampered, malformed).
    pub payloads_refused: u64,
    /// Payloads naming another recipient.
    pub not_for_us: u64,
    /// Records of a session we do not know (replays, ended sessions).
    pub stale: u64,
    /// Sessions closed because a bound was hit.
    pub overflows: u64,
    /// Payloads not sent for want of a relay that is up.
    pub no_relay: u64,
    /// `Syn`s older than a handshake can live (replays of old payloads), refused.
    pub replays: u64,
    /// Payloads that could not be sealed (not posted; logged).
    pub seal_failures: u64,
}

/// One relay as the core sees it (status `relays`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayStatus {
    /// Its position in `[[relay]]`.
    pub index: u16,
    /// up, down or refused.
    pub state: &'static str,
    /// Why it refused us.
    pub refused: Option<String>,
    /// Our address as it sees it.
    pub observed: Option<SocketAddr>,
    /// Payloads posted through it.
    pub posted: u64,
    /// Payloads it delivered.
    pub delivered: u64,
    /// Posts it refused.
    pub post_refusals: u64,
    /// Milliseconds until it is used again after a refusal (0: not in backoff).
    pub backoff_ms: u64,
}

/// A session with one peer, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SessionStatus {
    /// Smoothed round trip through the relays, ms.
    pub rtt_ms: Option<u64>,
    /// Counters.
    #[serde(flatten)]
    pub stats: SessionStats,
}

#[derive(Debug, Default)]
struct RelayState {
    up: bool,
    refused: Option<RefuseReason>,
    observed: Option<SocketAddr>,
    backoff_until: Time,
    backoff_ms: u64,
    /// The first post through it since its last refusal (for resetting the backoff).
    posting_since: Option<Time>,
    posted: u64,
    delivered: u64,
    post_refusals: u64,
}

#[derive(Debug)]
struct PeerPath {
    link: LinkId,
    session: Session,
    outbound: bool,
    /// The node was told `LinkUp`.
    linked: bool,
    /// A session the peer opened while this one works: it replaces this one once confirmed.
    candidate: Option<Session>,
    flush_at: Option<Time>,
    /// The urgency `flush_at` was drawn for.
    flush_urgency: u8,
    last_relay: Option<u16>,
}

impl PeerPath {
    /// Schedules the next flush for records of `urgency`, drawn from `delays`. A flush already
    /// drawn for records as urgent or more stands; one drawn for less urgent records is drawn
    /// again for these and the sooner time kept, so a control record (a `SynAck`, say) or an
    /// urgent unit never waits out a delay drawn for background traffic (up to 2 s).
    fn schedule_flush<R: Rng>(&mut self, now: Time, rng: &mut R, delays: &Delays, urgency: u8) {
        if self.flush_at.is_some() && urgency >= self.flush_urgency {
            return;
        }
        let at = now.plus_millis(delays.draw(rng, urgency));
        self.flush_at = Some(self.flush_at.map_or(at, |due| due.min(at)));
        self.flush_urgency = urgency;
    }
}

#[derive(Debug, Clone, Copy)]
struct Member {
    role: Role,
    /// Our clock when its newest presence arrived.
    heard: Time,
    /// Its clock in that presence.
    sent_ms: u64,
}

/// The relay sessions of one node (see the module doc).
#[derive(Debug)]
pub struct RelayPath {
    cfg: RelayPathConfig,
    own: DatabaseId,
    role: Role,
    instance: InstanceId,
    envelope: Envelope,
    relays: Vec<RelayState>,
    sessions: BTreeMap<DatabaseId, PeerPath>,
    links: BTreeMap<LinkId, DatabaseId>,
    next_link: u64,
    members: BTreeMap<DatabaseId, Member>,
    next_presence: Time,
    subscribed_day: Option<u64>,
    out: VecDeque<RelayOutput>,
    events: VecDeque<PathEvent>,
    stats: RelayPathStats,
    /// A member was heard of anew, or a session began or ended (see `on_payload`).
    peers_changed: bool,
}

impl RelayPath {
    /// The relay path of node `own`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: RelayPathConfig,
        own: DatabaseId,
        role: Role,
        instance: InstanceId,
        keys: KeySchedule,
        rmsystem: RmSystem,
        env: &Environment,
    ) -> RelayPath {
        let relays = (0..cfg.relays).map(|_| RelayState::default()).collect();
        RelayPath {
            envelope: Envelope::new(keys, rmsystem, env, instance),
            cfg,
            own,
            role,
            instance,
            relays,
            sessions: BTreeMap::new(),
            links: BTreeMap::new(),
            next_link: 1,
            members: BTreeMap::new(),
            peers_changed: false,
            next_presence: Time(0),
            subscribed_day: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: RelayPathStats::default(),
        }
    }

    /// Whether relays are configured.
    pub fn enabled(&self) -> bool {
        !self.relays.is_empty()
    }

    /// The settings.
    pub fn config(&self) -> &RelayPathConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> RelayPathStats {
        self.stats
    }

    /// Members heard of by presence within its TTL, with their roles.
    pub fn members(&self, now: Time) -> Vec<(DatabaseId, Role)> {
        let ttl_us = u64::from(self.cfg.presence_ttl_secs) * 1_000_000;
        self.members
            .iter()
            .filter(|(_, m)| now.0.saturating_sub(m.heard.0) <= ttl_us)
            .map(|(d, m)| (*d, m.role))
            .collect()
    }

    /// The relays, for status.
    pub fn relay_status(&self, now: Time) -> Vec<RelayStatus> {
        self.relays
            .iter()
            .zip(0u16..)
            .map(|(r, index)| RelayStatus {
                index,
                state: match (r.up, r.refused) {
                    (true, _) => "up",
                    (false, Some(_)) => "refused",
                    (false, None) => "down",
                },
                refused: r.refused.map(|reason| reason.as_str().to_string()),
                observed: r.observed,
                posted: r.posted,
                delivered: r.delivered,
                post_refusals: r.post_refusals,
                backoff_ms: r.backoff_until.0.saturating_sub(now.0) / 1000,
            })
            .collect()
    }

    /// The session behind `link`, for status.
    pub fn session_status(&self, link: LinkId) -> Option<SessionStatus> {
        let p = self.links.get(&link).and_then(|d| self.sessions.get(d))?;
        Some(SessionStatus { rtt_ms: p.session.srtt_ms(), stats: p.session.stats() })
    }

    /// The next relay action for the driver.
    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.out.pop_front()
    }

    /// The next event for the node.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    fn up_relays(&self, now: Time) -> Vec<u16> {
        self.relays
            .iter()
            .zip(0u16..)
            .filter(|(r, _)| r.up && r.backoff_until <= now)
            .map(|(_, i)| i)
            .collect()
    }

    // ----- payloads -----

    /// A payload delivered from `mailbox` by `relay`. Returns whether it changed who the
    /// node may want a session with: a member heard of anew (or again after its presence
    /// expired), or a session begun or ended. Its links and messages come out as events.
    pub fn on_payload<R: Rng>(
        &mut self,
        now: Time,
        rng: &mut R,
        relay: RelayIndex,
        mailbox: Mailbox,
        bytes: &[u8],
    ) -> bool {
        self.peers_changed = false;
        self.take_payload(now, rng, relay, mailbox, bytes);
        std::mem::take(&mut self.peers_changed)
    }

    fn take_payload<R: Rng>(
        &mut self,
        now: Time,
        rng: &mut R,
        relay: RelayIndex,
        mailbox: Mailbox,
        bytes: &[u8],
    ) {
        let Some(r) = self.relays.get_mut(usize::from(relay.0)) else { return };
        r.delivered += 1;
        self.stats.payloads_received += 1;
        let plain = match self.envelope.open(now.as_secs(), &mailbox, bytes) {
            Ok(p) => p,
            Err(_) => {
                self.stats.payloads_refused += 1;
                return;
            }
        };
        if plain.sender == self.own {
            return; // our own presence
        }
        let presence = matches!(plain.records.as_slice(), [Record::Presence { .. }]);
        if presence {
            // Clocks may differ by twice the maximum skew, so the sender's time is only
            // checked that far; a member is refreshed only by a presence newer (by the
            // sender's clock) than the last one, so replays and redeliveries refresh nothing.
            let ttl_ms = u64::from(self.cfg.presence_ttl_secs) * 1000;
            let skew_ms = self.envelope.keys().max_clock_skew_secs().saturating_mul(2000);
            let now_ms = now.as_millis();
            let known = self.members.get(&plain.sender).map(|m| m.sent_ms);
            if now_ms.saturating_sub(plain.sent_ms) > ttl_ms.saturating_add(skew_ms)
                || plain.sent_ms.saturating_sub(now_ms) > skew_ms
                || known.is_some_and(|sent| plain.sent_ms <= sent)
            {
                self.stats.stale += 1;
                return;
            }
            if let [Record::Presence { role, .. }] = plain.records.as_slice() {
                let ttl_us = u64::from(self.cfg.presence_ttl_secs) * 1_000_000;
                let live = self
                    .members
                    .get(&plain.sender)
                    .is_some_and(|m| now.0.saturating_sub(m.heard.0) <= ttl_us);
                self.peers_changed |= !live;
                let member = Member { role: *role, heard: now, sent_ms: plain.sent_ms };
                self.heard(plain.sender, member);
            }
            return;
        }
        if plain.recipient != self.own {
            self.stats.not_for_us += 1;
            return;
        }
        let peer = plain.sender;
        for record in &plain.records {
            self.on_record(now, peer, plain.sent_ms, record);
        }
        self.service(now, rng);
    }

    /// Remembers `member`, forgetting the least recently heard one when [`MAX_MEMBERS`] are
    /// known (linear, once per presence of a new member past the bound).
    fn heard(&mut self, dbid: DatabaseId, member: Member) {
        if self.members.len() >= MAX_MEMBERS && !self.members.contains_key(&dbid) {
            let oldest = self.members.iter().min_by_key(|(d, m)| (m.heard, **d)).map(|(d, _)| *d);
            if let Some(oldest) = oldest {
                self.members.remove(&oldest);
            }
        }
        self.members.insert(dbid, member);
    }

    /// Whether a `Syn` sealed at `sent_ms` (the sender's clock) may still start a session at
    /// `now`: its opener waits [`HANDSHAKE_LIFETIME_MS`] at most, and the two clocks differ by
    /// up to twice the maximum skew. An older one is a replay (a relay keeps payloads for
    /// their TTL, and anyone who saw one can post it again): answering it would cost up to
    /// `SYN_ATTEMPTS` `SynAck`s and, with a session working, a candidate.
    fn syn_is_fresh(&self, now: Time, sent_ms: u64) -> bool {
        let skew_ms = self.envelope.keys().max_clock_skew_secs().saturating_mul(2000);
        now.as_millis().saturating_sub(sent_ms) <= HANDSHAKE_LIFETIME_MS.saturating_add(skew_ms)
    }

    fn on_record(&mut self, now: Time, peer: DatabaseId, sent_ms: u64, record: &Record) {
        let session = match record {
            Record::Syn { session }
            | Record::SynAck { session }
            | Record::Fragment { session, .. }
            | Record::Ack { session, .. }
            | Record::Fin { session } => *session,
            Record::Presence { .. } => return,
        };
        let bound = self.cfg.delays.bound(0);
        let own = self.own;
        let max = self.cfg.max_sessions.saturating_mul(2);
        let count = self.sessions.len();
        // A `Syn` of a session we do not know yet starts one (or a candidate): not if old.
        let known = self.sessions.get(&peer).is_some_and(|p| {
            p.session.id() == session || p.candidate.as_ref().is_some_and(|c| c.id() == session)
        });
        if matches!(record, Record::Syn { .. }) && !known && !self.syn_is_fresh(now, sent_ms) {
            self.stats.replays += 1;
            return;
        }
        let Some(p) = self.sessions.get_mut(&peer) else {
            if let Record::Syn { session } = record {
                if count < max {
                    self.add_session(peer, Session::answer(*session, now, bound), false);
                }
            } else {
                self.stats.stale += 1;
            }
            return;
        };
        if p.session.id() == session {
            p.session.on_record(now, record);
            return;
        }
        if let Some(c) = p.candidate.as_mut().filter(|c| c.id() == session) {
            c.on_record(now, record);
            return;
        }
        let Record::Syn { session } = record else {
            self.stats.stale += 1;
            return;
        };
        match p.session.state() {
            // Crossing `Syn`s: the session opened by the smaller dbid is kept.
            State::ExpectSynAck if peer < own => {
                p.session = Session::answer(*session, now, bound);
                p.outbound = false;
            }
            State::ExpectSynAck => {}
            // A new session from a restarted peer (or a replay): it replaces ours only once
            // confirmed.
            _ => p.candidate = Some(Session::answer(*session, now, bound)),
        }
    }

    fn add_session(&mut self, peer: DatabaseId, session: Session, outbound: bool) {
        self.peers_changed = true;
        let link = LinkId(LinkId::RELAY_BIT | self.next_link);
        self.next_link += 1;
        self.links.insert(link, peer);
        self.sessions.insert(
            peer,
            PeerPath {
                link,
                session,
                outbound,
                linked: false,
                candidate: None,
                flush_at: None,
                flush_urgency: 2,
                last_relay: None,
            },
        );
    }

    /// Opens sessions to `peers` (in order of preference) that have none, while fewer than
    /// `max_sessions` of ours exist. Ends nothing: the node closes links it no longer wants.
    pub fn want<R: Rng>(&mut self, now: Time, rng: &mut R, peers: &[DatabaseId]) {
        if !self.enabled() || self.up_relays(now).is_empty() {
            return;
        }
        let ours = self.sessions.values().filter(|p| p.outbound).count();
        let mut room = self.cfg.max_sessions.saturating_sub(ours);
        let bound = self.cfg.delays.bound(0);
        for peer in peers {
            if room == 0 {
                break;
            }
            if *peer == self.own || self.sessions.contains_key(peer) {
                continue;
            }
            let id = rng.gen::<u64>();
            self.add_session(*peer, Session::open(id, now, bound), true);
            room -= 1;
        }
        self.service(now, rng);
    }

    /// Queues a message (`Message::encode`) on relay link `link`. An overflow ends the session.
    pub fn send<R: Rng>(
        &mut self,
        now: Time,
        rng: &mut R,
        link: LinkId,
        message: &[u8],
        urgency: u8,
    ) {
        let Some(p) = self.links.get(&link).and_then(|d| self.sessions.get_mut(d)) else { return };
        if p.link != link {
            return;
        }
        match p.session.send(message, urgency) {
            Ok(()) => {}
            Err(session::SessionError::Overflow) => {
                // Like a driver link whose queue fills: the session ends (`Fin`, link down);
                // anti-entropy on the next one restores everything.
                self.stats.overflows += 1;
                p.session.close();
            }
            Err(_) => return, // closed already: the node learns of it by `LinkDown`
        }
        p.schedule_flush(now, rng, &self.cfg.delays, urgency);
    }

    /// Whether an eager push on `link` fits: the session is open and under half its bounds
    /// (a push past them would close it; anti-entropy carries what is not pushed).
    pub fn can_push(&self, link: LinkId) -> bool {
        self.links.get(&link).and_then(|d| self.sessions.get(d)).is_some_and(|p| {
            p.link == link
                && p.session.unacked() < session::MAX_UNACKED_MESSAGES / 2
                && p.session.memory() < session::MAX_UNACKED_BYTES / 2
        })
    }

    /// Bytes and messages `link`'s session can still take before a send would overflow it
    /// (a margin of 16 messages is kept for control; zero when it is not open).
    pub fn send_room(&self, link: LinkId) -> (usize, usize) {
        self.links.get(&link).and_then(|d| self.sessions.get(d)).map_or((0, 0), |p| {
            let slots = session::MAX_UNACKED_MESSAGES.saturating_sub(p.session.unacked() + 16);
            if p.link != link || slots == 0 {
                (0, 0)
            } else {
                (session::MAX_UNACKED_BYTES.saturating_sub(p.session.unacked_bytes()), slots)
            }
        })
    }

    /// The node closes relay link `link`: its session ends with a `Fin`.
    pub fn close<R: Rng>(&mut self, now: Time, rng: &mut R, link: LinkId) {
        let Some(p) = self.links.get(&link).and_then(|d| self.sessions.get_mut(d)) else { return };
        p.linked = false; // the node knows
        p.session.close();
        p.flush_at = Some(now);
        self.service(now, rng);
    }

    // ----- timers -----

    /// Runs the timers due at `now`.
    pub fn handle_timeout<R: Rng>(&mut self, now: Time, rng: &mut R) {
        if !self.enabled() {
            return;
        }
        for r in &mut self.relays {
            if r.backoff_until <= now {
                r.backoff_until = Time(0); // over: no more timer for it
            }
        }
        if self.subscribed_day.is_some_and(|d| d != mailbox_day(now.as_secs())) {
            self.subscribe(now, None);
        }
        if now >= self.next_presence {
            if self.up_relays(now).is_empty() {
                // Nothing to post through: `relay_up` posts it when a relay comes up.
                self.next_presence = now.plus_millis(self.cfg.presence_every_ms);
            } else {
                self.post_presence(now, None);
            }
        }
        for p in self.sessions.values_mut() {
            p.session.handle_timeout(now);
            if let Some(c) = &mut p.candidate {
                c.handle_timeout(now);
            }
        }
        self.service(now, rng);
    }

    /// When [`RelayPath::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Time> {
        if !self.enabled() {
            return None;
        }
        let mut next = self.subscribed_day.map(|d| Time((d + 1) * MAILBOX_DAY_SECS * 1_000_000));
        let mut at = |t: Option<Time>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        at(Some(self.next_presence));
        // The end of a backoff lets what waits for that relay go.
        for r in self.relays.iter().filter(|r| r.up && r.backoff_until > Time(0)) {
            at(Some(r.backoff_until));
        }
        for p in self.sessions.values() {
            at(p.session.poll_timeout());
            at(p.flush_at);
            at(p.candidate.as_ref().and_then(Session::poll_timeout));
        }
        next
    }

    /// After any change: state changes become events, due payloads leave.
    fn service<R: Rng>(&mut self, now: Time, rng: &mut R) {
        let peers: Vec<DatabaseId> = self.sessions.keys().copied().collect();
        for peer in peers {
            self.service_peer(now, rng, peer);
        }
    }

    fn service_peer<R: Rng>(&mut self, now: Time, rng: &mut R, peer: DatabaseId) {
        // With no relay to post through nothing is scheduled (no wake-ups while all are
        // down); `relay_up` flushes what waits.
        let can_post = self.relays.iter().any(|r| r.up && r.backoff_until <= now);
        let Some(p) = self.sessions.get_mut(&peer) else { return };
        // A confirmed candidate replaces the session.
        if p.candidate.as_ref().is_some_and(|c| c.state() == State::Open) {
            if let Some(c) = p.candidate.take() {
                let old = std::mem::replace(&mut p.session, c);
                if p.linked {
                    self.events.push_back(PathEvent::LinkDown { link: p.link });
                }
                self.links.remove(&p.link);
                drop(old);
                let link = LinkId(LinkId::RELAY_BIT | self.next_link);
                self.next_link += 1;
                p.link = link;
                p.linked = false;
                p.outbound = false;
                self.links.insert(link, peer);
            }
        }
        if p.candidate.as_ref().is_some_and(|c| c.state() == State::Closed) {
            p.candidate = None;
        }
        if p.session.state() == State::Open && !p.linked {
            p.linked = true;
            self.events.push_back(PathEvent::LinkUp { link: p.link, peer, outbound: p.outbound });
        }
        while let Some(bytes) = p.session.poll_message() {
            self.events.push_back(PathEvent::Message { link: p.link, bytes });
        }
        // The most urgent records waiting in either session set the delay: a candidate's
        // `SynAck` (a restarted peer's new session) must not wait for a draw made for the old
        // session's background traffic.
        let urgency = std::iter::once(&p.session)
            .chain(p.candidate.as_ref())
            .filter(|s| s.wants_to_send())
            .map(Session::urgency)
            .min();
        if let (Some(urgency), true) = (urgency, can_post) {
            p.schedule_flush(now, rng, &self.cfg.delays, urgency);
        }
        if p.flush_at.is_some_and(|at| at <= now) {
            p.flush_at = None;
            self.flush(now, rng, peer);
        }
        let Some(p) = self.sessions.get_mut(&peer) else { return };
        if p.session.state() == State::Closed && !p.session.wants_to_send() {
            let link = p.link;
            if p.linked {
                self.events.push_back(PathEvent::LinkDown { link });
            }
            self.links.remove(&link);
            self.sessions.remove(&peer);
            self.peers_changed = true;
        }
    }

    /// Sends every payload's worth waiting for `peer`.
    fn flush<R: Rng>(&mut self, now: Time, rng: &mut R, peer: DatabaseId) {
        let up = self.up_relays(now);
        let Some(p) = self.sessions.get_mut(&peer) else { return };
        let PeerPath { session, candidate, last_relay, .. } = p;
        let mut payloads = Vec::new();
        for s in std::iter::once(session).chain(candidate.as_mut()) {
            for _ in 0..10_000 {
                // The relay is drawn before anything is composed, so nothing is taken from the
                // session while no relay can carry it.
                let Some(relay) = choose_relay(rng, &up, *last_relay) else {
                    // Fragments are resent by their RTO, the handshake by its timer, acks
                    // with the next fragment; `relay_up` flushes again.
                    self.stats.no_relay += 1;
                    return;
                };
                let records = compose(s, now);
                if records.is_empty() {
                    break;
                }
                *last_relay = Some(relay);
                payloads.push((relay, records));
            }
        }
        let mb = self.envelope.mailbox(&peer, mailbox_day(now.as_secs()));
        let ttl = self.payload_ttl_secs();
        for (relay, records) in payloads {
            let plain =
                RelayPlain { sender: self.own, recipient: peer, sent_ms: now.as_millis(), records };
            self.post(now, mb, &plain, &[relay], ttl, false);
        }
    }

    /// The relay links, for the node's link table.
    pub fn links(&self) -> impl Iterator<Item = (LinkId, DatabaseId)> + '_ {
        self.links.iter().map(|(l, d)| (*l, *d))
    }

    /// Peers with a session (open or opening).
    pub fn session_peers(&self) -> BTreeSet<DatabaseId> {
        self.sessions.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::envelope::{mailbox, presence_mailbox};
    use super::*;
    use crate::crypto::SystemKey;
    use crate::wire::relay::PostRefuseReason;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const NOW: Time = Time(1_750_000_000_000_000);

    fn path(dbid: &str, instance: u8) -> RelayPath {
        let system: RmSystem = "77,123,89,201192".parse().unwrap();
        let env = Environment::live();
        let keys = KeySchedule::new(&SystemKey::from_bytes([3; 32]), system, &env, 86_400);
        let cfg = RelayPathConfig { relays: 1, ..RelayPathConfig::default() };
        let dbid = dbid.parse().unwrap();
        RelayPath::new(cfg, dbid, Role::StoreServer, InstanceId([instance; 16]), keys, system, &env)
    }

    /// A relay between two paths: posts go to the other side's subscribed mailboxes; returns
    /// every post seen (for replays).
    struct Pair {
        a: RelayPath,
        b: RelayPath,
        subs: [Vec<Mailbox>; 2],
        rng: StdRng,
        seen: Vec<(Mailbox, Vec<u8>)>,
        /// When each session post (not a presence broadcast) was made, and by which side.
        posted: Vec<(Time, usize)>,
    }

    impl Pair {
        fn new() -> Pair {
            Pair {
                a: path("AAAAAAAAAAAAAAA", 1),
                b: path("BBBBBBBBBBBBBBB", 2),
                subs: [Vec::new(), Vec::new()],
                rng: StdRng::seed_from_u64(5),
                seen: Vec::new(),
                posted: Vec::new(),
            }
        }

        fn side(&mut self, i: usize) -> &mut RelayPath {
            if i == 0 {
                &mut self.a
            } else {
                &mut self.b
            }
        }

        /// Runs for `ms` in 5 ms steps, moving posts at once.
        fn run(&mut self, from: Time, ms: u64) -> Vec<(usize, PathEvent)> {
            let mut events = Vec::new();
            let mut now = from;
            while now <= from.plus_millis(ms) {
                for i in 0..2 {
                    let mut rng = StdRng::seed_from_u64(now.0 ^ i as u64);
                    self.side(i).handle_timeout(now, &mut rng);
                    while let Some(out) = self.side(i).poll_output() {
                        match out {
                            RelayOutput::Subscribe { mailboxes, .. } => self.subs[i] = mailboxes,
                            RelayOutput::Post { mailbox, bytes, ttl_secs, broadcast, .. } => {
                                // Session payloads ask no longer a TTL than is usable.
                                assert!(broadcast || ttl_secs == 172_800, "ttl {ttl_secs}");
                                self.seen.push((mailbox, bytes.clone()));
                                if !broadcast {
                                    self.posted.push((now, i));
                                }
                                if self.subs[1 - i].contains(&mailbox) {
                                    let rng = &mut self.rng;
                                    let other = if i == 0 { &mut self.b } else { &mut self.a };
                                    other.on_payload(now, rng, RelayIndex(0), mailbox, &bytes);
                                }
                            }
                        }
                    }
                    while let Some(e) = self.side(i).poll_event() {
                        events.push((i, e));
                    }
                }
                now = now.plus_millis(5);
            }
            events
        }
    }

    fn up(p: &mut Pair) {
        let addr = SocketAddr::from(([192, 0, 2, 1], 1));
        let mut rng = StdRng::seed_from_u64(1);
        p.a.relay_up(NOW, &mut rng, RelayIndex(0), addr);
        p.b.relay_up(NOW, &mut rng, RelayIndex(0), addr);
    }

    #[test]
    fn presence_then_a_session_carries_messages_in_order() {
        let mut p = Pair::new();
        up(&mut p);
        p.run(NOW, 50);
        // a posted its presence before b subscribed in this harness (lost); b's reached a.
        assert!(p.b.members(NOW).is_empty());
        let members = p.a.members(NOW);
        assert_eq!(members, vec![("BBBBBBBBBBBBBBB".parse().unwrap(), Role::StoreServer)]);
        // Presence ages out, and a replay of it refreshes nothing.
        let later = NOW.plus_millis(31 * 60 * 1000);
        assert!(p.a.members(later).is_empty());
        let stale = p.a.stats().stale;
        let replay: Vec<(Mailbox, Vec<u8>)> = p.seen.clone();
        let mut rng = StdRng::seed_from_u64(9);
        for (mb, bytes) in &replay {
            p.a.on_payload(later, &mut rng, RelayIndex(0), *mb, bytes);
        }
        assert!(p.a.members(later).is_empty(), "a replayed presence refreshed a member");
        assert!(p.a.stats().stale > stale);
        // A member whose clock is an hour behind is still heard.
        let mut c = path("CCCCCCCCCCCCCCC", 3);
        let behind = Time(later.0 - 3_600_000_000);
        c.relay_up(behind, &mut rng, RelayIndex(0), SocketAddr::from(([192, 0, 2, 3], 1)));
        while let Some(out) = c.poll_output() {
            if let RelayOutput::Post { mailbox, bytes, broadcast: true, .. } = out {
                p.a.on_payload(later, &mut rng, RelayIndex(0), mailbox, &bytes);
            }
        }
        let c_dbid: DatabaseId = "CCCCCCCCCCCCCCC".parse().unwrap();
        assert_eq!(p.a.members(later), vec![(c_dbid, Role::StoreServer)]);
        let b_dbid: DatabaseId = "BBBBBBBBBBBBBBB".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(2);
        p.a.want(NOW, &mut rng, &[b_dbid]);
        let events = p.run(NOW.plus_millis(50), 500);
        let ups: Vec<_> =
            events.iter().filter(|(_, e)| matches!(e, PathEvent::LinkUp { .. })).collect();
        assert_eq!(ups.len(), 2, "{events:?}");
        let PathEvent::LinkUp { link, outbound: true, .. } =
            ups.iter().find(|(i, _)| *i == 0).unwrap().1
        else {
            panic!("a opened it")
        };
        assert!(link.is_relay());
        for n in 0..20u8 {
            p.a.send(NOW, &mut rng, link, &vec![n; 300 * usize::from(n)], n % 3);
        }
        let events = p.run(NOW.plus_millis(600), 5_000);
        let got: Vec<Vec<u8>> = events
            .into_iter()
            .filter_map(|(i, e)| match e {
                PathEvent::Message { bytes, .. } if i == 1 => Some(bytes),
                _ => None,
            })
            .collect();
        let want: Vec<Vec<u8>> = (0..20u8).map(|n| vec![n; 300 * usize::from(n)]).collect();
        assert_eq!(got, want);
        assert!(p.seen.iter().all(|(_, b)| envelope::SIZE_CLASSES.contains(&b.len())));
    }

    #[test]
    fn a_refused_post_backs_the_relay_off_then_traffic_resumes() {
        let mut p = Pair::new();
        up(&mut p);
        p.run(NOW, 50);
        let b_dbid: DatabaseId = "BBBBBBBBBBBBBBB".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(2);
        p.a.want(NOW, &mut rng, &[b_dbid]);
        p.run(NOW.plus_millis(50), 500);
        let link = p.a.links().next().unwrap().0;
        let t = NOW.plus_millis(600);
        p.a.post_refused(t, &mut rng, RelayIndex(0), PostRefuseReason::QuotaFull);
        assert_eq!(p.a.relay_status(t)[0].backoff_ms, 30_000);
        assert_eq!(p.a.poll_timeout().map(|at| at <= t.plus_millis(30_000)), Some(true));
        p.a.send(t, &mut rng, link, b"after the refusal", 0);
        let posted = p.seen.len();
        let events = p.run(t, 10_000);
        assert_eq!(p.seen.len(), posted, "nothing posted during the backoff");
        assert!(!events.iter().any(|(_, e)| matches!(e, PathEvent::Message { .. })));
        let events = p.run(t.plus_millis(10_005), 25_000);
        let got: Vec<_> = events
            .iter()
            .filter_map(|(i, e)| match e {
                PathEvent::Message { bytes, .. } if *i == 1 => Some(bytes.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![b"after the refusal".to_vec()]);
        assert_eq!(p.a.relay_status(t.plus_millis(40_000))[0].backoff_ms, 0);
    }

    /// A session between a and b is open; returns a's link.
    fn open_session(p: &mut Pair) -> LinkId {
        up(p);
        p.run(NOW, 50);
        let b_dbid: DatabaseId = "BBBBBBBBBBBBBBB".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(2);
        p.a.want(NOW, &mut rng, &[b_dbid]);
        p.run(NOW.plus_millis(50), 500);
        p.a.links().next().unwrap().0
    }

    /// A peer that restarts opens a new session while ours with it still looks open (it sent
    /// no `Fin`), and our old session has background traffic waiting for its mixing delay (up
    /// to 2 s). Our `SynAck` for the new session goes out within the control delay (20 ms),
    /// not when that background delay ends: the restarted peer's first units through the relay
    /// are not held back by it (the bench's first delivery after a NATed receiver comes back
    /// took ~1.5-2.1 s in some runs).
    #[test]
    fn a_restarted_peers_new_session_is_answered_within_the_control_delay() {
        let mut p = Pair::new();
        let link = open_session(&mut p);
        p.run(NOW.plus_millis(600), 3_000);
        // b restarts: a new process, nothing of the old session; a has background traffic
        // for the old one.
        let t = NOW.plus_millis(5_000);
        let mut rng = StdRng::seed_from_u64(11);
        p.a.send(t, &mut rng, link, b"background", 2);
        p.b = path("BBBBBBBBBBBBBBB", 9);
        p.subs[1].clear();
        p.b.relay_up(t, &mut rng, RelayIndex(0), SocketAddr::from(([192, 0, 2, 1], 1)));
        p.b.want(t, &mut rng, &["AAAAAAAAAAAAAAA".parse().unwrap()]);
        p.posted.clear();
        let events = p.run(t, 3_000);
        let syn = p.posted.iter().find(|(_, side)| *side == 1).expect("b posts its Syn").0;
        let answer = p.posted.iter().find(|(at, side)| *side == 0 && *at >= syn);
        let answered = answer.expect("a answers").0;
        assert!(
            answered.0 - syn.0 <= 25_000,
            "a answered {} ms after b's Syn",
            (answered.0 - syn.0) / 1000
        );
        let up = events.iter().any(|(i, e)| *i == 1 && matches!(e, PathEvent::LinkUp { .. }));
        assert!(up, "b's new session opened: {events:?}");
    }

    /// The backoff after a refused post doubles while refusals follow each other, and starts
    /// over at 30 s once a post through the relay went unrefused for `POST_TAKEN_MS`.
    #[test]
    fn the_post_backoff_starts_over_after_a_post_is_taken() {
        let mut p = Pair::new();
        let link = open_session(&mut p);
        let mut rng = StdRng::seed_from_u64(3);
        let t = NOW.plus_millis(600);
        p.a.post_refused(t, &mut rng, RelayIndex(0), PostRefuseReason::QuotaFull);
        assert_eq!(p.a.relay_status(t)[0].backoff_ms, 30_000);
        let t = t.plus_millis(30_000);
        p.a.post_refused(t, &mut rng, RelayIndex(0), PostRefuseReason::QuotaFull);
        assert_eq!(p.a.relay_status(t)[0].backoff_ms, 60_000, "refused again: doubled");
        // After the backoff a post goes through, and another more than 10 s later.
        let t = t.plus_millis(60_001);
        p.run(t, 100);
        p.a.send(t.plus_millis(200), &mut rng, link, b"one", 0);
        p.run(t.plus_millis(200), 1_000);
        let posted = p.a.relay_status(t)[0].posted;
        p.a.send(t.plus_millis(12_000), &mut rng, link, b"two", 0);
        p.run(t.plus_millis(12_000), 1_000);
        assert!(p.a.relay_status(t)[0].posted > posted);
        let t = t.plus_millis(14_000);
        p.a.post_refused(t, &mut rng, RelayIndex(0), PostRefuseReason::QuotaFull);
        assert_eq!(p.a.relay_status(t)[0].backoff_ms, 30_000, "a taken post reset it");
    }

    /// A `Syn` sealed longer ago than a handshake lives (plus twice the clock skew) is a
    /// replay: it opens no session and no candidate, and is counted.
    #[test]
    fn an_old_syn_is_refused_as_a_replay() {
        let a_dbid: DatabaseId = "AAAAAAAAAAAAAAA".parse().unwrap();
        let b_dbid: DatabaseId = "BBBBBBBBBBBBBBB".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        let syn = |p: &mut Pair, sent: Time, session: u64| {
            let mb = mailbox(p.a.envelope.keys(), &b_dbid, mailbox_day(sent.as_secs()));
            let plain = RelayPlain {
                sender: a_dbid,
                recipient: b_dbid,
                sent_ms: sent.as_millis(),
                records: vec![Record::Syn { session }],
            };
            (mb, p.a.envelope.seal(sent.as_secs(), &mb, &plain).unwrap())
        };
        let skew_ms = 2 * p_skew_ms();
        let late = HANDSHAKE_LIFETIME_MS + skew_ms + 1_000;
        // A fresh b gets a Syn sealed `late` ago: nothing opens.
        let mut p = Pair::new();
        let (mb, old) = syn(&mut p, NOW, 7);
        let then = NOW.plus_millis(late);
        assert!(!p.b.on_payload(then, &mut rng, RelayIndex(0), mb, &old));
        assert!(p.b.session_peers().is_empty());
        assert_eq!(p.b.stats().replays, 1);
        // One sealed a minute ago opens a session.
        let (mb, fresh) = syn(&mut p, Time(then.0 - 60_000_000), 8);
        assert!(p.b.on_payload(then, &mut rng, RelayIndex(0), mb, &fresh), "a new session");
        assert_eq!(p.b.session_peers().into_iter().collect::<Vec<_>>(), vec![a_dbid]);
        assert!(!p.b.on_payload(then, &mut rng, RelayIndex(0), mb, &fresh), "redelivered");
        // With a session working, an old Syn of a new id makes no candidate.
        let mut p = Pair::new();
        open_session(&mut p);
        let (mb, old) = syn(&mut p, NOW, 9);
        p.b.on_payload(then, &mut rng, RelayIndex(0), mb, &old);
        assert!(p.b.sessions.get(&a_dbid).is_some_and(|s| s.candidate.is_none()));
        assert_eq!(p.b.stats().replays, 1);
    }

    fn p_skew_ms() -> u64 {
        crate::crypto::DEFAULT_MAX_CLOCK_SKEW_SECS * 1_000
    }

    /// Presence from more members than `MAX_MEMBERS` forgets the least recently heard.
    #[test]
    fn members_are_bounded_and_the_least_recently_heard_goes() {
        let mut a = path("AAAAAAAAAAAAAAA", 1);
        let mut rng = StdRng::seed_from_u64(5);
        let member = |i: usize| -> DatabaseId { format!("M{i:014}").parse().unwrap() };
        let day = mailbox_day(NOW.as_secs());
        let mb = presence_mailbox(a.envelope.keys(), day);
        let mut hear = |a: &mut RelayPath, i: usize, at: Time| {
            let plain = RelayPlain {
                sender: member(i),
                recipient: member(i),
                sent_ms: at.as_millis(),
                records: vec![Record::Presence { role: Role::Lane, instance: InstanceId([9; 16]) }],
            };
            let bytes = a.envelope.seal(at.as_secs(), &mb, &plain).unwrap();
            a.on_payload(at, &mut rng, RelayIndex(0), mb, &bytes)
        };
        for i in 0..MAX_MEMBERS {
            assert!(hear(&mut a, i, NOW.plus_millis(u64::try_from(i).unwrap())), "new: {i}");
        }
        // Member 0 is heard again (no change for the node): member 1 is now the least
        // recently heard.
        let t = NOW.plus_millis(10_000);
        assert!(!hear(&mut a, 0, t));
        assert!(hear(&mut a, MAX_MEMBERS, t.plus_millis(1)));
        let known: BTreeSet<DatabaseId> = a.members(t).into_iter().map(|(d, _)| d).collect();
        assert_eq!(known.len(), MAX_MEMBERS);
        assert!(known.contains(&member(0)) && known.contains(&member(MAX_MEMBERS)));
        assert!(!known.contains(&member(1)));
    }

    /// The TTL asked of a relay is what the recipient can still open (two days by default),
    /// whatever is configured above it; a payload that old still opens.
    #[test]
    fn the_payload_ttl_is_what_the_recipient_can_use() {
        let mut a = path("AAAAAAAAAAAAAAA", 1);
        a.cfg.payload_ttl_secs = 604_800;
        assert_eq!(a.payload_ttl_secs(), 172_800);
        a.cfg.payload_ttl_secs = 3_600;
        assert_eq!(a.payload_ttl_secs(), 3_600, "a shorter one is kept");
        let mut p = Pair::new();
        open_session(&mut p);
        let ttl = p.a.payload_ttl_secs();
        // A payload sealed at the start or the end of a day opens `ttl` later.
        let day_start = (NOW.as_secs() / MAILBOX_DAY_SECS) * MAILBOX_DAY_SECS;
        for sealed_at in [day_start, day_start + MAILBOX_DAY_SECS - 1] {
            let mb = Mailbox([5; 16]);
            let plain = RelayPlain {
                sender: p.a.own,
                recipient: p.b.own,
                sent_ms: sealed_at * 1_000,
                records: vec![Record::Fin { session: 1 }],
            };
            let bytes = p.a.envelope.seal(sealed_at, &mb, &plain).unwrap();
            let open_at = sealed_at + u64::from(ttl);
            assert_eq!(p.b.envelope.open(open_at, &mb, &bytes), Ok(plain.clone()));
        }
    }

    #[test]
    fn replayed_payloads_break_nothing_and_a_fin_ends_the_link() {
        let mut p = Pair::new();
        up(&mut p);
        p.run(NOW, 50);
        let b_dbid: DatabaseId = "BBBBBBBBBBBBBBB".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(2);
        p.a.want(NOW, &mut rng, &[b_dbid]);
        let events = p.run(NOW.plus_millis(50), 500);
        let link_b = events
            .iter()
            .find_map(|(i, e)| match e {
                PathEvent::LinkUp { link, .. } if *i == 1 => Some(*link),
                _ => None,
            })
            .unwrap();
        // The relay replays everything it saw so far to b, twice.
        let replay: Vec<(Mailbox, Vec<u8>)> = p.seen.clone();
        let t = NOW.plus_millis(600);
        for (mb, bytes) in replay.iter().chain(replay.iter()) {
            p.b.on_payload(t, &mut rng, RelayIndex(0), *mb, bytes);
        }
        let events = p.run(t, 2_000);
        assert!(!events.iter().any(|(_, e)| matches!(e, PathEvent::LinkDown { .. })), "{events:?}");
        assert!(p.b.session_status(link_b).is_some(), "the same session still works");
        // A payload changed in transit does not open.
        let (mb, mut bytes) = replay[0].clone();
        bytes[40] ^= 1;
        let refused = p.b.stats().payloads_refused;
        p.b.on_payload(t, &mut rng, RelayIndex(0), mb, &bytes);
        assert_eq!(p.b.stats().payloads_refused, refused + 1);
        // a closes: b's link goes down.
        let link_a = p.a.links().next().unwrap().0;
        p.a.close(t.plus_millis(2_100), &mut rng, link_a);
        let events = p.run(t.plus_millis(2_100), 500);
        assert!(events.contains(&(1, PathEvent::LinkDown { link: link_b })), "{events:?}");
        assert!(p.a.links().next().is_none());
    }
}
