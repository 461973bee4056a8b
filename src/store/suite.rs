//! The behaviour both stores must share, run against each: every test here is instantiated for
//! [`MemoryStore`] and [`SledStore`] by `for_both_stores!`, each both through
//! [`Store::insert_batch`] and through [`Store::insert_located`] (the [`Located`] adapter).
//! Store-specific tests (reopen, corruption, crash, body sources) live next to each store.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::{
    BodyError, BodyRef, BodySource, InsertOutcome, MemoryStore, MetaWrite, SledStore, Store,
    StoreError, VersionVector,
};
use crate::id::{DatabaseId, Physkey};
use crate::unit::{FileScopes, TransferUnit, UnitKind, Urgency};

use InsertOutcome::{Duplicate, Inserted};

/// Test origins; index 0..3.
pub(super) fn origin(i: usize) -> DatabaseId {
    ["ITB85JUYCJS4IQA", "AAAAAAAAAAAAAAA", "ZZZZZZZZZZZZZZ9"][i].parse().unwrap()
}

/// A unit with its generated physkey and a payload naming it.
pub(super) fn unit(o: usize, seq: u64) -> TransferUnit {
    let origin = origin(o);
    TransferUnit {
        kind: UnitKind::Tubt,
        physkey: Physkey::generate(1_700_000_000_000 + seq, &origin, seq).unwrap(),
        origin,
        seq,
        created_ms: 1_700_000_000_000 + seq,
        urgency: Urgency::Normal,
        scopes: FileScopes::NONE,
        payload: format!("unit {o}/{seq}").into_bytes(),
        sensitive: Vec::new(),
    }
}

/// An application physkey, numbered.
pub(super) fn app_key(n: u64) -> Physkey {
    Physkey::from_bytes(format!("app-key-{n:024}").as_bytes()).unwrap()
}

/// A unit with application physkey `key`.
pub(super) fn app_unit(o: usize, seq: u64, key: Physkey) -> TransferUnit {
    TransferUnit { physkey: key, ..unit(o, seq) }
}

fn units(o: usize, seqs: impl IntoIterator<Item = u64>) -> Vec<TransferUnit> {
    seqs.into_iter().map(|s| unit(o, s)).collect()
}

fn seqs(list: &[TransferUnit]) -> Vec<u64> {
    list.iter().map(|u| u.seq).collect()
}

fn all_units(store: &dyn Store) -> Vec<TransferUnit> {
    let mut out = Vec::new();
    store
        .for_each_unit(&mut |u| {
            out.push(u.clone());
            true
        })
        .unwrap();
    out
}

fn insert_get_range(s: &mut dyn Store) {
    let o = origin(0);
    assert_eq!(s.insert_batch(&units(0, 1..=5), &[]).unwrap(), vec![Inserted; 5]);
    assert_eq!(s.insert_batch(&units(0, 8..=10), &[]).unwrap(), vec![Inserted; 3]);
    assert_eq!(s.insert_batch(&units(0, [6]), &[]).unwrap(), vec![Inserted]);
    for seq in (1..=6).chain(8..=10) {
        assert_eq!(s.get(&o, seq).unwrap(), Some(unit(0, seq)), "seq {seq}");
    }
    for seq in [0, 7, 11, u64::MAX] {
        assert_eq!(s.get(&o, seq).unwrap(), None, "seq {seq}");
    }
    assert_eq!(s.get(&origin(1), 1).unwrap(), None);
    assert_eq!(seqs(&s.range(&o, 0, 100).unwrap()), vec![1, 2, 3, 4, 5, 6, 8, 9, 10]);
    assert_eq!(seqs(&s.range(&o, 3, 2).unwrap()), vec![3, 4]);
    assert_eq!(seqs(&s.range(&o, 5, 3).unwrap()), vec![5, 6, 8]);
    assert_eq!(seqs(&s.range(&o, 7, usize::MAX).unwrap()), vec![8, 9, 10]);
    assert_eq!(seqs(&s.range(&o, 9, 1).unwrap()), vec![9]);
    assert!(s.range(&o, 3, 0).unwrap().is_empty());
    assert!(s.range(&o, 11, 10).unwrap().is_empty());
    assert!(s.range(&origin(1), 1, 10).unwrap().is_empty());
    assert_eq!(s.range(&o, 1, 100).unwrap(), units(0, (1..=6).chain(8..=10)));
}

