//! The in-memory store for the simulator, with the crash semantics of a real store:
//! [`MemoryStore::crash`] loses exactly what was written since the last [`Store::flush`].
//!
//! Every change records how to undo it in a journal; `flush` forgets the journal and `crash`
//! plays it backwards. So a flush costs nothing however large the store, and a crash costs what
//! it discards. Iteration is over `BTreeMap`s only, so behaviour is deterministic.
//!
//! This store keeps units decoded (no byte encoding), so it never reports corruption. It keeps
//! whole units even when inserted with [`Store::insert_located`] (the trait's default), so it
//! needs no body source.

use std::collections::BTreeMap;

use super::plan::{self, OriginTags};
use super::{
    InsertOutcome, MetaWrite, OriginRange, Store, StoreError, VersionVector, MAX_APP_NAME,
};
use crate::id::{DatabaseId, Physkey};
use crate::unit::TransferUnit;

/// The in-memory [`Store`].
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    units: BTreeMap<(DatabaseId, u64), TransferUnit>,
    vector: VersionVector,
    tags: OriginTags,
    /// Application physkeys only.
    physkeys: BTreeMap<Physkey, (DatabaseId, u64)>,
    meta: BTreeMap<String, Vec<u8>>,
    cursors: BTreeMap<String, BTreeMap<DatabaseId, u64>>,
    /// How to undo each change since the last flush, oldest first.
    undo: Vec<Undo>,
}

/// The inverse of one change.
#[derive(Debug, Clone)]
enum Undo {
    Unit(DatabaseId, u64),
    Origin(DatabaseId, Option<OriginRange>),
    Physkey(Physkey),
    Meta(String, Option<Vec<u8>>),
    Cursor(String, DatabaseId, Option<u64>),
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a crash and restart: everything inserted or changed since the last
    /// [`Store::flush`] is gone, everything flushed is kept.
    pub fn crash(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Unit(origin, seq) => {
                    self.units.remove(&(origin, seq));
                }
                Undo::Origin(origin, range) => self.vector.replace(origin, range),
                Undo::Physkey(key) => {
                    self.physkeys.remove(&key);
                }
                Undo::Meta(name, Some(value)) => {
                    self.meta.insert(name, value);
                }
                Undo::Meta(name, None) => {
                    self.meta.remove(&name);
                }
                Undo::Cursor(app, origin, seq) => {
                    let cursors = self.cursors.entry(app.clone()).or_default();
                    match seq {
                        Some(seq) => cursors.insert(origin, seq),
                        None => cursors.remove(&origin),
                    };
                    if cursors.is_empty() {
                        self.cursors.remove(&app);
                    }
                }
            }
        }
        // Tags of origins that are gone are harmless (lookups check the vector), but rebuild
        // so the state equals a freshly opened store's.
        self.tags = OriginTags::from_vector(&self.vector);
    }

    /// Number of changes a crash would discard now.
    pub fn unflushed(&self) -> usize {
        self.undo.len()
    }

    fn set_meta(&mut self, name: &str, value: Option<Vec<u8>>) {
        let old = match value {
            Some(value) => self.meta.insert(name.to_string(), value),
            None => self.meta.remove(name),
        };
        self.undo.push(Undo::Meta(name.to_string(), old));
    }
}

impl Store for MemoryStore {
    fn insert_batch(
        &mut self,
        units: &[TransferUnit],
        meta: &[MetaWrite],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let plan = {
            let this = &*self;
            plan::plan_batch(&this.vector, units, &mut |key| this.find_physkey(key))?
        };
        for unit in plan.accepted.iter().filter_map(|&i| units.get(i)) {
            self.units.insert((unit.origin, unit.seq), unit.clone());
            self.undo.push(Undo::Unit(unit.origin, unit.seq));
        }
        for (origin, range) in plan.touched {
            let old = self.vector.get(&origin).cloned();
            self.vector.replace(origin, Some(range));
            self.tags.add(origin);
            self.undo.push(Undo::Origin(origin, old));
        }
        for (key, name) in plan.index {
            self.physkeys.insert(key, name);
            self.undo.push(Undo::Physkey(key));
        }
        for (name, value) in meta {
            self.set_meta(name, value.clone());
        }
        Ok(plan.outcomes)
    }

    fn contains(&self, origin: &DatabaseId, seq: u64) -> bool {
        self.vector.contains(origin, seq)
    }

    fn get(&self, origin: &DatabaseId, seq: u64) -> Result<Option<TransferUnit>, StoreError> {
        Ok(self.units.get(&(*origin, seq)).cloned())
    }

