//! This node's own origin seen elsewhere under seqs it handed out again: the data directory was
//! rolled back in place (a VM snapshot reverted, a block-level restore; a copied directory takes
//! a new dbid, see `crate::datadir`) or is in use on another machine too.
//!
//! A unit is named by `(origin, seq)`, so a peer holding another unit under a seq never takes
//! ours: without this, every unit submitted between the rollback and the first contact with a
//! peer would stay on this machine for good. Two ways show it:
//! - **Heads.** A peer's `Have` (or a received unit) shows an own seq above everything this
//!   node knows it handed out ([`Node::own_units_ahead`]):
//!   - the next own seq moves past it, durably, so nothing submitted from now on collides; the
//!     units skipped over are the peer's, and come back through anti-entropy;
//!   - own units above [`Ledger::reissue_floor`] (at most the rollback's head) and up to the
//!     peer's head are issued again under new seqs, same physkey and payload: those that
//!     collided reach the mesh, the others become duplicates, which applications drop by
//!     physkey.
//! - **Content.** On the first `Have` of each direct link, this node offers the peer the own
//!   units it says it holds beyond its last recorded confirmation, up to its highest, the
//!   newest [`OFFER_MAX`], as `(seq, physkey)` in one frame ([`Message::Offer`],
//!   [`Node::offer_own`]). The peer sends back the units it holds under those seqs as other
//!   units ([`Node::on_offer`], counter `units_diverged`), then [`Message::Compared`]; only
//!   then does this node record what the peer's `Have`s report as confirmed (one may have
//!   left before the peer saw the offer). A comparison cut short, or whose answer could not
//!   be issued again, leaves the link confirming nothing more, and the next link offers again;
//!   a relay link never confirms. Confirmations are rolled back with the data directory, so after a rollback
//!   the offer covers every own unit sold since, also while no peer was in reach; in steady
//!   state, those since the last checkpoint. An own unit received under a seq held here as
//!   another unit is a [`Rival`] ([`Node::own_rivals`]): both go again under new seqs, ours
//!   (which the nodes holding theirs never take under that seq) and theirs (a unit this origin
//!   made before the rollback, which we and the nodes holding ours never take under it).
//!
//! Each conflict is counted, logged as an error and shown by `--status`.
//!
//! What this does not catch or repair:
//! - units a peer takes after the comparison on a link are confirmed by its `Have`s unseen:
//!   ours, sent on this link, as a rule; but one it gets from a third node that held a unit
//!   from before the rollback under that seq is not compared;
//! - a peer on an older build ignores the offer: its links confirm nothing;
//! - own units sold after the rollback more than [`OFFER_MAX`] beyond a peer's last
//!   confirmation are compared only that far; relay links get no offer (their sessions are
//!   bounded), so a peer reached only through relays is not compared;
//! - which units went again is kept in memory: a restart before the peers' confirmations
//!   are checkpointed offers the same seqs again, and our unit of each such seq goes again once
//!   more (a duplicate, which applications drop by physkey);
//! - the skip goes to the peer's highest seq: a seq below it that the peer lacks and nobody
//!   holds (a unit made just before the revert, which reached no one but beyond a lost
//!   datagram) stays a hole, and peers' delivery of this origin stops there. Filling such holes
//!   after a while with a void unit would end it.
//!
//! [`Ledger::reissue_floor`]: crate::ledger::Ledger::reissue_floor

use serde::Serialize;

use crate::id::{DatabaseId, Physkey};
use crate::ledger::{Rival, OWN_PLAUSIBLE_AHEAD};
use crate::proto::io::LinkId;
use crate::proto::message::Message;
use crate::store::Store;
use crate::unit::TransferUnit;
use crate::wire::{RejectReason, Tag};

use super::{Node, OwnOffer, Source, Unanswered};

/// Own units issued again for one conflict, at most: the newest ones, which are the ones
/// submitted since the rollback (a directory with no record of what peers held would
/// otherwise issue its whole history again).
const REISSUE_MAX: u64 = 65_536;
/// Their payload bytes, at most (units may be large).
const REISSUE_MAX_BYTES: usize = 64 << 20;
/// Own units sent to a peer for comparison on a new link, at most: the newest it holds beyond
/// its last confirmation (a rollback that sold more than this while no peer was in reach is
/// compared only this far).
pub(crate) const OFFER_MAX: u64 = 1024;
/// Units read from the store, and `(seq, physkey)` pairs sent in one `Offer`, at a time.
const OFFER_CHUNK: usize = 256;

