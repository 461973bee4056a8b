//! Transfer units: the replicated record (seed: TUBT business transaction, TUEV event, TUST
//! status) and its byte encoding.
//!
//! A unit is named in the mesh by `(origin, seq)` and as a business record by its physkey. The
//! encoding is one format-version byte followed by postcard; decoding checks the version, the
//! payload limit and that nothing trails. This module does not encrypt (see `crate::crypto`)
//! and does not frame (see `crate::wire`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::{DatabaseId, Physkey};

/// Default payload limit: 1 MiB (configurable in `meshnode.toml`, `payload_limit`).
pub const DEFAULT_PAYLOAD_LIMIT: usize = 1 << 20;

/// The unit encoding version written as the first byte of a unit without a sensitive part.
pub const UNIT_FORMAT_VERSION: u8 = 1;

/// The version byte of a unit with a sensitive part: version 1's bytes, then the sensitive part
/// as one more byte string. Units without one keep version 1, so nodes of an older build keep
/// taking every ordinary unit; only the (rare) sensitive ones need this build.
pub const UNIT_FORMAT_VERSION_SENSITIVE: u8 = 2;

/// Largest sensitive part (seed: passwords): 4 KiB. Sensitive parts travel over relays only
/// under one-time pad material, which is finite; a large secret belongs in the payload.
pub const MAX_SENSITIVE_BYTES: usize = 4096;

/// Which kind of transfer unit (seed "Packet Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum UnitKind {
    /// Business transaction: a sale, a customer edit, a label-print request.
    Tubt,
    /// Event: logging of things that happened.
    Tuev,
    /// Status: support and monitoring.
    Tust,
}

impl UnitKind {
    /// The seed's four-letter name.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Tubt => "TUBT",
            UnitKind::Tuev => "TUEV",
            UnitKind::Tust => "TUST",
        }
    }
}

impl fmt::Display for UnitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown unit kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown unit kind {0:?}: expected TUBT, TUEV or TUST")]
pub struct UnitKindError(pub String);

impl FromStr for UnitKind {
    type Err = UnitKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TUBT" => Ok(UnitKind::Tubt),
            "TUEV" => Ok(UnitKind::Tuev),
            "TUST" => Ok(UnitKind::Tust),
            _ => Err(UnitKindError(s.to_string())),
        }
    }
}

/// How soon a unit must travel. Seed: urgent "is only used ... for truely urgent data", where a
/// customer or staff member is waiting; it is not a priority scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Urgency {
    /// A customer or staff member is waiting. Sent first.
    Urgent,
    /// The default.
    Normal,
    /// Bulk and low priority: may wait for idle links or a USB stick.
    Background,
}

impl Urgency {
    /// Lowercase name, as in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Urgent => "urgent",
            Urgency::Normal => "normal",
            Urgency::Background => "background",
        }
    }
}

impl fmt::Display for Urgency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TUBT file scopes of the seed (`TUBT.FileAll`, `FileUp`, `FileDown`, `FileAcross`): which
/// extra files a business transaction is placed in. A small bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileScopes(u8);

impl FileScopes {
    /// No extra file.
    pub const NONE: FileScopes = FileScopes(0);
    /// `TUBT.FileAll`.
    pub const ALL: FileScopes = FileScopes(1);
    /// `TUBT.FileUp`: towards head office.
    pub const UP: FileScopes = FileScopes(2);
    /// `TUBT.FileDown`: towards stores and lanes.
    pub const DOWN: FileScopes = FileScopes(4);
    /// `TUBT.FileAcross`: between stores.
    pub const ACROSS: FileScopes = FileScopes(8);
    const KNOWN: u8 = 0x0f;

    /// The union of two sets.
    pub fn union(self, other: FileScopes) -> FileScopes {
        FileScopes(self.0 | other.0)
    }

    /// Whether every scope of `other` is in `self`.
    pub fn contains(self, other: FileScopes) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scope names, for JSON output.
    pub fn names(self) -> Vec<&'static str> {
        [(Self::ALL, "all"), (Self::UP, "up"), (Self::DOWN, "down"), (Self::ACROSS, "across")]
            .into_iter()
            .filter(|(s, _)| self.contains(*s))
            .map(|(_, n)| n)
            .collect()
    }
}

