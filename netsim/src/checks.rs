//! Delivery, loss and order accounting: what the engine saw the nodes acknowledge and deliver,
//! judged against what the architecture promises (ARCHITECTURE.md, "Replication model").
//!
//! Definitions:
//! - An *acknowledged* unit is one some node reported with `Output::Accepted` and
//!   `existing: false`; that node is its origin's *owner* and holds it from then on.
//! - A node *holds* a unit once it has delivered it to its application (or owns it). Every node
//!   should hold every acknowledged unit; `missing` counts the (node, unit) pairs that do not.
//! - Deliveries of one origin at one node must come in strictly increasing seq order with no
//!   gap, each seq once. After a crash the node may start again at any seq up to one past what
//!   it had delivered contiguously (its durable cursor may lag) and re-deliver from there: those
//!   re-deliveries are `redelivered_after_crash`, not duplicates. Any other second delivery is a
//!   duplicate; any gap or step back that delivers something new is out of order.
//! - A delivered unit must be the acknowledged one: same physkey under the same (origin, seq).
//!
//! Not here: whether a node's *store* holds a unit (a delivered unit is the application's), and
//! anything about the network.

use std::collections::BTreeMap;

use meshnode::id::{DatabaseId, Physkey};
use meshnode::ledger::Receipt;
use meshnode::store::OriginRange;
use meshnode::unit::TransferUnit;

use crate::network::NodeId;

/// Seqs this far past the highest acknowledged are counted but not tracked per seq, so a
/// broken core cannot make the checker allocate without bound.
const TRACK_AHEAD: u64 = 1 << 20;

/// The accounting of one run.
#[derive(Debug)]
pub(crate) struct Checks {
    nodes: usize,
    /// Origin -> index into `infos` (one lookup per event; the rest is by index).
    index: BTreeMap<DatabaseId, u32>,
    infos: Vec<OriginInfo>,
    per_node: Vec<NodeState>,
    /// (node, acknowledged unit) pairs not yet held.
    missing: u64,
    pub(crate) counts: CheckCounts,
}

/// Violation and volume counters.
#[derive(Debug, Default, Clone)]
pub(crate) struct CheckCounts {
    pub(crate) acknowledged: u64,
    pub(crate) accepted_existing: u64,
    pub(crate) deliveries: u64,
    pub(crate) delivered_copies: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) redelivered_after_crash: u64,
    pub(crate) mismatched: u64,
    /// An acknowledged (origin, seq) acknowledged again for a different unit.
    pub(crate) reused_seq: u64,
    /// Another node acknowledged units of an origin already owned.
    pub(crate) origin_conflicts: u64,
    pub(crate) untracked: u64,
    pub(crate) sized_units: u64,
    pub(crate) sized_bytes: u64,
}

#[derive(Debug, Default)]
struct OriginInfo {
    owner: Option<NodeId>,
    acked: OriginRange,
    /// Index `seq - 1`.
    units: Vec<UnitInfo>,
}

#[derive(Debug, Default, Clone)]
struct UnitInfo {
    physkey: Option<Physkey>,
    holders: u32,
    /// Encoded size, measured at the first delivery (0: not yet).
    size: u32,
    delivered: bool,
}

#[derive(Debug, Default)]
struct NodeState {
    /// By origin index.
    pairs: BTreeMap<u32, Pair>,
    /// When the node last came to hold a unit it did not hold.
    last_gain: u64,
}

/// One node's view of one origin.
#[derive(Debug, Default)]
struct Pair {
    held: OriginRange,
    delivered: OriginRange,
    /// The last seq delivered by the current process; `None` after a (re)start.
    stream: Option<u64>,
    /// The highest seq delivered before the last crash.
    replay_limit: u64,
}

/// What [`Checks::finish`] concludes.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub(crate) lost: u64,
    pub(crate) missing_copies: u64,
    pub(crate) delivered_unacknowledged: u64,
    /// Per node: when it last gained a unit, if it holds every acknowledged unit.
    pub(crate) converged_at: Vec<Option<u64>>,
}

impl Checks {
    pub(crate) fn new(nodes: usize) -> Self {
        Checks {
            nodes,
            index: BTreeMap::new(),
            infos: Vec::new(),
            per_node: (0..nodes).map(|_| NodeState::default()).collect(),
            missing: 0,
            counts: CheckCounts::default(),
        }
    }

    /// Whether every node holds every acknowledged unit.
    pub(crate) fn all_held(&self) -> bool {
        self.missing == 0
    }

    fn origin(&mut self, origin: DatabaseId) -> u32 {
        let next = self.infos.len() as u32;
        let index = *self.index.entry(origin).or_insert(next);
        if index == next {
            self.infos.push(OriginInfo::default());
        }
        index
    }

