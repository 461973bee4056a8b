//! Anti-entropy bookkeeping, kept apart from the state machine so it can be tested alone:
//!
//! - [`ChangeLog`]: which origins changed (held seqs or safe count) and in what order, so a
//!   [`Message::Have`] carries only what changed since the previous one on a link.
//! - [`LinkSync`]: per link, the two origin tables (ours for what we send, theirs for what we
//!   receive), how far our change log was reported, and the `Want` we have in flight.
//! - [`plan_want`]: what to ask a peer for: what its vector holds that ours lacks, less what is
//!   already asked of another peer, capped.
//!
//! Why pull (the node that lacks asks one peer) rather than push (every peer that notices sends):
//! a unit lost to one lane is noticed by all its LAN neighbours at once, and pushing would bring
//! it once per neighbour; the lane that lacks it knows exactly what it lacks and asks once.

use std::collections::{BTreeMap, HashMap};

use crate::id::DatabaseId;
use crate::proto::io::Time;
use crate::proto::message::{HaveEntry, Message, OriginRef};
use crate::store::{OriginRange, VersionVector};

/// Most origins one link's table may hold (a peer naming more is refused): bounds memory
/// against a hostile or broken member.
pub const MAX_ORIGINS: usize = 1 << 20;

/// Most entries in one `Have` frame (a longer one is split), so one frame stays well under the
/// frame limit whatever the number of origins.
pub const HAVE_ENTRIES_PER_FRAME: usize = 4096;

/// Origins in the order they last changed.
#[derive(Debug, Clone, Default)]
pub struct ChangeLog {
    stamp: u64,
    by_stamp: BTreeMap<u64, DatabaseId>,
    of_origin: BTreeMap<DatabaseId, u64>,
}

impl ChangeLog {
    /// Records that `origin` changed now.
    pub fn touch(&mut self, origin: DatabaseId) {
        self.stamp += 1;
        if let Some(old) = self.of_origin.insert(origin, self.stamp) {
            self.by_stamp.remove(&old);
        }
        self.by_stamp.insert(self.stamp, origin);
    }

    /// The latest stamp (0 before any change).
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Origins changed after `stamp`, oldest change first.
    pub fn since(&self, stamp: u64) -> impl Iterator<Item = &DatabaseId> + '_ {
        self.by_stamp.range(stamp.saturating_add(1)..).map(|(_, o)| o)
    }

    /// Whether anything changed after `stamp`.
    pub fn changed_since(&self, stamp: u64) -> bool {
        self.stamp > stamp
    }
}

/// A `Want` in flight to one peer.
#[derive(Debug, Clone)]
pub struct Outstanding {
    /// Asked ranges (so no other peer is asked for them meanwhile).
    pub ranges: VersionVector,
    /// Given up (and asked again, maybe elsewhere) after this.
    pub deadline: Time,
}

/// Why a received `Have` or `Want` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// An origin index the sender never named.
    #[error("origin index {0} was never named on this link")]
    UnknownOrigin(u32),
    /// More origins than [`MAX_ORIGINS`].
    #[error("more than {MAX_ORIGINS} origins named on one link")]
    TooManyOrigins,
    /// A range that breaks the vector's invariants.
    #[error("invalid range for origin {0}")]
    InvalidRange(DatabaseId),
}

/// The anti-entropy state of one link.
#[derive(Debug, Clone, Default)]
pub struct LinkSync {
    tx_index: HashMap<DatabaseId, u32>,
    tx_list: Vec<DatabaseId>,
    rx_list: Vec<DatabaseId>,
    rx_index: HashMap<DatabaseId, u32>,
    /// Our change-log stamp as of the last `Have` sent; `None` until the first (full) one.
    reported: Option<u64>,
    /// Whether the peer's full `Have` arrived (its model is known).
    heard: bool,
    /// The `Want` we have in flight on this link.
    pub want: Option<Outstanding>,
    /// When we last sent a frame on this link.
    pub last_sent: Time,
    /// When we last received a frame on this link.
    pub last_heard: Time,
}