fn duplicates_are_stored_once(s: &mut dyn Store) {
    for i in 0..10 {
        let want = if i == 0 { Inserted } else { Duplicate };
        assert_eq!(s.insert_batch(&[unit(0, 1)], &[]).unwrap(), vec![want]);
    }
    let batch = [unit(0, 2), unit(0, 2), unit(0, 3), unit(0, 1), unit(0, 2)];
    assert_eq!(
        s.insert_batch(&batch, &[]).unwrap(),
        vec![Inserted, Duplicate, Inserted, Duplicate, Duplicate]
    );
    // A different unit under a held name is a duplicate too: the first one stays.
    let other = TransferUnit { payload: b"other".to_vec(), ..unit(0, 2) };
    assert_eq!(s.insert_batch(&[other], &[]).unwrap(), vec![Duplicate]);
    assert_eq!(s.get(&origin(0), 2).unwrap(), Some(unit(0, 2)));
    // Seq 0 is never valid: never stored, no origin created.
    assert_eq!(s.insert_batch(&[unit(1, 0)], &[]).unwrap(), vec![Duplicate]);
    assert_eq!(all_units(s), units(0, 1..=3));
    assert_eq!(s.units_total(), 3);
    assert_eq!(s.version_vector().len(), 1);
}

#[test]
fn stores_are_send_and_object_safe() {
    fn send<T: Send>() {}
    send::<MemoryStore>();
    send::<SledStore>();
    let boxed: Box<dyn Store> = Box::new(MemoryStore::new());
    assert_eq!(boxed.units_total(), 0);
}

fn out_of_order_fills_gaps(s: &mut dyn Store) {
    let o = origin(0);
    s.insert_batch(&units(0, [5, 3, 9, 4]), &[]).unwrap();
    let range = s.version_vector().get(&o).unwrap().clone();
    assert_eq!(range.contiguous(), 0);
    assert_eq!(range.beyond().collect::<Vec<_>>(), vec![3..=5, 9..=9]);
    assert_eq!(s.next_seq(&o), 10);
    s.insert_batch(&units(0, [2, 1]), &[]).unwrap();
    let range = s.version_vector().get(&o).unwrap().clone();
    assert_eq!(range.contiguous(), 5);
    assert_eq!(range.beyond().collect::<Vec<_>>(), vec![9..=9]);
    s.insert_batch(&units(0, [8, 6, 7]), &[]).unwrap();
    let range = s.version_vector().get(&o).unwrap().clone();
    assert_eq!((range.contiguous(), range.beyond().count()), (9, 0));
    assert_eq!(s.range(&o, 1, 100).unwrap(), units(0, 1..=9));
    assert!(s.contains(&o, 9) && !s.contains(&o, 10) && !s.contains(&o, 0));
}

fn next_seq_follows_highest(s: &mut dyn Store) {
    assert_eq!(s.next_seq(&origin(0)), 1);
    s.insert_batch(&units(0, 1..=3), &[]).unwrap();
    assert_eq!(s.next_seq(&origin(0)), 4);
    s.insert_batch(&units(0, [7]), &[]).unwrap();
    assert_eq!(s.next_seq(&origin(0)), 8);
    assert_eq!(s.next_seq(&origin(1)), 1);
}

fn physkey_lookup(s: &mut dyn Store) {
    let generated = unit(0, 2).physkey;
    s.insert_batch(&[unit(0, 1), unit(0, 2), app_unit(1, 1, app_key(1))], &[]).unwrap();
    assert_eq!(s.find_physkey(&generated).unwrap(), Some((origin(0), 2)));
    assert_eq!(s.find_physkey(&app_key(1)).unwrap(), Some((origin(1), 1)));
    // Not held: a generated key of a seq or origin we lack, an unknown application key.
    assert_eq!(s.find_physkey(&unit(0, 3).physkey).unwrap(), None);
    assert_eq!(s.find_physkey(&unit(2, 1).physkey).unwrap(), None);
    assert_eq!(s.find_physkey(&app_key(2)).unwrap(), None);
    // The generated key of (1, 1), whose unit carries an application key instead.
    assert_eq!(s.find_physkey(&unit(1, 1).physkey).unwrap(), None);
}

