//! The node's side of one-time pads ([`crate::proto::pads`]): when to make and hand over a
//! pad, and what a relay link carries for a unit with a sensitive part.
//!
//! - A pad is made for a peer when a direct link to it comes up (or is up when the driver hands
//!   the material over), this node has relays configured, the peer is not on our LAN (LAN peers
//!   reach each other directly), and less than a quarter of a pad is left for it. The material
//!   comes from the driver ([`Output::GeneratePad`]): the core's seeded RNG never makes key
//!   material.
//! - Pad frames go only on direct links; [`Node::send_frame_urgent`] refuses them on a relay
//!   link as a second fence.
//! - On a relay link a unit with a sensitive part goes as a [`PaddedUnit`], or, with no pad
//!   left, is withheld: the peer is told ([`Message::Withheld`]) so it stops asking that link
//!   for it; it comes over the next direct link, or once a new pad is handed over.

use crate::id::DatabaseId;
use crate::proto::io::{LinkId, Output, Time};
use crate::proto::message::{Message, PadId, PaddedUnit};
use crate::proto::node::{LinkInfo, Node, Source};
use crate::proto::pads::{PadError, PadPeerStatus};
use crate::proto::status::PadsStatus;
use crate::proto::LinkKind;
use crate::store::{Store, VersionVector};
use crate::unit::{TransferUnit, Urgency};
use crate::wire::{RejectReason, Tag};

/// Counters of the pads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PadStats {
    /// Pads this node made for its peers.
    pub generated: u64,
    /// Of those, stored by the peer and usable.
    pub accepted: u64,
    /// Pads peers handed to us.
    pub received: u64,
    /// Our pads revoked because the peer no longer holds them.
    pub revoked: u64,
    /// Sensitive parts sent under a pad.
    pub padded_sent: u64,
    /// Sensitive parts opened.
    pub padded_received: u64,
    /// Padded units refused (unknown pad, wrong MAC, bad unit).
    pub padded_refused: u64,
    /// Units with a sensitive part we did not send on a relay link (no pad left).
    pub units_withheld: u64,
    /// Pad frames refused: on a relay link, out of order, or not matching their hash.
    pub offers_refused: u64,
    /// Pad store failures (nothing reused: a failed reservation withholds the unit).
    pub errors: u64,
    /// Units with a sensitive part that came in the clear where one never travels (a
    /// datagram, a relay link's `Units`): refused.
    pub sensitive_in_clear_refused: u64,
}

/// Most units a peer's `Withheld` notes may name on one link.
const MAX_WITHHELD: u64 = 1 << 16;

/// How long a pad asked of the driver may take before it is asked for again.
const PAD_REQUEST_MS: u64 = 60_000;

/// How long a peer's `Withheld` keeps us from asking its relay link for those units; then they
/// are asked for again (the sender may have had a passing store error).
const WITHHELD_MS: u64 = 300_000;

impl<S: Store> Node<S> {
    /// Tells the peer which of its pads we hold and which of ours are live: after the hello on
    /// every link, and when we forgot a pad we could not read. A pad is offered once the
    /// peer's own `Pads` arrives on a direct link (it shows the peer's build knows pads, and
    /// which of ours it already holds).
    pub(super) fn send_pads(&mut self, link: LinkId, dbid: DatabaseId) {
        let inbound = self.pads.inbound(&dbid);
        let outbound = self.pads.live_outbound(&dbid);
        self.send_frame(link, Tag::Tubs, &Message::Pads { inbound, outbound });
    }

    fn pads_wanted_with(&self, dbid: &DatabaseId) -> bool {
        self.cfg.pad_bytes > 0
            && self.cfg.relay_path.relays > 0
            && self.peers.get(dbid).is_some_and(|p| !p.lan)
    }

    /// Each anti-entropy round: a pad that could not be made or offered at link-up (the
    /// driver's queue was full, a store error) is tried again on the direct links.
    pub(super) fn pads_round(&mut self) {
        let direct: Vec<(LinkId, DatabaseId)> = self
            .links
            .iter()
            .filter(|(_, i)| i.kind != LinkKind::Relay && i.pads_heard)
            .filter_map(|(l, i)| i.peer.map(|p| (*l, p)))
            .collect();
        // Offers that ended (accepted, or forgotten) need no memory of their link.
        let pads = &self.pads;
        self.pad_offered_on.retain(|pad, _| pads.is_offered(pad));
        for (link, dbid) in direct {
            if self.peers.get(&dbid).is_some_and(|p| p.link == Some(link)) {
                self.pads_maybe_offer(link, dbid);
            }
        }
    }

