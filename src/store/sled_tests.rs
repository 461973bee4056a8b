//! Tests of the sled store alone: layout, reopen, corruption, and the throughput figure.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::*;
use crate::store::suite::{app_key, app_unit, origin, unit};
use crate::store::{Corruption, DEFAULT_CACHE_CAPACITY};
use crate::unit::{FileScopes, UnitKind, Urgency};

fn open(dir: &tempfile::TempDir) -> SledStore {
    SledStore::open(dir.path(), 8 << 20).unwrap()
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
fn corrupt_runs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store.insert_batch(&(1..=3).map(|s| unit(0, s)).collect::<Vec<_>>(), &[]).unwrap();
    let o = origin(0);
    let key = unit_key(&o, 1);
    let raw = |entries: &[Vec<u8>], extra: &[u8]| {
        let mut v = u32::try_from(entries.len()).unwrap().to_be_bytes().to_vec();
        for e in entries {
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
        (vec![0, 0, 0, 3, 0, 0, 0, 9, 1, 2], |c| matches!(c, Corruption::Truncated), true, true),
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
        if rng.gen_bool(0.5) && value.len() >= 4 {
            value[..4].copy_from_slice(&[0, 0, 0, rng.gen_range(1..4)]);
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
    let err = SledStore::open(dir.path(), 8 << 20).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { why: Corruption::Vector(_), .. }), "{err}");
    assert!(err.to_string().contains("version vector of ITB85JUYCJS4IQA"), "{err}");

    let db = sled::open(dir.path()).unwrap();
    db.insert(vector_key(&origin(0)), OriginRange::default().encode()).unwrap();
    db.insert(&b"vshort"[..], &b""[..]).unwrap();
    db.flush().unwrap();
    drop(db);
    let err = SledStore::open(dir.path(), 8 << 20).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { why: Corruption::Key, .. }), "{err}");
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
