//! The peer table: who we know, how we reach them, and why a peer is not up.
//!
//! A peer moves discovered -> connecting -> up, and to down (with the reason) when its link
//! closes or an attempt fails. Attempts back off: quickly at first, then (seed 001: "interval by
//! which an offline server is pinged", default 5 minutes) at the offline-ping interval, so an
//! offline peer is pinged, not hammered. This module decides nothing about units.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::DatabaseId;
use crate::proto::io::{LinkId, Time};
use crate::store::VersionVector;

/// What a node is in the chain (seed 001: main server / store server; lanes are the checkouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// Head office: only what a main server holds is "safe".
    MainServer,
    /// A store server.
    StoreServer,
    /// A checkout lane or manager PC.
    Lane,
}

impl Role {
    /// Lowercase name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::MainServer => "main-server",
            Role::StoreServer => "store-server",
            Role::Lane => "lane",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a peer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Heard of (discovery or configuration), no link yet.
    Discovered,
    /// A link attempt is under way.
    Connecting,
    /// A link is up and the peer said hello.
    Up,
    /// The link is up but nothing was heard on it for a while (three keepalive intervals); it
    /// is closed if the silence lasts.
    Suspect,
    /// Not reachable now; see the reason.
    Down,
}

/// Why a peer is down or was never up (counted and shown by status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    /// Not tried yet.
    NotTried,
    /// The link closed.
    LinkClosed,
    /// The link attempt failed.
    ConnectFailed,
    /// The link attempt got no answer in time.
    ConnectTimeout,
    /// A second link to the same peer was closed in favour of the first.
    DuplicateLink,
    /// Nothing was heard on the link for six keepalive intervals: closed.
    Silent,
    /// A LAN link the ring does not need (the LAN's servers and ring neighbours carry the
    /// anti-entropy; multicast carries the units): closed, the peer is idle, not failing.
    NotNeeded,
    /// A fallback peer, closed because a configured peer of better priority is up again
    /// (seed 001: servers are tried in order of priority).
    Fallback,
}

/// One peer.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its dbid (configured peers get theirs from their hello).
    pub dbid: DatabaseId,
    /// Its role, as it announced.
    pub role: Role,
    /// Where it accepts links.
    pub addrs: Vec<SocketAddr>,
    /// Discovered on our LAN (multicast reaches it) rather than configured across a WAN.
    pub lan: bool,
    /// State.
    pub state: PeerState,
    /// Why it is not up (meaningful when not up).
    pub reason: DownReason,
    /// Its link when up.
    pub link: Option<LinkId>,
    /// When we last heard from it.
    pub last_seen: Time,
    /// Its version vector as its `Have` messages tell us (empty until the first).
    pub vector: VersionVector,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Do not attempt a link before this.
    pub next_attempt: Time,
}

impl Peer {
    /// A peer just heard of.
    pub fn new(dbid: DatabaseId, role: Role, addrs: Vec<SocketAddr>, lan: bool, now: Time) -> Peer {
        Peer {
            dbid,
            role,
            addrs,
            lan,
            state: PeerState::Discovered,
            reason: DownReason::NotTried,
            link: None,
            last_seen: now,
            vector: VersionVector::new(),
            failures: 0,
            next_attempt: now,
        }
    }

    /// Records a failed or closed link and schedules the next attempt (see [`backoff_ms`]).
    pub fn down(&mut self, reason: DownReason, now: Time, offline_ping_ms: u64) {
        self.state = PeerState::Down;
        self.reason = reason;
        self.link = None;
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = now.plus_millis(backoff_ms(self.failures, offline_ping_ms));
    }

    /// Whether this LAN peer's link is ours to open: the smaller dbid opens it, or either
    /// side once attempts keep failing (the other side may not be able to reach us). Peers
    /// beyond the LAN are opened through the configured-peer slots, in priority order.
    pub fn opened_by_us(&self, own: DatabaseId) -> bool {
        self.lan && (own < self.dbid || self.failures >= 2)
    }

    /// Whether a link attempt is wanted (idle, ours to open, an address known).
    pub fn wants_link(&self, own: DatabaseId) -> bool {
        matches!(self.state, PeerState::Discovered | PeerState::Down)
            && self.opened_by_us(own)
            && !self.addrs.is_empty()
    }

    /// Whether a link to it is up (possibly suspect).
    pub fn linked(&self) -> bool {
        matches!(self.state, PeerState::Up | PeerState::Suspect) && self.link.is_some()
    }
}

/// Wait before the next attempt after `failures` failures in a row: 1 s, 2 s, 4 s, then every
/// `offline_ping_ms` (seed 001: an offline server is pinged, not hammered).
pub fn backoff_ms(failures: u32, offline_ping_ms: u64) -> u64 {
    match failures {
        0..=3 => 1000u64 << failures.saturating_sub(1),
        _ => offline_ping_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_peers_are_pinged_not_hammered() {
        let mut p =
            Peer::new("ITB85JUYCJS4IQA".parse().unwrap(), Role::MainServer, vec![], false, Time(0));
        let mut waits = Vec::new();
        for _ in 0..6 {
            let now = p.next_attempt;
            p.down(DownReason::ConnectFailed, now, 300_000);
            waits.push((p.next_attempt.0 - now.0) / 1000);
        }
        assert_eq!(waits, vec![1000, 2000, 4000, 300_000, 300_000, 300_000]);
        assert_eq!(p.state, PeerState::Down);
    }
}