fn physkey_seen_is_stored_and_reported(s: &mut dyn Store) {
    let first = (origin(0), 1);
    assert_eq!(s.insert_batch(&[app_unit(0, 1, app_key(7))], &[]).unwrap(), vec![Inserted]);
    let seen = InsertOutcome::InsertedPhyskeySeen { first };
    assert_eq!(s.insert_batch(&[app_unit(1, 5, app_key(7))], &[]).unwrap(), vec![seen]);
    assert_eq!(s.get(&origin(1), 5).unwrap(), Some(app_unit(1, 5, app_key(7))));
    assert_eq!(s.find_physkey(&app_key(7)).unwrap(), Some(first));
    // The same name again is a plain duplicate.
    assert_eq!(s.insert_batch(&[app_unit(1, 5, app_key(7))], &[]).unwrap(), vec![Duplicate]);
    // Within one batch the first unit of the batch is the first.
    let batch = [app_unit(2, 1, app_key(8)), app_unit(2, 2, app_key(8)), unit(2, 3)];
    let seen = InsertOutcome::InsertedPhyskeySeen { first: (origin(2), 1) };
    assert_eq!(s.insert_batch(&batch, &[]).unwrap(), vec![Inserted, seen, Inserted]);
    // An application key that copies another unit's generated key names that unit.
    let copied = unit(2, 3).physkey;
    let seen = InsertOutcome::InsertedPhyskeySeen { first: (origin(2), 3) };
    assert_eq!(s.insert_batch(&[app_unit(0, 2, copied)], &[]).unwrap(), vec![seen]);
    let batch = [unit(1, 1), app_unit(1, 2, unit(1, 1).physkey)];
    let seen = InsertOutcome::InsertedPhyskeySeen { first: (origin(1), 1) };
    assert_eq!(s.insert_batch(&batch, &[]).unwrap(), vec![Inserted, seen]);
    assert_eq!(s.units_total(), 8);
}

fn cursors(s: &mut dyn Store) {
    assert!(s.cursor("pos").unwrap().is_empty());
    s.set_cursor("pos", &origin(0), 5).unwrap();
    s.set_cursor("pos", &origin(1), 2).unwrap();
    s.set_cursor("pos", &origin(0), 7).unwrap();
    s.set_cursor("posx", &origin(2), 1).unwrap();
    s.set_cursor("", &origin(2), 3).unwrap();
    assert_eq!(s.cursor("pos").unwrap(), BTreeMap::from([(origin(0), 7), (origin(1), 2)]));
    assert_eq!(s.cursor("posx").unwrap(), BTreeMap::from([(origin(2), 1)]));
    assert_eq!(s.cursor("").unwrap(), BTreeMap::from([(origin(2), 3)]));
    assert!(s.cursor("po").unwrap().is_empty());
    let long = "x".repeat(super::MAX_APP_NAME + 1);
    assert!(matches!(
        s.set_cursor(&long, &origin(0), 1),
        Err(StoreError::AppNameTooLong { len: 256 })
    ));
    assert!(matches!(s.cursor(&long), Err(StoreError::AppNameTooLong { .. })));
    s.set_cursor(&"x".repeat(super::MAX_APP_NAME), &origin(0), 1).unwrap();
}

fn meta_goes_with_the_batch(s: &mut dyn Store) {
    assert_eq!(s.meta_get("checkpoint").unwrap(), None);
    let meta =
        [("checkpoint".to_string(), Some(b"one".to_vec())), ("n".to_string(), Some(vec![1]))];
    s.insert_batch(&units(0, 1..=2), &meta).unwrap();
    assert_eq!(s.meta_get("checkpoint").unwrap(), Some(b"one".to_vec()));
    // Meta is written even when every unit is a duplicate, and None deletes.
    let meta = [("checkpoint".to_string(), Some(b"two".to_vec())), ("n".to_string(), None)];
    s.insert_batch(&units(0, 1..=2), &meta).unwrap();
    assert_eq!(s.meta_get("checkpoint").unwrap(), Some(b"two".to_vec()));
    assert_eq!(s.meta_get("n").unwrap(), None);
    s.insert_batch(&[], &[("empty".to_string(), Some(vec![]))]).unwrap();
    assert_eq!(s.meta_get("empty").unwrap(), Some(vec![]));
    s.meta_put("checkpoint", b"three").unwrap();
    assert_eq!(s.meta_get("checkpoint").unwrap(), Some(b"three".to_vec()));
}

