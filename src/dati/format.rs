//! The bytes of a DATI file: header and record codec (diagram in the `crate::dati` module doc).
//!
//! Pure functions over byte slices. No IO, no policy about files or damage: the reader and the
//! writer decide what a problem means.

use crate::crypto::{Epoch, EpochKey, Nonce, TAG_LEN};
use crate::dati::{HeaderProblem, RecordProblem};
use crate::id::DatabaseId;
use crate::unit::TransferUnit;

/// The first eight bytes of every DATI file.
pub const MAGIC: [u8; 8] = *b"MESHDATI";
/// The format version this build writes.
///
/// Version 2 chains records by the BLAKE3 hash of each record's fixed fields and AEAD tag
/// (`chain_hash`); version 1 hashed the whole body. The tag already commits to the ciphertext
/// under the log key, so the chain binds the same records in the same order, and hashing ~90
/// bytes instead of the whole body took a fifth of a receiving node's CPU off (see
/// docs/PERFORMANCE.md). Files keep the version they were created with: a version 1 file is
/// read, and continued, with the version 1 chain.
pub const FORMAT_VERSION: u8 = 2;
/// The oldest format version this build reads.
pub const OLDEST_READABLE_VERSION: u8 = 1;
/// Length of the file header.
pub const HEADER_LEN: usize = 76;
/// Largest record body: 32 MiB. A length field above it is damage, never an allocation.
pub const MAX_RECORD_BODY: usize = 32 << 20;

/// Header bytes covered by the key check, which follows them.
const KEYED_LEN: usize = 56;
/// Where the key check starts in the header.
pub(crate) const KEY_CHECK_OFFSET: usize = KEYED_LEN;
/// Header bytes covered by the header crc32c.
const CHECKED_LEN: usize = 72;
/// Body bytes before the sealed unit: prev hash, seq, epoch, nonce.
pub(crate) const BODY_FIXED: usize = 32 + 8 + 8 + Nonce::LEN;
/// Smallest body: the fixed part and the tag of an empty plaintext.
pub(crate) const MIN_BODY: usize = BODY_FIXED + TAG_LEN;
/// Length field and its checksum.
pub(crate) const FRAME_HEAD: usize = 8;
/// Bytes of a record besides its body: head and body checksum.
pub(crate) const FRAME_OVERHEAD: usize = FRAME_HEAD + 4;

/// The file header: which origin and file this is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatiHeader {
    /// The origin of every unit in the file.
    pub origin: DatabaseId,
    /// NNNN.
    pub nnnn: u32,
    /// The UTC day the writer's clock claimed at creation, yyyymmdd.
    pub date: u32,
    /// Creation time on the writer's clock, Unix ms.
    pub created_ms: u64,
    /// Random per file: seeds the hash chain, bound into every record's AAD.
    pub file_id: [u8; 16],
    /// The format version of the file (how its records are chained).
    pub version: u8,
}

impl DatiHeader {
    /// A header for a new file.
    pub(crate) fn new(
        origin: DatabaseId,
        nnnn: u32,
        date: u32,
        created_ms: u64,
        file_id: [u8; 16],
    ) -> Self {
        DatiHeader { origin, nnnn, date, created_ms, file_id, version: FORMAT_VERSION }
    }

