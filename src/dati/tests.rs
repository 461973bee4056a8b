//! Behaviour of the DATI logs through the public API: round trips, rotation, NNNN, repair,
//! damage, wrong keys, replay, and never panicking on any bytes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tempfile::tempdir;

use super::*;
use crate::crypto::KeySchedule;
use crate::id::{InstanceId, Physkey};
use crate::unit::tests::arb_unit;
use crate::unit::{FileScopes, TransferUnit, UnitKind, Urgency};

pub(super) const DAY: u64 = 86_400_000;
/// 2014-08-13 00:00 UTC.
pub(super) const T0: u64 = 1_407_888_000_000;

pub(super) fn keys() -> KeySchedule {
    fuzzing::test_keys()
}

pub(super) fn origin(i: usize) -> DatabaseId {
    ["ITB85JUYCJS4IQA", "AAAAAAAAAAAAAA1", "ZZZZZZZZZZZZZZ9"][i].parse().unwrap()
}

pub(super) fn unit(origin: DatabaseId, seq: u64, payload_len: usize) -> TransferUnit {
    TransferUnit {
        kind: UnitKind::Tubt,
        physkey: Physkey::generate(T0, &origin, seq).unwrap(),
        origin,
        seq,
        created_ms: T0,
        urgency: Urgency::Normal,
        scopes: FileScopes::NONE,
        payload: (0..payload_len).map(|i| (i as u64 ^ seq) as u8).collect(),
        sensitive: Vec::new(),
    }
}

pub(super) fn open_floor(
    dir: &Path,
    limit: u64,
    floor: &BTreeMap<DatabaseId, u32>,
) -> (DatiWriter, OpenReport) {
    let cfg = DatiConfig { dir: dir.to_path_buf(), size_limit: limit };
    DatiWriter::open(cfg, keys(), InstanceId([4; 16]), floor).unwrap()
}

pub(super) fn open(dir: &Path, limit: u64) -> (DatiWriter, OpenReport) {
    open_floor(dir, limit, &BTreeMap::new())
}

pub(super) fn read_units(path: &Path) -> Vec<TransferUnit> {
    DatiReader::open(path, &keys()).unwrap().map(|r| r.unwrap().unit).collect()
}

pub(super) fn record_offsets(path: &Path) -> Vec<u64> {
    DatiReader::open(path, &keys()).unwrap().map(|r| r.unwrap().offset).collect()
}

pub(super) fn names(dir: &Path) -> Vec<String> {
    list_files(dir).unwrap().into_iter().map(|f| f.name).collect()
}

/// Writes `n` units of origin 0 into a fresh log and returns them with the file's path.
pub(super) fn write_units(dir: &Path, n: u64) -> (Vec<TransferUnit>, PathBuf) {
    let (mut w, _) = open(dir, DEFAULT_SIZE_LIMIT);
    let units: Vec<_> = (1..=n).map(|s| unit(origin(0), s, 50)).collect();
    for u in &units {
        w.append(u, T0).unwrap();
    }
    w.sync().unwrap();
    let files = list_files(dir).unwrap();
    assert_eq!(files.len(), 1);
    (units, files[0].path.clone())
}