/// The last time this node's own origin was seen beyond its head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnConflict {
    /// Who held it: a peer's dbid, or "a received unit" when it came without a `Have`.
    pub seen_at: String,
    /// The highest own seq seen there.
    pub their_head: u64,
    /// The highest own seq this node knew it had handed out.
    pub our_head: u64,
    /// Own units issued again under new seqs.
    pub reissued: u64,
    /// Own seqs found held there as other units (compared by content; 0 when seen by heads).
    pub differing: u64,
    /// When (the core's clock, ms since the Unix epoch).
    pub at_unix_ms: u64,
}

impl<S: Store> Node<S> {
    /// A peer's `Have` on `link` says it holds every own unit up to `contiguous`, and none beyond
    /// `highest`. On a direct link, the first such `Have` offers the own units it holds beyond
    /// its last recorded confirmation for comparison ([`Node::offer_own`]); what it reports is
    /// recorded as confirmed only once it has compared ([`Node::on_compared`]), and never from
    /// a relay link (no offer goes there). A conflict is handled when `highest` is beyond what
    /// this node handed out.
    pub(super) fn own_origin_seen(
        &mut self,
        link: LinkId,
        peer: DatabaseId,
        contiguous: u64,
        highest: u64,
    ) {
        if highest > self.ledger.own_head() {
            self.own_units_ahead(Some(peer), highest);
            return;
        }
        let Some(state) = self.links.get(&link).map(|l| l.own_offer) else { return };
        if link.is_relay() {
            return;
        }
        match state {
            OwnOffer::NotYet => {
                let state = match self.offer_own(link, peer, highest) {
                    // The store could not be read: offered again at the next `Have`.
                    Err(()) => return,
                    Ok(offered) => offered.map_or(OwnOffer::Done, OwnOffer::Pending),
                };
                if let Some(info) = self.links.get_mut(&link) {
                    info.own_offer = state;
                }
                if state == OwnOffer::Done {
                    self.ledger.confirm_own(peer, contiguous);
                }
            }
            // Possibly sent before the peer saw the offer; or the comparison was lost.
            OwnOffer::Pending(_) | OwnOffer::Lost => {}
            OwnOffer::Done => self.ledger.confirm_own(peer, contiguous),
        }
    }

    /// Offers the peer on `link` the own units it says it holds beyond its last recorded
    /// confirmation, up to its highest (the newest [`OFFER_MAX`]), as `(seq, physkey)` in one
    /// frame: it sends back what it holds under those seqs as other units, then
    /// [`Message::Compared`]. The confirmation is rolled back with the data directory, so after
    /// a rollback this covers every own unit sold since; in steady state, those since the last
    /// checkpoint. The last seq offered, if any; `Err` when the store could not be read.
    fn offer_own(
        &mut self,
        link: LinkId,
        peer: DatabaseId,
        highest: u64,
    ) -> Result<Option<u64>, ()> {
        let head = highest.min(self.ledger.own_head());
        let mut from = self.ledger.confirmed_own(&peer).max(head.saturating_sub(OFFER_MAX)) + 1;
        let own = self.dbid();
        let mut offered = Vec::new();
        // In pieces, keeping only the keys: units may be large.
        while from <= head {
            let Ok(units) = self.ledger.store().range(&own, from, OFFER_CHUNK) else {
                self.stats.store_errors += 1;
                return Err(());
            };
            let Some(last) = units.last().map(|u| u.seq) else { break };
            offered.extend(units.iter().filter(|u| u.seq <= head).map(|u| (u.seq, u.physkey)));
            from = last + 1;
        }
        let Some(last) = offered.last().map(|(seq, _)| *seq) else { return Ok(None) };
        self.stats.own_units_offered += offered.len() as u64;
        // One frame (about 42 KiB at most), answered by one `Compared`.
        self.send_frame(link, Tag::Tubs, &Message::Offer { units: offered });
        Ok(Some(last))
    }

    /// The peer on `link` compared the own units offered to it up to `upto` (and sent back,
    /// before this, what it holds there as other units): recorded as confirmed.
    pub(super) fn on_compared(&mut self, link: LinkId, peer: DatabaseId, upto: u64) {
        let Some(info) = self.links.get_mut(&link) else { return };
        let OwnOffer::Pending(offered) = info.own_offer else { return };
        // Cut short by the peer's bounds: what was not compared stays unconfirmed on this link.
        info.own_offer = if upto >= offered { OwnOffer::Done } else { OwnOffer::Lost };
        // Only what it holds without a gap: a seq it lacks was not compared, and may come to it
        // from a node holding a unit from before a rollback.
        let own = self.dbid();
        let held =
            self.peers.get(&peer).and_then(|p| p.vector.get(&own)).map_or(0, |r| r.contiguous());
        self.ledger.confirm_own(peer, upto.min(offered).min(held));
    }

