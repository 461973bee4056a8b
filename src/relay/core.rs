//! The relay's logic, sans IO (design §1.3-§1.5): admission, posts with quotas and TTLs,
//! delivery to subscribers with a bounded window, `Taken`, and the counters `--status` shows.
//!
//! Contract with a driver (`super::server` in production; netsim later):
//! - inputs go in through `handle_*`, each with the current Unix time in ms; time never goes
//!   back (an earlier `now_ms` is treated as equal to the latest one seen);
//! - after inputs, call [`RelayCore::commit`] when [`RelayCore::wants_commit`] says so: it
//!   flushes the store and only then queues the `Posted` answers (a post is acknowledged only
//!   once durable);
//! - drain [`RelayCore::poll_output`] until `None`; sleep until [`RelayCore::poll_timeout`] and
//!   call [`RelayCore::handle_timeout`] (an extra call is harmless).
//!
//! The core owns no socket, reads no clock and draws no randomness: the driver passes the
//! nonce of each connection (from the OS RNG) and the TLS exporter. It does not parse bytes
//! (the driver decodes frames) and does not read `admitted.toml` (see `super::admitted`).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::admitted::{Admitted, SystemPolicy};
use super::store::{RelayStore, RelayStoreError, Scope, Usage};
use crate::crypto::admission::{AuthTranscript, EXPORTER_LEN};
use crate::id::RmSystem;
use crate::wire::relay::{
    Auth, Challenge, Deliver, Mailbox, Post, PostRefuseReason, RefuseReason, RelayFrame, Welcome,
    MAX_RELAY_PAYLOAD, RELAY_PROTOCOL_VERSION,
};

/// The driver's id of one connection.
pub type ConnId = u64;

/// Payload lengths accepted (the size classes of design §2.2): payloads of other lengths would
/// tell the relay message sizes.
pub const SIZE_CLASSES: [usize; 3] = [1024, 4096, 16 * 1024];

/// Broadcasts (presence, design §2.6) a system keeps; a new one evicts the oldest.
pub const MAX_BROADCASTS_PER_SYSTEM: u64 = 256;

/// Limits of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// A connection that has not sent `Auth` this long after connecting is refused.
    pub auth_timeout_ms: u64,
    /// Bytes delivered and not yet `Taken`, per connection; the rest waits on disk.
    pub delivery_window_bytes: u64,
    /// Connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Posts per second one connection may make on average (a token bucket)...
    pub posts_per_sec: u64,
    /// ...and in a burst.
    pub post_burst: u64,
}

