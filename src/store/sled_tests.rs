//! Tests of the sled store alone: layout, reopen, corruption, body sources, and the throughput
//! and memory figures.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::*;
use crate::store::suite::{app_key, app_unit, origin, unit, wait_unlocked, MemoryBodies};
use crate::store::{BodyError, Corruption, DEFAULT_CACHE_CAPACITY};
use crate::unit::{FileScopes, UnitKind, Urgency};

fn open(dir: &tempfile::TempDir) -> SledStore {
    wait_unlocked(dir.path());
    SledStore::open(dir.path(), 8 << 20).unwrap()
}

fn open_with(dir: &tempfile::TempDir, bodies: &Arc<MemoryBodies>) -> SledStore {
    wait_unlocked(dir.path());
    SledStore::open_with_bodies(dir.path(), 8 << 20, bodies.clone()).unwrap()
}

/// `units` with a new body ref each, kept in `bodies`.
fn located(bodies: &MemoryBodies, units: &[TransferUnit]) -> Vec<(TransferUnit, BodyRef)> {
    units.iter().map(|u| (u.clone(), bodies.keep(u))).collect()
}

fn run_keys(store: &SledStore) -> Vec<(DatabaseId, u64, u32)> {
    store
        .db
        .scan_prefix([UNIT])
        .map(|item| {
            let (key, value) = item.unwrap();
            let run = Run::parse(&key, &value).unwrap();
            (run.origin, run.first_seq, run.count)
        })
        .collect()
}

fn with_payload(o: usize, seq: u64, len: usize) -> TransferUnit {
    TransferUnit { payload: vec![7; len], ..unit(o, seq) }
}

#[test]
fn reopen_after_flush_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let batch = [unit(0, 1), unit(0, 2), unit(0, 5), app_unit(1, 1, app_key(1)), unit(2, 9)];
    let meta = [("checkpoint".to_string(), Some(b"c1".to_vec()))];
    store.insert_batch(&batch, &meta).unwrap();
    store.set_cursor("pos", &origin(0), 2).unwrap();
    store.meta_put("other", b"x").unwrap();
    store.flush().unwrap();
    let vector = store.version_vector().clone();
    drop(store);

    let store = open(&dir);
    assert_eq!(store.version_vector(), &vector);
    for u in &batch {
        assert_eq!(store.get(&u.origin, u.seq).unwrap().as_ref(), Some(u));
    }
    assert_eq!(store.find_physkey(&app_key(1)).unwrap(), Some((origin(1), 1)));
    assert_eq!(store.find_physkey(&unit(2, 9).physkey).unwrap(), Some((origin(2), 9)));
    assert_eq!(store.meta_get("checkpoint").unwrap(), Some(b"c1".to_vec()));
    assert_eq!(store.meta_get("other").unwrap(), Some(b"x".to_vec()));
    assert_eq!(store.cursor("pos").unwrap().get(&origin(0)), Some(&2));
    assert_eq!(store.units_total(), 5);
    assert_eq!(store.next_seq(&origin(0)), 6);
}

#[test]
fn runs_split_at_64_units_and_at_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let batch: Vec<TransferUnit> = (1..=200).rev().map(|s| unit(0, s)).collect();
    store.insert_batch(&batch, &[]).unwrap();
    let o = origin(0);
    assert_eq!(run_keys(&store), vec![(o, 1, 64), (o, 65, 64), (o, 129, 64), (o, 193, 8)]);
    for seq in 1..=200 {
        assert_eq!(store.get(&o, seq).unwrap(), Some(unit(0, seq)));
    }
    let across: Vec<u64> = store.range(&o, 60, 10).unwrap().iter().map(|u| u.seq).collect();
    assert_eq!(across, (60..70).collect::<Vec<_>>());

    // Each contiguous stretch of an origin becomes its own run, whatever the arrival order.
    let batch =
        [unit(1, 6), unit(1, 1), unit(2, 1), unit(1, 2), unit(1, 3), unit(1, 5), unit(2, 2)];
    store.insert_batch(&batch, &[]).unwrap();
    let runs: Vec<_> = run_keys(&store).into_iter().filter(|r| r.0 != o).collect();
    assert_eq!(runs, vec![(origin(1), 1, 3), (origin(1), 5, 2), (origin(2), 1, 2)]);
    assert_eq!(store.range(&origin(1), 4, 10).unwrap(), vec![unit(1, 5), unit(1, 6)]);
}