    /// A peer's own units offered for comparison: what this node holds under their seqs as
    /// other units goes back to it, the one node that can issue them again
    /// ([`Node::own_rivals`]), then [`Message::Compared`]. When the store cannot be read,
    /// nothing is answered, and the peer's `Have`s on this link confirm nothing.
    pub(super) fn on_offer(
        &mut self,
        link: LinkId,
        origin: DatabaseId,
        offered: &[(u64, Physkey)],
    ) {
        if link.is_relay() || offered.len() > OFFER_MAX as usize {
            // Never sent on a relay link (sessions are metered; an answer could be 32 MiB), nor
            // longer: each pair costs a store read on this node's loop.
            self.stats.rejects.record_reason(RejectReason::Malformed);
            return;
        }
        let (held, upto) = match self.ledger.differing(&origin, offered) {
            Ok(answer) => answer,
            Err(_) => {
                self.stats.store_errors += 1;
                return;
            }
        };
        if !held.is_empty() {
            self.stats.units_diverged += held.len() as u64;
            tracing::warn!(
                %origin, units = held.len(),
                "a peer offered units under seqs this node holds as other units: it handed the \
                 seqs out twice (its data directory was rolled back in place, or is in use on \
                 two machines); ours go back to it to be issued again"
            );
            self.send_units(link, Tag::Tubt, &held, false);
        }
        if let Some(upto) = upto {
            self.send_frame(link, Tag::Tubs, &Message::Compared { upto });
        }
    }

    /// Own seqs a peer holds as other units (made under our origin before a rollback), from
    /// the units it sent back: both go again under new seqs. Ours, because the nodes holding
    /// theirs never take it under that seq; theirs, because this node and the nodes holding
    /// ours never take it under that seq. Each physkey goes again once per process.
    pub(super) fn own_rivals(&mut self, source: Source, rivals: Vec<Rival>) {
        let our_head = self.ledger.own_head();
        let seen_at = self.source_name(source);
        let differing = rivals.len() as u64;
        let their_head = rivals.iter().map(|r| r.held.seq).max().unwrap_or(0);
        self.bound_reissued_keys();
        let mut again: Vec<TransferUnit> = Vec::new();
        for Rival { held, received } in rivals {
            let fresh = |u: &TransferUnit, again: &[TransferUnit]| {
                !self.reissued_keys.contains(&u.physkey)
                    && !again.iter().any(|a| a.physkey == u.physkey)
            };
            if fresh(&held, &again) {
                again.push(held);
            }
            if fresh(&received, &again) && !self.holds(&received.physkey) {
                again.push(received);
            }
        }
        if again.is_empty() {
            // Both units of each seq went again already (another peer, or another link, sent
            // the same back).
            return;
        }
        let keys: Vec<Physkey> = again.iter().map(|u| u.physkey).collect();
        let reissued = again.len() as u64;
        if !self.issue_again(again) {
            // Not issued: the link they came on confirms nothing more, so the next link offers
            // them again.
            if let Source::Link(link) = source {
                if let Some(info) = self.links.get_mut(&link) {
                    info.own_offer = OwnOffer::Lost;
                }
            }
            return;
        }
        self.reissued_keys.extend(keys);
        tracing::error!(
            %seen_at, differing, their_head, our_head, reissued,
            "own seqs are held elsewhere as other units: this data directory was rolled back or \
             restored in place, or is in use on another machine too; both units of each seq \
             were issued again under new seqs"
        );
        self.conflict_seen(OwnConflict {
            seen_at,
            their_head,
            our_head,
            reissued,
            differing,
            at_unix_ms: self.now.as_millis(),
        });
    }

    /// Starts `reissued_keys` afresh once it reaches [`REISSUE_MAX`] (at worst a unit goes
    /// again once more); each caller then adds at most that many.
    fn bound_reissued_keys(&mut self) {
        if self.reissued_keys.len() >= REISSUE_MAX as usize {
            self.reissued_keys.clear();
        }
    }

    /// Whether a unit with `physkey` is held (under any seq); when the store cannot tell, not
    /// (a duplicate rather than a loss).
    fn holds(&self, physkey: &Physkey) -> bool {
        matches!(self.ledger.store().find_physkey(physkey), Ok(Some(_)))
    }