    /// `Output::Accepted` at `node`.
    pub(crate) fn on_accepted(&mut self, node: NodeId, now: u64, receipt: &Receipt) {
        if receipt.existing {
            self.counts.accepted_existing += 1;
            return;
        }
        let o = self.origin(receipt.origin);
        let info = &mut self.infos[o as usize];
        match info.owner {
            None => info.owner = Some(node),
            Some(owner) if owner != node => self.counts.origin_conflicts += 1,
            Some(_) => {}
        }
        let newly = info.acked.insert(receipt.seq);
        let Some(slot) = unit_slot(info, receipt.seq) else {
            self.counts.untracked += 1;
            return;
        };
        if !newly {
            if slot.physkey != Some(receipt.physkey) {
                self.counts.reused_seq += 1;
            }
            return;
        }
        slot.physkey = Some(receipt.physkey);
        self.counts.acknowledged += 1;
        self.missing += self.nodes as u64 - u64::from(slot.holders);
        self.hold(node, o, receipt.seq, now);
    }

    /// `Output::Deliver` at `node`.
    pub(crate) fn on_deliver(&mut self, node: NodeId, now: u64, unit: &TransferUnit) {
        self.counts.deliveries += 1;
        let seq = unit.seq;
        let o = self.origin(unit.origin);
        let pair = self.per_node[node.0 as usize].pairs.entry(o).or_default();
        let in_order = match pair.stream {
            Some(last) => Some(seq) == last.checked_add(1),
            None => seq >= 1 && seq <= pair.delivered.contiguous().saturating_add(1),
        };
        let new = pair.delivered.insert(seq);
        if !new {
            if in_order && seq <= pair.replay_limit {
                self.counts.redelivered_after_crash += 1;
                pair.stream = Some(seq);
            } else {
                self.counts.duplicates += 1;
            }
            return;
        }
        if !in_order {
            self.counts.out_of_order += 1;
        }
        if in_order || pair.stream.is_none_or(|s| seq > s) {
            pair.stream = Some(seq);
        }
        let info = &mut self.infos[o as usize];
        if let Some(slot) = unit_slot(info, seq) {
            if slot.physkey.is_some_and(|key| key != unit.physkey) {
                self.counts.mismatched += 1;
            }
            slot.delivered = true;
            if slot.size == 0 {
                let len = u32::try_from(unit.encode().len()).unwrap_or(u32::MAX);
                slot.size = len;
                self.counts.sized_units += 1;
                self.counts.sized_bytes += u64::from(len);
            }
        } else {
            self.counts.untracked += 1;
        }
        self.counts.delivered_copies += 1;
        self.hold(node, o, seq, now);
    }

    /// The node's process died: its next deliveries may replay what it delivered before.
    pub(crate) fn on_crash(&mut self, node: NodeId) {
        for pair in self.per_node[node.0 as usize].pairs.values_mut() {
            pair.stream = None;
            pair.replay_limit = pair.delivered.highest();
        }
    }

    /// Records that `node` holds `seq` of origin index `o`.
    fn hold(&mut self, node: NodeId, o: u32, seq: u64, now: u64) {
        let state = &mut self.per_node[node.0 as usize];
        if !state.pairs.entry(o).or_default().held.insert(seq) {
            return;
        }
        state.last_gain = now;
        let info = &mut self.infos[o as usize];
        if let Some(slot) = unit_slot(info, seq) {
            slot.holders += 1;
            if info.acked.contains(seq) {
                self.missing = self.missing.saturating_sub(1);
            }
        }
    }

    /// The final judgement, exact (it does not trust the running counters).
    pub(crate) fn finish(&self) -> Verdict {
        let mut lost = 0;
        let mut missing_copies = 0;
        let mut delivered_unacknowledged = 0;
        let mut complete = vec![true; self.nodes];
        for (o, info) in self.infos.iter().enumerate() {
            delivered_unacknowledged += info
                .units
                .iter()
                .enumerate()
                .filter(|(i, u)| u.delivered && !info.acked.contains(*i as u64 + 1))
                .count() as u64;
            let highest = info.acked.highest();
            if highest == 0 {
                continue;
            }
            // Per acknowledged seq (index seq - 1): how many nodes lack it.
            let mut short = vec![0u64; usize::try_from(highest).unwrap_or(usize::MAX)];
            for (n, state) in self.per_node.iter().enumerate() {
                let pair = state.pairs.get(&(o as u32));
                if pair.is_some_and(|p| p.held.contiguous() >= highest) {
                    continue;
                }
                for (i, count) in short.iter_mut().enumerate() {
                    let seq = i as u64 + 1;
                    if info.acked.contains(seq) && !pair.is_some_and(|p| p.held.contains(seq)) {
                        *count += 1;
                        complete[n] = false;
                    }
                }
            }
            missing_copies += short.iter().sum::<u64>();
            lost += short.iter().filter(|&&c| c > 0).count() as u64;
        }
        let converged_at = self
            .per_node
            .iter()
            .zip(&complete)
            .map(|(s, &done)| done.then_some(s.last_gain))
            .collect();
        Verdict { lost, missing_copies, delivered_unacknowledged, converged_at }
    }
}

/// The per-seq record of `seq`, growing the table as far as [`TRACK_AHEAD`] allows.
fn unit_slot(info: &mut OriginInfo, seq: u64) -> Option<&mut UnitInfo> {
    let index = usize::try_from(seq.checked_sub(1)?).ok()?;
    if index >= info.units.len() {
        let limit = info.acked.highest().saturating_add(TRACK_AHEAD);
        if seq > limit {
            return None;
        }
        info.units.resize(index + 1, UnitInfo::default());
    }
    info.units.get_mut(index)
}