impl LinkSync {
    /// A new link at `now`.
    pub fn new(now: Time) -> LinkSync {
        LinkSync { last_sent: now, last_heard: now, ..LinkSync::default() }
    }

    /// Whether the peer's full `Have` arrived on this link, so our model of it is current.
    pub fn heard(&self) -> bool {
        self.heard
    }

    /// Forgets what was reported, so the next `Have` is full (the peer asked for a resync).
    pub fn reset_reported(&mut self) {
        self.reported = None;
        self.tx_index.clear();
        self.tx_list.clear();
    }

    /// Whether a `Have` is due: never sent, or our vector changed since.
    pub fn have_due(&self, changes: &ChangeLog) -> bool {
        self.reported.is_none_or(|s| changes.changed_since(s))
    }

    /// The `Have` frames telling the peer what changed since the last ones (everything, the
    /// first time), split every [`HAVE_ENTRIES_PER_FRAME`] entries. Empty when nothing changed
    /// and a full one was sent already, unless `always` (a keepalive that also carries the
    /// total for the peer to check its model).
    pub fn have(
        &mut self,
        changes: &ChangeLog,
        ours: &VersionVector,
        safe: &BTreeMap<DatabaseId, u64>,
        always: bool,
    ) -> Vec<Message> {
        let full = self.reported.is_none();
        let origins: Vec<DatabaseId> = match self.reported {
            None => {
                let mut all: Vec<DatabaseId> = ours.origins().copied().collect();
                all.extend(safe.keys().filter(|o| ours.get(o).is_none()));
                all.sort_unstable();
                all
            }
            Some(stamp) => changes.since(stamp).copied().collect(),
        };
        self.reported = Some(changes.stamp());
        if !full && origins.is_empty() && !always {
            return Vec::new();
        }
        let entries: Vec<HaveEntry> = origins
            .into_iter()
            .map(|origin| {
                let (contiguous, beyond) =
                    ours.get(&origin).map(|r| r.to_parts()).unwrap_or_default();
                HaveEntry {
                    origin: self.name(origin),
                    contiguous,
                    beyond,
                    safe: safe.get(&origin).copied().unwrap_or(0),
                }
            })
            .collect();
        let mut frames = Vec::new();
        let mut chunks = entries.chunks(HAVE_ENTRIES_PER_FRAME).peekable();
        if chunks.peek().is_none() {
            return vec![Message::Have { full, entries: Vec::new(), total: Some(ours.total()) }];
        }
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let total = chunks.peek().is_none().then_some(ours.total());
            frames.push(Message::Have { full: full && first, entries: chunk.to_vec(), total });
            first = false;
        }
        frames
    }

    fn name(&mut self, origin: DatabaseId) -> OriginRef {
        if let Some(i) = self.tx_index.get(&origin) {
            return OriginRef::Known(*i);
        }
        let i = u32::try_from(self.tx_list.len()).unwrap_or(u32::MAX);
        self.tx_index.insert(origin, i);
        self.tx_list.push(origin);
        OriginRef::New(origin)
    }

    /// The origin our table gave index `i` (a peer's `Want` names origins this way).
    pub fn our_origin(&self, i: u32) -> Result<DatabaseId, SyncError> {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.tx_list.get(i))
            .copied()
            .ok_or(SyncError::UnknownOrigin(i))
    }

    /// The index our table gave `origin`, if named on this link.
    pub fn our_index(&self, origin: &DatabaseId) -> Option<u32> {
        self.tx_index.get(origin).copied()
    }

    /// The index the peer's table gave `origin` (a `Want` names origins this way).
    pub fn their_index(&self, origin: &DatabaseId) -> Option<u32> {
        self.rx_index.get(origin).copied()
    }

    /// Applies a received `Have` to `model` (our picture of the peer's vector) and returns the
    /// `(origin, safe)` pair of every entry. On error the model may be partly updated; the caller
    /// asks for a resync.
    pub fn apply_have(
        &mut self,
        full: bool,
        entries: Vec<HaveEntry>,
        model: &mut VersionVector,
    ) -> Result<Vec<(DatabaseId, u64)>, SyncError> {
        if full {
            self.heard = true;
            self.rx_list.clear();
            self.rx_index.clear();
            *model = VersionVector::new();
        }
        let mut safe = Vec::new();
        for entry in entries {
            let origin = match entry.origin {
                OriginRef::New(origin) => {
                    if self.rx_list.len() >= MAX_ORIGINS {
                        return Err(SyncError::TooManyOrigins);
                    }
                    let i = u32::try_from(self.rx_list.len()).unwrap_or(u32::MAX);
                    self.rx_index.insert(origin, i);
                    self.rx_list.push(origin);
                    origin
                }
                OriginRef::Known(i) => usize::try_from(i)
                    .ok()
                    .and_then(|i| self.rx_list.get(i))
                    .copied()
                    .ok_or(SyncError::UnknownOrigin(i))?,
            };
            let range = OriginRange::from_parts(&origin, entry.contiguous, entry.beyond)
                .map_err(|_| SyncError::InvalidRange(origin))?;
            model.replace(origin, Some(range));
            safe.push((origin, entry.safe));
        }
        Ok(safe)
    }
}