    fn source_name(&self, source: Source) -> String {
        let peer = match source {
            Source::Link(link) => self.links.get(&link).and_then(|l| l.peer),
            Source::Local | Source::Multicast => None,
        };
        peer.map_or_else(|| "a received unit".to_string(), |p| p.to_string())
    }

    /// Issues own units (oldest first) again under new seqs: indexed and sent once durable,
    /// like a group commit; nobody waits for receipts. False when the ledger refused them.
    fn issue_again(&mut self, again: Vec<TransferUnit>) -> bool {
        if again.is_empty() {
            return true;
        }
        match self.ledger.reissue_logged(again, self.now.as_millis()) {
            Ok(logged) => {
                let waiting = Unanswered::Syncing { receipts: Vec::new(), logged };
                self.submits_syncing.push_back(waiting);
                true
            }
            Err(_) => {
                self.stats.store_errors += 1;
                false
            }
        }
    }

    fn conflict_seen(&mut self, conflict: OwnConflict) {
        self.stats.own_conflicts += 1;
        self.stats.units_reissued += conflict.reissued;
        self.own_conflict = Some(conflict);
        self.release_submits();
    }

    /// Own seqs up to `highest` are held elsewhere, beyond this node's head.
    pub(super) fn own_units_ahead(&mut self, peer: Option<DatabaseId>, highest: u64) {
        let our_head = self.ledger.own_head();
        if highest <= our_head {
            return;
        }
        let seen_at = peer.map_or_else(|| "a received unit".to_string(), |p| p.to_string());
        if highest - our_head > OWN_PLAUSIBLE_AHEAD {
            tracing::warn!(%seen_at, their_head = highest, our_head, "implausible own seq ignored");
            return;
        }
        // Seqs skipped for an earlier conflict are not candidates again (the units issued again
        // above them are: a peer further ahead may hold other units under their seqs too).
        let floor = self.ledger.reissue_floor().max(self.own_conflict_handled);
        let own = self.dbid();
        let from = floor.max(our_head.saturating_sub(REISSUE_MAX)) + 1;
        let mut again = Vec::new();
        let mut bytes = 0;
        self.bound_reissued_keys();
        // Newest first, so the bounds keep the units most likely sold since the rollback.
        for seq in (from..=our_head).rev() {
            // Not held: skipped for an earlier conflict and not back yet.
            if let Some(unit) = self.own_unit(&own, seq) {
                bytes += unit.payload.len() + unit.sensitive.len();
                if bytes > REISSUE_MAX_BYTES {
                    break;
                }
                // A peer holding another unit here later sends it back: only that one goes
                // again then.
                self.reissued_keys.insert(unit.physkey);
                again.push(unit);
            }
        }
        again.reverse();
        if self.ledger.skip_own_past(highest, again.is_empty()).is_err() {
            // Nothing can be written (the ledger refuses submits too): seen again next time.
            self.stats.store_errors += 1;
            return;
        }
        let reissued = again.len() as u64;
        self.issue_again(again);
        self.own_conflict_handled = highest;
        tracing::error!(
            %seen_at, their_head = highest, our_head, reissued,
            "own units beyond this node's head are held elsewhere: this data directory was \
             rolled back or restored in place, or is in use on another machine too; new units \
             now skip those seqs, and the units that may share them were issued again"
        );
        self.conflict_seen(OwnConflict {
            seen_at,
            their_head: highest,
            our_head,
            reissued,
            differing: 0,
            at_unix_ms: self.now.as_millis(),
        });
    }

