//! Version vectors: per origin, which seqs a node holds (ARCHITECTURE.md, "Replication model":
//! "the highest contiguous seq held (plus the few held beyond a gap)").
//!
//! The seqs held beyond the first gap are kept as a set of inclusive ranges rather than one
//! entry per seq: a node that receives a long stretch past a gap (eager push while
//! anti-entropy backfills) then costs a few bytes instead of one entry per unit, both in memory
//! and in the value the sled store rewrites on every batch, and a vector decoded from a peer
//! cannot make us allocate more than its own length.
//!
//! This module does not know where units are stored, and does not decide what to send: it only
//! answers "held or not" and computes [`VersionVector::missing_from`].

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::DatabaseId;

/// Per origin, the seqs held. Seq 0 is never held (sequence numbers start at 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionVector {
    origins: BTreeMap<DatabaseId, OriginRange>,
    /// Sum of [`OriginRange::count`] over all origins.
    total: u64,
}

/// The seqs held of one origin: all of `1..=contiguous`, plus disjoint ranges beyond the first
/// gap. Invariant: each range beyond starts at least two past the end of the one before it (and
/// past `contiguous + 1`), so the form is canonical and `==` compares held sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginRange {
    contiguous: u64,
    /// Start -> inclusive end.
    beyond: BTreeMap<u64, u64>,
    /// `contiguous` plus the length of every range beyond.
    count: u64,
}

/// Why bytes are not a version vector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VectorError {
    /// The bytes do not decode.
    #[error("malformed version vector: {0}")]
    Malformed(#[from] postcard::Error),
    /// Bytes after the vector.
    #[error("{len} unexpected bytes after the version vector")]
    Trailing {
        /// Number of extra bytes.
        len: usize,
    },
    /// A range beyond the gap that is empty, out of order, overlapping, adjacent to another or
    /// to the contiguous prefix.
    #[error("invalid range {start}..={end} beyond seq {contiguous} of origin {origin}")]
    InvalidRange {
        /// The origin.
        origin: DatabaseId,
        /// The contiguous prefix of that origin.
        contiguous: u64,
        /// First seq of the range.
        start: u64,
        /// Last seq of the range.
        end: u64,
    },
    /// An origin listed with no seq held.
    #[error("origin {origin} is listed with no seq held")]
    EmptyOrigin {
        /// The origin.
        origin: DatabaseId,
    },
}

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `seq` of `origin` is held.
    pub fn contains(&self, origin: &DatabaseId, seq: u64) -> bool {
        self.origins.get(origin).is_some_and(|r| r.contains(seq))
    }

    /// Records `seq` of `origin` as held. Returns false if it was already held (or is 0).
    pub fn insert(&mut self, origin: DatabaseId, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        let inserted = self.origins.entry(origin).or_default().insert(seq);
        if inserted {
            self.total = self.total.saturating_add(1);
        }
        inserted
    }

    /// The highest seq held of `origin` (0 if none).
    pub fn highest(&self, origin: &DatabaseId) -> u64 {
        self.origins.get(origin).map_or(0, OriginRange::highest)
    }

    /// How many seqs of `origin` are held.
    pub fn count(&self, origin: &DatabaseId) -> u64 {
        self.origins.get(origin).map_or(0, OriginRange::count)
    }

    /// How many seqs are held over all origins.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The origins with at least one seq held, ascending.
    pub fn origins(&self) -> impl Iterator<Item = &DatabaseId> + '_ {
        self.origins.keys()
    }

    /// The held seqs of `origin`, if any.
    pub fn get(&self, origin: &DatabaseId) -> Option<&OriginRange> {
        self.origins.get(origin)
    }

    /// Every origin with its held seqs, ascending by origin.
    pub fn iter(&self) -> impl Iterator<Item = (&DatabaseId, &OriginRange)> + '_ {
        self.origins.iter()
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Per origin, the seq ranges `self` holds that `other` lacks, ascending; origins with
    /// nothing missing are left out. This is what anti-entropy sends to the holder of `other`.
    pub fn missing_from(
        &self,
        other: &VersionVector,
    ) -> BTreeMap<DatabaseId, Vec<RangeInclusive<u64>>> {
        let mut out = BTreeMap::new();
        for (origin, mine) in &self.origins {
            let missing = match other.origins.get(origin) {
                None => mine.held().map(|(s, e)| s..=e).collect(),
                Some(theirs) => subtract(mine, theirs),
            };
            if !missing.is_empty() {
                out.insert(*origin, missing);
            }
        }
        out
    }

    /// The postcard encoding (the same bytes as serde with postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(self).expect("postcard into Vec")
    }

    /// Decodes [`VersionVector::encode`] output, checking every invariant. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, VectorError> {
        let (raw, rest): (BTreeMap<DatabaseId, RawRange>, &[u8]) =
            postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(VectorError::Trailing { len: rest.len() });
        }
        Self::from_raw(raw)
    }

    /// Replaces the state of `origin` (the stores commit and undo a planned batch this way; the
    /// core keeps its model of a peer's vector this way). `None` or an empty range removes the origin.
    pub fn replace(&mut self, origin: DatabaseId, range: Option<OriginRange>) {
        let old = match range.filter(|r| r.count > 0) {
            Some(range) => {
                self.total = self.total.saturating_add(range.count);
                self.origins.insert(origin, range)
            }
            None => self.origins.remove(&origin),
        };
        if let Some(old) = old {
            self.total = self.total.saturating_sub(old.count);
        }
    }

    fn from_raw(raw: BTreeMap<DatabaseId, RawRange>) -> Result<Self, VectorError> {
        let mut out = VersionVector::new();
        for (origin, raw) in raw {
            let range = OriginRange::from_raw(&origin, raw)?;
            if range.count == 0 {
                return Err(VectorError::EmptyOrigin { origin });
            }
            out.replace(origin, Some(range));
        }
        Ok(out)
    }
}