    /// On a direct link to `dbid`: offer the pad it has not confirmed (once per link), or ask
    /// the driver for a new one.
    fn pads_maybe_offer(&mut self, link: LinkId, dbid: DatabaseId) {
        if !self.pads_wanted_with(&dbid) {
            return;
        }
        if let Some(pad) = self.pads.offered(&dbid) {
            if self.pad_offered_on.get(&pad) != Some(&link) {
                self.pad_offered_on.insert(pad, link);
                self.send_pad(link, pad);
            }
        } else if self.pads.wants_new(&dbid, self.cfg.pad_bytes)
            && self
                .pad_requested
                .get(&dbid)
                .is_none_or(|at| self.now.0.saturating_sub(at.0) / 1000 >= PAD_REQUEST_MS)
        {
            self.pad_requested.insert(dbid, self.now);
            let len = usize::try_from(self.cfg.pad_bytes).unwrap_or(usize::MAX);
            self.out.push_back(Output::GeneratePad { peer: dbid, len });
        }
    }

    fn send_pad(&mut self, link: LinkId, pad: PadId) {
        match self.pads.offer(pad, &self.ledger) {
            Ok(frames) => {
                for frame in frames {
                    self.send_frame(link, Tag::Tubs, &frame);
                }
            }
            Err(_) => self.stats.pads.errors += 1,
        }
    }

    /// The driver made pad material for `peer`: store it and offer it, if a direct link to the
    /// peer is still up (else it is dropped, and made again at the next direct link).
    pub(super) fn on_pad_material(&mut self, peer: DatabaseId, material: &[u8]) {
        self.pad_requested.remove(&peer);
        let Some(link) = self.direct_link(&peer) else { return };
        let material_ok = (crate::proto::pads::MIN_PAD_BYTES..=crate::proto::pads::MAX_PAD_BYTES)
            .contains(&(material.len() as u64));
        if !material_ok || !self.pads_wanted_with(&peer) {
            return;
        }
        match self.pads.add_outbound(peer, material, self.now.as_millis(), &mut self.ledger) {
            Ok(id) => {
                self.stats.pads.generated += 1;
                self.pad_offered_on.insert(id, link);
                self.send_pad(link, id);
            }
            Err(_) => self.stats.pads.errors += 1,
        }
    }

    /// The peer's current link, if it is direct.
    fn direct_link(&self, peer: &DatabaseId) -> Option<LinkId> {
        let p = self.peers.get(peer).filter(|p| p.linked())?;
        p.link.filter(|l| self.links.get(l).is_some_and(|i| i.kind != LinkKind::Relay))
    }

    /// A pad message from `dbid` on `link`.
    pub(super) fn on_pad_message(&mut self, link: LinkId, dbid: DatabaseId, message: Message) {
        let relay = link.is_relay();
        match message {
            Message::Pads { inbound, outbound } => {
                match self.pads.on_peer_lists(dbid, &inbound, &outbound, &mut self.ledger) {
                    Ok((revoked, _)) => self.stats.pads.revoked += revoked as u64,
                    Err(_) => self.stats.pads.errors += 1,
                }
                let first = self.links.get_mut(&link).is_some_and(|i| {
                    let first = !i.pads_heard;
                    i.pads_heard = true;
                    first
                });
                if first && !relay {
                    self.pads_maybe_offer(link, dbid);
                }
                if first {
                    // What was left out until now (sensitive units) may be asked for.
                    self.replan = true;
                }
            }
            Message::PadOffer { .. } | Message::PadComplete { .. } if relay => {
                // Pad material never crosses a relay: a peer that sends it there is broken.
                self.stats.pads.offers_refused += 1;
                self.stats.rejects.record_reason(RejectReason::Malformed);
            }
            Message::PadOffer { pad, len, offset, chunk } => {
                let refused = self.pads.on_offer(dbid, pad, len, offset, chunk).is_err();
                self.stats.pads.offers_refused += u64::from(refused);
            }
            Message::PadComplete { pad, hash } => {
                let now_ms = self.now.as_millis();
                match self.pads.on_complete(dbid, pad, hash, now_ms, &mut self.ledger) {
                    Ok(()) => {
                        self.stats.pads.received += 1;
                        self.send_frame(link, Tag::Tubs, &Message::PadAccepted { pad });
                    }
                    Err(PadError::Storage(_)) => self.stats.pads.errors += 1,
                    Err(_) => self.stats.pads.offers_refused += 1,
                }
            }
            Message::PadAccepted { pad } => {
                match self.pads.on_accepted(dbid, pad, &mut self.ledger) {
                    Ok(true) => self.stats.pads.accepted += 1,
                    Ok(false) => {}
                    Err(_) => self.stats.pads.errors += 1,
                }
            }
            Message::PaddedUnits { units } => self.on_padded_units(link, dbid, &units),
            Message::Withheld { units } => {
                let now = self.now;
                if let Some(info) = self.links.get_mut(&link) {
                    let mut added = false;
                    for (origin, seq) in units {
                        // Bounded: a broken peer cannot grow it without end.
                        if info.withheld.total() >= MAX_WITHHELD {
                            break;
                        }
                        added |= info.withheld.insert(origin, seq);
                    }
                    if added {
                        info.withheld_at = now;
                    }
                }
            }
            _ => {}
        }
    }