    /// An own unit held here: in the store, or in a batch still waiting for its log sync.
    fn own_unit(&self, own: &DatabaseId, seq: u64) -> Option<TransferUnit> {
        if let Ok(Some(unit)) = self.ledger.store().get(own, seq) {
            return Some(unit);
        }
        self.submits_syncing.iter().find_map(|waiting| match waiting {
            Unanswered::Syncing { logged, .. } | Unanswered::Received(logged) => {
                logged.unit(own, seq).cloned()
            }
            Unanswered::Refused { .. } => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{OwnOffer, OWN_PLAUSIBLE_AHEAD};
    use crate::id::DatabaseId;
    use crate::proto::peers::Role;
    use crate::proto::tests::Harness;
    use crate::unit::Urgency;

    /// A peer's `Have`s confirm nothing between the offer and the peer's `Compared` (one may
    /// have left before the peer saw the offer), and `Compared` confirms only what it covers.
    #[test]
    fn an_offer_holds_confirmations_until_the_peer_has_compared() {
        let mut h = Harness::new(&[Role::Lane, Role::StoreServer], &[true, true], &[]);
        h.run_until(h.now.plus_millis(3_000));
        for i in 0..3 {
            h.submit(0, format!("sale {i}").as_bytes(), Urgency::Normal);
        }
        h.run_until(h.now.plus_millis(3_000));
        let server = h.nodes[1].dbid();
        let link = h.nodes[0].peers.get(&server).and_then(|p| p.link).expect("linked");
        assert_eq!(h.nodes[0].links[&link].own_offer, OwnOffer::Done);
        // A peer never confirmed before, met on this link anew, holding what the server holds.
        let peer = DatabaseId::from_bytes(b"PEER00000000001").unwrap();
        let other = DatabaseId::from_bytes(b"PEER00000000002").unwrap();
        let lane = &mut h.nodes[0];
        for dbid in [peer, other] {
            let mut model = lane.peers[&server].clone();
            model.dbid = dbid;
            lane.peers.insert(dbid, model);
        }
        lane.links.get_mut(&link).unwrap().own_offer = OwnOffer::NotYet;
        let offered = lane.stats.own_units_offered;
        lane.own_origin_seen(link, peer, 3, 3);
        assert_eq!(lane.stats.own_units_offered - offered, 3);
        assert_eq!(lane.links[&link].own_offer, OwnOffer::Pending(3));
        lane.own_origin_seen(link, peer, 3, 3);
        assert_eq!(lane.ledger().confirmed_own(&peer), 0, "a Have in flight confirms nothing");
        lane.on_compared(link, peer, 3);
        assert_eq!(lane.links[&link].own_offer, OwnOffer::Done);
        assert_eq!(lane.ledger().confirmed_own(&peer), 3);
        // No second offer on the link; `Have`s confirm again.
        lane.own_origin_seen(link, peer, 3, 3);
        assert_eq!(lane.stats.own_units_offered - offered, 3);

        // An answer cut short confirms what it covers, and nothing more on that link.
        lane.links.get_mut(&link).unwrap().own_offer = OwnOffer::NotYet;
        lane.own_origin_seen(link, other, 3, 3);
        lane.on_compared(link, other, 2);
        assert_eq!(lane.links[&link].own_offer, OwnOffer::Lost);
        lane.own_origin_seen(link, other, 3, 3);
        assert_eq!(lane.ledger().confirmed_own(&other), 2);
    }

    #[test]
    fn seqs_skipped_stay_skipped_after_a_restart_and_implausible_claims_are_ignored() {
        let mut h = Harness::new(&[Role::Lane], &[true], &[]);
        for i in 0..3 {
            h.submit(0, format!("sale {i}").as_bytes(), Urgency::Normal);
        }
        let restart = |h: &mut Harness| {
            let mut store = h.nodes[0].ledger().store().clone();
            store.crash();
            h.restart(0, store);
        };
        // A broken peer claims our origin near the end of the seq space: not believed.
        h.nodes[0].own_units_ahead(None, 3 + OWN_PLAUSIBLE_AHEAD + 1);
        assert_eq!((h.nodes[0].ledger().own_head(), h.nodes[0].stats().own_conflicts), (3, 0));

        // A peer that held 1-3 before shows 10: nothing to issue again, and the skip is
        // durable, so a restart before 4-10 came back does not hand them out again.
        restart(&mut h);
        let peer = DatabaseId::from_bytes(b"PEER00000000001").unwrap();
        h.nodes[0].ledger_mut().confirm_own(peer, 3);
        h.nodes[0].own_units_ahead(Some(peer), 10);
        assert_eq!(h.nodes[0].stats().units_reissued, 0);
        restart(&mut h);
        assert_eq!(h.nodes[0].ledger().own_head(), 10);

        // A unit sold since goes again under a new seq, which holds the skip after a restart.
        h.submit(0, b"after the restart", Urgency::Normal);
        assert_eq!(h.nodes[0].ledger().own_head(), 11);
        h.nodes[0].own_units_ahead(None, 20);
        assert_eq!(h.nodes[0].stats().units_reissued, 1);
        assert_eq!(h.nodes[0].ledger().own_head(), 21);
        // A peer further ahead: the copy may collide there too, and goes again; 11 does not.
        h.nodes[0].own_units_ahead(None, 30);
        assert_eq!(h.nodes[0].stats().units_reissued, 2);
        assert_eq!(h.nodes[0].stats().own_conflicts, 2);
        restart(&mut h);
        assert_eq!(h.nodes[0].ledger().own_head(), 31);
    }
}