impl OriginRange {
    /// Every seq in `1..=contiguous` is held.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// The ranges held beyond the first gap, ascending and disjoint.
    pub fn beyond(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.beyond.iter().map(|(&s, &e)| s..=e)
    }

    /// Whether `seq` is held.
    pub fn contains(&self, seq: u64) -> bool {
        seq != 0
            && (seq <= self.contiguous
                || self.beyond.range(..=seq).next_back().is_some_and(|(_, &end)| seq <= end))
    }

    /// Records `seq` as held, advancing `contiguous` and absorbing ranges it now touches.
    /// Returns false if it was already held (or is 0).
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq == 0 || self.contains(seq) {
            return false;
        }
        self.count = self.count.saturating_add(1);
        if Some(seq) == self.contiguous.checked_add(1) {
            self.contiguous = seq;
            if let Some(next) = seq.checked_add(1) {
                if let Some(end) = self.beyond.remove(&next) {
                    self.contiguous = end;
                }
            }
            return true;
        }
        // Strictly beyond the gap: join the range ending at seq - 1 and the one starting at
        // seq + 1, if any.
        let after = seq.checked_add(1).and_then(|next| self.beyond.remove(&next));
        let end = after.unwrap_or(seq);
        match self.beyond.range_mut(..seq).next_back() {
            Some((_, prev_end)) if prev_end.checked_add(1) == Some(seq) => *prev_end = end,
            _ => {
                self.beyond.insert(seq, end);
            }
        }
        true
    }

    /// The highest seq held (0 if none).
    pub fn highest(&self) -> u64 {
        self.beyond.values().next_back().copied().unwrap_or(self.contiguous)
    }

    /// How many seqs are held.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Builds the state of `origin` from its contiguous prefix and the ranges beyond the gap
    /// (as a peer reports them), checking every invariant. Never panics.
    pub fn from_parts(
        origin: &DatabaseId,
        contiguous: u64,
        beyond: Vec<(u64, u64)>,
    ) -> Result<Self, VectorError> {
        Self::from_raw(origin, RawRange { contiguous, beyond })
    }

    /// The contiguous prefix and the ranges beyond the gap, as [`OriginRange::from_parts`]
    /// takes them.
    pub fn to_parts(&self) -> (u64, Vec<(u64, u64)>) {
        let raw = self.to_raw();
        (raw.contiguous, raw.beyond)
    }

    /// All held seqs as inclusive `(start, end)` pairs, ascending.
    pub fn held_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.held()
    }

    /// The postcard encoding of this origin's state alone (the sled store's per-origin value).
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(&self.to_raw()).expect("postcard into Vec")
    }

    /// Decodes [`OriginRange::encode`] output for `origin`. Never panics.
    pub(crate) fn decode(origin: &DatabaseId, bytes: &[u8]) -> Result<Self, VectorError> {
        let (raw, rest): (RawRange, &[u8]) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(VectorError::Trailing { len: rest.len() });
        }
        Self::from_raw(origin, raw)
    }

    /// All held seqs as inclusive `(start, end)` pairs, ascending.
    fn held(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let prefix = (self.contiguous > 0).then_some((1, self.contiguous));
        prefix.into_iter().chain(self.beyond.iter().map(|(&s, &e)| (s, e)))
    }

    fn to_raw(&self) -> RawRange {
        RawRange {
            contiguous: self.contiguous,
            beyond: self.beyond.iter().map(|(&s, &e)| (s, e)).collect(),
        }
    }

    fn from_raw(origin: &DatabaseId, raw: RawRange) -> Result<Self, VectorError> {
        let mut out = OriginRange {
            contiguous: raw.contiguous,
            beyond: BTreeMap::new(),
            count: raw.contiguous,
        };
        // The lowest start the next range may have: two past the previous end.
        let mut floor = raw.contiguous.checked_add(2);
        for (start, end) in raw.beyond {
            let invalid = || VectorError::InvalidRange {
                origin: *origin,
                contiguous: raw.contiguous,
                start,
                end,
            };
            if floor.is_none_or(|f| start < f) || end < start {
                return Err(invalid());
            }
            out.beyond.insert(start, end);
            // end - start + 1 cannot overflow past u64::MAX in total: ranges are disjoint seqs.
            out.count = out.count.saturating_add(end - start).saturating_add(1);
            floor = end.checked_add(2);
        }
        Ok(out)
    }
}