impl Default for RelayLimits {
    /// 10 s, 1 MiB, 16 (design §1.3, §1.4); 2,000 posts/s with bursts of 4,000 (a store's
    /// peak sales rate is far lower; this bounds what one connection can make the relay write).
    fn default() -> RelayLimits {
        RelayLimits {
            auth_timeout_ms: 10_000,
            delivery_window_bytes: 1 << 20,
            max_connections_per_ip: 16,
            posts_per_sec: 2_000,
            post_burst: 4_000,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayOutput {
    /// Send `frame` on `conn`'s stream.
    Send {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: RelayFrame,
    },
    /// Close `conn` (after the frames queued before this), with the close code of `reason`.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: RefuseReason,
    },
}

/// A connection waiting for its `Auth`.
#[derive(Debug)]
struct ExpectAuth {
    deadline_ms: u64,
    nonce: [u8; 32],
    exporter: [u8; EXPORTER_LEN],
}

/// An admitted member's connection.
#[derive(Debug)]
struct Member {
    scope: Scope,
    /// Subscribed mailboxes and the last id delivered from each on this connection.
    subscriptions: BTreeMap<Mailbox, Option<u64>>,
    /// Delivered, not yet taken: id -> (mailbox, length, broadcast).
    in_flight: BTreeMap<u64, (Mailbox, u64, bool)>,
    in_flight_bytes: u64,
    /// Post tokens in thousandths, and when they were last refilled.
    post_tokens_milli: u64,
    tokens_at_ms: u64,
}

impl Member {
    /// Takes one post token, refilling at `per_sec` up to `burst`; `false` when none is left.
    fn take_post_token(&mut self, now_ms: u64, per_sec: u64, burst: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.tokens_at_ms);
        self.tokens_at_ms = now_ms;
        self.post_tokens_milli = self
            .post_tokens_milli
            .saturating_add(elapsed.saturating_mul(per_sec))
            .min(burst.saturating_mul(1000));
        match self.post_tokens_milli.checked_sub(1000) {
            Some(left) => {
                self.post_tokens_milli = left;
                true
            }
            None => false,
        }
    }
}

#[derive(Debug)]
enum ConnState {
    ExpectAuth(ExpectAuth),
    Member(Member),
    Closed,
}

#[derive(Debug)]
struct Conn {
    remote: SocketAddr,
    state: ConnState,
}

/// Counters of one system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SystemCounters {
    /// Posts stored.
    pub posted: u64,
    /// Payloads sent in `Deliver` frames (redeliveries included).
    pub delivered: u64,
    /// Payloads removed by `Taken`.
    pub taken: u64,
    /// Payloads removed by the TTL sweep.
    pub expired: u64,
    /// Posts refused for the quota.
    pub quota_refusals: u64,
    /// Posts refused for another reason (size, class, TTL).
    pub post_refusals: u64,
    /// Posts refused for the per-connection rate.
    pub rate_limited_posts: u64,
    /// Connections that claimed this system and failed the proof.
    pub bad_proof: u64,
}

/// One system in [`RelayStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemStatus {
    /// The RmSystem.
    pub rmsystem: String,
    /// The environment name (its tag in hex if no longer admitted).
    pub env: String,
    /// Whether `admitted.toml` lists it now.
    pub admitted: bool,
    /// Admitted connections now.
    pub connected: u64,
    /// What it holds.
    pub usage: Usage,
    /// Its byte quota.
    pub quota_bytes: u64,
    /// Its payload quota.
    pub max_payloads: u64,
    /// Counters since start.
    pub counters: SystemCounters,
}

/// What `--status` shows of a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayStatus {
    /// The relay's public key (hex): what members pin.
    pub key: String,
    /// Open connections (members and not yet admitted).
    pub connections: u64,
    /// Per system.
    pub systems: Vec<SystemStatus>,
    /// Refused connections by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// Frames of types this relay does not know, skipped.
    pub unknown_frames: u64,
}

/// The relay.
#[derive(Debug)]
pub struct RelayCore<S> {
    relay_key: [u8; 32],
    store: S,
    admitted: Admitted,
    limits: RelayLimits,
    conns: BTreeMap<ConnId, Conn>,
    outputs: VecDeque<RelayOutput>,
    /// Posts stored but not yet flushed: answered by `commit`.
    unflushed: BTreeMap<ConnId, Vec<u32>>,
    counters: BTreeMap<Scope, SystemCounters>,
    refused: BTreeMap<&'static str, u64>,
    unknown_frames: u64,
    now_ms: u64,
}

impl<S: RelayStore> RelayCore<S> {
    /// A relay with public key `relay_key` over `store`, admitting `admitted`.
    pub fn new(relay_key: [u8; 32], store: S, admitted: Admitted, limits: RelayLimits) -> Self {
        let refused = [
            RefuseReason::UnknownSystem,
            RefuseReason::BadProof,
            RefuseReason::AuthTimeout,
            RefuseReason::Malformed,
            RefuseReason::RateLimited,
        ]
        .iter()
        .map(|r| (r.as_str(), 0))
        .collect();
        RelayCore {
            relay_key,
            store,
            admitted,
            limits,
            conns: BTreeMap::new(),
            outputs: VecDeque::new(),
            unflushed: BTreeMap::new(),
            counters: BTreeMap::new(),
            refused,
            unknown_frames: 0,
            now_ms: 0,
        }
    }