fn for_each_unit_in_origin_seq_order(s: &mut dyn Store) {
    let batch = [unit(2, 2), unit(0, 3), unit(1, 1), unit(0, 1), unit(2, 1), unit(0, 2)];
    s.insert_batch(&batch, &[]).unwrap();
    s.insert_batch(&[unit(1, 3), unit(0, 5)], &[]).unwrap();
    let mut want = batch.to_vec();
    want.extend([unit(1, 3), unit(0, 5)]);
    want.sort_by_key(|u| (u.origin, u.seq));
    assert_eq!(all_units(s), want);
    let mut seen = 0;
    s.for_each_unit(&mut |_| {
        seen += 1;
        seen < 3
    })
    .unwrap();
    assert_eq!(seen, 3);
}

fn counts_come_from_the_vector(s: &mut dyn Store) {
    assert_eq!(s.units_total(), 0);
    assert!(s.count_by_origin().is_empty());
    s.insert_batch(&units(0, [1, 2, 3, 7]), &[]).unwrap();
    s.insert_batch(&units(2, [4]), &[]).unwrap();
    s.insert_batch(&units(0, [2, 8]), &[]).unwrap();
    assert_eq!(s.units_total(), 6);
    assert_eq!(s.count_by_origin(), BTreeMap::from([(origin(0), 5), (origin(2), 1)]));
    assert_eq!(s.version_vector().origins().count(), 2);
}

macro_rules! for_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[test]
                fn $name() {
                    super::$name(&mut crate::store::MemoryStore::new());
                }
            )*
        }
        mod memory_store_located {
            $(
                #[test]
                fn $name() {
                    let store = crate::store::MemoryStore::new();
                    super::$name(&mut super::Located::new(store, Default::default()));
                }
            )*
        }
        mod sled_store {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let mut store = crate::store::SledStore::open(dir.path(), 8 << 20).unwrap();
                    super::$name(&mut store);
                    drop(store);
                }
            )*
        }
        mod sled_store_located {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let mut store = super::Located::open_sled(dir.path(), Default::default());
                    super::$name(&mut store);
                    drop(store);
                }
            )*
        }
    };
}

for_both_stores!(
    insert_get_range,
    duplicates_are_stored_once,
    out_of_order_fills_gaps,
    next_seq_follows_highest,
    physkey_lookup,
    physkey_seen_is_stored_and_reported,
    cursors,
    meta_goes_with_the_batch,
    for_each_unit_in_origin_seq_order,
    counts_come_from_the_vector,
);

/// Blocks until no sled instance holds the store in `dir`: sled's pool threads can keep a
/// dropped instance's file lock (a `flock`) for a moment, and reopening then fails.
pub(super) fn wait_unlocked(dir: &Path) {
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return;
    };
    // SAFETY: flock on a descriptor we own; closing the file releases the lock.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
}

/// A [`BodySource`] over units kept in memory under the [`BodyRef`] each was given, standing in
/// for the daily logs. It returns whatever is at the ref: checking it is the store's job.
#[derive(Debug, Default)]
pub(super) struct MemoryBodies {
    units: Mutex<HashMap<BodyRef, TransferUnit>>,
    /// Refs handed out so far, so each is new.
    kept: AtomicU64,
}

impl MemoryBodies {
    /// Keeps a copy of `unit` under a new ref, as appending it to a log would.
    pub(super) fn keep(&self, unit: &TransferUnit) -> BodyRef {
        let n = self.kept.fetch_add(1, Ordering::Relaxed);
        let len = u32::try_from(unit.encode().len()).unwrap();
        let at = BodyRef { file: u32::try_from(n / 100).unwrap(), offset: n * 1000, len };
        self.units.lock().unwrap().insert(at, unit.clone());
        at
    }

    /// Replaces what is kept under `at`, as a damaged or swapped log file would.
    pub(super) fn replace(&self, at: BodyRef, unit: TransferUnit) {
        self.units.lock().unwrap().insert(at, unit);
    }

    /// Forgets what is kept under `at`, as archiving its log file away would.
    pub(super) fn forget(&self, at: &BodyRef) {
        self.units.lock().unwrap().remove(at);
    }
}