#[test]
fn runs_split_at_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let third = RUN_MAX_BYTES / 3 - 100;
    let batch: Vec<TransferUnit> = (1..=5)
        .map(|s| with_payload(0, s, third))
        .chain([with_payload(0, 6, 100), with_payload(0, 7, 1 << 20), with_payload(0, 8, 100)])
        .collect();
    store.insert_batch(&batch, &[]).unwrap();
    let o = origin(0);
    assert_eq!(run_keys(&store), vec![(o, 1, 3), (o, 4, 3), (o, 7, 1), (o, 8, 1)]);
    for u in &batch {
        assert_eq!(store.get(&o, u.seq).unwrap().as_ref(), Some(u));
    }
}

#[test]
fn located_runs_hold_256_entries() {
    let dir = tempfile::tempdir().unwrap();
    let bodies = Arc::new(MemoryBodies::default());
    let mut store = open_with(&dir, &bodies);
    let batch: Vec<TransferUnit> = (1..=600).rev().map(|s| unit(0, s)).collect();
    let outcomes = store.insert_located(&located(&bodies, &batch), &[]).unwrap();
    assert_eq!(outcomes, vec![InsertOutcome::Inserted; 600]);
    let o = origin(0);
    assert_eq!(run_keys(&store), vec![(o, 1, 256), (o, 257, 256), (o, 513, 88)]);
    let value = store.db.get(unit_key(&o, 1)).unwrap().unwrap();
    assert_eq!(value.len(), 4 + 256 * LOCATED_ENTRY_LEN);
    assert!(value.len() <= RUN_MAX_BYTES);
    for seq in 1..=600 {
        assert_eq!(store.get(&o, seq).unwrap(), Some(unit(0, seq)));
    }
    let across: Vec<u64> = store.range(&o, 250, 10).unwrap().iter().map(|u| u.seq).collect();
    assert_eq!(across, (250..260).collect::<Vec<_>>());

    // Inline and located runs side by side in one origin.
    store.insert_batch(&(601..=700).map(|s| unit(0, s)).collect::<Vec<_>>(), &[]).unwrap();
    let runs = run_keys(&store);
    assert_eq!(runs[3..], [(o, 601, 64), (o, 665, 36)]);
    assert_eq!(
        store.range(&o, 595, 10).unwrap(),
        (595..605).map(|s| unit(0, s)).collect::<Vec<_>>()
    );
}

#[test]
fn run_known_bytes() {
    let u = unit(0, 7);
    let at = BodyRef { file: 3, offset: 0x1234, len: 300 };
    let mut run = RunBuilder::new(&u, &NewEntry::Located(at));
    run.push(&NewEntry::Located(at));
    run.push(&NewEntry::Inline(unit(0, 8).encode()));
    assert!(!run.continues_with(&unit(0, 10), &NewEntry::Located(at)), "a gap ends a run");
    assert!(!run.continues_with(&unit(1, 9), &NewEntry::Located(at)), "so does another origin");
    let (key, value) = run.into_value();
    let encoded = unit(0, 8).encode();
    let want = format!(
        "00000002 01 00000003 0000000000001234 0000012c 00 {:08x} {}",
        encoded.len(),
        hex::encode(&encoded)
    );
    assert_eq!(hex::encode(&value), want.replace(' ', ""));
    assert_eq!(key, unit_key(&origin(0), 7));
    let run = Run::parse(&key, &value).unwrap();
    let entries: Vec<_> = run.entries().map(Result::unwrap).collect();
    assert_eq!(entries, vec![(7, Entry::Located(at)), (8, Entry::Inline(&encoded))]);
}

#[test]
fn run_caps_depend_on_entry_kind() {
    let at = BodyRef { file: 0, offset: 0, len: 1 };
    let mut located = RunBuilder::new(&unit(0, 1), &NewEntry::Located(at));
    for _ in 0..RUN_MAX_INLINE {
        located.push(&NewEntry::Located(at));
    }
    let next = unit(0, u64::from(RUN_MAX_INLINE) + 1);
    assert!(located.continues_with(&next, &NewEntry::Located(at)));
    // One inline entry makes it an inline run, full at 64.
    assert!(!located.continues_with(&next, &NewEntry::Inline(next.encode())));
    for _ in RUN_MAX_INLINE..RUN_MAX_LOCATED {
        located.push(&NewEntry::Located(at));
    }
    let next = unit(0, u64::from(RUN_MAX_LOCATED) + 1);
    assert!(!located.continues_with(&next, &NewEntry::Located(at)));
    assert!(located.buf.len() <= RUN_MAX_BYTES);
}