    fn range(
        &self,
        origin: &DatabaseId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TransferUnit>, StoreError> {
        Ok(self
            .units
            .range((*origin, from)..=(*origin, u64::MAX))
            .take(limit)
            .map(|(_, unit)| unit.clone())
            .collect())
    }

    fn find_physkey(&self, physkey: &Physkey) -> Result<Option<(DatabaseId, u64)>, StoreError> {
        plan::find_physkey(
            physkey,
            &self.tags,
            &self.vector,
            |origin, seq| self.get(origin, seq),
            |key| Ok(self.physkeys.get(key).copied()),
        )
    }

    fn version_vector(&self) -> &VersionVector {
        &self.vector
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name).cloned())
    }

    fn meta_put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.set_meta(name, Some(value.to_vec()));
        Ok(())
    }

    fn cursor(&self, app: &str) -> Result<BTreeMap<DatabaseId, u64>, StoreError> {
        check_app(app)?;
        Ok(self.cursors.get(app).cloned().unwrap_or_default())
    }

    fn set_cursor(&mut self, app: &str, origin: &DatabaseId, seq: u64) -> Result<(), StoreError> {
        check_app(app)?;
        let old = self.cursors.entry(app.to_string()).or_default().insert(*origin, seq);
        self.undo.push(Undo::Cursor(app.to_string(), *origin, old));
        Ok(())
    }

    fn for_each_unit(&self, f: &mut dyn FnMut(&TransferUnit) -> bool) -> Result<(), StoreError> {
        for unit in self.units.values() {
            if !f(unit) {
                break;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.undo.clear();
        Ok(())
    }
}

/// The same limit as the sled store, so the simulator fails where production would.
fn check_app(app: &str) -> Result<(), StoreError> {
    if app.len() > MAX_APP_NAME {
        return Err(StoreError::AppNameTooLong { len: app.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::suite::{app_key, app_unit, arb_ops, origin, unit, Model, Op};

    #[test]
    fn crash_drops_unflushed_and_keeps_flushed() {
        let mut s = MemoryStore::new();
        let meta = [("checkpoint".to_string(), Some(b"c1".to_vec()))];
        s.insert_batch(&[unit(0, 1), unit(0, 2), app_unit(1, 1, app_key(1))], &meta).unwrap();
        s.set_cursor("pos", &origin(0), 1).unwrap();
        s.flush().unwrap();
        assert_eq!(s.unflushed(), 0);

        let meta = [("checkpoint".to_string(), None), ("new".to_string(), Some(vec![1]))];
        s.insert_batch(&[unit(0, 3), unit(0, 9), unit(2, 1), app_unit(1, 2, app_key(2))], &meta)
            .unwrap();
        s.set_cursor("pos", &origin(0), 2).unwrap();
        s.set_cursor("pos", &origin(1), 1).unwrap();
        s.set_cursor("other", &origin(1), 1).unwrap();
        s.meta_put("put", b"p").unwrap();
        assert!(s.unflushed() > 0);
        s.crash();

        assert_eq!(s.units_total(), 3);
        assert_eq!(s.count_by_origin(), BTreeMap::from([(origin(0), 2), (origin(1), 1)]));
        assert_eq!(s.next_seq(&origin(0)), 3);
        assert_eq!(s.get(&origin(0), 3).unwrap(), None);
        assert_eq!(s.get(&origin(0), 2).unwrap(), Some(unit(0, 2)));
        assert_eq!(s.find_physkey(&app_key(2)).unwrap(), None);
        assert_eq!(s.find_physkey(&app_key(1)).unwrap(), Some((origin(1), 1)));
        assert_eq!(s.meta_get("checkpoint").unwrap(), Some(b"c1".to_vec()));
        assert_eq!(s.meta_get("new").unwrap(), None);
        assert_eq!(s.meta_get("put").unwrap(), None);
        assert_eq!(s.cursor("pos").unwrap(), BTreeMap::from([(origin(0), 1)]));
        assert!(s.cursor("other").unwrap().is_empty());
        assert!(!s.cursors.contains_key("other"));

        // Replaying the lost batch works as on a fresh store.
        let again = s.insert_batch(&[unit(0, 3), app_unit(1, 2, app_key(2))], &[]).unwrap();
        assert_eq!(again, vec![InsertOutcome::Inserted; 2]);
        // A crash right after a flush loses nothing.
        s.flush().unwrap();
        s.crash();
        assert_eq!(s.units_total(), 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn crash_matches_a_snapshot_model(ops in arb_ops(true)) {
            let mut store = MemoryStore::new();
            let mut model = Model::default();
            let mut durable = Model::default();
            for op in &ops {
                match op {
                    Op::Batch(spec) => {
                        let batch = Model::batch(spec);
                        let outcomes = store.insert_batch(&batch, &[]).unwrap();
                        prop_assert_eq!(outcomes, model.insert(&batch));
                    }
                    Op::Flush => {
                        store.flush().unwrap();
                        durable = model.clone();
                    }
                    Op::Crash => {
                        store.crash();
                        model = durable.clone();
                        model.verify(&store)?;
                    }
                }
            }
            model.verify(&store)?;
        }
    }
}