#[cfg(test)]
mod tests {
    use meshnode::unit::{FileScopes, UnitKind, Urgency};

    use super::*;

    fn origin() -> DatabaseId {
        "ORIGIN000000001".parse().unwrap()
    }

    fn unit(seq: u64) -> TransferUnit {
        TransferUnit {
            kind: UnitKind::Tubt,
            physkey: Physkey::generate(1_000, &origin(), seq).unwrap(),
            origin: origin(),
            seq,
            created_ms: 1_000,
            urgency: Urgency::Normal,
            scopes: FileScopes::NONE,
            payload: vec![7; 10],
            sensitive: Vec::new(),
        }
    }

    fn receipt(seq: u64) -> Receipt {
        let u = unit(seq);
        Receipt { origin: u.origin, seq, physkey: u.physkey, existing: false }
    }

    /// Three nodes; node 0 owns the origin and acknowledges seqs 1..=3.
    fn acked() -> Checks {
        let mut c = Checks::new(3);
        for seq in 1..=3 {
            c.on_accepted(NodeId(0), 10, &receipt(seq));
        }
        c
    }

    #[test]
    fn convergence_is_every_node_holding_every_acknowledged_unit() {
        let mut c = acked();
        assert!(!c.all_held());
        for n in [1, 2] {
            for seq in 1..=3 {
                c.on_deliver(NodeId(n), 20 + seq, &unit(seq));
            }
        }
        assert!(c.all_held());
        let v = c.finish();
        assert_eq!((v.lost, v.missing_copies, v.delivered_unacknowledged), (0, 0, 0));
        assert_eq!(v.converged_at, vec![Some(10), Some(23), Some(23)]);
        assert_eq!(c.counts.delivered_copies, 6);
        assert_eq!(c.counts.duplicates + c.counts.out_of_order + c.counts.mismatched, 0);
    }

    #[test]
    fn a_missing_unit_is_lost() {
        let mut c = acked();
        for seq in 1..=3 {
            c.on_deliver(NodeId(1), 20, &unit(seq));
        }
        c.on_deliver(NodeId(2), 20, &unit(1));
        let v = c.finish();
        assert_eq!((v.lost, v.missing_copies), (2, 2));
        assert_eq!(v.converged_at[2], None);
        assert!(!c.all_held());
    }

    #[test]
    fn duplicates_and_gaps_are_caught() {
        let mut c = acked();
        c.on_deliver(NodeId(1), 20, &unit(1));
        c.on_deliver(NodeId(1), 20, &unit(1));
        assert_eq!(c.counts.duplicates, 1);
        c.on_deliver(NodeId(1), 20, &unit(3));
        assert_eq!(c.counts.out_of_order, 1);
        c.on_deliver(NodeId(1), 20, &unit(2));
        assert_eq!(c.counts.out_of_order, 2);
        // A node that starts at seq 2 skipped seq 1.
        c.on_deliver(NodeId(2), 20, &unit(2));
        assert_eq!(c.counts.out_of_order, 3);
    }

    #[test]
    fn replay_after_a_crash_is_not_a_duplicate() {
        let mut c = acked();
        for seq in 1..=3 {
            c.on_deliver(NodeId(1), 20, &unit(seq));
        }
        c.on_crash(NodeId(1));
        // The durable cursor was at 1: seqs 2 and 3 come again, in order.
        c.on_deliver(NodeId(1), 30, &unit(2));
        c.on_deliver(NodeId(1), 30, &unit(3));
        assert_eq!(c.counts.redelivered_after_crash, 2);
        assert_eq!(c.counts.duplicates, 0);
        // But the same process delivering seq 3 again is a duplicate.
        c.on_deliver(NodeId(1), 30, &unit(3));
        assert_eq!(c.counts.duplicates, 1);
    }

    #[test]
    fn wrong_unit_and_reused_seq_are_caught() {
        let mut c = acked();
        let mut other = unit(1);
        other.physkey = Physkey::generate(2_000, &origin(), 1).unwrap();
        c.on_deliver(NodeId(1), 20, &other);
        assert_eq!(c.counts.mismatched, 1);
        c.on_accepted(NodeId(0), 30, &Receipt { physkey: other.physkey, ..receipt(1) });
        assert_eq!(c.counts.reused_seq, 1);
        c.on_accepted(NodeId(2), 30, &receipt(4));
        assert_eq!(c.counts.origin_conflicts, 1);
    }

    #[test]
    fn delivering_what_nobody_acknowledged_is_counted() {
        let mut c = Checks::new(2);
        c.on_deliver(NodeId(1), 20, &unit(1));
        assert_eq!(c.finish().delivered_unacknowledged, 1);
        // Acknowledged later (a core that sends before it is durable): no longer counted.
        c.on_accepted(NodeId(0), 30, &receipt(1));
        let v = c.finish();
        assert_eq!((v.delivered_unacknowledged, v.lost), (0, 0));
        assert!(c.all_held());
    }
}