#[test]
fn a_wrong_body_is_corruption_not_a_wrong_answer() {
    let dir = tempfile::tempdir().unwrap();
    let bodies = Arc::new(MemoryBodies::default());
    let mut store = open_with(&dir, &bodies);
    let batch = located(&bodies, &[unit(0, 1), unit(0, 2), unit(0, 3)]);
    store.insert_located(&batch, &[]).unwrap();
    let o = origin(0);
    let at = batch[1].1;
    // Another seq of the same origin, then the same seq of another origin.
    for (wrong, found) in [(unit(0, 5), (o, 5)), (unit(1, 2), (origin(1), 2))] {
        bodies.replace(at, wrong);
        let check = |r: Result<(), StoreError>| match r {
            Err(StoreError::Corrupt { key, why }) => {
                let Corruption::WrongBody { seq, at: got, found_origin, found_seq } = why else {
                    panic!("{why}");
                };
                assert_eq!((seq, got, (found_origin, found_seq)), (2, at, found));
                let text = StoreError::Corrupt { key, why }.to_string();
                assert!(text.contains("ITB85JUYCJS4IQA") && text.contains("seq 2"), "{text}");
            }
            other => panic!("{other:?}"),
        };
        check(store.get(&o, 2).map(|_| ()));
        check(store.range(&o, 1, 10).map(|_| ()));
        check(store.for_each_unit(&mut |_| true));
        check(store.find_physkey(&unit(0, 2).physkey).map(|_| ()));
        assert_eq!(store.get(&o, 3).unwrap(), Some(unit(0, 3)));
    }
}

#[test]
fn a_failing_source_names_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let bodies = Arc::new(MemoryBodies::default());
    let mut store = open_with(&dir, &bodies);
    let batch = located(&bodies, &[unit(0, 1), unit(0, 2), app_unit(0, 3, app_key(1))]);
    store.insert_located(&batch, &[]).unwrap();
    bodies.forget(&batch[1].1);
    let o = origin(0);
    let check = |r: Result<(), StoreError>| {
        let err = r.unwrap_err();
        let StoreError::Body { origin, seq, at, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*origin, *seq, *at), (o, 2, batch[1].1));
        assert_eq!(
            err.to_string(),
            format!("cannot load unit {o} seq 2 from daily log file {} of its origin", at.file)
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, format!("no record at offset {}", at.offset));
    };
    check(store.get(&o, 2).map(|_| ()));
    check(store.range(&o, 1, 10).map(|_| ()));
    check(store.for_each_unit(&mut |_| true));
    // Whatever does not need the unit's bytes still works.
    assert!(store.contains(&o, 2));
    assert_eq!(store.units_total(), 3);
    assert_eq!(store.get(&o, 1).unwrap(), Some(unit(0, 1)));
    assert_eq!(store.range(&o, 3, 10).unwrap(), vec![app_unit(0, 3, app_key(1))]);
    assert_eq!(store.find_physkey(&app_key(1)).unwrap(), Some((o, 3)));
    // Inserting still works: a duplicate is found from the vector, not by reading.
    let again = located(&bodies, &[unit(0, 2), unit(0, 4)]);
    let outcomes = store.insert_located(&again, &[]).unwrap();
    assert_eq!(outcomes, vec![InsertOutcome::Duplicate, InsertOutcome::Inserted]);
}

#[test]
fn without_a_source_located_units_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bodies = Arc::new(MemoryBodies::default());
    let mut store = open_with(&dir, &bodies);
    store.insert_batch(&[unit(0, 1), unit(0, 2)], &[]).unwrap();
    let meta = [("checkpoint".to_string(), Some(b"c".to_vec()))];
    store.insert_located(&located(&bodies, &[unit(0, 3), unit(1, 1)]), &meta).unwrap();
    store.flush().unwrap();
    drop(store);

    let store = open(&dir);
    let o = origin(0);
    assert_eq!(store.units_total(), 4);
    assert_eq!(store.meta_get("checkpoint").unwrap(), Some(b"c".to_vec()));
    assert_eq!(store.get(&o, 2).unwrap(), Some(unit(0, 2)));
    let err = store.get(&o, 3).unwrap_err();
    assert!(matches!(err, StoreError::NoBodySource { origin, seq: 3 } if origin == o), "{err}");
    assert_eq!(
        err.to_string(),
        format!("unit {o} seq 3 is kept in the daily logs, but the store was opened without them")
    );
    assert!(matches!(store.range(&o, 1, 10), Err(StoreError::NoBodySource { seq: 3, .. })));
    assert_eq!(store.range(&o, 1, 2).unwrap(), vec![unit(0, 1), unit(0, 2)]);
    assert!(matches!(store.for_each_unit(&mut |_| true), Err(StoreError::NoBodySource { .. })));
    drop(store);

    let store = open_with(&dir, &bodies);
    let want = vec![unit(0, 1), unit(0, 2), unit(0, 3)];
    assert_eq!(store.range(&o, 1, 10).unwrap(), want);
    assert_eq!(store.get(&origin(1), 1).unwrap(), Some(unit(1, 1)));
}

