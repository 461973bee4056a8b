//! Deciding what an insert batch writes, shared by both stores so they agree on every outcome.
//!
//! Planning reads the version vector (for duplicates) and the physkey lookup of the store, and
//! writes nothing: the store applies the plan in one atomic step, then commits the new origin
//! states into its in-memory vector. This module does not encode or store anything.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{BodyRef, InsertOutcome, OriginRange, StoreError, VersionVector};
use crate::id::{DatabaseId, Physkey};
use crate::unit::TransferUnit;

/// What one batch writes.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// One outcome per input unit, in order.
    pub outcomes: Vec<InsertOutcome>,
    /// Indices of the units to store, in input order.
    pub accepted: Vec<usize>,
    /// Application physkeys seen for the first time, with the unit they name.
    pub index: Vec<(Physkey, (DatabaseId, u64))>,
    /// The new state of every origin the batch adds to.
    pub touched: BTreeMap<DatabaseId, OriginRange>,
}

/// An element of an insert batch: a unit, or a unit with its [`BodyRef`].
pub(crate) trait BatchUnit {
    /// The unit.
    fn unit(&self) -> &TransferUnit;

    /// Where its bytes already are, if the store is to keep only that.
    fn body(&self) -> Option<BodyRef>;
}

impl BatchUnit for TransferUnit {
    fn unit(&self) -> &TransferUnit {
        self
    }

    fn body(&self) -> Option<BodyRef> {
        None
    }
}

impl BatchUnit for (TransferUnit, BodyRef) {
    fn unit(&self) -> &TransferUnit {
        &self.0
    }

    fn body(&self) -> Option<BodyRef> {
        Some(self.1)
    }
}

/// Looks a physkey up in what the store held before the batch.
pub(crate) type Lookup<'a> =
    dyn FnMut(&Physkey) -> Result<Option<(DatabaseId, u64)>, StoreError> + 'a;

/// Plans inserting `units` into a store holding `vector`; `lookup` is the store's
/// [`super::Store::find_physkey`].
pub(crate) fn plan_batch<U: BatchUnit>(
    vector: &VersionVector,
    units: &[U],
    lookup: &mut Lookup<'_>,
) -> Result<Plan, StoreError> {
    let mut plan = Plan {
        outcomes: Vec::with_capacity(units.len()),
        accepted: Vec::with_capacity(units.len()),
        ..Plan::default()
    };
    // Application keys indexed by this batch, and origin tags (a blake3 hash each) computed once
    // per origin rather than once per unit.
    let mut pending: HashMap<Physkey, (DatabaseId, u64)> = HashMap::new();
    let mut tags: BTreeMap<DatabaseId, u64> = BTreeMap::new();
    for (i, unit) in units.iter().map(BatchUnit::unit).enumerate() {
        let name = (unit.origin, unit.seq);
        let range = match plan.touched.entry(unit.origin) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(vector.get(&unit.origin).cloned().unwrap_or_default()),
        };
        if !range.insert(unit.seq) {
            plan.outcomes.push(InsertOutcome::Duplicate);
            continue;
        }
        let generated = unit.physkey.generated_parts().is_some_and(|p| {
            p.seq == unit.seq
                && p.origin_tag == *tags.entry(unit.origin).or_insert_with(|| unit.origin.tag())
        });
        let outcome = if generated {
            InsertOutcome::Inserted
        } else {
            let key = unit.physkey;
            let first = match pending.get(&key) {
                Some(first) => Some(*first),
                None => match lookup(&key)? {
                    Some(first) => Some(first),
                    None => held_earlier_in_batch(units, &plan.accepted, &key),
                },
            };
            match first {
                Some(first) if first != name => InsertOutcome::InsertedPhyskeySeen { first },
                _ => {
                    pending.insert(key, name);
                    plan.index.push((key, name));
                    InsertOutcome::Inserted
                }
            }
        };
        plan.accepted.push(i);
        plan.outcomes.push(outcome);
    }
    // Origins where every unit was a duplicate need no write.
    plan.touched.retain(|origin, range| range.count() > vector.count(origin));
    Ok(plan)
}

/// A unit accepted earlier in this batch whose own generated key is `key`. Only keys in the
/// generated layout can match, so this scan runs only for an application key that mimics one.
fn held_earlier_in_batch<U: BatchUnit>(
    units: &[U],
    accepted: &[usize],
    key: &Physkey,
) -> Option<(DatabaseId, u64)> {
    let parts = key.generated_parts()?;
    accepted
        .iter()
        .filter_map(|&i| units.get(i).map(BatchUnit::unit))
        .find(|u| u.seq == parts.seq && u.physkey == *key && u.origin.tag() == parts.origin_tag)
        .map(|u| (u.origin, u.seq))
}

/// Origins by [`DatabaseId::tag`], to resolve generated physkeys. Origins are few (thousands at
/// most), so this lives in memory and is rebuilt from the version vector on open.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginTags {
    by_tag: BTreeMap<u64, Vec<DatabaseId>>,
    known: BTreeSet<DatabaseId>,
}

impl OriginTags {
    /// The tags of every origin in `vector`.
    pub fn from_vector(vector: &VersionVector) -> Self {
        let mut out = OriginTags::default();
        for origin in vector.origins() {
            out.add(*origin);
        }
        out
    }

    /// Adds `origin` if it is new (hashing only then).
    pub fn add(&mut self, origin: DatabaseId) {
        if self.known.insert(origin) {
            self.by_tag.entry(origin.tag()).or_default().push(origin);
        }
    }

    /// Origins whose tag is `tag` (almost always zero or one).
    pub fn origins(&self, tag: u64) -> &[DatabaseId] {
        self.by_tag.get(&tag).map_or(&[], Vec::as_slice)
    }
}

/// [`super::Store::find_physkey`] for either store: a key in the generated layout is looked for
/// first as the unit it was generated for (confirmed by reading that unit), then in the
/// application index.
pub(crate) fn find_physkey(
    physkey: &Physkey,
    tags: &OriginTags,
    vector: &VersionVector,
    get: impl Fn(&DatabaseId, u64) -> Result<Option<TransferUnit>, StoreError>,
    index: impl Fn(&Physkey) -> Result<Option<(DatabaseId, u64)>, StoreError>,
) -> Result<Option<(DatabaseId, u64)>, StoreError> {
    if let Some(parts) = physkey.generated_parts() {
        for origin in tags.origins(parts.origin_tag) {
            if vector.contains(origin, parts.seq)
                && get(origin, parts.seq)?.is_some_and(|u| u.physkey == *physkey)
            {
                return Ok(Some((*origin, parts.seq)));
            }
        }
    }
    index(physkey)
}