    /// The store (for status).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store (for tests and shutdown).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Replaces the admitted systems (after `admitted.toml` changed). Members of a system no
    /// longer admitted, or whose verifiers all changed, keep their connection until it ends;
    /// new connections follow the new list.
    pub fn set_admitted(&mut self, admitted: Admitted) {
        self.admitted = admitted;
    }

    /// A new connection whose QUIC handshake finished and whose stream is open: sends the
    /// `Challenge` (or refuses the source for too many connections).
    pub fn handle_connected(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        remote: SocketAddr,
        nonce: [u8; 32],
        exporter: [u8; EXPORTER_LEN],
    ) {
        let now_ms = self.advance(now_ms);
        let from_ip = self.connections_from(remote.ip());
        let state = ConnState::ExpectAuth(ExpectAuth {
            deadline_ms: now_ms.saturating_add(self.limits.auth_timeout_ms),
            nonce,
            exporter,
        });
        self.conns.insert(conn, Conn { remote, state });
        if from_ip >= self.limits.max_connections_per_ip {
            self.refuse(conn, RefuseReason::RateLimited);
            return;
        }
        let challenge =
            Challenge { version: RELAY_PROTOCOL_VERSION, relay_key: self.relay_key, nonce };
        self.send(conn, RelayFrame::Challenge(challenge));
    }

    /// A frame from `conn`.
    pub fn handle_frame(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        frame: RelayFrame,
    ) -> Result<(), RelayStoreError> {
        let now_ms = self.advance(now_ms);
        let Some(state) = self.conns.get(&conn).map(|c| &c.state) else { return Ok(()) };
        match (state, frame) {
            (ConnState::Closed, _) => Ok(()),
            (ConnState::ExpectAuth(_), RelayFrame::Auth(auth)) => {
                self.on_auth(conn, &auth);
                Ok(())
            }
            (ConnState::Member(_), RelayFrame::Post(post)) => self.on_post(now_ms, conn, post),
            (ConnState::Member(_), RelayFrame::Subscribe { mailboxes }) => {
                self.on_subscribe(conn, mailboxes)
            }
            (ConnState::Member(_), RelayFrame::Taken { ids }) => self.on_taken(conn, &ids),
            // Anything else (a server frame, a post before admission, a second Auth) is a
            // protocol violation: it costs this connection.
            _ => {
                self.refuse(conn, RefuseReason::Malformed);
                Ok(())
            }
        }
    }

    /// Bytes from `conn` that did not decode. `fatal`: the stream is lost. A frame of an
    /// unknown type is skipped and counted; anything else costs the connection.
    pub fn handle_bad_frame(&mut self, conn: ConnId, unknown_type: bool) {
        if unknown_type {
            self.unknown_frames = self.unknown_frames.saturating_add(1);
        } else {
            self.refuse(conn, RefuseReason::Malformed);
        }
    }