#[test]
fn corrupt_runs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store.insert_batch(&(1..=3).map(|s| unit(0, s)).collect::<Vec<_>>(), &[]).unwrap();
    let o = origin(0);
    let key = unit_key(&o, 1);
    let raw = |entries: &[Vec<u8>], extra: &[u8]| {
        let mut v = u32::try_from(entries.len()).unwrap().to_be_bytes().to_vec();
        for e in entries {
            v.push(ENTRY_INLINE);
            v.extend_from_slice(&u32::try_from(e.len()).unwrap().to_be_bytes());
            v.extend_from_slice(e);
        }
        v.extend_from_slice(extra);
        v
    };
    let framed = |units: &[TransferUnit], extra: &[u8]| {
        raw(&units.iter().map(TransferUnit::encode).collect::<Vec<_>>(), extra)
    };
    // (value, what is wrong, found by get(2), found by scans)
    type Case = (Vec<u8>, fn(&Corruption) -> bool, bool, bool);
    let cases: Vec<Case> = vec![
        (vec![], |c| matches!(c, Corruption::Truncated), true, true),
        (vec![0, 0, 0, 0], |c| matches!(c, Corruption::EmptyRun), true, true),
        (vec![0, 0, 0, 3, 0, 0, 0, 0, 9, 1, 2], |c| matches!(c, Corruption::Truncated), true, true),
        (vec![0, 0, 0, 3, 0, 0, 0, 0], |c| matches!(c, Corruption::Truncated), true, true),
        (vec![0, 0, 0, 3, 1, 0, 0, 0, 7], |c| matches!(c, Corruption::Truncated), true, true),
        (vec![0, 0, 0, 3, 7, 1, 2], |c| matches!(c, Corruption::EntryTag { tag: 7 }), true, true),
        (
            raw(&[unit(0, 1).encode(), vec![9, 9], unit(0, 3).encode()], &[]),
            |c| matches!(c, Corruption::Unit(_)),
            true,
            true,
        ),
        (
            framed(&[unit(0, 1), unit(0, 5), unit(0, 3)], &[]),
            |c| matches!(c, Corruption::Misplaced { seq: 5, .. }),
            true,
            true,
        ),
        (
            framed(&[unit(0, 1), unit(0, 2), unit(0, 3)], &[1]),
            |c| matches!(c, Corruption::Trailing { len: 1 }),
            false,
            true,
        ),
        (framed(&[unit(0, 1)], &[]), |c| matches!(c, Corruption::Missing { seq: 2 }), true, false),
    ];
    for (value, expected, by_get, by_scan) in cases {
        store.db.insert(key, value.clone()).unwrap();
        let check = |r: Result<(), StoreError>| match r {
            Err(StoreError::Corrupt { key: k, why }) => {
                assert!(expected(&why), "{value:?}: {why}");
                // The message names what the key is.
                let text = StoreError::Corrupt { key: k, why }.to_string();
                assert!(text.contains("ITB85JUYCJS4IQA"), "{text}");
            }
            other => panic!("{value:?}: {other:?}"),
        };
        if by_get {
            check(store.get(&o, 2).map(|_| ()));
        }
        if by_scan {
            check(store.range(&o, 1, 10).map(|_| ()));
            check(store.for_each_unit(&mut |_| true));
        }
    }
    // Random garbage: never a panic.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..300 {
        let len = rng.gen_range(0..80);
        let mut value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if rng.gen_bool(0.5) && value.len() >= 5 {
            value[..5].copy_from_slice(&[0, 0, 0, rng.gen_range(1..4), rng.gen_range(0..3)]);
        }
        store.db.insert(key, value).unwrap();
        let _ = store.get(&o, rng.gen_range(1..4));
        let _ = store.range(&o, 1, 10);
        let _ = store.for_each_unit(&mut |_| true);
        let _ = store.find_physkey(&unit(0, 2).physkey);
    }
}