/// The encoded form of one origin's state: ranges as `(start, end)` pairs.
#[derive(Serialize, Deserialize)]
struct RawRange {
    contiguous: u64,
    beyond: Vec<(u64, u64)>,
}

impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.origins.iter().map(|(origin, range)| (origin, range.to_raw())))
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<DatabaseId, RawRange>::deserialize(d)?;
        Self::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

/// `mine` minus `theirs`, as inclusive ranges.
fn subtract(mine: &OriginRange, theirs: &OriginRange) -> Vec<RangeInclusive<u64>> {
    let theirs: Vec<(u64, u64)> = theirs.held().collect();
    let mut out = Vec::new();
    let mut j = 0;
    for (start, end) in mine.held() {
        // Skip their ranges that end before this one starts.
        while theirs.get(j).is_some_and(|&(_, te)| te < start) {
            j += 1;
        }
        let mut cursor = start;
        let mut k = j;
        loop {
            match theirs.get(k) {
                Some(&(ts, te)) if ts <= end => {
                    if ts > cursor {
                        out.push(cursor..=ts - 1);
                    }
                    match te.checked_add(1) {
                        Some(next) if next <= end => cursor = next,
                        _ => break,
                    }
                    k += 1;
                }
                _ => {
                    out.push(cursor..=end);
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn origin(i: usize) -> DatabaseId {
        ["ITB85JUYCJS4IQA", "AAAAAAAAAAAAAAA", "ZZZZZZZZZZZZZZ9"][i].parse().unwrap()
    }

    #[test]
    fn insert_advances_contiguous_and_absorbs_beyond() {
        let mut v = VersionVector::new();
        let o = origin(0);
        assert!(!v.insert(o, 0));
        assert!(v.insert(o, 3));
        assert!(v.insert(o, 5));
        assert!(v.insert(o, 4));
        assert!(!v.insert(o, 4));
        let r = v.get(&o).unwrap();
        assert_eq!(r.contiguous(), 0);
        assert_eq!(r.beyond().collect::<Vec<_>>(), vec![3..=5]);
        assert_eq!((v.highest(&o), v.count(&o), v.total()), (5, 3, 3));
        assert!(v.insert(o, 1));
        assert!(v.insert(o, 2));
        let r = v.get(&o).unwrap();
        assert_eq!((r.contiguous(), r.beyond().count()), (5, 0));
        assert!(v.contains(&o, 5) && !v.contains(&o, 6) && !v.contains(&o, 0));
        assert_eq!(v.highest(&origin(1)), 0);
        let mut r = OriginRange::default();
        assert!(!r.insert(0));
        assert_eq!(r, OriginRange::default());
        assert_eq!(v.count(&origin(1)), 0);
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut v = VersionVector::new();
        let o = origin(0);
        assert!(v.insert(o, u64::MAX));
        assert!(v.insert(o, u64::MAX - 1));
        assert!(v.contains(&o, u64::MAX));
        assert_eq!(v.highest(&o), u64::MAX);
        let other = VersionVector::new();
        assert_eq!(v.missing_from(&other)[&o], vec![u64::MAX - 1..=u64::MAX]);
        assert_eq!(VersionVector::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn known_bytes() {
        let mut v = VersionVector::new();
        for seq in [1, 2, 4] {
            v.insert(origin(0), seq);
        }
        // map length 1, dbid (15 bytes), contiguous 2, one range (4, 4).
        let mut expected = vec![1];
        expected.extend_from_slice(b"ITB85JUYCJS4IQA");
        expected.extend_from_slice(&[2, 1, 4, 4]);
        assert_eq!(hex::encode(v.encode()), hex::encode(&expected));
    }

    #[test]
    fn decode_rejects_non_canonical_and_garbage() {
        let bad = |contiguous: u64, beyond: Vec<(u64, u64)>| {
            let raw = BTreeMap::from([(origin(0), RawRange { contiguous, beyond })]);
            VersionVector::decode(&postcard::to_stdvec(&raw).unwrap()).unwrap_err()
        };
        assert!(matches!(bad(2, vec![(3, 4)]), VectorError::InvalidRange { start: 3, .. }));
        assert!(matches!(bad(0, vec![(5, 4)]), VectorError::InvalidRange { .. }));
        assert!(matches!(bad(0, vec![(5, 6), (7, 9)]), VectorError::InvalidRange { start: 7, .. }));
        assert!(matches!(bad(0, vec![(5, 9), (3, 3)]), VectorError::InvalidRange { start: 3, .. }));
        assert!(matches!(bad(u64::MAX, vec![(1, 1)]), VectorError::InvalidRange { .. }));
        assert!(matches!(bad(0, vec![]), VectorError::EmptyOrigin { .. }));
        assert!(matches!(VersionVector::decode(&[1, b'a']), Err(VectorError::Malformed(_))));
        let mut bytes = VersionVector::new().encode();
        bytes.push(0);
        assert!(matches!(VersionVector::decode(&bytes), Err(VectorError::Trailing { len: 1 })));
    }

    #[test]
    fn serde_json_uses_dbid_text() {
        let mut v = VersionVector::new();
        v.insert(origin(0), 1);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"ITB85JUYCJS4IQA":{"contiguous":1,"beyond":[]}}"#);
        assert_eq!(serde_json::from_str::<VersionVector>(&json).unwrap(), v);
    }

    fn arb_ops() -> impl Strategy<Value = Vec<(usize, u64)>> {
        proptest::collection::vec((0usize..3, 0u64..60), 0..120)
    }

    fn build(ops: &[(usize, u64)]) -> (VersionVector, BTreeSet<(usize, u64)>) {
        let mut v = VersionVector::new();
        let mut model = BTreeSet::new();
        for &(o, seq) in ops {
            let fresh = seq != 0 && model.insert((o, seq));
            assert_eq!(v.insert(origin(o), seq), fresh);
        }
        (v, model)
    }

    proptest! {
        #[test]
        fn matches_a_set_model(ops in arb_ops()) {
            let (v, model) = build(&ops);
            for o in 0..3 {
                let held: Vec<u64> =
                    model.iter().filter(|(m, _)| *m == o).map(|(_, s)| *s).collect();
                let mut contiguous = 0;
                while held.contains(&(contiguous + 1)) {
                    contiguous += 1;
                }
                prop_assert_eq!(v.get(&origin(o)).map_or(0, |r| r.contiguous()), contiguous);
                prop_assert_eq!(v.count(&origin(o)), held.len() as u64);
                prop_assert_eq!(v.highest(&origin(o)), held.last().copied().unwrap_or(0));
                for seq in 0..62 {
                    prop_assert_eq!(v.contains(&origin(o), seq), held.contains(&seq));
                }
            }
            prop_assert_eq!(v.total(), model.len() as u64);
            prop_assert_eq!(VersionVector::decode(&v.encode()).unwrap(), v);
        }

        #[test]
        fn missing_from_matches_set_difference(a in arb_ops(), b in arb_ops()) {
            let (va, ma) = build(&a);
            let (vb, mb) = build(&b);
            let missing = va.missing_from(&vb);
            let mut got = BTreeSet::new();
            for (o, ranges) in &missing {
                let mut last = 0;
                for r in ranges {
                    // Ascending, disjoint and non-empty.
                    prop_assert!(r.start() <= r.end() && (last == 0 || *r.start() > last));
                    last = *r.end();
                    for seq in r.clone() {
                        got.insert((*o, seq));
                    }
                }
                prop_assert!(!ranges.is_empty());
            }
            let want: BTreeSet<(DatabaseId, u64)> =
                ma.difference(&mb).map(|&(o, s)| (origin(o), s)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = VersionVector::decode(&bytes);
            let _ = OriginRange::decode(&origin(0), &bytes);
        }
    }
}