impl BodySource for MemoryBodies {
    fn load(&self, _: &DatabaseId, _: u64, at: BodyRef) -> Result<TransferUnit, BodyError> {
        let units = self.units.lock().unwrap();
        units.get(&at).cloned().ok_or_else(|| format!("no record at offset {}", at.offset).into())
    }
}

/// A store whose [`Store::insert_batch`] goes through [`Store::insert_located`], the units kept
/// in [`MemoryBodies`], so that the suite runs over located entries. Batch `n` is inserted
/// inline instead when bit `n % 64` of `inline_mask` is set, for stores holding both kinds.
pub(super) struct Located<S> {
    pub(super) store: S,
    pub(super) bodies: Arc<MemoryBodies>,
    inline_mask: u64,
    batches: u64,
}

impl<S: Store> Located<S> {
    /// Every batch located.
    pub(super) fn new(store: S, bodies: Arc<MemoryBodies>) -> Self {
        Located { store, bodies, inline_mask: 0, batches: 0 }
    }
}

impl Located<SledStore> {
    /// A sled store in `dir` reading located units from `bodies`.
    pub(super) fn open_sled(dir: &Path, bodies: Arc<MemoryBodies>) -> Self {
        wait_unlocked(dir);
        let store = SledStore::open_with_bodies(dir, 8 << 20, bodies.clone()).unwrap();
        Located::new(store, bodies)
    }
}

impl<S: Store> Store for Located<S> {
    fn insert_batch(
        &mut self,
        units: &[TransferUnit],
        meta: &[MetaWrite],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let inline = self.inline_mask & (1 << (self.batches % 64)) != 0;
        self.batches += 1;
        if inline {
            return self.store.insert_batch(units, meta);
        }
        let located: Vec<(TransferUnit, BodyRef)> =
            units.iter().map(|u| (u.clone(), self.bodies.keep(u))).collect();
        self.store.insert_located(&located, meta)
    }

    fn insert_located(
        &mut self,
        units: &[(TransferUnit, BodyRef)],
        meta: &[MetaWrite],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.store.insert_located(units, meta)
    }

    fn contains(&self, origin: &DatabaseId, seq: u64) -> bool {
        self.store.contains(origin, seq)
    }

    fn get(&self, origin: &DatabaseId, seq: u64) -> Result<Option<TransferUnit>, StoreError> {
        self.store.get(origin, seq)
    }

    fn range(
        &self,
        origin: &DatabaseId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TransferUnit>, StoreError> {
        self.store.range(origin, from, limit)
    }

    fn find_physkey(&self, physkey: &Physkey) -> Result<Option<(DatabaseId, u64)>, StoreError> {
        self.store.find_physkey(physkey)
    }

    fn version_vector(&self) -> &VersionVector {
        self.store.version_vector()
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.meta_get(name)
    }

    fn meta_put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store.meta_put(name, value)
    }

    fn cursor(&self, app: &str) -> Result<BTreeMap<DatabaseId, u64>, StoreError> {
        self.store.cursor(app)
    }

    fn set_cursor(&mut self, app: &str, origin: &DatabaseId, seq: u64) -> Result<(), StoreError> {
        self.store.set_cursor(app, origin, seq)
    }

    fn for_each_unit(&self, f: &mut dyn FnMut(&TransferUnit) -> bool) -> Result<(), StoreError> {
        self.store.for_each_unit(f)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.store.flush()
    }
}

/// One step of a random history.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// Units named (origin index, seq, application key number or generated key).
    Batch(Vec<(usize, u64, Option<u64>)>),
    Flush,
    /// Only meaningful for stores that model crashes; others treat it as a flush.
    Crash,
}

pub(super) fn arb_ops(crash: bool) -> impl Strategy<Value = Vec<Op>> {
    let unit = (0usize..3, 1u64..40, prop_oneof![3 => Just(None), 1 => (0u64..4).prop_map(Some)]);
    let batch = proptest::collection::vec(unit, 0..20).prop_map(Op::Batch);
    let op = prop_oneof![
        6 => batch,
        1 => Just(Op::Flush),
        (if crash { 1 } else { 0 }) => Just(Op::Crash),
    ];
    proptest::collection::vec(op, 0..12)
}