#[test]
fn corrupt_index_cursor_and_vector_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store.insert_batch(&[app_unit(0, 1, app_key(1))], &[]).unwrap();
    store.db.insert(physkey_key(&app_key(1)), &b"short"[..]).unwrap();
    assert!(matches!(
        store.find_physkey(&app_key(1)),
        Err(StoreError::Corrupt { why: Corruption::Index, .. })
    ));
    store.set_cursor("pos", &origin(0), 1).unwrap();
    let mut key = cursor_prefix("pos").unwrap();
    key.extend_from_slice(origin(0).as_bytes());
    store.db.insert(key, &[1u8][..]).unwrap();
    let err = store.cursor("pos").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { why: Corruption::Index, .. }), "{err}");
    assert!(err.to_string().contains("cursor of \"pos\""), "{err}");

    store.db.insert(vector_key(&origin(0)), &[0u8, 1, 5, 3][..]).unwrap();
    store.flush().unwrap();
    drop(store);
    wait_unlocked(dir.path());
    let err = SledStore::open(dir.path(), 8 << 20).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { why: Corruption::Vector(_), .. }), "{err}");
    assert!(err.to_string().contains("version vector of ITB85JUYCJS4IQA"), "{err}");

    wait_unlocked(dir.path());
    let db = sled::open(dir.path()).unwrap();
    db.insert(vector_key(&origin(0)), OriginRange::default().encode()).unwrap();
    db.insert(&b"vshort"[..], &b""[..]).unwrap();
    db.flush().unwrap();
    drop(db);
    wait_unlocked(dir.path());
    let err = SledStore::open(dir.path(), 8 << 20).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { why: Corruption::Key, .. }), "{err}");
}

/// Everything a reader sees of a store: units, physkeys, meta, run keys.
fn snapshot(store: &SledStore, names: &[&str], keys: &[Physkey]) -> String {
    let mut units = Vec::new();
    store
        .for_each_unit(&mut |u| {
            units.push((u.origin, u.seq));
            true
        })
        .unwrap();
    let metas: Vec<_> = names.iter().map(|n| store.meta_get(n).unwrap()).collect();
    let found: Vec<_> = keys.iter().map(|k| store.find_physkey(k).unwrap()).collect();
    format!("{:?}\n{units:?}\n{metas:?}\n{found:?}\n{:?}", store.version_vector(), run_keys(store))
}

/// A crash can cut a batch after any of its writes: whatever was written, open undoes it, and
/// the batch can then be inserted whole (as the ledger's replay does).
#[test]
fn a_batch_cut_short_by_a_crash_is_undone_at_open() {
    let first = [unit(0, 1), unit(0, 2), unit(0, 5), app_unit(1, 1, app_key(1))];
    // More of origins 0 and 1 (a gap filled, a new run), a new origin, a physkey already
    // indexed and a new one, a meta value replaced and a new one.
    let second = [
        unit(0, 3),
        unit(0, 9),
        app_unit(1, 2, app_key(1)),
        app_unit(1, 3, app_key(2)),
        unit(2, 1),
    ];
    let meta_first =
        [("kept".to_string(), Some(b"a".to_vec())), ("gone".to_string(), Some(b"g".to_vec()))];
    let meta_second = [
        ("kept".to_string(), Some(b"b".to_vec())),
        ("new".to_string(), Some(b"c".to_vec())),
        ("gone".to_string(), None),
    ];
    let names = ["kept", "new", "gone"];
    let keys = [app_key(1), app_key(2)];

    let expected = |batches: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        store.insert_batch(&first, &meta_first).unwrap();
        if batches == 2 {
            store.insert_batch(&second, &meta_second).unwrap();
        }
        snapshot(&store, &names, &keys)
    };
    let (after_first, after_both) = (expected(1), expected(2));
    assert_ne!(after_first, after_both);

    let mut cut = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        store.insert_batch(&first, &meta_first).unwrap();
        store.interrupt_after = Some(cut);
        match store.insert_batch(&second, &meta_second) {
            Ok(_) => break,
            Err(StoreError::Interrupted) => {}
            Err(e) => panic!("cut after {cut} writes: {e}"),
        }
        assert!(matches!(store.insert_batch(&second, &[]), Err(StoreError::Poisoned)));
        // Dropping sled writes what it holds, the cut batch's first writes and its intent
        // included: the disk as a crash right there leaves it.
        drop(store);
        let mut store = open(&dir);
        assert_eq!(snapshot(&store, &names, &keys), after_first, "cut after {cut} writes");
        store.insert_batch(&second, &meta_second).unwrap();
        assert_eq!(snapshot(&store, &names, &keys), after_both, "cut after {cut} writes");
        cut += 1;
    }
    // The batch writes 4 runs (0: 3, 0: 9, 1: 2-3, 2: 1), 1 physkey, 3 meta values and 3
    // vector entries; cut 11 is after all of them, the intent not yet removed.
    assert_eq!(cut, 12);
}

