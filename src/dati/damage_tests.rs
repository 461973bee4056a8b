//! Damage and robustness of the DATI logs: torn tails, damage in the middle, flipped bytes,
//! moved records, wrong keys, renamed files, and never panicking on any bytes.

use std::collections::BTreeMap;
use std::fs;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use tempfile::tempdir;

use super::tests::{keys, open, origin, read_units, record_offsets, unit, write_units, T0};
use super::*;
use crate::crypto::{KeySchedule, SystemKey};
use crate::id::InstanceId;

#[test]
fn torn_tail_mid_record_is_cut() {
    let dir = tempdir().unwrap();
    let (units, path) = write_units(dir.path(), 10);
    let offsets = record_offsets(&path);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 7).unwrap();

    let (mut w, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    match &report.repairs[..] {
        [Repair::TornTailCut { path: p, offset, cut_bytes, cause }] => {
            assert_eq!((p, *offset, *cut_bytes), (&path, offsets[9], len - 7 - offsets[9]));
            assert!(
                matches!(cause, DatiError::BadRecord { offset, why: RecordProblem::Truncated { .. }, .. } if *offset == offsets[9]),
                "{cause}"
            );
        }
        other => panic!("{other:?}"),
    }
    let line = report.repairs[0].to_string();
    assert!(
        line.contains("torn tail") && line.contains(&format!("offset {}", offsets[9])),
        "{line}"
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), offsets[9]);
    assert_eq!(read_units(&path), units[..9]);
    assert_eq!(w.positions()[&origin(0)], DatiPosition { nnnn: 1, offset: offsets[9] });

    // The writer continues the same file and chain.
    w.append(&units[9], T0).unwrap();
    w.sync().unwrap();
    assert_eq!(verify_file(&path, &keys()).unwrap().records, 10);
    assert_eq!(read_units(&path), units);
}

#[test]
fn garbage_or_zeros_after_the_last_record_are_cut() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let noise: Vec<u8> = (0..1000).map(|_| rng.gen()).collect();
    for tail in [noise, vec![0; 4096], vec![0xFF; 3], vec![0; 1]] {
        let dir = tempdir().unwrap();
        let (units, path) = write_units(dir.path(), 5);
        let good = fs::read(&path).unwrap();
        let mut bytes = good.clone();
        bytes.extend_from_slice(&tail);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(verify_file(&path, &keys()).unwrap_err().offset(), Some(good.len() as u64));

        let (_, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
        match &report.repairs[..] {
            [Repair::TornTailCut { offset, cut_bytes, .. }] => {
                assert_eq!((*offset, *cut_bytes), (good.len() as u64, tail.len() as u64));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), good);
        assert_eq!(read_units(&path), units);
    }
}