/// The replicated record.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferUnit {
    /// TUBT, TUEV or TUST.
    pub kind: UnitKind,
    /// The business record key.
    pub physkey: Physkey,
    /// The dbid where the unit was written.
    pub origin: DatabaseId,
    /// Sequence number at the origin: 1, 2, 3, ... with no gaps and no reuse.
    pub seq: u64,
    /// Creation time on the origin's clock, milliseconds since the Unix epoch (may be wrong:
    /// it is what that clock claimed).
    pub created_ms: u64,
    /// How soon it must travel.
    pub urgency: Urgency,
    /// The TUBT file scopes.
    pub scopes: FileScopes,
    /// Opaque application bytes.
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
    /// Highly sensitive bytes (seed: passwords), empty for almost every unit. They never go into
    /// a multicast datagram, and over a relay only under a one-time pad
    /// ([`crate::proto::pads`]); encoded after the other fields, with version byte
    /// [`UNIT_FORMAT_VERSION_SENSITIVE`].
    #[serde(skip)]
    pub sensitive: Vec<u8>,
}

impl fmt::Debug for TransferUnit {
    /// Everything but the sensitive part, of which only the length shows: a `?unit` in a log
    /// line must not leak a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferUnit")
            .field("kind", &self.kind)
            .field("physkey", &self.physkey)
            .field("origin", &self.origin)
            .field("seq", &self.seq)
            .field("created_ms", &self.created_ms)
            .field("urgency", &self.urgency)
            .field("scopes", &self.scopes)
            .field("payload", &self.payload)
            .field("sensitive_len", &self.sensitive.len())
            .finish()
    }
}

/// Why bytes are not a transfer unit, or a unit is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnitError {
    /// Empty input.
    #[error("empty unit encoding")]
    Empty,
    /// A newer or unknown encoding version.
    #[error("unit format version {0} is not supported (this build reads versions {UNIT_FORMAT_VERSION} and {UNIT_FORMAT_VERSION_SENSITIVE}); upgrade meshnode")]
    Version(u8),
    /// The bytes do not decode.
    #[error("malformed unit encoding: {0}")]
    Malformed(String),
    /// Bytes after the unit.
    #[error("{0} unexpected bytes after the unit")]
    Trailing(usize),
    /// Payload over the limit.
    #[error("payload of {len} bytes is over the limit of {limit} bytes; split it, or raise payload_limit in meshnode.toml on every node")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Sequence numbers start at 1.
    /// Sensitive part over [`MAX_SENSITIVE_BYTES`].
    #[error("sensitive part of {0} bytes is over the limit of {MAX_SENSITIVE_BYTES} bytes; keep only the secret itself in it (a password, a key) and the rest in the payload")]
    SensitiveTooLarge(usize),
    /// Unit seq 0.
    #[error("unit seq 0 is not valid (sequence numbers start at 1)")]
    ZeroSeq,
    /// Unknown bits in the scope set.
    #[error("unknown TUBT file scope bits {0:#x}")]
    Scopes(u8),
}