/// A batch whose intent would be too large (thousands of application physkeys) is written as
/// a `sled::Batch`, with the same outcome and no intent left behind.
#[test]
fn a_batch_too_large_for_an_intent_goes_through_sled_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let units: Vec<TransferUnit> =
        (1..=3000u64).map(|seq| app_unit(0, seq, app_key(seq))).collect();
    let intent_bytes = units.len() * (1 + Physkey::LEN + 2);
    assert!(intent_bytes > super::intent::MAX_INTENT_BYTES);
    store.insert_batch(&units, &[]).unwrap();
    assert!(store.db.get(super::intent::INTENT_KEY).unwrap().is_none());
    drop(store);
    let store = open(&dir);
    assert_eq!(store.units_total(), 3000);
    assert_eq!(store.find_physkey(&app_key(1234)).unwrap(), Some((origin(0), 1234)));
}

/// A flush also fsyncs sled's data file (sled's own flush does not): the handle synced must be
/// that file, which a sled upgrade moving its data elsewhere would break.
#[test]
fn a_flush_syncs_the_file_sled_writes_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store.insert_batch(&[unit(0, 1)], &[]).unwrap();
    store.flush().unwrap();
    store.files.assert_syncs_the_data_sled_writes(dir.path());
}

#[test]
fn an_unreadable_intent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.db.insert(super::intent::INTENT_KEY, &[0xff, 0xff, 0xff][..]).unwrap();
    drop(store);
    wait_unlocked(dir.path());
    let err = SledStore::open(dir.path(), 8 << 20).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { why: Corruption::Intent, .. }), "{err}");
    assert!(err.to_string().contains("meshnode rebuild"), "{err}");

    // A well-formed intent naming a key a batch never writes is corrupt too.
    wait_unlocked(dir.path());
    let db = sled::open(dir.path()).unwrap();
    let bad = super::intent::Intent { before: vec![(b"cx".to_vec(), None)] };
    db.insert(super::intent::INTENT_KEY, bad.encode()).unwrap();
    drop(db);
    wait_unlocked(dir.path());
    let err = SledStore::open(dir.path(), 8 << 20).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { why: Corruption::Intent, .. }), "{err}");
}

#[test]
fn store_keys_describe_themselves() {
    let text = |key: Vec<u8>| StoreKey(key).to_string();
    assert_eq!(text(unit_key(&origin(0), 7).to_vec()), "unit run of ITB85JUYCJS4IQA from seq 7");
    assert_eq!(text(vector_key(&origin(1)).to_vec()), "version vector of AAAAAAAAAAAAAAA");
    assert_eq!(text(meta_key("checkpoint")), "meta \"checkpoint\"");
    assert_eq!(
        text(physkey_key(&app_key(2)).to_vec()),
        format!("physkey index \"{}\"", app_key(2))
    );
    assert_eq!(text(super::intent::INTENT_KEY.to_vec()), "intent of an unfinished batch");
    assert_eq!(text(vec![b'u', 1, 2]), "key 750102");
    assert_eq!(text(vec![]), "key ");
}