#[test]
fn names_round_trip_and_unrelated_files_are_ignored() {
    let o = origin(0);
    assert_eq!(file_name(&o, 8146, 20140813), "TUBT_ITB85JUYCJS4IQA_8146_20140813.DATI");
    assert_eq!(file_name(&o, 7, 20140813), "TUBT_ITB85JUYCJS4IQA_0007_20140813.DATI");
    assert_eq!(file_name(&o, 12_345, 20140813), "TUBT_ITB85JUYCJS4IQA_12345_20140813.DATI");
    for n in [0, 7, 9999, 10_000, u32::MAX] {
        assert_eq!(parse_file_name(&file_name(&o, n, 20140813)), Some((o, n, 20140813)));
    }
    let lower = "tubt_ITB85JUYCJS4IQA_8146_20140813.dati";
    assert_eq!(parse_file_name(lower), Some((o, 8146, 20140813)));
    for bad in [
        "TUBT_ITB85JUYCJS4IQA_814_20140813.DATI",
        "TUBT_ITB85JUYCJS4IQA_8146_2014081.DATI",
        "TUBT_itb85juycjs4iqa_8146_20140813.DATI",
        "TUBT_ITB85JUYCJS4IQA_SYSUID_20140813_0.DATI",
        "TUBT_ITB85JUYCJS4IQA_8146_20140813.DATI.tmp",
        ".TUBT_ITB85JUYCJS4IQA_8146_20140813.DATI.tmp",
        "TUBT_ITB85JUYCJS4IQA_99999999999_20140813.DATI",
        "TUBT_ITB85JUYCJS4IQA_+146_20140813.DATI",
        "TUBT_.DATI",
        "TUBT_",
        "",
        "README",
    ] {
        assert_eq!(parse_file_name(bad), None, "{bad}");
    }
    let dir = tempdir().unwrap();
    for name in [
        "TUBT_ZZZZZZZZZZZZZZ9_0002_20140813.DATI",
        "TUBT_ITB85JUYCJS4IQA_0010_20140813.DATI",
        "TUBT_ITB85JUYCJS4IQA_0009_20140814.DATI",
        "notes.txt",
        ".TUBT_ITB85JUYCJS4IQA_0011_20140813.DATI.tmp",
    ] {
        fs::write(dir.path().join(name), b"x").unwrap();
    }
    fs::create_dir(dir.path().join("TUBT_ITB85JUYCJS4IQA_0001_20140813.DATI")).unwrap();
    let found = list_files(dir.path()).unwrap();
    let found: Vec<_> = found.iter().map(|f| (f.origin, f.nnnn, f.date, f.size)).collect();
    assert_eq!(found, [(o, 9, 20140814, 1), (o, 10, 20140813, 1), (origin(2), 2, 20140813, 1)]);
}

#[test]
fn utc_dates() {
    assert_eq!(utc_date(0), 19700101);
    assert_eq!(utc_date(T0), 20140813);
    assert_eq!(utc_date(T0 - 1), 20140812);
    assert_eq!(utc_date(T0 + DAY - 1), 20140813);
    assert_eq!(utc_date(946_598_400_000), 19991231);
    assert_eq!(utc_date(951_782_400_000), 20000229);
    assert_eq!(utc_date(4_107_456_000_000), 21000228);
    assert_eq!(utc_date(4_107_542_400_000), 21000301);
    assert_eq!(utc_date(253_402_300_799_999), 99991231);
    assert_eq!(utc_date(253_402_300_800_000), 99991231);
    assert_eq!(utc_date(u64::MAX), 99991231);
}

