//! This node's own origin seen beyond its head elsewhere: the data directory was rolled back in
//! place (a VM snapshot reverted, a block-level restore; a copied directory takes a new dbid,
//! see `crate::datadir`) or is in use on another machine too, and seqs it hands out again are
//! already taken by other units.
//!
//! A unit is named by `(origin, seq)`, so a peer holding another unit under a seq never takes
//! ours: without this, every unit submitted between the rollback and the first contact with a
//! peer would stay on this machine for good. When a peer's `Have` (or a received unit) shows an
//! own seq above everything this node knows it handed out:
//! - the next own seq moves past it, durably, so nothing submitted from now on collides; the
//!   units skipped over are the peer's, and come back through anti-entropy;
//! - own units above [`Ledger::reissue_floor`] (at most the rollback's head) and up to the
//!   peer's head are issued again under new seqs, same physkey and payload: those that collided
//!   reach the mesh, the others become duplicates, which applications drop by physkey;
//! - the conflict is counted, logged as an error and shown by `--status`.
//!
//! What this does not catch or repair (a per-origin digest in `Have` would):
//! - a conflict is seen only while a peer's head for our origin is above ours: a directory
//!   that sells more after the rollback, before it meets a peer, than it lost in the rollback
//!   looks in step, and the units at the colliding seqs stay apart;
//! - this node, and any peer that took its units at the colliding seqs, keep those and never
//!   hold the peer's units there (made before the rollback, held elsewhere in the mesh);
//! - the skip goes to the peer's highest seq: a seq below it that the peer lacks and nobody
//!   holds (a unit made just before the revert, which reached no one but beyond a lost
//!   datagram) stays a hole, and peers' delivery of this origin stops there. Filling such holes
//!   after a while with a void unit would end it.
//!
//! [`Ledger::reissue_floor`]: crate::ledger::Ledger::reissue_floor

use serde::Serialize;

use crate::id::DatabaseId;
use crate::ledger::OWN_PLAUSIBLE_AHEAD;
use crate::store::Store;
use crate::unit::TransferUnit;

use super::{Node, Unanswered};

/// Own units issued again for one conflict, at most: the newest ones, which are the ones
/// submitted since the rollback (a directory with no record of what peers held would
/// otherwise issue its whole history again).
const REISSUE_MAX: u64 = 65_536;
/// Their payload bytes, at most (units may be large).
const REISSUE_MAX_BYTES: usize = 64 << 20;

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
    /// When (the core's clock, ms since the Unix epoch).
    pub at_unix_ms: u64,
}

impl<S: Store> Node<S> {
    /// A peer holds every own unit up to `contiguous`, and none beyond `highest`: records what it
    /// confirms, or handles a conflict when `highest` is beyond what this node handed out.
    pub(super) fn own_origin_seen(&mut self, peer: DatabaseId, contiguous: u64, highest: u64) {
        if highest > self.ledger.own_head() {
            self.own_units_ahead(Some(peer), highest);
        } else {
            self.ledger.confirm_own(peer, contiguous);
        }
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
        // Newest first, so the bounds keep the units most likely sold since the rollback.
        for seq in (from..=our_head).rev() {
            // Not held: skipped for an earlier conflict and not back yet.
            if let Some(unit) = self.own_unit(&own, seq) {
                bytes += unit.payload.len() + unit.sensitive.len();
                if bytes > REISSUE_MAX_BYTES {
                    break;
                }
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
        if !again.is_empty() {
            match self.ledger.reissue_logged(again, self.now.as_millis()) {
                // Indexed and sent once durable, like a group commit; nobody waits for receipts.
                Ok(logged) => {
                    let waiting = Unanswered::Syncing { receipts: Vec::new(), logged };
                    self.submits_syncing.push_back(waiting);
                }
                Err(_) => self.stats.store_errors += 1,
            }
        }
        self.own_conflict_handled = highest;
        tracing::error!(
            %seen_at, their_head = highest, our_head, reissued,
            "own units beyond this node's head are held elsewhere: this data directory was \
             rolled back or restored in place, or is in use on another machine too; new units \
             now skip those seqs, and the units that may share them were issued again"
        );
        self.stats.own_conflicts += 1;
        self.stats.units_reissued += reissued;
        self.own_conflict = Some(OwnConflict {
            seen_at,
            their_head: highest,
            our_head,
            reissued,
            at_unix_ms: self.now.as_millis(),
        });
        self.release_submits();
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
    use super::OWN_PLAUSIBLE_AHEAD;
    use crate::id::DatabaseId;
    use crate::proto::peers::Role;
    use crate::proto::tests::Harness;
    use crate::unit::Urgency;

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