/// One origin's seq ranges we lack.
type Lacking = (DatabaseId, Vec<(u64, u64)>);

/// What `theirs` holds that `ours` lacks, less everything in `exclude` (asked of someone
/// else already), as `(origin, first, last)` ranges holding at most `cap` seqs (the last range
/// is cut to fit). With `only`, just those origins are looked at (the ones a `Have` just
/// changed: the rest of the model did not move, and our vector only grows).
pub fn plan_want(
    theirs: &VersionVector,
    ours: &VersionVector,
    exclude: &[&VersionVector],
    cap: u64,
    only: Option<&[DatabaseId]>,
) -> Vec<(DatabaseId, u64, u64)> {
    let lacking: Box<dyn Iterator<Item = Lacking>> = match only {
        None => Box::new(theirs.missing_from(ours).into_iter().map(|(origin, ranges)| {
            (origin, ranges.into_iter().map(|r| (*r.start(), *r.end())).collect())
        })),
        Some(origins) => Box::new(origins.iter().filter_map(|origin| {
            let held: Vec<(u64, u64)> = theirs.get(origin)?.held_ranges().collect();
            let missing = match ours.get(origin) {
                Some(mine) => subtract(&held, mine),
                None => held,
            };
            Some((*origin, missing))
        })),
    };
    let mut out = Vec::new();
    let mut budget = cap;
    for (origin, mut pieces) in lacking {
        for ex in exclude {
            if let Some(held) = ex.get(&origin) {
                pieces = subtract(&pieces, held);
            }
        }
        for (start, end) in pieces {
            if budget == 0 {
                return out;
            }
            let len = end - start + 1;
            let end = if len > budget { start + budget - 1 } else { end };
            budget -= end - start + 1;
            out.push((origin, start, end));
        }
    }
    out
}