#[test]
fn damage_before_good_records_is_reported_and_kept() {
    let dir = tempdir().unwrap();
    let o = origin(0);
    let (units, path) = write_units(dir.path(), 10);
    let offsets = record_offsets(&path);
    let mut bytes = fs::read(&path).unwrap();
    bytes[offsets[3] as usize + 50] ^= 0x10;
    fs::write(&path, &bytes).unwrap();

    let err = verify_file(&path, &keys()).unwrap_err();
    assert!(
        matches!(&err, DatiError::BadRecord { path: p, offset, why: RecordProblem::Checksum } if p == &path && *offset == offsets[3]),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("offset {}", offsets[3])), "{message}");
    assert!(message.contains("checksum"), "{message}");

    // A reader reports the damage and goes on with the records after it.
    let items: Vec<_> = DatiReader::open(&path, &keys()).unwrap().collect();
    assert_eq!(items.iter().filter(|r| r.is_err()).count(), 1);
    let read: Vec<_> = items.into_iter().filter_map(Result::ok).map(|r| r.unit).collect();
    let mut expected = units.clone();
    expected.remove(3);
    assert_eq!(read, expected);

    // Open leaves the file alone and the origin continues in a new file.
    let (mut w, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    match &report.repairs[..] {
        [Repair::DamagedFileKept { path: p, cause }] => {
            assert_eq!(p, &path);
            assert_eq!(cause.offset(), Some(offsets[3]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(w.positions()[&o], DatiPosition { nnnn: 1, offset: bytes.len() as u64 });
    w.append(&unit(o, 11, 50), T0).unwrap();
    w.sync().unwrap();
    let files = list_files(dir.path()).unwrap();
    assert_eq!(files.iter().map(|f| f.nnnn).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(verify_file(&files[1].path, &keys()).unwrap().records, 1);
}

#[test]
fn a_bad_header_on_the_newest_file_starts_a_new_file() {
    let dir = tempdir().unwrap();
    let (_, path) = write_units(dir.path(), 3);
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let (mut w, report) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    assert!(
        matches!(
            &report.repairs[..],
            [Repair::DamagedFileKept {
                cause: DatiError::BadHeader { why: HeaderProblem::Checksum, .. },
                ..
            }]
        ),
        "{report:?}"
    );
    w.append(&unit(origin(0), 4, 10), T0).unwrap();
    w.sync().unwrap();
    assert_eq!(list_files(dir.path()).unwrap()[1].nnnn, 2);
}

#[test]
fn every_flipped_byte_is_caught_at_its_record_and_the_rest_still_reads() {
    let dir = tempdir().unwrap();
    let (mut w, _) = open(dir.path(), DEFAULT_SIZE_LIMIT);
    let units: Vec<_> = (1..=4).map(|s| unit(origin(0), s, 20)).collect();
    for u in &units {
        w.append(u, T0).unwrap();
    }
    w.sync().unwrap();
    let path = list_files(dir.path()).unwrap()[0].path.clone();
    let offsets = record_offsets(&path);
    let clean = fs::read(&path).unwrap();
    let flipped = dir.path().join("flipped.dati");
    for i in 0..clean.len() {
        let mut bytes = clean.clone();
        bytes[i] ^= 1 << (i % 8);
        fs::write(&flipped, &bytes).unwrap();
        let err = verify_file(&flipped, &keys()).expect_err(&format!("flip at {i} not caught"));
        match offsets.iter().rposition(|&o| o as usize <= i) {
            None => assert!(matches!(err, DatiError::BadHeader { .. }), "byte {i}: {err}"),
            Some(k) => {
                assert_eq!(err.offset(), Some(offsets[k]), "byte {i}: {err}");
                let read: Vec<_> = DatiReader::open(&flipped, &keys())
                    .unwrap()
                    .filter_map(Result::ok)
                    .map(|r| r.unit)
                    .collect();
                let mut expected = units.clone();
                expected.remove(k);
                assert_eq!(read, expected, "byte {i}");
            }
        }
    }
}

#[test]
fn swapped_or_moved_records_are_caught() {
    let dir = tempdir().unwrap();
    let (_, path) = write_units(dir.path(), 4);
    let offsets: Vec<usize> = record_offsets(&path).iter().map(|&o| o as usize).collect();
    let clean = fs::read(&path).unwrap();
    // Swap records 1 and 2 (same length).
    let mut bytes = clean[..offsets[1]].to_vec();
    bytes.extend_from_slice(&clean[offsets[2]..offsets[3]]);
    bytes.extend_from_slice(&clean[offsets[1]..offsets[2]]);
    bytes.extend_from_slice(&clean[offsets[3]..]);
    fs::write(&path, &bytes).unwrap();
    let err = verify_file(&path, &keys()).unwrap_err();
    assert!(matches!(err, DatiError::BadRecord { why: RecordProblem::ChainBroken, .. }), "{err}");
    assert_eq!(err.offset(), Some(offsets[1] as u64));

    // A record copied from another file does not authenticate there.
    let other = tempdir().unwrap();
    let (_, other_path) = write_units(other.path(), 4);
    let foreign = fs::read(&other_path).unwrap();
    let mut bytes = clean[..offsets[3]].to_vec();
    bytes.extend_from_slice(&foreign[offsets[3]..]);
    fs::write(&path, &bytes).unwrap();
    let err = verify_file(&path, &keys()).unwrap_err();
    assert!(matches!(err, DatiError::BadRecord { why: RecordProblem::ChainBroken, .. }), "{err}");
    let items: Vec<_> = DatiReader::open(&path, &keys()).unwrap().collect();
    assert!(matches!(
        items.last(),
        Some(Err(DatiError::BadRecord { why: RecordProblem::Decrypt, .. }))
    ));
}

#[test]
fn wrong_key_is_a_clear_error() {
    let dir = tempdir().unwrap();
    let (_, path) = write_units(dir.path(), 3);
    let other_key = KeySchedule::new(
        &SystemKey::from_bytes([1; 32]),
        crate::id::RmSystem([77, 123, 89, 201_192]),
        &crate::id::Environment::live(),
        86_400,
    );
    let other_system = KeySchedule::new(
        &SystemKey::from_bytes([0x5A; 32]),
        crate::id::RmSystem([77, 123, 89, 201_193]),
        &crate::id::Environment::live(),
        86_400,
    );
    for wrong in [other_key, other_system] {
        let err = verify_file(&path, &wrong).unwrap_err();
        assert!(matches!(&err, DatiError::WrongKey { path: p, offset: 56 } if p == &path), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("another system") && message.contains(&path.display().to_string())
        );
        assert!(matches!(DatiReader::open(&path, &wrong), Err(DatiError::WrongKey { .. })));
        let cfg = DatiConfig::new(dir.path());
        let opened = DatiWriter::open(cfg, wrong.clone(), InstanceId([1; 16]), &BTreeMap::new());
        assert!(matches!(opened, Err(DatiError::WrongKey { .. })));
        let replay = read_from::<DatiError, _>(dir.path(), &wrong, &BTreeMap::new(), |_| Ok(()));
        assert!(matches!(replay, Err(DatiError::WrongKey { .. })));
    }
}

#[test]
fn renamed_files_are_caught() {
    let dir = tempdir().unwrap();
    let (_, path) = write_units(dir.path(), 1);
    let renamed = dir.path().join("TUBT_ITB85JUYCJS4IQA_0002_20140813.DATI");
    fs::rename(&path, &renamed).unwrap();
    let err = verify_file(&renamed, &keys()).unwrap_err();
    let expected = "TUBT_ITB85JUYCJS4IQA_0001_20140813.DATI".to_string();
    assert!(
        matches!(&err, DatiError::BadHeader { why: HeaderProblem::NameMismatch { expected: e }, .. } if e == &expected),
        "{err}"
    );
    // A copy under a name that is not a DATI name reads fine.
    let copy = dir.path().join("backup.bin");
    fs::copy(&renamed, &copy).unwrap();
    assert_eq!(verify_file(&copy, &keys()).unwrap().records, 1);
}

#[test]
fn read_from_skips_damage_and_reports_it() {
    let dir = tempdir().unwrap();
    let (units, path) = write_units(dir.path(), 6);
    let offsets = record_offsets(&path);
    let mut bytes = fs::read(&path).unwrap();
    bytes[offsets[2] as usize + 9] ^= 4;
    fs::write(&path, &bytes).unwrap();
    let mut got = Vec::new();
    let report = read_from::<DatiError, _>(dir.path(), &keys(), &BTreeMap::new(), |u| {
        got.push(u.seq);
        Ok(())
    })
    .unwrap();
    assert_eq!(got, [1, 2, 4, 5, 6]);
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].offset(), Some(offsets[2]));
    assert_eq!(units.len(), 6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        fuzzing::run(&bytes);
    }

    #[test]
    fn edited_files_keep_their_intact_records(edits in proptest::collection::vec(any::<u8>(), 0..24)) {
        fuzzing::read_edited(&edits);
    }
}