    /// The header bytes; `header_key` is the static log key.
    pub(crate) fn encode(&self, header_key: &EpochKey) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&MAGIC);
        put(&[self.version]);
        put(self.origin.as_bytes());
        put(&self.nnnn.to_be_bytes());
        put(&self.date.to_be_bytes());
        put(&self.created_ms.to_be_bytes());
        put(&self.file_id);
        let tag = header_key.tag(&out[..KEYED_LEN]);
        out[KEYED_LEN..CHECKED_LEN].copy_from_slice(&tag);
        let crc = crc32c::crc32c(&out[..CHECKED_LEN]);
        out[CHECKED_LEN..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses header bytes (checks magic, version, checksum and origin, not the key).
    pub(crate) fn decode(bytes: &[u8]) -> Result<DatiHeader, HeaderProblem> {
        let mut take = Take(bytes);
        let truncated = || HeaderProblem::Truncated { len: crate::dati::len64(bytes.len()) };
        if take.array::<8>() != Some(MAGIC) {
            return Err(if bytes.len() < MAGIC.len() { truncated() } else { HeaderProblem::Magic });
        }
        let [version] = take.array::<1>().ok_or_else(truncated)?;
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(HeaderProblem::Version(version));
        }
        let (checked, rest) = bytes.split_at_checked(CHECKED_LEN).ok_or_else(truncated)?;
        let crc = Take(rest).u32().ok_or_else(truncated)?;
        if crc32c::crc32c(checked) != crc {
            return Err(HeaderProblem::Checksum);
        }
        let origin = take.array::<{ DatabaseId::LEN }>().ok_or_else(truncated)?;
        let origin = DatabaseId::from_bytes(&origin).map_err(|_| HeaderProblem::Origin)?;
        let nnnn = take.u32().ok_or_else(truncated)?;
        let date = take.u32().ok_or_else(truncated)?;
        let created_ms = take.u64().ok_or_else(truncated)?;
        let file_id = take.array::<16>().ok_or_else(truncated)?;
        Ok(DatiHeader { origin, nnnn, date, created_ms, file_id, version })
    }

    /// Whether the key check of header `bytes` (already decoded) verifies under `header_key`.
    pub(crate) fn key_matches(bytes: &[u8], header_key: &EpochKey) -> bool {
        match (bytes.get(..KEYED_LEN), bytes.get(KEYED_LEN..CHECKED_LEN)) {
            (Some(keyed), Some(tag)) => header_key.verify_tag(keyed, tag),
            _ => false,
        }
    }

    /// The name this file should have.
    pub fn file_name(&self) -> String {
        crate::dati::file_name(&self.origin, self.nnnn, self.date)
    }
}

/// Body length of a record whose unit encodes to `plain_len` bytes.
pub(crate) fn body_len(plain_len: usize) -> usize {
    BODY_FIXED + plain_len + TAG_LEN
}

/// The AAD of a record: binds it to its file, its place in the chain, its seq and its epoch.
fn aad(file_id: &[u8; 16], prev_hash: &[u8; 32], seq: u64, epoch: Epoch) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..16].copy_from_slice(file_id);
    out[16..48].copy_from_slice(prev_hash);
    out[48..56].copy_from_slice(&seq.to_be_bytes());
    out[56..].copy_from_slice(&epoch.0.to_be_bytes());
    out
}

/// The link of the hash chain after a record with `body`, in a file of format `version`: the
/// BLAKE3 hash of the fixed fields (prev hash, seq, epoch, nonce) and the AEAD tag from version
/// 2 on, of the whole body in version 1. `body` is at least [`MIN_BODY`] long.
pub(crate) fn chain_hash(version: u8, body: &[u8]) -> [u8; 32] {
    if version == 1 {
        return *blake3::hash(body).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&body[..BODY_FIXED]);
    hasher.update(&body[body.len() - TAG_LEN..]);
    *hasher.finalize().as_bytes()
}

/// What one record seals, besides the unit.
pub(crate) struct RecordSeal<'a> {
    /// The file's format version (its chain rule).
    pub version: u8,
    pub file_id: &'a [u8; 16],
    pub prev_hash: &'a [u8; 32],
    pub seq: u64,
    pub nonce: Nonce,
    pub key: &'a EpochKey,
}

/// Appends one record holding `plain` (an encoded unit) to `out`. Returns its [`chain_hash`]
/// (the next record's prev hash), or `None`, leaving `out` as it was, when the body
/// would exceed [`MAX_RECORD_BODY`].
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    seal: RecordSeal<'_>,
    plain: &[u8],
) -> Option<[u8; 32]> {
    let body = body_len(plain.len());
    if body > MAX_RECORD_BODY {
        return None;
    }
    let len = u32::try_from(body).ok()?.to_be_bytes();
    let epoch = seal.key.epoch();
    out.reserve(FRAME_OVERHEAD + body);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32c::crc32c(&len).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(seal.prev_hash);
    out.extend_from_slice(&seal.seq.to_be_bytes());
    out.extend_from_slice(&epoch.0.to_be_bytes());
    out.extend_from_slice(&seal.nonce.to_bytes());
    let aad = aad(seal.file_id, seal.prev_hash, seal.seq, epoch);
    seal.key.seal_into(seal.nonce, &aad, plain, out);
    let body = &out[start..];
    let crc = crc32c::crc32c(body);
    let hash = chain_hash(seal.version, body);
    out.extend_from_slice(&crc.to_be_bytes());
    Some(hash)
}