#[test]
fn round_trip_many_units_several_origins() {
    let dir = tempdir().unwrap();
    let (mut w, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    assert_eq!((report.files, report.repairs.len()), (0, 0));
    let mut expected: BTreeMap<DatabaseId, Vec<TransferUnit>> = BTreeMap::new();
    for seq in 1..=300u64 {
        for i in 0..3 {
            let u = unit(origin(i), seq, (seq as usize * 13 + i) % 700);
            w.append(&u, T0 + seq).unwrap();
            expected.entry(origin(i)).or_default().push(u);
        }
        if seq % 50 == 0 {
            w.sync().unwrap();
        }
    }
    w.sync().unwrap();
    let files = list_files(dir.path()).unwrap();
    assert_eq!(files.len(), 3);
    for f in &files {
        let report = verify_file(&f.path, &keys()).unwrap();
        assert_eq!((report.records, report.bytes), (300, f.size));
        assert_eq!(
            (report.header.origin, report.header.nnnn, report.header.date),
            (f.origin, 1, 20140813)
        );
        assert_eq!(read_units(&f.path), expected[&f.origin]);
        assert_eq!(w.positions()[&f.origin], DatiPosition { nnnn: 1, offset: f.size });
    }
    // Records carry what `log dump` prints, and tile the file.
    let mut records = DatiReader::open(&files[0].path, &keys()).unwrap();
    let first = records.next().unwrap().unwrap();
    let second = records.next().unwrap().unwrap();
    assert_eq!(
        (first.offset, first.seq, first.epoch),
        (HEADER_LEN as u64, 1, keys().epoch_at(T0 / 1000))
    );
    assert_eq!(second.offset, first.offset + first.len);
    assert_eq!(second.nonce.counter, first.nonce.counter + 3);
}

#[test]
fn rotation_by_size_numbers_files_consecutively() {
    let dir = tempdir().unwrap();
    let (mut w, _) = open(dir.path(), 4096);
    let units: Vec<_> = (1..=200).map(|s| unit(origin(0), s, 100)).collect();
    for (i, u) in units.iter().enumerate() {
        w.append(u, T0).unwrap();
        if i % 7 == 0 {
            w.sync().unwrap();
        }
    }
    w.sync().unwrap();
    let files = list_files(dir.path()).unwrap();
    assert!(files.len() > 5, "{} files", files.len());
    for (i, f) in files.iter().enumerate() {
        assert_eq!((f.nnnn, f.date), (i as u32 + 1, 20140813));
        let full = i + 1 == files.len() || f.size > 3000;
        assert!(f.size <= 4096 && full, "{}: {} bytes", f.name, f.size);
    }
    let read: Vec<_> = files.iter().flat_map(|f| read_units(&f.path)).collect();
    assert_eq!(read, units);
    let last = files.last().unwrap();
    assert_eq!(w.nnnn_high_water()[&origin(0)], last.nnnn);
    assert_eq!(w.positions()[&origin(0)], DatiPosition { nnnn: last.nnnn, offset: last.size });
}

#[test]
fn a_record_over_the_size_limit_goes_alone_in_a_new_file() {
    let dir = tempdir().unwrap();
    let (mut w, _) = open(dir.path(), 300);
    let o = origin(0);
    for (seq, len) in [(1, 10), (2, 2000), (3, 10)] {
        w.append(&unit(o, seq, len), T0).unwrap();
    }
    w.sync().unwrap();
    let files = list_files(dir.path()).unwrap();
    let counts: Vec<_> =
        files.iter().map(|f| verify_file(&f.path, &keys()).unwrap().records).collect();
    assert_eq!(counts, [1, 1, 1]);
    assert!(files[1].size > 2000);
}

#[test]
fn rotation_by_day_and_clock_set_back() {
    let dir = tempdir().unwrap();
    let o = origin(0);
    let (mut w, _) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    w.append(&unit(o, 1, 10), T0).unwrap();
    w.append(&unit(o, 2, 10), T0 + DAY - 1).unwrap();
    w.append(&unit(o, 3, 10), T0 + DAY).unwrap();
    w.append(&unit(o, 4, 10), T0 + 5).unwrap(); // the clock was set back a day
    w.sync().unwrap();
    drop(w);
    let (mut w, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    assert!(report.repairs.is_empty(), "{report:?}");
    w.append(&unit(o, 5, 10), T0 + 6).unwrap(); // same claimed day: continues file 3
    w.append(&unit(o, 6, 10), T0 + DAY + 1).unwrap();
    w.sync().unwrap();
    assert_eq!(
        names(dir.path()),
        [
            "TUBT_ITB85JUYCJS4IQA_0001_20140813.DATI",
            "TUBT_ITB85JUYCJS4IQA_0002_20140814.DATI",
            "TUBT_ITB85JUYCJS4IQA_0003_20140813.DATI",
            "TUBT_ITB85JUYCJS4IQA_0004_20140814.DATI",
        ]
    );
    let seqs: Vec<Vec<u64>> = list_files(dir.path())
        .unwrap()
        .iter()
        .map(|f| read_units(&f.path).iter().map(|u| u.seq).collect())
        .collect();
    assert_eq!(seqs, [vec![1, 2], vec![3], vec![4, 5], vec![6]]);
}

#[test]
fn nnnn_follows_the_floor_and_never_goes_back() {
    let dir = tempdir().unwrap();
    let o = origin(0);
    let (mut w, _) = open_floor(dir.path(), DEFAULT_SIZE_LIMIT, &BTreeMap::from([(o, 8145)]));
    w.append(&unit(o, 1, 10), T0).unwrap();
    assert_eq!(w.nnnn_high_water(), BTreeMap::from([(o, 8145)]), "not named before sync");
    w.sync().unwrap();
    assert_eq!(names(dir.path()), ["TUBT_ITB85JUYCJS4IQA_8146_20140813.DATI"]);
    let high_water = w.nnnn_high_water();
    assert_eq!(high_water, BTreeMap::from([(o, 8146)]));
    drop(w);

    // The files are archived away; the floor keeps the numbers going up, whatever the clock.
    for f in list_files(dir.path()).unwrap() {
        fs::remove_file(f.path).unwrap();
    }
    let (mut w, _) = open_floor(dir.path(), DEFAULT_SIZE_LIMIT, &high_water);
    w.append(&unit(o, 2, 10), T0 - DAY).unwrap();
    w.sync().unwrap();
    assert_eq!(names(dir.path()), ["TUBT_ITB85JUYCJS4IQA_8147_20140812.DATI"]);
    drop(w);

    // A floor below the files found does not matter; more than four digits when needed.
    let floor = BTreeMap::from([(o, 3), (origin(1), 9999)]);
    let (mut w, _) = open_floor(dir.path(), DEFAULT_SIZE_LIMIT, &floor);
    assert_eq!(w.nnnn_high_water(), BTreeMap::from([(o, 8147), (origin(1), 9999)]));
    w.append(&unit(o, 3, 10), T0).unwrap();
    w.append(&unit(origin(1), 1, 10), T0).unwrap();
    w.sync().unwrap();
    assert_eq!(
        names(dir.path()),
        [
            "TUBT_AAAAAAAAAAAAAA1_10000_20140813.DATI",
            "TUBT_ITB85JUYCJS4IQA_8147_20140812.DATI",
            "TUBT_ITB85JUYCJS4IQA_8148_20140813.DATI",
        ]
    );
}

#[test]
fn read_from_replays_after_positions() {
    let dir = tempdir().unwrap();
    let (a, b) = (origin(0), origin(1));
    let (mut w, _) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    for s in 1..=5 {
        w.append(&unit(a, s, 30), T0).unwrap();
        w.append(&unit(b, s, 30), T0).unwrap();
    }
    w.sync().unwrap();
    let checkpoint = w.positions();
    for s in 6..=10 {
        w.append(&unit(a, s, 30), T0 + DAY * (s - 5)).unwrap(); // a new file each day
    }
    for s in 6..=8 {
        w.append(&unit(b, s, 30), T0).unwrap();
    }
    w.sync().unwrap();
    let replay = |positions: &BTreeMap<DatabaseId, DatiPosition>| {
        let mut got = Vec::new();
        let report = read_from::<DatiError, _>(dir.path(), &keys(), positions, |u| {
            got.push((u.origin, u.seq));
            Ok(())
        })
        .unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, got.len() as u64);
        got
    };
    let after = |o: DatabaseId, seqs: std::ops::RangeInclusive<u64>| seqs.map(move |s| (o, s));

    let got = replay(&checkpoint);
    assert_eq!(got, after(b, 6..=8).chain(after(a, 6..=10)).collect::<Vec<_>>());
    let got = replay(&BTreeMap::new());
    assert_eq!(got, after(b, 1..=8).chain(after(a, 1..=10)).collect::<Vec<_>>());
    let got = replay(&BTreeMap::from([(a, checkpoint[&a])]));
    assert_eq!(got, after(b, 1..=8).chain(after(a, 6..=10)).collect::<Vec<_>>());
    assert!(replay(&w.positions()).is_empty());

    // A position past the end of its file is reported; an error from the callback stops.
    let past = BTreeMap::from([(b, DatiPosition { nnnn: 1, offset: 1 << 40 })]);
    let report = read_from::<DatiError, _>(dir.path(), &keys(), &past, |_| Ok(())).unwrap();
    assert!(matches!(report.problems[..], [DatiError::PositionPastEnd { .. }]));
    let mut calls = 0;
    let stopped = read_from::<DatiError, _>(dir.path(), &keys(), &BTreeMap::new(), |_| {
        calls += 1;
        Err(DatiError::NonceExhausted)
    });
    assert!(matches!(stopped, Err(DatiError::NonceExhausted)));
    assert_eq!(calls, 1);
}

#[test]
fn files_never_synced_are_removed_at_open() {
    let dir = tempdir().unwrap();
    let (mut w, _) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    w.append(&unit(origin(0), 1, 10), T0).unwrap();
    assert!(names(dir.path()).is_empty(), "a file is named only by sync");
    drop(w);
    let (w, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    assert!(matches!(&report.repairs[..], [Repair::UnsyncedFileRemoved { .. }]), "{report:?}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(w.positions().is_empty());
}

#[test]
fn a_reopened_writer_continues_the_file_and_chain_with_new_nonces() {
    let dir = tempdir().unwrap();
    let units: Vec<_> = (1..=10).map(|s| unit(origin(0), s, 40)).collect();
    for half in units.chunks(5) {
        let (mut w, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
        assert!(report.repairs.is_empty());
        for u in half {
            w.append(u, T0).unwrap();
        }
        w.sync().unwrap();
    }
    let files = list_files(dir.path()).unwrap();
    assert_eq!(files.len(), 1);
    let records: Vec<_> =
        DatiReader::open(&files[0].path, &keys()).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        records.iter().map(|r| &r.unit).collect::<Vec<_>>(),
        units.iter().collect::<Vec<_>>()
    );
    assert_eq!(records[0].nonce.counter, records[5].nonce.counter);
    assert_ne!(records[0].nonce.sender, records[5].nonce.sender);
}

/// Files of format version 1 (whole-body hash chain) written by older builds are read, and
/// continued with their own chain rule; new files are version 2.
#[test]
fn a_version_1_file_is_read_and_continued_with_its_chain() {
    use crate::crypto::{Epoch, Nonce, Purpose};
    let dir = tempdir().unwrap();
    let keys = keys();
    let units: Vec<_> = (1..=10).map(|s| unit(origin(0), s, 40)).collect();
    let header = DatiHeader { version: 1, ..DatiHeader::new(origin(0), 1, 20140813, T0, [6; 16]) };
    let mut image = header.encode(&keys.static_key(Purpose::Log)).to_vec();
    let mut prev = *blake3::hash(&image).as_bytes();
    let key = keys.key(Purpose::Log, Epoch(16_295));
    for (counter, u) in (1..).zip(&units[..5]) {
        let seal = format::RecordSeal {
            version: 1,
            file_id: &header.file_id,
            prev_hash: &prev,
            seq: u.seq,
            nonce: Nonce { sender: InstanceId([8; 16]), counter },
            key: &key,
        };
        prev = format::encode_record(&mut image, seal, &u.encode()).unwrap();
    }
    let path = dir.path().join(header.file_name());
    fs::write(&path, &image).unwrap();
    assert_eq!(read_units(&path), units[..5]);

    let (mut w, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    assert!(report.repairs.is_empty(), "{report:?}");
    for u in &units[5..] {
        w.append(u, T0).unwrap();
    }
    w.sync().unwrap();
    assert_eq!(names(dir.path()), [header.file_name()], "continued, not rotated");
    assert_eq!(read_units(&path), units, "the chain holds across the old and new records");
    assert_eq!(fs::read(&path).unwrap()[8], 1, "still version 1");

    // A new file is version 2.
    let (mut w, _) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    w.append(&unit(origin(1), 1, 40), T0).unwrap();
    w.sync().unwrap();
    let new = list_files(dir.path()).unwrap().into_iter().find(|f| f.origin == origin(1)).unwrap();
    assert_eq!(fs::read(&new.path).unwrap()[8], FORMAT_VERSION);
    assert_eq!(FORMAT_VERSION, 2);
}

#[test]
fn invalid_units_are_refused() {
    let dir = tempdir().unwrap();
    let (mut w, _) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    let zero = TransferUnit { seq: 0, ..unit(origin(0), 1, 10) };
    assert!(matches!(w.append(&zero, T0), Err(DatiError::InvalidUnit { seq: 0, .. })));
    w.sync().unwrap();
    assert!(names(dir.path()).is_empty());
}

#[test]
fn a_failed_sync_fails_the_writer_until_reopened() {
    let dir = tempdir().unwrap();
    let o = origin(0);
    let (mut w, _) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    w.append(&unit(o, 1, 10), T0).unwrap();
    // Someone else's file already has the name the new file needs.
    let taken = dir.path().join("TUBT_ITB85JUYCJS4IQA_0001_20140813.DATI");
    fs::write(&taken, b"not ours").unwrap();
    assert!(matches!(w.sync(), Err(DatiError::NameTaken { path }) if path == taken));
    assert_eq!(fs::read(&taken).unwrap(), b"not ours");
    assert!(matches!(w.append(&unit(o, 2, 10), T0), Err(DatiError::WriterFailed { .. })));
    assert!(matches!(w.sync(), Err(DatiError::WriterFailed { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_units_round_trip_through_files(units in proptest::collection::vec(arb_unit(), 1..12)) {
        let dir = tempdir().unwrap();
        let (mut w, _) = open(dir.path(), 2048);
        for u in &units {
            w.append(u, T0).unwrap();
        }
        w.sync().unwrap();
        let mut read = Vec::new();
        read_from::<DatiError, _>(dir.path(), &keys(), &BTreeMap::new(), |u| {
            read.push(u);
            Ok(())
        })
        .unwrap();
        let mut expected = units.clone();
        expected.sort_by_key(|u| u.origin);
        prop_assert_eq!(read, expected);
    }
}

/// Durable append throughput: 1,000,000 units with 256-byte payloads, a sync every 1000.
#[test]
#[ignore = "benchmark; run: cargo test --release --lib dati -- --ignored --nocapture"]
fn append_throughput() {
    use std::time::Instant;
    const N: u64 = 1_000_000;
    for origins in [1, 4] {
        let dir = tempdir().unwrap();
        let (mut w, _) = open(dir.path(), DEFAULT_SIZE_LIMIT);
        let mut templates: Vec<_> = (0..origins).map(|i| unit(origin(i % 3), 1, 256)).collect();
        if origins == 4 {
            templates[3].origin = "QQQQQQQQQQQQQQ4".parse().unwrap();
        }
        let (mut appending, mut syncing) = (0.0, 0.0);
        let start = Instant::now();
        for s in 1..=N {
            let t = Instant::now();
            let u = &mut templates[(s % origins as u64) as usize];
            u.seq = s;
            w.append(u, T0 + s / 10).unwrap();
            appending += t.elapsed().as_secs_f64();
            if s % 1000 == 0 {
                let t = Instant::now();
                w.sync().unwrap();
                syncing += t.elapsed().as_secs_f64();
            }
        }
        w.sync().unwrap();
        let total = start.elapsed().as_secs_f64();
        let bytes: u64 = list_files(dir.path()).unwrap().iter().map(|f| f.size).sum();
        println!(
            "dati append, {origins} origin(s): {N} units in {total:.2} s = {:.0} units/s durable \
             ({:.0} MB/s; append {appending:.2} s, sync {syncing:.2} s, {} files)",
            N as f64 / total,
            bytes as f64 / total / 1e6,
            list_files(dir.path()).unwrap().len()
        );
        let start = Instant::now();
        let report =
            read_from::<DatiError, _>(dir.path(), &keys(), &BTreeMap::new(), |_| Ok(())).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(report.records, N);
        println!("dati replay: {:.0} units/s", N as f64 / secs);
        let start = Instant::now();
        let (_, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
        assert!(report.repairs.is_empty());
        println!("dati open (tail scan of newest files): {:.3} s", start.elapsed().as_secs_f64());
    }
}
