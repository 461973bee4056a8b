//! Inputs from the driver: datagrams opened, frames opened and dispatched by message.

use std::net::SocketAddr;

use crate::proto::io::{LinkId, ReceivedDatagram};
use crate::proto::message::{Announce, Message};
use crate::proto::peers::PeerState;
use crate::store::Store;
use crate::wire::{peek_tag, RejectReason, Tag};

use super::{Node, Source};

impl<S: Store> Node<S> {
    pub(super) fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let mut units = Vec::new();
        self.open_datagram(from, bytes, &mut units);
        if !units.is_empty() {
            self.on_units(Source::Multicast, &units, true);
        }
    }

    /// A burst of datagrams: announcements as they come, the units of all of them in one
    /// batch (one group commit).
    pub(super) fn on_datagrams(&mut self, datagrams: &[ReceivedDatagram]) {
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

    pub(super) fn on_frame(&mut self, link: LinkId, bytes: &[u8]) {
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
    pub(super) fn on_message(&mut self, link: LinkId, message: Message) {
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
            Message::Offer { units } => self.on_offer(link, dbid, &units),
            Message::Compared { upto } => self.on_compared(link, dbid, upto),
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
