//! This node's own origin seen beyond its head elsewhere: the data directory was rolled back
//! (a VM snapshot reverted, a backup restored) or copied to another machine, and seqs it hands
//! out again are already taken by other units.
//!
//! A unit is named by `(origin, seq)`, so a peer holding another unit under a seq never takes
//! ours: without this, every unit submitted between the rollback and the first contact with a
//! peer would stay on this machine for good. When a peer's `Have` (or a received unit) shows an
//! own seq above everything this node knows it handed out:
//! - the next own seq moves past it, so nothing submitted from now on collides; the units
//!   skipped over are the peer's, and come back through anti-entropy;
//! - own units above the last seq a peer was recorded to hold ([`Ledger::confirmed_own`],
//!   rolled back with the directory, so at most the snapshot's head) and up to the peer's head
//!   are issued again under new seqs, same physkey and payload: those that collided reach the
//!   mesh, those that did not become duplicates, which applications drop by physkey;
//! - the conflict is counted, logged as an error and shown by `--status`.
//!
//! What this does not repair: this node keeps its own units at the colliding seqs, so it never
//! holds the peer's units there (units it made before the rollback, which the mesh has).
//!
//! [`Ledger::confirmed_own`]: crate::ledger::Ledger::confirmed_own

use serde::Serialize;

use crate::id::DatabaseId;
use crate::store::Store;
use crate::unit::TransferUnit;

use super::{Node, Unanswered};

/// Own units issued again for one conflict, at most: the newest ones, which are the ones
/// submitted since the rollback (a directory with no record of what peers held would
/// otherwise issue its whole history again).
const REISSUE_MAX: u64 = 65_536;

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
        let own = self.dbid();
        let upto = our_head.min(highest);
        let from = self.ledger.confirmed_own().max(upto.saturating_sub(REISSUE_MAX)) + 1;
        let mut again = Vec::new();
        for seq in from..=upto {
            match self.own_unit(&own, seq) {
                Some(unit) => again.push(unit),
                None => self.stats.store_errors += 1,
            }
        }
        self.ledger.skip_own_past(highest);
        let reissued = again.len() as u64;
        if !again.is_empty() {
            match self.ledger.reissue_logged(again, self.now.as_millis()) {
                // Indexed and sent once durable, like a group commit; nobody waits for receipts.
                Ok(logged) => {
                    self.submits_syncing
                        .push_back(Unanswered::Syncing { receipts: Vec::new(), logged });
                }
                Err(_) => self.stats.store_errors += 1,
            }
        }
        let seen_at = peer.map_or_else(|| "a received unit".to_string(), |p| p.to_string());
        tracing::error!(
            %seen_at, their_head = highest, our_head, reissued,
            "own units beyond this node's head are held elsewhere: this data directory was \
             rolled back or restored from a copy, or is in use on another machine too; new units \
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
