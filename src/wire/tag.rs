//! Packet tags: the four ASCII bytes that open every frame and datagram.
//!
//! Seed `002_...txt`, "Packet Types": "Packets are defined using 4 bytes in the header. The list
//! may change without warning and you should not block by packet type". So an unknown tag is a
//! value ([`Tag::Unknown`]), never an error: the receiver skips the packet and counts it.

use std::fmt;

use crate::unit::UnitKind;

/// A packet type. Build one from received bytes with [`Tag::from_bytes`], which never yields
/// `Unknown` for a tag listed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Tag {
    /// `IDQY` identification query: "Who is out there?". Discovery, visible by design.
    Idqy,
    /// `IDRP` identification response: "I am here, I am...". Discovery, visible by design.
    Idrp,
    /// `TUEV` transfer unit, event: logging of things that happened.
    Tuev,
    /// `TUBT` transfer unit, business transaction: a sale, a product edit.
    Tubt,
    /// `TUST` transfer unit, status: support and monitoring.
    Tust,
    /// `GNAP` generic header: "not strictly a packet, used to indicate switching protocol".
    Gnap,
    /// `QERQ` query exchange request: "Can someone, do something for me?".
    Qerq,
    /// `QERP` query exchange reply: replies to QERQ.
    Qerp,
    /// `QERD` query exchange request done: request done or cancelled.
    Qerd,
    /// `QERS` query exchange strong lock: request to strong lock a request.
    Qers,
    /// `QERW` query exchange weak lock: weakly lock a request.
    Qerw,
    /// `TUBS` transfer unit background setup: link control and data exchange protocols.
    Tubs,
    /// `TUDA` transfer unit, data: background synchronisation and backup of data.
    Tuda,
    /// Any other four bytes, from a newer or foreign node: skipped and counted, never fatal.
    Unknown([u8; 4]),
}

impl Tag {
    /// Every known tag, in the order of the seed's table (TUST after TUBT).
    pub const KNOWN: [Tag; 13] = [
        Tag::Idqy,
        Tag::Idrp,
        Tag::Tuev,
        Tag::Tubt,
        Tag::Tust,
        Tag::Gnap,
        Tag::Qerq,
        Tag::Qerp,
        Tag::Qerd,
        Tag::Qers,
        Tag::Qerw,
        Tag::Tubs,
        Tag::Tuda,
    ];

    /// Encoded length.
    pub const LEN: usize = 4;

    /// The tag of four received bytes; any unlisted value is [`Tag::Unknown`].
    pub fn from_bytes(bytes: [u8; 4]) -> Tag {
        match &bytes {
            b"IDQY" => Tag::Idqy,
            b"IDRP" => Tag::Idrp,
            b"TUEV" => Tag::Tuev,
            b"TUBT" => Tag::Tubt,
            b"TUST" => Tag::Tust,
            b"GNAP" => Tag::Gnap,
            b"QERQ" => Tag::Qerq,
            b"QERP" => Tag::Qerp,
            b"QERD" => Tag::Qerd,
            b"QERS" => Tag::Qers,
            b"QERW" => Tag::Qerw,
            b"TUBS" => Tag::Tubs,
            b"TUDA" => Tag::Tuda,
            _ => Tag::Unknown(bytes),
        }
    }

    /// The four bytes on the wire.
    pub fn as_bytes(&self) -> &[u8; 4] {
        match self {
            Tag::Idqy => b"IDQY",
            Tag::Idrp => b"IDRP",
            Tag::Tuev => b"TUEV",
            Tag::Tubt => b"TUBT",
            Tag::Tust => b"TUST",
            Tag::Gnap => b"GNAP",
            Tag::Qerq => b"QERQ",
            Tag::Qerp => b"QERP",
            Tag::Qerd => b"QERD",
            Tag::Qers => b"QERS",
            Tag::Qerw => b"QERW",
            Tag::Tubs => b"TUBS",
            Tag::Tuda => b"TUDA",
            Tag::Unknown(bytes) => bytes,
        }
    }

    /// Whether this is one of the tags listed in the seed.
    pub fn is_known(&self) -> bool {
        !matches!(self, Tag::Unknown(_))
    }

    /// Whether this is a discovery tag (IDQY, IDRP): sent visible with a keyed tag rather than
    /// sealed (seed: "The payload data is encrypted, except where explicitly required not to
    /// be, such as the discovery protocol").
    pub fn is_discovery(&self) -> bool {
        matches!(self, Tag::Idqy | Tag::Idrp)
    }

    /// The transfer unit kind this tag carries, if it is TUBT, TUEV or TUST.
    pub fn unit_kind(&self) -> Option<UnitKind> {
        match self {
            Tag::Tubt => Some(UnitKind::Tubt),
            Tag::Tuev => Some(UnitKind::Tuev),
            Tag::Tust => Some(UnitKind::Tust),
            _ => None,
        }
    }
}

impl From<UnitKind> for Tag {
    fn from(kind: UnitKind) -> Tag {
        match kind {
            UnitKind::Tubt => Tag::Tubt,
            UnitKind::Tuev => Tag::Tuev,
            UnitKind::Tust => Tag::Tust,
        }
    }
}

impl fmt::Display for Tag {
    /// Printable ASCII tags as text (`TUBT`); other bytes as hex (`0x00ff1234`), so that a
    /// hostile tag cannot put control characters into a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.as_bytes();
        if bytes.iter().all(|b| b.is_ascii_graphic()) {
            bytes.iter().try_for_each(|&b| fmt::Write::write_char(f, char::from(b)))
        } else {
            write!(f, "0x{}", hex::encode(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_tags_round_trip_and_display() {
        for tag in Tag::KNOWN {
            assert!(tag.is_known());
            assert_eq!(Tag::from_bytes(*tag.as_bytes()), tag);
            assert_eq!(tag.to_string().as_bytes(), tag.as_bytes());
        }
        assert_eq!(Tag::from_bytes(*b"TUBT"), Tag::Tubt);
        assert_eq!(Tag::Idqy.to_string(), "IDQY");
        assert_eq!(Tag::from_bytes(*b"ZZZZ"), Tag::Unknown(*b"ZZZZ"));
        assert_eq!(Tag::Unknown(*b"ZZZZ").to_string(), "ZZZZ");
        assert_eq!(Tag::Unknown([0, 0xff, 0x12, 0x34]).to_string(), "0x00ff1234");
        assert_eq!(Tag::Unknown(*b"AB\nC").to_string(), "0x41420a43");
        assert!(!Tag::Unknown(*b"ZZZZ").is_known());
    }

    #[test]
    fn discovery_and_unit_kinds() {
        let discovery: Vec<Tag> = Tag::KNOWN.into_iter().filter(Tag::is_discovery).collect();
        assert_eq!(discovery, [Tag::Idqy, Tag::Idrp]);
        for kind in [UnitKind::Tubt, UnitKind::Tuev, UnitKind::Tust] {
            let tag = Tag::from(kind);
            assert_eq!(tag.unit_kind(), Some(kind));
            assert_eq!(tag.to_string(), kind.as_str());
        }
        assert_eq!(Tag::Gnap.unit_kind(), None);
    }

    proptest! {
        #[test]
        fn from_bytes_as_bytes_round_trip(bytes in any::<[u8; 4]>()) {
            let tag = Tag::from_bytes(bytes);
            prop_assert_eq!(*tag.as_bytes(), bytes);
            prop_assert_eq!(tag.is_known(), Tag::KNOWN.contains(&tag));
        }
    }
}