/// What a store should hold: the obvious implementation.
#[derive(Debug, Clone, Default)]
pub(super) struct Model {
    units: BTreeMap<(DatabaseId, u64), TransferUnit>,
    index: BTreeMap<Physkey, (DatabaseId, u64)>,
}

impl Model {
    pub(super) fn batch(spec: &[(usize, u64, Option<u64>)]) -> Vec<TransferUnit> {
        spec.iter()
            .map(|&(o, seq, key)| match key {
                Some(k) => app_unit(o, seq, app_key(k)),
                None => unit(o, seq),
            })
            .collect()
    }

    pub(super) fn insert(&mut self, units: &[TransferUnit]) -> Vec<InsertOutcome> {
        let mut out = Vec::new();
        for u in units {
            let name = (u.origin, u.seq);
            if self.units.contains_key(&name) {
                out.push(Duplicate);
                continue;
            }
            self.units.insert(name, u.clone());
            if u.physkey.is_generated_for(&u.origin, u.seq) {
                out.push(Inserted);
            } else if let Some(&first) = self.index.get(&u.physkey) {
                out.push(InsertOutcome::InsertedPhyskeySeen { first });
            } else {
                self.index.insert(u.physkey, name);
                out.push(Inserted);
            }
        }
        out
    }

    /// Checks every read of `store` against the model.
    pub(super) fn verify(&self, store: &dyn Store) -> Result<(), TestCaseError> {
        let all: Vec<TransferUnit> = self.units.values().cloned().collect();
        prop_assert_eq!(&all_units(store), &all);
        prop_assert_eq!(store.units_total(), all.len() as u64);
        for o in 0..3 {
            let origin = origin(o);
            let held: Vec<&TransferUnit> =
                self.units.range((origin, 0)..=(origin, u64::MAX)).map(|(_, u)| u).collect();
            prop_assert_eq!(store.next_seq(&origin), held.last().map_or(1, |u| u.seq + 1));
            prop_assert_eq!(store.version_vector().count(&origin), held.len() as u64);
            for seq in 0..42 {
                let want = self.units.get(&(origin, seq));
                prop_assert_eq!(store.contains(&origin, seq), want.is_some());
                prop_assert_eq!(store.get(&origin, seq).unwrap(), want.cloned());
                let from: Vec<TransferUnit> =
                    held.iter().filter(|u| u.seq >= seq).take(3).map(|u| (*u).clone()).collect();
                prop_assert_eq!(store.range(&origin, seq, 3).unwrap(), from);
            }
        }
        for (key, first) in &self.index {
            prop_assert_eq!(store.find_physkey(key).unwrap(), Some(*first));
        }
        for u in self.units.values().filter(|u| u.physkey.is_generated_for(&u.origin, u.seq)) {
            prop_assert_eq!(store.find_physkey(&u.physkey).unwrap(), Some((u.origin, u.seq)));
        }
        Ok(())
    }
}

/// Runs `ops` against `store` and the model, then reopens the store (after a flush) and checks
/// again. Crash ops are flushes here.
fn against_model<S: Store>(
    mut store: S,
    ops: &[Op],
    reopen: impl FnOnce(S) -> S,
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Batch(spec) => {
                let batch = Model::batch(spec);
                prop_assert_eq!(store.insert_batch(&batch, &[]).unwrap(), model.insert(&batch));
            }
            Op::Flush | Op::Crash => store.flush().unwrap(),
        }
    }
    model.verify(&store)?;
    store.flush().unwrap();
    let store = reopen(store);
    model.verify(&store)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn memory_store_matches_model(ops in arb_ops(false)) {
        against_model(MemoryStore::new(), &ops, |mut s| {
            s.crash();
            s
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn sled_store_matches_model(ops in arb_ops(false)) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        against_model(store, &ops, |s| {
            drop(s);
            wait_unlocked(dir.path());
            SledStore::open(dir.path(), 8 << 20).unwrap()
        })?;
    }

    /// Located inserts, mixed with inline ones batch by batch as `inline_mask` says (all
    /// located when it is 0, which proptest tries first).
    #[test]
    fn sled_store_located_matches_model(
        ops in arb_ops(false),
        inline_mask in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Located::open_sled(dir.path(), Default::default());
        store.inline_mask = inline_mask;
        against_model(store, &ops, |s| {
            let bodies = s.bodies.clone();
            drop(s);
            Located::open_sled(dir.path(), bodies)
        })?;
    }
}