/// `pieces` (ascending, disjoint, inclusive) less the seqs `held` holds.
fn subtract(pieces: &[(u64, u64)], held: &OriginRange) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut start, end) in pieces {
        for (hs, he) in held.held_ranges() {
            if he < start {
                continue;
            }
            if hs > end {
                break;
            }
            if hs > start {
                out.push((start, hs - 1));
            }
            start = he.saturating_add(1);
            if start > end || he == u64::MAX {
                break;
            }
        }
        if start <= end && !held.contains(start) {
            out.push((start, end));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbid(n: u8) -> DatabaseId {
        DatabaseId::from_bytes(format!("ORIGIN{n:09}").as_bytes()).unwrap()
    }

    fn vv(items: &[(u8, &[u64])]) -> VersionVector {
        let mut v = VersionVector::new();
        for (o, seqs) in items {
            for s in *seqs {
                v.insert(dbid(*o), *s);
            }
        }
        v
    }

    #[test]
    fn haves_carry_only_changes_and_rebuild_the_vector() {
        let mut changes = ChangeLog::default();
        let mut ours = VersionVector::new();
        let (mut tx, mut rx) = (LinkSync::default(), LinkSync::default());
        let mut model = VersionVector::new();
        let safe = BTreeMap::new();
        for round in 0..5u64 {
            for o in 0..3u8 {
                if round == 0 || o == 1 {
                    for s in 1..=10 {
                        ours.insert(dbid(o), round * 10 + s + u64::from(o == 2) * 5);
                    }
                    changes.touch(dbid(o));
                }
            }
            let frames = tx.have(&changes, &ours, &safe, false);
            assert_eq!(frames.len(), 1);
            let Message::Have { full, entries, total } = frames[0].clone() else { panic!() };
            assert_eq!(full, round == 0);
            assert_eq!(entries.len(), if round == 0 { 3 } else { 1 }, "round {round}");
            rx.apply_have(full, entries, &mut model).unwrap();
            assert_eq!(model, ours);
            assert_eq!(total, Some(ours.total()));
        }
        assert!(tx.have(&changes, &ours, &safe, false).is_empty(), "idle: nothing to say");
        assert_eq!(tx.have(&changes, &ours, &safe, true).len(), 1, "keepalive");
    }

    #[test]
    fn unknown_index_and_bad_range_are_errors() {
        let mut rx = LinkSync::default();
        let mut model = VersionVector::new();
        let bad = HaveEntry { origin: OriginRef::Known(0), contiguous: 1, beyond: vec![], safe: 0 };
        assert_eq!(rx.apply_have(false, vec![bad], &mut model), Err(SyncError::UnknownOrigin(0)));
        let gap = HaveEntry {
            origin: OriginRef::New(dbid(1)),
            contiguous: 5,
            beyond: vec![(6, 7)],
            safe: 0,
        };
        assert!(matches!(
            rx.apply_have(false, vec![gap], &mut model),
            Err(SyncError::InvalidRange(_))
        ));
    }

    #[test]
    fn plans_what_we_lack_less_what_is_asked_elsewhere() {
        let theirs = vv(&[(1, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), (2, &[1, 2])]);
        let ours = vv(&[(1, &[1, 2]), (2, &[1, 2])]);
        let asked = vv(&[(1, &[4, 5])]);
        assert_eq!(plan_want(&theirs, &ours, &[], 100, None), vec![(dbid(1), 3, 10)]);
        assert_eq!(
            plan_want(&theirs, &ours, &[&asked], 100, None),
            vec![(dbid(1), 3, 3), (dbid(1), 6, 10)]
        );
        let only = [dbid(1), dbid(3)];
        assert_eq!(
            plan_want(&theirs, &ours, &[&asked], 100, Some(&only)),
            vec![(dbid(1), 3, 3), (dbid(1), 6, 10)]
        );
        assert!(plan_want(&theirs, &ours, &[], 100, Some(&[dbid(2)])).is_empty());
        assert_eq!(
            plan_want(&theirs, &ours, &[&asked], 3, None),
            vec![(dbid(1), 3, 3), (dbid(1), 6, 7)]
        );
        assert!(plan_want(&ours, &theirs, &[], 100, None).is_empty());
    }

    #[test]
    fn subtract_handles_edges() {
        let held = vv(&[(1, &[1, 2, 3, 7, 8, 20])]);
        let r = held.get(&dbid(1)).unwrap();
        assert_eq!(subtract(&[(1, 30)], r), vec![(4, 6), (9, 19), (21, 30)]);
        assert_eq!(subtract(&[(2, 3)], r), vec![]);
        assert_eq!(subtract(&[(5, 7)], r), vec![(5, 6)]);
        assert_eq!(subtract(&[(8, 9)], r), vec![(9, 9)]);
    }
}
