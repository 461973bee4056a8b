//! Received units: taken into the ledger, then forwarded (eager push) on the environment group
//! and on the links of peers beyond the LAN.

use std::collections::BTreeSet;

use crate::id::DatabaseId;
use crate::ledger::Logged;
use crate::proto::io::{DatagramDest, LinkId, Output};
use crate::proto::message::{decode_units, Message};
use crate::proto::peers::Role;
use crate::store::Store;
use crate::unit::TransferUnit;
use crate::wire::Tag;

use super::{batches, Node, Source, Unanswered, PUSH_HAVE_MS};

/// Received units waiting for their log sync, at most; beyond it the node waits for the disk.
const RECEIVING_MAX: u64 = 65_536;
/// Their payload bytes, at most (units may be large).
const RECEIVING_MAX_BYTES: u64 = 64 << 20;

impl<S: Store> Node<S> {
    /// Takes received units: logs them, sends them on, delivers them, and indexes them once
    /// durable. Returns how many were new (0 also when the store refused them).
    /// With `in_clear`, the units came in a datagram or a relay link's `Units`, where a
    /// sensitive part never travels: units that carry one are refused (forged, or a broken
    /// peer), so the one-time pad's MAC cannot be bypassed.
    pub(super) fn on_units(
        &mut self,
        source: Source,
        encoded: &[Vec<u8>],
        in_clear: bool,
    ) -> usize {
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
        if self.ledger.receiving().total() >= RECEIVING_MAX
            || self.ledger.receiving_bytes() >= RECEIVING_MAX_BYTES
        {
            // The disk is behind: wait for it rather than keep more units in memory.
            self.ledger.wait_for_syncs();
            self.release_submits();
        }
        // Own units beyond our head, before they move it: the same conflict a `Have` shows.
        let own = self.dbid();
        if let Some(highest) = units.iter().filter(|u| u.origin == own).map(|u| u.seq).max() {
            self.own_units_ahead(None, highest);
        }
        let now_ms = self.now.as_millis();
        let received = self.ledger.receive_logged(units, encoded, now_ms);
        // Handled after the batch is queued: batches are indexed in the order they were logged,
        // and units issued again for a rival are logged after it.
        let rivals = self.ledger.take_rivals();
        let count = match received {
            Ok(logged) => self.received_logged(source, logged),
            Err(_) => {
                // Refused (disk full): what a peer reports holding is asked for again once the
                // store takes writes.
                self.stats.store_errors += 1;
                0
            }
        };
        if !rivals.is_empty() {
            self.own_rivals(source, rivals);
        }
        count
    }

    /// New received units, logged: sent on, delivered, and queued for their index.
    fn received_logged(&mut self, source: Source, logged: Logged) -> usize {
        let count = logged.units().len();
        self.stats.units_new += count as u64;
        if count == 0 {
            return 0;
        }
        // Sent on and delivered before this node's own log sync: the origin made them durable
        // before it sent them, so a crash here loses only this copy, which peers hand back
        // (this node's vector does not claim them until they are indexed, once durable).
        // Per-origin seq order, which forwarding keeps and delivery looks units up by.
        self.forward(source, logged.units());
        let origins: BTreeSet<DatabaseId> = logged.units().iter().map(|u| u.origin).collect();
        self.deliver_ready(origins, logged.units().to_vec());
        self.submits_syncing.push_back(Unanswered::Received(logged));
        self.release_submits();
        count
    }

    pub(super) fn held_changed(&mut self, origins: &BTreeSet<DatabaseId>) {
        for origin in origins {
            self.changes.touch(*origin);
        }
        if self.cfg.role == Role::MainServer {
            self.raise_own_safe(origins.iter().copied());
        }
    }

    pub(super) fn forward(&mut self, source: Source, units: &[TransferUnit]) {
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
}
