//! Local submits and delivery: group commits answered once durable, durable acknowledgements,
//! and units handed to the application in per-origin order from the cursor.

use std::collections::BTreeSet;

use crate::id::DatabaseId;
use crate::ledger::{Logged, Receipt, Submission, SyncState};
use crate::proto::io::Output;
use crate::store::Store;
use crate::unit::TransferUnit;

use super::{Node, Source, Unanswered};

impl<S: Store> Node<S> {
    /// One group commit for `subs`; one `Accepted` (or, for a refused batch, `Refused`) per
    /// submission, in order.
    pub(super) fn submit(&mut self, subs: Vec<Submission>) {
        let count = subs.len();
        let (receipts, logged) = match self.ledger.submit_logged(subs, self.now.as_millis()) {
            Ok(r) => r,
            Err(e) => {
                self.stats.store_errors += 1;
                self.stats.submits_refused += count as u64;
                let reason = e.to_string();
                if self.submits_syncing.is_empty() {
                    self.refuse(count, &reason);
                } else {
                    self.submits_syncing.push_back(Unanswered::Refused { count, reason });
                }
                return;
            }
        };
        self.submits_syncing.push_back(Unanswered::Syncing { receipts, logged });
        self.release_submits();
    }

    fn refuse(&mut self, count: usize, reason: &str) {
        let refused = (0..count).map(|_| Output::Refused { reason: reason.to_string() });
        self.out.extend(refused);
    }

    /// Hands on the group commits that are durable, oldest first, stopping at one whose sync
    /// still runs; a failed sync refuses its batch and every batch after it (not known durable).
    pub(super) fn release_submits(&mut self) {
        while let Some(front) = self.submits_syncing.front() {
            let state = match front {
                Unanswered::Syncing { logged, .. } | Unanswered::Received(logged) => {
                    self.ledger.sync_state(logged)
                }
                Unanswered::Refused { .. } => SyncState::Durable,
            };
            match state {
                SyncState::Pending => return,
                SyncState::Durable => match self.submits_syncing.pop_front() {
                    Some(Unanswered::Syncing { receipts, logged }) => {
                        self.commit_durable(receipts, logged)
                    }
                    Some(Unanswered::Refused { count, reason }) => self.refuse(count, &reason),
                    Some(Unanswered::Received(mut logged)) => {
                        // Every durable received batch behind it goes into the same store batch.
                        while let Some(Unanswered::Received(next)) = self.submits_syncing.front() {
                            if self.ledger.sync_state(next) != SyncState::Durable {
                                break;
                            }
                            if let Some(Unanswered::Received(next)) =
                                self.submits_syncing.pop_front()
                            {
                                logged.join(next);
                            }
                        }
                        self.index_received(logged)
                    }
                    None => return,
                },
                SyncState::Failed(failure) => {
                    let failure = format!("the log sync failed: {failure}");
                    for waiting in std::mem::take(&mut self.submits_syncing) {
                        match waiting {
                            Unanswered::Syncing { receipts, .. } => {
                                self.stats.store_errors += 1;
                                self.stats.submits_refused += receipts.len() as u64;
                                self.refuse(receipts.len(), &failure);
                            }
                            Unanswered::Refused { count, reason } => self.refuse(count, &reason),
                            // Not known durable here: peers hand them back after the restart
                            // (this node's vector never claimed them).
                            Unanswered::Received(_) => self.stats.store_errors += 1,
                        }
                    }
                    return;
                }
            }
        }
    }

    /// A durable group commit: indexed, sent on, and answered.
    fn commit_durable(&mut self, receipts: Vec<Receipt>, logged: Logged) {
        let new_units = match self.ledger.index(logged) {
            Ok(units) => units,
            Err(_) => {
                // The units are durable in the logs (a reopen indexes them): they stay
                // accepted, and go out after the restart. The ledger refuses writes and
                // checkpoints until then.
                self.stats.store_errors += 1;
                Vec::new()
            }
        };
        // The multicast is queued before the receipts: the driver executes outputs in order,
        // and the receivers' group commit is most of the LAN's end-to-end time.
        self.forward(Source::Local, &new_units);
        self.out.extend(receipts.into_iter().map(Output::Accepted));
        let origins: BTreeSet<DatabaseId> = new_units.iter().map(|u| u.origin).collect();
        self.held_changed(&origins);
    }

    /// A durable batch of received units (delivered and sent on already): indexed, and from
    /// now on claimed in this node's vector.
    fn index_received(&mut self, logged: Logged) {
        match self.ledger.index(logged) {
            Ok(units) => {
                let origins: BTreeSet<DatabaseId> = units.iter().map(|u| u.origin).collect();
                self.held_changed(&origins);
            }
            // Durable in the logs: a reopen indexes them (the ledger refuses writes until then).
            Err(_) => self.stats.store_errors += 1,
        }
    }

    /// Moves the cursor for each acknowledgement and makes it durable with one flush; one
    /// answer per entry, in order.
    pub(super) fn acknowledge_durably(&mut self, acks: Vec<(DatabaseId, u64)>) {
        let app = self.cfg.app.clone();
        match self.ledger.acknowledge_durably(&app, &acks) {
            Ok(()) => {
                for (origin, seq) in acks {
                    self.out.push_back(Output::Acknowledged { origin, seq });
                }
            }
            Err(e) => {
                self.stats.store_errors += 1;
                let reason = e.to_string();
                for (origin, seq) in acks {
                    let reason = reason.clone();
                    self.out.push_back(Output::AcknowledgeFailed { origin, seq, reason });
                }
            }
        }
    }

    /// Delivers, per origin, every held unit after the delivered one, in seq order. `fresh`
    /// holds units just accepted (so held; sorted by origin, then seq, or not at all): they are
    /// delivered from memory (moved, not copied), so the common case (units arriving in order)
    /// never reads back and decrypts what was just written; a unit from before a gap is read
    /// from the store. `fresh` is walked once per origin, not searched per unit.
    pub(super) fn deliver_ready(
        &mut self,
        origins: impl IntoIterator<Item = DatabaseId>,
        mut fresh: Vec<TransferUnit>,
    ) {
        let own = self.dbid();
        for origin in origins {
            if origin == own {
                continue;
            }
            let last = self.delivered.get(&origin).copied().unwrap_or(0);
            let mut next = last + 1;
            // This origin's fresh units, in seq order.
            let mut i = fresh.partition_point(|u| u.origin < origin);
            loop {
                while fresh.get(i).is_some_and(|u| u.origin == origin && u.seq < next) {
                    i += 1;
                }
                // Each fresh unit is delivered at most once (`next` only grows), so its payload
                // can be taken.
                let in_hand = match fresh.get_mut(i) {
                    Some(u) if u.origin == origin && u.seq == next => {
                        i += 1;
                        Some(TransferUnit {
                            kind: u.kind,
                            physkey: u.physkey,
                            origin: u.origin,
                            seq: u.seq,
                            created_ms: u.created_ms,
                            urgency: u.urgency,
                            scopes: u.scopes,
                            payload: std::mem::take(&mut u.payload),
                            sensitive: std::mem::take(&mut u.sensitive),
                        })
                    }
                    _ => None,
                };
                let unit = match in_hand {
                    Some(unit) => unit,
                    None => match self.unit(&origin, next) {
                        Ok(Some(unit)) => unit,
                        _ => break,
                    },
                };
                self.out.push_back(Output::Deliver(unit));
                next += 1;
            }
            if next - 1 > last {
                self.delivered.insert(origin, next - 1);
            }
        }
    }
}
