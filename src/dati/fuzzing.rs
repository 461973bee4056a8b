//! Entry points for the fuzz target `fuzz/fuzz_targets/dati_read.rs` (built with the `fuzzing`
//! feature, and in tests). Each one reads bytes with [`DatiReader`] and panics only when an
//! invariant of the reader breaks.
//!
//! Raw bytes rarely get past the header's key check (a keyed BLAKE3 tag), so [`read_records`]
//! puts a valid header in front of them and [`read_edited`] damages a valid file instead.

use std::sync::OnceLock;

use crate::crypto::{Epoch, KeySchedule, Nonce, Purpose, SystemKey};
use crate::dati::format::{self, DatiHeader, RecordSeal, HEADER_LEN};
use crate::dati::DatiReader;
use crate::id::{DatabaseId, InstanceId, Physkey};
use crate::unit::{FileScopes, TransferUnit, UnitKind, Urgency};

/// The key schedule of the fuzz files.
pub fn test_keys() -> KeySchedule {
    KeySchedule::new(
        &SystemKey::from_bytes([0x5A; 32]),
        crate::id::RmSystem([77, 123, 89, 201_192]),
        &crate::id::Environment::live(),
        86_400,
    )
}

/// Everything below, in turn.
pub fn run(data: &[u8]) {
    read_bytes(data);
    read_records(data);
    read_edited(data);
}

/// Reads `data` as a whole file.
pub fn read_bytes(data: &[u8]) {
    if let Ok(reader) = DatiReader::from_bytes(data, &fixture().keys) {
        reader.for_each(drop);
    }
}

/// Reads a valid header followed by `data` as the records.
pub fn read_records(data: &[u8]) {
    let fixture = fixture();
    let mut bytes = fixture.image.get(..HEADER_LEN).unwrap_or_default().to_vec();
    bytes.extend_from_slice(data);
    let reader = DatiReader::from_bytes(&bytes, &fixture.keys).expect("valid header");
    for record in reader.flatten() {
        assert!(fixture.units.contains(&record.unit), "a forged record was accepted");
    }
}

/// Applies `data` as edits (3 bytes each: position high, position low, operation) to a valid
/// file, then reads it. Checks that every record wholly before the first edit reads back as
/// written, and that every record read is one that was written.
pub fn read_edited(data: &[u8]) {
    let fixture = fixture();
    let mut bytes = fixture.image.clone();
    let mut first_edit = usize::MAX;
    for edit in data.chunks_exact(3).take(64) {
        let &[high, low, op] = edit else { continue };
        let pos = usize::from(u16::from_be_bytes([high, low])) % (bytes.len() + 1);
        first_edit = first_edit.min(pos);
        match op & 3 {
            0 if pos < bytes.len() => bytes[pos] ^= op | 0x80,
            1 => bytes.truncate(pos),
            2 => bytes.insert(pos, op),
            3 if pos < bytes.len() => {
                bytes.remove(pos);
            }
            _ => {}
        }
    }
    let reader = match DatiReader::from_bytes(&bytes, &fixture.keys) {
        Ok(reader) => reader,
        Err(e) => {
            assert!(first_edit < HEADER_LEN, "header unreadable after edits at {first_edit}: {e}");
            return;
        }
    };
    // Errors may name the record holding the first edit, never an earlier one.
    let intact_end = fixture
        .offsets
        .iter()
        .map(|&(_, end)| end)
        .take_while(|&end| end <= first_edit)
        .last()
        .unwrap_or(HEADER_LEN);
    for item in reader {
        match item {
            Ok(record) => assert!(fixture.units.contains(&record.unit), "forged record"),
            Err(e) => {
                let offset = e.offset().unwrap_or(0);
                let offset = usize::try_from(offset).unwrap_or(usize::MAX);
                assert!(offset >= intact_end, "error before the first edit ({first_edit}): {e}");
            }
        }
    }
    // Records ending before the first edit must all be readable, from a fresh reader.
    let mut reader = DatiReader::from_bytes(&bytes, &fixture.keys).expect("opened above");
    for (&(start, end), unit) in fixture.offsets.iter().zip(&fixture.units) {
        if end > first_edit {
            break;
        }
        let record = reader.next().expect("record before the edits").expect("intact record");
        assert_eq!((record.offset, &record.unit), (start, unit));
    }
}

/// The valid file the edits start from.
struct Fixture {
    keys: KeySchedule,
    image: Vec<u8>,
    units: Vec<TransferUnit>,
    /// (start, end) of each record.
    offsets: Vec<(u64, usize)>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys = test_keys();
        let origin: DatabaseId = "ITB85JUYCJS4IQA".parse().expect("valid dbid");
        let units: Vec<TransferUnit> = (1..=6u8)
            .map(|i| TransferUnit {
                kind: UnitKind::Tubt,
                physkey: Physkey::generate(1_700_000_000_000, &origin, u64::from(i))
                    .expect("small seq"),
                origin,
                seq: u64::from(i),
                created_ms: 1_700_000_000_000,
                urgency: Urgency::Normal,
                scopes: FileScopes::NONE,
                payload: vec![i; usize::from(i) * 7],
                sensitive: Vec::new(),
            })
            .collect();
        let (image, offsets) = image(&keys, origin, &units, FIXTURE_FILE_ID);
        Fixture { keys, image, units, offsets }
    })
}

/// The file id of the fixture. Seed corpora must use another one: records sealed for this id
/// with other units would rightly read as genuine and trip the forgery check.
const FIXTURE_FILE_ID: [u8; 16] = [3; 16];

/// A file image of `units` (all of `origin`), and the (start, end) of each record.
pub(crate) fn image(
    keys: &KeySchedule,
    origin: DatabaseId,
    units: &[TransferUnit],
    file_id: [u8; 16],
) -> (Vec<u8>, Vec<(u64, usize)>) {
    let header = DatiHeader::new(origin, 1, 20231114, 1_700_000_000_000, file_id);
    let mut out = header.encode(&keys.static_key(Purpose::Log)).to_vec();
    let mut prev = *blake3::hash(&out).as_bytes();
    let key = keys.key(Purpose::Log, Epoch(19_675));
    let mut offsets = Vec::new();
    for (counter, unit) in (1..).zip(units) {
        let start = out.len();
        let seal = RecordSeal {
            version: header.version,
            file_id: &header.file_id,
            prev_hash: &prev,
            seq: unit.seq,
            nonce: Nonce { sender: InstanceId([9; 16]), counter },
            key: &key,
        };
        prev = format::encode_record(&mut out, seal, &unit.encode()).expect("small unit");
        offsets.push((crate::dati::len64(start), out.len()));
    }
    (out, offsets)
}
