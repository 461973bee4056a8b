//! This node's own origin seen beyond its head elsewhere: the data directory was rolled back
//! (a VM snapshot reverted, a backup restored) or copied to another machine, and seqs it hands
//! out again are already taken by other units.
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
//!   hold the peer's units there (made before the rollback, held elsewhere in the mesh).
//!
//! [`Ledger::reissue_floor`]: crate::ledger::Ledger::reissue_floor

use serde::Serialize;

use crate::id::DatabaseId;
use crate::store::Store;
use crate::unit::TransferUnit;

use super::{Node, Unanswered};

/// Own units issued again for one conflict, at most: the newest ones, which are the ones
/// submitted since the rollback (a directory with no record of what peers held would
/// otherwise issue its whole history again).
const REISSUE_MAX: u64 = 65_536;
/// Their payload bytes, at most (units may be large).
const REISSUE_MAX_BYTES: usize = 64 << 20;

/// How far beyond this node's head a peer may show our origin and be believed: more units than
/// a rollback plausibly lost. A larger claim (a broken peer) would move the next own seq towards
/// the end of the seq space, so it is logged and ignored.
const PLAUSIBLE_AHEAD: u64 = 1 << 24;

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
        } else if self.ledger.confirm_own(contiguous).is_err() {
            self.stats.store_errors += 1;
        }
    }

    /// Own seqs up to `highest` are held elsewhere, beyond this node's head.
    pub(super) fn own_units_ahead(&mut self, peer: Option<DatabaseId>, highest: u64) {
        let our_head = self.ledger.own_head();
        if highest <= our_head {
            return;
        }
        let seen_at = peer.map_or_else(|| "a received unit".to_string(), |p| p.to_string());
        if highest - our_head > PLAUSIBLE_AHEAD {
            tracing::warn!(%seen_at, their_head = highest, our_head, "implausible own seq ignored");
            return;
        }
        // Units issued again, and seqs skipped, for an earlier conflict are not candidates again.
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
        if self.ledger.skip_own_past(highest).is_err() {
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
        self.own_conflict_handled = self.ledger.own_head();
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
    use crate::proto::peers::Role;
    use crate::proto::tests::Harness;
    use crate::unit::Urgency;

    #[test]
    fn seqs_skipped_stay_skipped_after_a_restart_and_implausible_claims_are_ignored() {
        let mut h = Harness::new(&[Role::Lane], &[true], &[]);
        for i in 0..3 {
            h.submit(0, format!("sale {i}").as_bytes(), Urgency::Normal);
        }
        assert_eq!(h.nodes[0].ledger().own_head(), 3);
        // A broken peer claims our origin near the end of the seq space: not believed.
        h.nodes[0].own_units_ahead(None, 3 + super::PLAUSIBLE_AHEAD + 1);
        assert_eq!(h.nodes[0].ledger().own_head(), 3);
        assert_eq!(h.nodes[0].stats().own_conflicts, 0);

        h.nodes[0].own_units_ahead(None, 10);
        assert_eq!(h.nodes[0].stats().own_conflicts, 1);
        // 1-3 were issued again as 11-13 (nothing was confirmed by a peer).
        assert_eq!(h.nodes[0].stats().units_reissued, 3);
        assert_eq!(h.nodes[0].ledger().own_head(), 13);
        // A second sighting does not issue the same units again.
        h.nodes[0].own_units_ahead(None, 20);
        assert_eq!(h.nodes[0].stats().units_reissued, 3);
        assert_eq!(h.nodes[0].ledger().own_head(), 20);

        // A restart before seqs 4-10 and 14-20 came back keeps them skipped.
        let mut store = h.nodes[0].ledger().store().clone();
        store.crash();
        h.restart(0, store);
        assert_eq!(h.nodes[0].ledger().own_head(), 20);
        h.submit(0, b"after the restart", Urgency::Normal);
        assert_eq!(h.nodes[0].ledger().own_head(), 21);
    }
}