/// Throughput figure for the store alone, run by hand:
/// `cargo test --release --lib store -- --ignored --nocapture`.
#[test]
#[ignore = "throughput figure, run by hand in release mode"]
fn throughput_one_million_units() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path(), DEFAULT_CACHE_CAPACITY).unwrap();
    let own = origin(0);
    let make = |o: &DatabaseId, seq: u64, physkey: Physkey| TransferUnit {
        kind: UnitKind::Tubt,
        physkey,
        origin: *o,
        seq,
        created_ms: 1_700_000_000_000 + seq / 100,
        urgency: Urgency::Normal,
        scopes: FileScopes::NONE,
        payload: vec![0xa5; 256],
        sensitive: Vec::new(),
    };
    let timed = |store: &mut SledStore, batch: &[TransferUnit], spent: &mut Duration| {
        let start = Instant::now();
        let outcomes = store.insert_batch(batch, &[]).unwrap();
        *spent += start.elapsed();
        assert!(outcomes.iter().all(|o| *o == InsertOutcome::Inserted));
    };
    let (mut insert, mut flush) = (Duration::ZERO, Duration::ZERO);
    let (batches, per_batch) = (1000u64, 1000u64);
    // Built before timing so that the CPU figure is the store's (and sled's threads').
    let all: Vec<Vec<TransferUnit>> = (0..batches)
        .map(|b| {
            (1..=per_batch)
                .map(|i| b * per_batch + i)
                .map(|seq| {
                    let physkey = Physkey::generate(1_700_000_000_000 + seq, &own, seq).unwrap();
                    make(&own, seq, physkey)
                })
                .collect()
        })
        .collect();
    let cpu_start = cpu_time();
    for (b, batch) in all.iter().enumerate() {
        timed(&mut store, batch, &mut insert);
        if b % 165 == 164 {
            // The ledger flushes about once a second, i.e. every ~165 batches at target rate.
            let start = Instant::now();
            store.flush().unwrap();
            flush += start.elapsed();
        }
    }
    let start = Instant::now();
    store.flush().unwrap();
    flush += start.elapsed();
    let n = batches * per_batch;
    let cpu = (cpu_time() - cpu_start).as_secs_f64();
    drop(all);
    println!("process cpu (all threads) while inserting: {cpu:.2} s");
    let secs = insert.as_secs_f64();
    println!(
        "own units: {n} in {secs:.2} s = {:.0} units/s ({:.2} µs/unit); \
         flushes {:.2} s; with flushes {:.0} units/s",
        n as f64 / secs,
        secs * 1e6 / n as f64,
        flush.as_secs_f64(),
        n as f64 / (secs + flush.as_secs_f64())
    );

    // Received: 50 origins interleaved, arriving in reverse within each batch.
    let others: Vec<DatabaseId> = (0..50u8)
        .map(|i| DatabaseId::from_bytes(format!("RECV{:011}", i).as_bytes()).unwrap())
        .collect();
    let mut spent = Duration::ZERO;
    for b in 0..100u64 {
        let mut batch = Vec::new();
        for o in &others {
            for i in 1..=20 {
                let seq = b * 20 + i;
                batch.push(make(
                    o,
                    seq,
                    Physkey::generate(1_700_000_000_000 + seq, o, seq).unwrap(),
                ));
            }
        }
        batch.reverse();
        timed(&mut store, &batch, &mut spent);
    }
    println!("received, 50 origins interleaved: {:.0} units/s", 100_000.0 / spent.as_secs_f64());

    // Application physkeys: one index read and one index entry per unit.
    let app = origin(1);
    let mut spent = Duration::ZERO;
    for b in 0..100u64 {
        let batch: Vec<TransferUnit> = (1..=1000)
            .map(|i| b * 1000 + i)
            .map(|seq| {
                make(&app, seq, Physkey::from_bytes(format!("APP{seq:029}").as_bytes()).unwrap())
            })
            .collect();
        timed(&mut store, &batch, &mut spent);
    }
    println!("application physkeys: {:.0} units/s", 100_000.0 / spent.as_secs_f64());

    // Duplicates: a whole batch already held.
    let batch: Vec<TransferUnit> = (1..=1000)
        .map(|seq| make(&own, seq, Physkey::generate(1_700_000_000_000 + seq, &own, seq).unwrap()))
        .collect();
    let start = Instant::now();
    for _ in 0..100 {
        assert!(store
            .insert_batch(&batch, &[])
            .unwrap()
            .iter()
            .all(|o| *o == InsertOutcome::Duplicate));
    }
    println!("duplicates: {:.0} units/s", 100_000.0 / start.elapsed().as_secs_f64());
    store.flush().unwrap();
    let size = store.size_on_disk().unwrap();
    drop(store);
    let blobs = std::fs::read_dir(dir.path().join("blobs")).map_or(0, |d| d.count());
    println!("sled blob files: {blobs}");

    wait_unlocked(dir.path());
    let start = Instant::now();
    let store = SledStore::open(dir.path(), DEFAULT_CACHE_CAPACITY).unwrap();
    println!("reopen: {:.1} ms, {} MiB on disk", start.elapsed().as_secs_f64() * 1e3, size >> 20);
    assert_eq!(store.units_total(), n + 200_000);

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let start = Instant::now();
    for _ in 0..10_000 {
        let seq = rng.gen_range(1..=n);
        assert_eq!(store.get(&own, seq).unwrap().map(|u| u.seq), Some(seq));
    }
    println!("random get: {:.1} µs", start.elapsed().as_secs_f64() * 1e6 / 10_000.0);
    let start = Instant::now();
    let mut count = 0u64;
    store
        .for_each_unit(&mut |_| {
            count += 1;
            true
        })
        .unwrap();
    assert_eq!(count, n + 200_000);
    println!("full scan: {:.0} units/s", count as f64 / start.elapsed().as_secs_f64());
    print_memory("inline units, after random gets and a full scan");
}