/// Checks a record head (length and its checksum) and returns the body length.
pub(crate) fn frame_len(head: [u8; FRAME_HEAD]) -> Result<usize, RecordProblem> {
    let mut take = Take(&head);
    let len = take.array::<4>().ok_or(RecordProblem::LengthChecksum)?;
    let check = take.u32().ok_or(RecordProblem::LengthChecksum)?;
    if crc32c::crc32c(&len) != check {
        return Err(RecordProblem::LengthChecksum);
    }
    let len = u32::from_be_bytes(len);
    let body = usize::try_from(len).map_err(|_| RecordProblem::TooLong { len })?;
    if body < MIN_BODY {
        return Err(RecordProblem::TooShort { len });
    }
    if body > MAX_RECORD_BODY {
        return Err(RecordProblem::TooLong { len });
    }
    Ok(body)
}

/// Checks the body checksum of a whole record (`frame` = head, body, crc).
pub(crate) fn frame_checksum_ok(frame: &[u8]) -> bool {
    let Some(inner) = frame.get(FRAME_HEAD..) else {
        return false;
    };
    let Some((body, crc)) = inner.split_last_chunk::<4>() else {
        return false;
    };
    crc32c::crc32c(body) == u32::from_be_bytes(*crc)
}

/// The fields of a record body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Body<'a> {
    pub prev_hash: [u8; 32],
    pub seq: u64,
    pub epoch: Epoch,
    pub nonce: Nonce,
    pub sealed: &'a [u8],
}

impl<'a> Body<'a> {
    /// Splits a body into its fields; `None` if it is shorter than [`MIN_BODY`].
    pub(crate) fn parse(body: &'a [u8]) -> Option<Body<'a>> {
        if body.len() < MIN_BODY {
            return None;
        }
        let mut take = Take(body);
        let prev_hash = take.array::<32>()?;
        let seq = take.u64()?;
        let epoch = Epoch(take.u64()?);
        let nonce = Nonce::from_bytes(take.array::<{ Nonce::LEN }>()?);
        Some(Body { prev_hash, seq, epoch, nonce, sealed: take.0 })
    }

    /// Opens and decodes the unit; `key` must be the log key of `self.epoch`.
    pub(crate) fn open(
        &self,
        header: &DatiHeader,
        key: &EpochKey,
    ) -> Result<TransferUnit, RecordProblem> {
        let aad = aad(&header.file_id, &self.prev_hash, self.seq, self.epoch);
        let plain = key.open(self.nonce, &aad, self.sealed).map_err(|_| RecordProblem::Decrypt)?;
        // The unit was validated against the node's payload limit when it was accepted; here
        // only the record limit applies, so a file stays readable if that setting goes down.
        let unit = TransferUnit::decode(&plain, MAX_RECORD_BODY).map_err(RecordProblem::Unit)?;
        if unit.origin != header.origin || unit.seq != self.seq {
            return Err(RecordProblem::UnitMismatch { origin: unit.origin, seq: unit.seq });
        }
        Ok(unit)
    }
}

/// A cursor over untrusted bytes: every read is checked.
struct Take<'a>(&'a [u8]);