    fn on_padded_units(&mut self, link: LinkId, dbid: DatabaseId, units: &[PaddedUnit]) {
        let limit = self.ledger.payload_limit();
        let mut opened = Vec::with_capacity(units.len());
        let mut unreadable = Vec::new();
        for padded in units {
            match self.pads.open(&dbid, padded, limit, &mut self.ledger) {
                Ok(unit) => opened.push(unit.encode()),
                Err(PadError::Storage(_) | PadError::Disabled) => self.stats.pads.errors += 1,
                Err(e) => {
                    self.stats.pads.padded_refused += 1;
                    self.stats.rejects.record_reason(RejectReason::DecryptFailure);
                    if matches!(e, PadError::Unknown(_) | PadError::Damaged(_)) {
                        unreadable.push(padded.pad);
                    }
                }
            }
        }
        if !unreadable.is_empty() {
            // A pad we cannot use: forget it and say which we hold, so the owner revokes it
            // rather than burn it on units we cannot open.
            for pad in unreadable {
                if self.pads.forget_inbound(&dbid, pad, &mut self.ledger).is_err() {
                    self.stats.pads.errors += 1;
                }
            }
            self.send_pads(link, dbid);
        }
        self.stats.pads.padded_received += opened.len() as u64;
        if !opened.is_empty() {
            let fresh = self.on_units(Source::Link(link), &opened, false);
            if let Some(info) = self.links.get_mut(&link) {
                info.padded_fresh += fresh;
            }
        }
    }

    /// On a relay link: sends `units` with a sensitive part under the pad with the peer, or
    /// tells the peer they are withheld. Returns the others, to go as usual.
    pub(super) fn send_sensitive_on_relay<'u>(
        &mut self,
        link: LinkId,
        tag: Tag,
        units: &'u [TransferUnit],
    ) -> Vec<&'u TransferUnit> {
        let Some(peer) = self.links.get(&link).and_then(|l| l.peer) else {
            // Fail closed: no peer, no pad; nothing sensitive leaves.
            return units.iter().filter(|u| u.sensitive.is_empty()).collect();
        };
        let mut plain = Vec::with_capacity(units.len());
        let mut padded = Vec::new();
        let mut withheld = Vec::new();
        let mut urgency = Urgency::Background;
        for unit in units {
            if unit.sensitive.is_empty() {
                plain.push(unit);
                continue;
            }
            match self.pads.seal(&peer, unit, &mut self.ledger) {
                Ok(Some(p)) => {
                    urgency = urgency.min(unit.urgency);
                    padded.push(p);
                }
                Ok(None) => withheld.push((unit.origin, unit.seq)),
                Err(_) => {
                    self.stats.pads.errors += 1;
                    withheld.push((unit.origin, unit.seq));
                }
            }
        }
        if !withheld.is_empty() {
            self.stats.pads.units_withheld += withheld.len() as u64;
            if let Some(info) = self.links.get_mut(&link) {
                for (origin, seq) in &withheld {
                    info.withheld_by_us.insert(*origin, *seq);
                }
            }
            self.send_frame(link, Tag::Tubs, &Message::Withheld { units: withheld });
        }
        if !padded.is_empty() {
            self.stats.pads.padded_sent += padded.len() as u64;
            // Frames of at most `batch_bytes`, like `Units` (a relay session bounds its bytes).
            let max = self.cfg.batch_bytes.max(1);
            let mut frame: Vec<PaddedUnit> = Vec::new();
            let mut bytes = 0;
            for p in padded {
                let size = p.unit.len() + p.ct.len() + 64;
                if !frame.is_empty() && bytes + size > max {
                    let message = Message::PaddedUnits { units: std::mem::take(&mut frame) };
                    self.send_frame_urgent(link, tag, &message, urgency);
                    bytes = 0;
                }
                bytes += size;
                frame.push(p);
            }
            let message = Message::PaddedUnits { units: frame };
            self.send_frame_urgent(link, tag, &message, urgency);
        }
        plain
    }

    /// Forgets old `Withheld` notes (asked for again).
    pub(super) fn expire_withheld(&mut self, now: Time) {
        for info in self.links.values_mut() {
            if !info.withheld.is_empty()
                && now.0.saturating_sub(info.withheld_at.0) / 1000 >= WITHHELD_MS
            {
                info.withheld = VersionVector::new();
                self.replan = true;
            }
        }
    }

    /// What status shows of the pads with `peer`, if there is anything to show.
    pub(super) fn pads_status(
        &self,
        peer: &DatabaseId,
        link: Option<&LinkInfo>,
    ) -> Option<PadsStatus> {
        let PadPeerStatus { out_left, out_offered, in_bytes } = self.pads.status(peer);
        let withheld_from_us = link.map_or(0, |l| l.withheld.total());
        let withheld_by_us = link.map_or(0, |l| l.withheld_by_us.total());
        let any = out_left > 0 || out_offered || in_bytes > 0 || withheld_from_us > 0;
        (any || withheld_by_us > 0).then_some(PadsStatus {
            out_left,
            out_offered,
            in_bytes,
            withheld_from_us,
            withheld_by_us,
        })
    }
}