impl TransferUnit {
    /// Encodes with the version byte: version 1 without a sensitive part, version 2 with one.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        if self.sensitive.is_empty() {
            out.push(UNIT_FORMAT_VERSION);
            // Serializing plain data into a Vec cannot fail.
            postcard::to_io(self, &mut out).expect("postcard into Vec");
        } else {
            out.push(UNIT_FORMAT_VERSION_SENSITIVE);
            postcard::to_io(self, &mut out).expect("postcard into Vec");
            postcard::to_io(&Bytes(&self.sensitive), &mut out).expect("postcard into Vec");
        }
        out
    }

    /// The version 1 encoding of this unit without its sensitive part: what a relay link
    /// carries in the clear next to the padded sensitive part.
    pub fn encode_without_sensitive(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.push(UNIT_FORMAT_VERSION);
        postcard::to_io(self, &mut out).expect("postcard into Vec");
        out
    }

    /// An upper bound on the encoded length, for buffer sizing.
    pub fn encoded_len_hint(&self) -> usize {
        let sensitive = if self.sensitive.is_empty() { 0 } else { 5 + self.sensitive.len() };
        1 + 1 + 32 + 15 + 10 + 10 + 1 + 1 + 5 + self.payload.len() + sensitive
    }

    /// Decodes and validates, refusing payloads over `payload_limit` and trailing bytes.
    pub fn decode(bytes: &[u8], payload_limit: usize) -> Result<TransferUnit, UnitError> {
        let (&version, body) = bytes.split_first().ok_or(UnitError::Empty)?;
        if version != UNIT_FORMAT_VERSION && version != UNIT_FORMAT_VERSION_SENSITIVE {
            return Err(UnitError::Version(version));
        }
        let malformed = |e: postcard::Error| UnitError::Malformed(e.to_string());
        let (mut unit, mut rest): (TransferUnit, &[u8]) =
            postcard::take_from_bytes(body).map_err(malformed)?;
        if version == UNIT_FORMAT_VERSION_SENSITIVE {
            let (OwnedBytes(sensitive), after): (OwnedBytes, &[u8]) =
                postcard::take_from_bytes(rest).map_err(malformed)?;
            if sensitive.is_empty() {
                // One encoding per unit: an empty sensitive part is written as version 1.
                return Err(UnitError::Malformed("version 2 with an empty sensitive part".into()));
            }
            unit.sensitive = sensitive;
            rest = after;
        }
        if !rest.is_empty() {
            return Err(UnitError::Trailing(rest.len()));
        }
        unit.validate(payload_limit)?;
        Ok(unit)
    }

    /// Checks the invariants every accepted unit satisfies.
    pub fn validate(&self, payload_limit: usize) -> Result<(), UnitError> {
        if self.payload.len() > payload_limit {
            return Err(UnitError::PayloadTooLarge {
                len: self.payload.len(),
                limit: payload_limit,
            });
        }
        if self.sensitive.len() > MAX_SENSITIVE_BYTES {
            return Err(UnitError::SensitiveTooLarge(self.sensitive.len()));
        }
        if self.seq == 0 {
            return Err(UnitError::ZeroSeq);
        }
        if self.scopes.0 & !FileScopes::KNOWN != 0 {
            return Err(UnitError::Scopes(self.scopes.0));
        }
        Ok(())
    }
}

/// A byte string borrowed for encoding.
#[derive(Serialize)]
struct Bytes<'a>(#[serde(with = "serde_bytes_compat")] &'a [u8]);