/// Memory figure for a store of located units, read across whole, run by hand:
/// `cargo test --release --lib store::sled_store::tests::memory -- --ignored --nocapture`.
///
/// The source synthesizes each unit from `(origin, seq)`, so the figures are the store's (and
/// sled's) alone, with no log reads.
#[test]
#[ignore = "memory figure, run by hand in release mode"]
fn memory_one_million_located_units() {
    let dir = tempfile::tempdir().unwrap();
    let source: Arc<dyn BodySource> = Arc::new(Synthesized);
    let own = origin(0);
    print_memory("start");
    let mut store =
        SledStore::open_with_bodies(dir.path(), DEFAULT_CACHE_CAPACITY, source.clone()).unwrap();
    let (batches, per_batch) = (1000u64, 1000u64);
    let n = batches * per_batch;
    let (mut insert, mut flush) = (Duration::ZERO, Duration::ZERO);
    for b in 0..batches {
        let batch: Vec<(TransferUnit, BodyRef)> = (1..=per_batch)
            .map(|i| b * per_batch + i)
            .map(|seq| (synthesize(&own, seq), synthesized_at(seq)))
            .collect();
        let start = Instant::now();
        let outcomes = store.insert_located(&batch, &[]).unwrap();
        insert += start.elapsed();
        assert!(outcomes.iter().all(|o| *o == InsertOutcome::Inserted));
        if b % 165 == 164 {
            // As in the throughput figure: the ledger flushes about once a second.
            let start = Instant::now();
            store.flush().unwrap();
            flush += start.elapsed();
        }
    }
    let start = Instant::now();
    store.flush().unwrap();
    flush += start.elapsed();
    let secs = insert.as_secs_f64();
    println!(
        "located inserts: {n} in {secs:.2} s = {:.0} units/s ({:.2} µs/unit); flushes {:.2} s; \
         with flushes {:.0} units/s",
        n as f64 / secs,
        secs * 1e6 / n as f64,
        flush.as_secs_f64(),
        n as f64 / (secs + flush.as_secs_f64())
    );
    print_memory("after inserts");
    let size = store.size_on_disk().unwrap();
    drop(store);
    print_memory("after drop");
    // Start the peak afresh (Linux 4.0+), so VmHWM below is the reading phase's.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    wait_unlocked(dir.path());
    let start = Instant::now();
    let store = SledStore::open_with_bodies(dir.path(), DEFAULT_CACHE_CAPACITY, source).unwrap();
    println!("reopen: {:.1} ms, {} MiB on disk", start.elapsed().as_secs_f64() * 1e3, size >> 20);
    assert_eq!(store.units_total(), n);
    print_memory(if reset { "after reopen (peak reset)" } else { "after reopen" });

    let start = Instant::now();
    let mut next = 1;
    store
        .for_each_unit(&mut |u| {
            assert_eq!(u.seq, next);
            next += 1;
            true
        })
        .unwrap();
    assert_eq!(next, n + 1);
    println!("full scan: {:.0} units/s", n as f64 / start.elapsed().as_secs_f64());
    print_memory("after full scan");

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let start = Instant::now();
    for _ in 0..10_000 {
        let seq = rng.gen_range(1..=n);
        assert_eq!(store.get(&own, seq).unwrap().map(|u| u.seq), Some(seq));
    }
    println!("random get: {:.1} µs", start.elapsed().as_secs_f64() * 1e6 / 10_000.0);
    print_memory("after 10,000 scattered gets");
}

/// Makes every unit from its name, as the daily logs would hold it.
struct Synthesized;

impl BodySource for Synthesized {
    fn load(&self, origin: &DatabaseId, seq: u64, at: BodyRef) -> Result<TransferUnit, BodyError> {
        if at != synthesized_at(seq) {
            return Err(format!("seq {seq} is not at {at:?}").into());
        }
        Ok(synthesize(origin, seq))
    }
}

/// Unit `seq` of `origin` with a 256-byte payload made of `seq`.
fn synthesize(origin: &DatabaseId, seq: u64) -> TransferUnit {
    TransferUnit {
        kind: UnitKind::Tubt,
        physkey: Physkey::generate(1_700_000_000_000 + seq, origin, seq).unwrap(),
        origin: *origin,
        seq,
        created_ms: 1_700_000_000_000 + seq / 100,
        urgency: Urgency::Normal,
        scopes: FileScopes::NONE,
        payload: seq.to_le_bytes().repeat(32),
        sensitive: Vec::new(),
    }
}

/// Where unit `seq` is said to be: 100,000 records of 330 bytes per log file.
fn synthesized_at(seq: u64) -> BodyRef {
    BodyRef { file: u32::try_from(seq / 100_000).unwrap(), offset: seq % 100_000 * 330, len: 330 }
}

/// Prints VmRSS and VmHWM (peak) of this process.
fn print_memory(when: &str) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(field));
        line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    println!("{when}: VmRSS {} MiB, VmHWM {} MiB", kib("VmRSS:") >> 10, kib("VmHWM:") >> 10);
}

/// User plus system CPU time of the whole process (sled's background threads included).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