    /// quinn reports a new remote address for `conn` (NAT rebinding): tells an admitted member.
    pub fn handle_remote_changed(&mut self, conn: ConnId, remote: SocketAddr) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.remote == remote {
            return;
        }
        c.remote = remote;
        if matches!(c.state, ConnState::Member(_)) {
            self.send(conn, RelayFrame::Observed { addr: remote });
        }
    }

    /// `conn` is gone. Its undelivered payloads stay stored; a later connection gets them.
    pub fn handle_disconnected(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Refuses connections past their `Auth` deadline and sweeps expired payloads.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), RelayStoreError> {
        let now_ms = self.advance(now_ms);
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(&c.state, ConnState::ExpectAuth(e) if e.deadline_ms <= now_ms),
            )
            .map(|(id, _)| *id)
            .collect();
        for conn in late {
            self.refuse(conn, RefuseReason::AuthTimeout);
        }
        if self.store.next_expiry().is_some_and(|at| at <= now_ms) {
            for (scope, n) in self.store.expire(now_ms)? {
                let counters = self.counters.entry(scope).or_default();
                counters.expired = counters.expired.saturating_add(n);
            }
        }
        Ok(())
    }

    /// When [`RelayCore::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let auth = self
            .conns
            .values()
            .filter_map(|c| match &c.state {
                ConnState::ExpectAuth(e) => Some(e.deadline_ms),
                _ => None,
            })
            .min();
        match (auth, self.store.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether posts wait for [`RelayCore::commit`].
    pub fn wants_commit(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// Flushes the store, then queues `Posted` for every post stored since the last commit.
    pub fn commit(&mut self) -> Result<(), RelayStoreError> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        self.store.flush()?;
        for (conn, seqs) in std::mem::take(&mut self.unflushed) {
            if self.conns.get(&conn).is_some_and(|c| matches!(c.state, ConnState::Member(_))) {
                for chunk in seqs.chunks(crate::wire::relay::MAX_ACK_ITEMS) {
                    self.send(conn, RelayFrame::Posted { seqs: chunk.to_vec() });
                }
            }
        }
        Ok(())
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.outputs.pop_front()
    }

    /// Per system and per refusal reason, for `--status`.
    pub fn status(&self) -> RelayStatus {
        let mut scopes: BTreeMap<Scope, ()> = BTreeMap::new();
        scopes.extend(self.admitted.systems.keys().map(|s| (*s, ())));
        scopes.extend(self.store.usage_all().into_keys().map(|s| (s, ())));
        scopes.extend(self.counters.keys().map(|s| (*s, ())));
        let systems = scopes
            .into_keys()
            .map(|scope| {
                let policy = self.admitted.systems.get(&scope);
                let connected = self
                    .conns
                    .values()
                    .filter(|c| matches!(&c.state, ConnState::Member(m) if m.scope == scope))
                    .count();
                SystemStatus {
                    rmsystem: scope.rmsystem.to_string(),
                    env: policy.map_or_else(|| hex::encode(scope.env_tag), |p| p.env.clone()),
                    admitted: policy.is_some(),
                    connected: u64::try_from(connected).unwrap_or(u64::MAX),
                    usage: self.store.usage(scope),
                    quota_bytes: policy.map_or(0, |p| p.quota_bytes),
                    max_payloads: policy.map_or(0, |p| p.max_payloads),
                    counters: self.counters.get(&scope).copied().unwrap_or_default(),
                }
            })
            .collect();
        RelayStatus {
            key: hex::encode(self.relay_key),
            connections: u64::try_from(self.conns.len()).unwrap_or(u64::MAX),
            systems,
            refused: self.refused.clone(),
            unknown_frames: self.unknown_frames,
        }
    }

    fn advance(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        self.now_ms
    }

    fn connections_from(&self, ip: IpAddr) -> usize {
        self.conns
            .values()
            .filter(|c| c.remote.ip() == ip && !matches!(c.state, ConnState::Closed))
            .count()
    }

    fn send(&mut self, conn: ConnId, frame: RelayFrame) {
        self.outputs.push_back(RelayOutput::Send { conn, frame });
    }

    /// Counts, answers `Refused` and closes. Non-members get nothing else.
    fn refuse(&mut self, conn: ConnId, reason: RefuseReason) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if matches!(c.state, ConnState::Closed) {
            return;
        }
        c.state = ConnState::Closed;
        let count = self.refused.entry(reason.as_str()).or_insert(0);
        *count = count.saturating_add(1);
        self.send(conn, RelayFrame::Refused { reason });
        self.outputs.push_back(RelayOutput::Close { conn, reason });
    }

    fn on_auth(&mut self, conn: ConnId, auth: &Auth) {
        let Some(c) = self.conns.get(&conn) else { return };
        let ConnState::ExpectAuth(expect) = &c.state else { return };
        let remote = c.remote;
        let scope = Scope { rmsystem: RmSystem::from_bytes(auth.rmsystem), env_tag: auth.env_tag };
        let Some(policy) = self.admitted.systems.get(&scope) else {
            self.refuse(conn, RefuseReason::UnknownSystem);
            return;
        };
        let transcript = AuthTranscript {
            nonce: expect.nonce,
            exporter: expect.exporter,
            rmsystem: scope.rmsystem,
            env_tag: scope.env_tag,
            relay_key: self.relay_key,
        };
        if !policy.verifiers.iter().any(|v| v.verify(&transcript, &auth.signature.0).is_ok()) {
            let counters = self.counters.entry(scope).or_default();
            counters.bad_proof = counters.bad_proof.saturating_add(1);
            self.refuse(conn, RefuseReason::BadProof);
            return;
        }
        let welcome = welcome(policy, remote, self.store.usage(scope));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Member(Member {
                scope,
                subscriptions: BTreeMap::new(),
                in_flight: BTreeMap::new(),
                in_flight_bytes: 0,
                post_tokens_milli: self.limits.post_burst.saturating_mul(1000),
                tokens_at_ms: self.now_ms,
            });
        }
        self.send(conn, RelayFrame::Welcome(welcome));
    }

    fn on_post(&mut self, now_ms: u64, conn: ConnId, post: Post) -> Result<(), RelayStoreError> {
        let Some(scope) = self.member_scope(conn) else { return Ok(()) };
        let Some(policy) = self.admitted.systems.get(&scope) else {
            // Revoked while connected: no new posts.
            self.refuse(conn, RefuseReason::UnknownSystem);
            return Ok(());
        };
        let (per_sec, burst) = (self.limits.posts_per_sec, self.limits.post_burst);
        if let Some(Conn { state: ConnState::Member(member), .. }) = self.conns.get_mut(&conn) {
            if !member.take_post_token(now_ms, per_sec, burst) {
                let counters = self.counters.entry(scope).or_default();
                counters.rate_limited_posts = counters.rate_limited_posts.saturating_add(1);
                let reason = PostRefuseReason::RateLimited;
                self.send(conn, RelayFrame::PostRefused { seq: post.seq, reason });
                return Ok(());
            }
        }
        let len = post.payload.len();
        let usage = self.store.usage(scope);
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        let refusal = if len > MAX_RELAY_PAYLOAD {
            Some(PostRefuseReason::TooLarge)
        } else if !SIZE_CLASSES.contains(&len) {
            Some(PostRefuseReason::BadClass)
        } else if post.ttl_secs == 0 {
            Some(PostRefuseReason::Ttl)
        } else if usage.count >= policy.max_payloads
            || usage.bytes.saturating_add(len64) > policy.quota_bytes
        {
            Some(PostRefuseReason::QuotaFull)
        } else {
            None
        };
        let max_ttl = policy.max_ttl_secs;
        let counters = self.counters.entry(scope).or_default();
        if let Some(reason) = refusal {
            if reason == PostRefuseReason::QuotaFull {
                counters.quota_refusals = counters.quota_refusals.saturating_add(1);
            } else {
                counters.post_refusals = counters.post_refusals.saturating_add(1);
            }
            self.send(conn, RelayFrame::PostRefused { seq: post.seq, reason });
            return Ok(());
        }
        counters.posted = counters.posted.saturating_add(1);
        let ttl_ms = u64::from(post.ttl_secs.min(max_ttl)).saturating_mul(1000);
        let expires = now_ms.saturating_add(ttl_ms);
        if post.broadcast {
            let (count, oldest) = self.store.broadcasts(scope);
            if let (true, Some((mailbox, id))) = (count >= MAX_BROADCASTS_PER_SYSTEM, oldest) {
                self.store.remove(scope, mailbox, id)?;
            }
        }
        self.store.insert(scope, post.mailbox, now_ms, expires, post.broadcast, &post.payload)?;
        self.unflushed.entry(conn).or_default().push(post.seq);
        // Forward at once to every member of the system subscribed to that mailbox.
        let subscribers: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(&c.state, ConnState::Member(m)
                    if m.scope == scope && m.subscriptions.contains_key(&post.mailbox))
            })
            .map(|(id, _)| *id)
            .collect();
        for subscriber in subscribers {
            self.top_up(subscriber)?;
        }
        Ok(())
    }

    fn on_subscribe(
        &mut self,
        conn: ConnId,
        mailboxes: Vec<Mailbox>,
    ) -> Result<(), RelayStoreError> {
        let Some(Conn { state: ConnState::Member(member), .. }) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let old = std::mem::take(&mut member.subscriptions);
        member.subscriptions =
            mailboxes.into_iter().map(|m| (m, old.get(&m).copied().flatten())).collect();
        self.top_up(conn)
    }

    fn on_taken(&mut self, conn: ConnId, ids: &[u64]) -> Result<(), RelayStoreError> {
        let Some(Conn { state: ConnState::Member(member), .. }) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let scope = member.scope;
        // Only ids delivered on this connection: a member cannot delete what it never got,
        // and never anything of another system.
        let mut taken = Vec::new();
        for id in ids {
            if let Some((mailbox, len, broadcast)) = member.in_flight.remove(id) {
                member.in_flight_bytes = member.in_flight_bytes.saturating_sub(len);
                // A broadcast stays for every other member until it expires or is evicted.
                if !broadcast {
                    taken.push((mailbox, *id));
                }
            }
        }
        for (mailbox, id) in taken {
            if self.store.remove(scope, mailbox, id)? {
                let counters = self.counters.entry(scope).or_default();
                counters.taken = counters.taken.saturating_add(1);
            }
        }
        self.top_up(conn)
    }

    /// Delivers stored payloads of `conn`'s subscriptions while its window has room.
    fn top_up(&mut self, conn: ConnId) -> Result<(), RelayStoreError> {
        let window = self.limits.delivery_window_bytes;
        let Some(Conn { state: ConnState::Member(member), .. }) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let scope = member.scope;
        let mut frames = Vec::new();
        let mailboxes: Vec<Mailbox> = member.subscriptions.keys().copied().collect();
        for mailbox in mailboxes {
            loop {
                if member.in_flight_bytes >= window {
                    break;
                }
                let after = member.subscriptions.get(&mailbox).copied().flatten();
                let batch = self.store.pending(scope, mailbox, after, 16)?;
                if batch.is_empty() {
                    break;
                }
                for stored in batch {
                    if member.in_flight_bytes >= window {
                        break;
                    }
                    // The cursor moves only past what is delivered now: the rest stays next.
                    member.subscriptions.insert(mailbox, Some(stored.id));
                    let len = u64::try_from(stored.payload.len()).unwrap_or(u64::MAX);
                    member.in_flight.insert(stored.id, (mailbox, len, stored.broadcast));
                    member.in_flight_bytes = member.in_flight_bytes.saturating_add(len);
                    frames.push(RelayFrame::Deliver(Deliver {
                        id: stored.id,
                        mailbox,
                        payload: stored.payload,
                    }));
                }
            }
        }
        if !frames.is_empty() {
            let counters = self.counters.entry(scope).or_default();
            let n = u64::try_from(frames.len()).unwrap_or(u64::MAX);
            counters.delivered = counters.delivered.saturating_add(n);
        }
        for frame in frames {
            self.send(conn, frame);
        }
        Ok(())
    }

    fn member_scope(&self, conn: ConnId) -> Option<Scope> {
        match self.conns.get(&conn).map(|c| &c.state) {
            Some(ConnState::Member(m)) => Some(m.scope),
            _ => None,
        }
    }
}

fn welcome(policy: &SystemPolicy, observed: SocketAddr, usage: Usage) -> Welcome {
    Welcome {
        observed,
        max_payload: u32::try_from(MAX_RELAY_PAYLOAD).unwrap_or(u32::MAX),
        max_ttl_secs: policy.max_ttl_secs,
        quota_left_bytes: policy.quota_bytes.saturating_sub(usage.bytes),
    }
}

#[cfg(test)]
mod tests;