/// A byte string owned after decoding.
#[derive(Deserialize)]
struct OwnedBytes(#[serde(with = "serde_bytes_compat")] Vec<u8>);

/// Serde helper so the payload is encoded as one length-prefixed byte string rather than a
/// sequence of integers (postcard writes both compactly, but `serialize_bytes` is one copy and
/// the decoder checks the length against the remaining input before allocating).
pub(crate) mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A strategy for arbitrary valid units, shared with other modules' tests.
    pub(crate) fn arb_unit() -> impl Strategy<Value = TransferUnit> {
        (
            prop_oneof![Just(UnitKind::Tubt), Just(UnitKind::Tuev), Just(UnitKind::Tust)],
            proptest::array::uniform15(0usize..36),
            1u64..u64::MAX,
            any::<u64>(),
            prop_oneof![Just(Urgency::Urgent), Just(Urgency::Normal), Just(Urgency::Background)],
            0u8..16,
            (
                proptest::collection::vec(any::<u8>(), 0..600),
                prop_oneof![
                    3 => Just(Vec::new()),
                    1 => proptest::collection::vec(any::<u8>(), 1..64),
                ],
            ),
            proptest::array::uniform32(33u8..127),
        )
            .prop_map(
                |(kind, dbid, seq, created_ms, urgency, scopes, (payload, sensitive), pk)| {
                    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                    let dbid: Vec<u8> = dbid.iter().map(|&i| alphabet[i]).collect();
                    TransferUnit {
                        kind,
                        physkey: Physkey::from_bytes(&pk).unwrap(),
                        origin: DatabaseId::from_bytes(&dbid).unwrap(),
                        seq,
                        created_ms,
                        urgency,
                        scopes: FileScopes(scopes),
                        payload,
                        sensitive,
                    }
                },
            )
    }

    pub(crate) fn sample_unit(seq: u64, payload: &[u8]) -> TransferUnit {
        let origin: DatabaseId = "ITB85JUYCJS4IQA".parse().unwrap();
        TransferUnit {
            kind: UnitKind::Tubt,
            physkey: Physkey::generate(1_700_000_000_000, &origin, seq).unwrap(),
            origin,
            seq,
            created_ms: 1_700_000_000_000,
            urgency: Urgency::Normal,
            scopes: FileScopes::NONE,
            payload: payload.to_vec(),
            sensitive: Vec::new(),
        }
    }

    #[test]
    fn known_bytes() {
        let unit = sample_unit(1, b"sale 9.95");
        let bytes = unit.encode();
        // version, kind, physkey(32), origin(15), seq varint, created varint, urgency, scopes,
        // payload length + bytes.
        assert_eq!(bytes[0], UNIT_FORMAT_VERSION);
        assert_eq!(bytes[1], 0); // Tubt
        assert_eq!(&bytes[2..34], unit.physkey.as_bytes());
        assert_eq!(&bytes[34..49], b"ITB85JUYCJS4IQA");
        assert_eq!(bytes[49], 1); // seq
        assert_eq!(hex::encode(&bytes[50..56]), "80d095ffbc31"); // created_ms varint
        assert_eq!(&bytes[56..59], &[1, 0, 9]); // Normal, no scopes, 9 bytes
        assert_eq!(&bytes[59..], b"sale 9.95");
        assert!(bytes.len() <= unit.encoded_len_hint());
    }

    #[test]
    fn a_sensitive_part_makes_version_2_and_nothing_else_changes() {
        let plain = sample_unit(1, b"customer 7");
        let mut secret = plain.clone();
        secret.sensitive = b"hunter2".to_vec();
        let v1 = plain.encode();
        let v2 = secret.encode();
        assert_eq!(v2[0], UNIT_FORMAT_VERSION_SENSITIVE);
        assert_eq!(&v2[1..v1.len()], &v1[1..], "version 1's bytes, then the sensitive part");
        assert_eq!(&v2[v1.len()..], b"\x07hunter2");
        assert_eq!(secret.encode_without_sensitive(), v1);
        assert_eq!(TransferUnit::decode(&v2, 1000).unwrap(), secret);
        // One encoding per unit: version 2 must carry a sensitive part.
        let mut empty = v1.clone();
        empty[0] = UNIT_FORMAT_VERSION_SENSITIVE;
        empty.push(0);
        assert!(matches!(TransferUnit::decode(&empty, 1000), Err(UnitError::Malformed(_))));
        secret.sensitive = vec![1; MAX_SENSITIVE_BYTES + 1];
        assert_eq!(
            TransferUnit::decode(&secret.encode(), 1000),
            Err(UnitError::SensitiveTooLarge(MAX_SENSITIVE_BYTES + 1))
        );
    }

    #[test]
    fn rejects_bad_input() {
        let unit = sample_unit(1, &[0u8; 100]);
        let bytes = unit.encode();
        assert_eq!(TransferUnit::decode(&[], 1000), Err(UnitError::Empty));
        assert_eq!(TransferUnit::decode(&[9, 0], 1000), Err(UnitError::Version(9)));
        assert!(matches!(TransferUnit::decode(&bytes[..50], 1000), Err(UnitError::Malformed(_))));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(TransferUnit::decode(&long, 1000), Err(UnitError::Trailing(1)));
        assert_eq!(
            TransferUnit::decode(&bytes, 99),
            Err(UnitError::PayloadTooLarge { len: 100, limit: 99 })
        );
        let zero = TransferUnit { seq: 0, ..unit };
        assert_eq!(TransferUnit::decode(&zero.encode(), 1000), Err(UnitError::ZeroSeq));
    }

    proptest! {
        #[test]
        fn round_trip(unit in arb_unit()) {
            let bytes = unit.encode();
            prop_assert!(bytes.len() <= unit.encoded_len_hint());
            prop_assert_eq!(TransferUnit::decode(&bytes, DEFAULT_PAYLOAD_LIMIT).unwrap(), unit);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TransferUnit::decode(&bytes, DEFAULT_PAYLOAD_LIMIT);
        }
    }
}
