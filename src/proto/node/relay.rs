//! The relay path's side of the node: relay links up and down, their messages, the `Have`s
//! an eager push skipped, and relay timeouts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::id::DatabaseId;
use crate::proto::io::{LinkId, LinkKind, Time};
use crate::proto::message::Message;
use crate::proto::peers::Role;
use crate::proto::relaypath::PathEvent;
use crate::store::Store;
use crate::wire::RejectReason;

use super::{Node, PUSH_HAVE_MS};

impl<S: Store> Node<S> {
    /// Hands the relay path's events to the node: links up and down, messages. Returns
    /// whether the peers may have changed (a link went up or down, or a message came on a
    /// link whose peer is not known yet: the `Hello`), as `handle` decides for frames.
    pub(super) fn relay_events(&mut self) -> bool {
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

    /// Ends every relay session with a `Fin` (a clean stop).
    pub(super) fn close_relay_links(&mut self) {
        let links: Vec<LinkId> = self.links.keys().filter(|l| l.is_relay()).copied().collect();
        for link in links {
            self.relay.close(self.now, &mut self.rng, link);
        }
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
    pub(super) fn push_haves(&mut self, now: Time) {
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

    pub(super) fn relay_timeout(&mut self) {
        if !self.relay.enabled() {
            return;
        }
        self.relay_want();
        self.relay.handle_timeout(self.now, &mut self.rng);
        self.relay_events();
    }

    /// Opens the relay sessions wanted now (the relay path opens only what is missing).
    pub(super) fn relay_want(&mut self) {
        let wanted = self.relay_wanted();
        self.relay.want(self.now, &mut self.rng, &wanted);
    }
}
