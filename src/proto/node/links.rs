//! Links: which peers get a link (LAN peers by dbid order, configured peers in priority order,
//! seed 001 failover), links up and down, `Hello`, pings, and sending frames on a link.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::id::DatabaseId;
use crate::proto::io::{LinkId, LinkKind, Output};
use crate::proto::message::Message;
use crate::proto::peers::{backoff_ms, DownReason, Peer, PeerState, Role};
use crate::proto::sync::LinkSync;
use crate::store::{Store, VersionVector};
use crate::unit::Urgency;
use crate::wire::Tag;

use super::{LinkInfo, Node};

impl<S: Store> Node<S> {
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

    pub(super) fn connect_due(&mut self) {
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
    pub(super) fn fail_back(&mut self) {
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
    pub(super) fn prune_lan_links(&mut self) {
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

    pub(super) fn close_peer(&mut self, dbid: DatabaseId, reason: DownReason) {
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

    pub(super) fn connect_failed(&mut self, to: SocketAddr, reason: DownReason) {
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

    pub(super) fn on_link_up(
        &mut self,
        link: LinkId,
        remote: SocketAddr,
        outbound: bool,
        kind: LinkKind,
    ) {
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
                own_offer: super::OwnOffer::NotYet,
                pads_heard: false,
                padded_fresh: 0,
            },
        );
        let hello =
            Message::Hello { dbid: self.dbid(), instance: self.cfg.instance, role: self.cfg.role };
        self.send_frame(link, Tag::Tubs, &hello);
    }

    pub(super) fn on_link_down(&mut self, link: LinkId) {
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

    pub(super) fn on_hello(&mut self, link: LinkId, dbid: DatabaseId, role: Role) {
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

    /// Closes a link: a driver's link by [`Output::Close`], a relay link by ending its session.
    pub(super) fn close_link(&mut self, link: LinkId) {
        if link.is_relay() {
            self.relay.close(self.now, &mut self.rng, link);
        } else {
            self.out.push_back(Output::Close { link });
        }
    }

    /// Measures the link's round trip (the answer is a [`Message::Pong`]).
    pub(super) fn send_ping(&mut self, link: LinkId) {
        let sent = self.now.0;
        if let Some(info) = self.links.get_mut(&link) {
            info.last_ping = self.now;
        }
        self.send_frame(link, Tag::Tubs, &Message::Ping { sent });
    }

    pub(super) fn on_pong(&mut self, link: LinkId, sent: u64) {
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

    pub(super) fn send_frame(&mut self, link: LinkId, tag: Tag, message: &Message) {
        // Control paces transfers (one `Want` in flight): urgent on a relay link.
        self.send_frame_urgent(link, tag, message, Urgency::Urgent);
    }

    /// [`Node::send_frame`] with the urgency a relay link schedules the message by (design
    /// §2.3: a `Units` message takes that of its most urgent unit).
    pub(super) fn send_frame_urgent(
        &mut self,
        link: LinkId,
        tag: Tag,
        message: &Message,
        urgency: Urgency,
    ) {
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
}