impl Take<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeySchedule, Purpose, SystemKey};
    use crate::id::InstanceId;
    use crate::unit::tests::{arb_unit, sample_unit};
    use proptest::prelude::*;

    fn keys() -> KeySchedule {
        KeySchedule::new(
            &SystemKey::from_bytes([7; 32]),
            "1,2,3,4".parse().unwrap(),
            &"live".parse().unwrap(),
            86_400,
        )
    }

    fn header() -> DatiHeader {
        DatiHeader::new(
            "ITB85JUYCJS4IQA".parse().unwrap(),
            8146,
            20140813,
            1_407_888_000_123,
            [0xAB; 16],
        )
    }

    fn record(unit: &TransferUnit, header: &DatiHeader, prev: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
        let key = keys().key(Purpose::Log, Epoch(19_000));
        let mut out = Vec::new();
        let seal = RecordSeal {
            version: header.version,
            file_id: &header.file_id,
            prev_hash: prev,
            seq: unit.seq,
            nonce: Nonce { sender: InstanceId([5; 16]), counter: 9 },
            key: &key,
        };
        let hash = encode_record(&mut out, seal, &unit.encode()).unwrap();
        (out, hash)
    }

    #[test]
    fn header_known_bytes() {
        let key = keys().static_key(Purpose::Log);
        let bytes = header().encode(&key);
        assert_eq!(
            hex::encode(&bytes[..KEYED_LEN]),
            concat!(
                "4d45534844415449",                // MESHDATI
                "02",                              // version
                "49544238354a555943 4a5334495141", // origin
                "00001fd2",                        // 8146
                "0133530d",                        // 20140813
                "00000147ccaa047b",                // created ms
                "abababababababababababababababab",
            )
            .replace(' ', "")
        );
        assert_eq!(DatiHeader::decode(&bytes).unwrap(), header());
        assert!(DatiHeader::key_matches(&bytes, &key));
        let other = KeySchedule::new(
            &SystemKey::from_bytes([8; 32]),
            "1,2,3,4".parse().unwrap(),
            &"live".parse().unwrap(),
            86_400,
        );
        assert!(!DatiHeader::key_matches(&bytes, &other.static_key(Purpose::Log)));
    }

    #[test]
    fn header_problems() {
        let key = keys().static_key(Purpose::Log);
        let bytes = header().encode(&key);
        assert_eq!(DatiHeader::decode(&bytes[..3]), Err(HeaderProblem::Truncated { len: 3 }));
        assert_eq!(DatiHeader::decode(&bytes[..40]), Err(HeaderProblem::Truncated { len: 40 }));
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(DatiHeader::decode(&bad), Err(HeaderProblem::Magic));
        for version in [0, 3, 0xff] {
            let mut bad = bytes;
            bad[8] = version;
            assert_eq!(DatiHeader::decode(&bad), Err(HeaderProblem::Version(version)));
        }
        // Version 1 files are still read.
        let v1 = DatiHeader { version: 1, ..header() };
        assert_eq!(DatiHeader::decode(&v1.encode(&key)).unwrap(), v1);
        for i in 9..HEADER_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x40;
            assert_eq!(DatiHeader::decode(&bad), Err(HeaderProblem::Checksum), "byte {i}");
        }
        let mut bad = bytes;
        bad[9] = b'a';
        let crc = crc32c::crc32c(&bad[..CHECKED_LEN]);
        bad[CHECKED_LEN..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(DatiHeader::decode(&bad), Err(HeaderProblem::Origin));
    }

    #[test]
    fn record_known_layout() {
        let header = header();
        let unit = sample_unit(7, b"sale 9.95");
        let prev = [0x11; 32];
        let (bytes, hash) = record(&unit, &header, &prev);
        let plain = unit.encode();
        let body = body_len(plain.len());
        assert_eq!(bytes.len(), FRAME_OVERHEAD + body);
        assert_eq!(hex::encode(&bytes[..4]), format!("{body:08x}"));
        assert_eq!(frame_len(bytes[..8].try_into().unwrap()), Ok(body));
        assert!(frame_checksum_ok(&bytes));
        assert_eq!(&bytes[8..40], &prev);
        assert_eq!(hex::encode(&bytes[40..56]), "00000000000000070000000000004a38");
        assert_eq!(hex::encode(&bytes[56..80]), format!("{}0000000000000009", "05".repeat(16)));
        // The chain covers the fixed fields and the tag (version 2), or the whole body (1).
        let mut linked = bytes[8..80].to_vec();
        linked.extend_from_slice(&bytes[8 + body - TAG_LEN..8 + body]);
        assert_eq!(hash, *blake3::hash(&linked).as_bytes());
        let v1 = DatiHeader { version: 1, ..header.clone() };
        let (v1_bytes, v1_hash) = record(&unit, &v1, &prev);
        assert_eq!(v1_bytes, bytes, "the record bytes do not depend on the version");
        assert_eq!(v1_hash, *blake3::hash(&bytes[8..8 + body]).as_bytes());
        let parsed = Body::parse(&bytes[8..8 + body]).unwrap();
        let key = keys().key(Purpose::Log, parsed.epoch);
        assert_eq!(parsed.open(&header, &key).unwrap(), unit);
        // Any other file id, prev hash or seq fails authentication.
        let moved = DatiHeader { file_id: [0xAC; 16], ..header.clone() };
        assert_eq!(parsed.open(&moved, &key), Err(RecordProblem::Decrypt));
        let relinked = Body { prev_hash: [0x12; 32], ..parsed };
        assert_eq!(relinked.open(&header, &key), Err(RecordProblem::Decrypt));
        let reseq = Body { seq: 8, ..parsed };
        assert_eq!(reseq.open(&header, &key), Err(RecordProblem::Decrypt));
        let other_origin = DatiHeader { origin: "AAAAAAAAAAAAAAA".parse().unwrap(), ..header };
        assert!(matches!(
            parsed.open(&other_origin, &key),
            Err(RecordProblem::UnitMismatch { seq: 7, .. })
        ));
    }

    #[test]
    fn frame_len_limits() {
        let head = |len: u32| {
            let mut h = [0u8; 8];
            h[..4].copy_from_slice(&len.to_be_bytes());
            h[4..].copy_from_slice(&crc32c::crc32c(&len.to_be_bytes()).to_be_bytes());
            h
        };
        assert_eq!(frame_len([0; 8]), Err(RecordProblem::LengthChecksum));
        assert_eq!(frame_len(head(87)), Err(RecordProblem::TooShort { len: 87 }));
        assert_eq!(frame_len(head(88)), Ok(88));
        assert_eq!(frame_len(head(32 << 20)), Ok(32 << 20));
        assert_eq!(
            frame_len(head((32 << 20) + 1)),
            Err(RecordProblem::TooLong { len: (32 << 20) + 1 })
        );
        assert_eq!(frame_len(head(u32::MAX)), Err(RecordProblem::TooLong { len: u32::MAX }));
    }

    #[test]
    fn oversized_unit_is_refused() {
        let header = header();
        let key = keys().key(Purpose::Log, Epoch(1));
        let mut out = vec![1, 2, 3];
        let seal = RecordSeal {
            version: FORMAT_VERSION,
            file_id: &header.file_id,
            prev_hash: &[0; 32],
            seq: 1,
            nonce: Nonce { sender: InstanceId([5; 16]), counter: 1 },
            key: &key,
        };
        assert_eq!(encode_record(&mut out, seal, &vec![0; MAX_RECORD_BODY]), None);
        assert_eq!(out, [1, 2, 3]);
    }

    proptest! {
        #[test]
        fn record_round_trip_and_len(unit in arb_unit(), prev in any::<[u8; 32]>()) {
            let header = DatiHeader { origin: unit.origin, ..header() };
            let (bytes, _) = record(&unit, &header, &prev);
            prop_assert_eq!(bytes.len(), FRAME_OVERHEAD + body_len(unit.encode().len()));
            let body = frame_len(bytes[..8].try_into().unwrap()).unwrap();
            prop_assert!(frame_checksum_ok(&bytes));
            let parsed = Body::parse(&bytes[8..8 + body]).unwrap();
            prop_assert_eq!(parsed.prev_hash, prev);
            let key = keys().key(Purpose::Log, parsed.epoch);
            prop_assert_eq!(parsed.open(&header, &key).unwrap(), unit);
        }

        #[test]
        fn header_round_trip(nnnn in any::<u32>(), date in any::<u32>(), created in any::<u64>(), id in any::<[u8; 16]>()) {
            let h = DatiHeader { nnnn, date, created_ms: created, file_id: id, ..header() };
            prop_assert_eq!(DatiHeader::decode(&h.encode(&keys().static_key(Purpose::Log))).unwrap(), h);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = DatiHeader::decode(&bytes);
            if let Some(head) = bytes.first_chunk::<8>() {
                let _ = frame_len(*head);
            }
            let _ = frame_checksum_ok(&bytes);
            if let Some(body) = Body::parse(&bytes) {
                let key = keys().key(Purpose::Log, body.epoch);
                let _ = body.open(&header(), &key);
            }
        }
    }
}
