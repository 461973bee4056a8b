//! The protocol's messages: the plaintext inside sealed datagrams and link frames, and the
//! visible body of discovery packets. Encoded with postcard.
//!
//! | tag  | message | carried by |
//! | ---- | ------- | ---------- |
//! | IDQY | [`Announce`] with `reply: false`: who is out there? | discovery group, tagged |
//! | IDRP | [`Announce`] with `reply: true`: I am here | unicast to the asker, tagged |
//! | TUBS | [`Message::Hello`], [`Message::Have`], [`Message::Want`], [`Message::Resync`], [`Message::Offer`], [`Message::Compared`]: link control and anti-entropy | link frames |
//! | TUBT | [`Message::Units`] pushed eagerly | environment group or link frames |
//! | TUDA | [`Message::Units`] answering a `Want` (background synchronisation) | link frames |
//!
//! Units travel as their own encoding ([`TransferUnit::encode`]), so the format version of a
//! unit stays with the unit.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::{DatabaseId, DeviceId, InstanceId, Physkey};
use crate::proto::peers::Role;
use crate::unit::{TransferUnit, UnitError};

/// The visible body of IDQY and IDRP (seed: "IDQY Identification Query. Who is out there?",
/// "IDRP Identification Response I am here, I am..."). RmSystem and environment are in the
/// visible header; the keyed tag proves the sender holds the system key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The sender's dbid.
    pub dbid: DatabaseId,
    /// The sender's machine.
    pub device: DeviceId,
    /// The sender's process.
    pub instance: InstanceId,
    /// The sender's role.
    pub role: Role,
    /// Where the sender accepts links.
    pub addrs: Vec<SocketAddr>,
    /// False for a query (IDQY), true for a response (IDRP).
    pub reply: bool,
}

/// An origin named in a [`Message::Have`]: by its dbid the first time on a link (which gives it
/// the next index of the sender's table for that link), by that index afterwards. A dbid is 15
/// bytes; the index is usually one or two, and a `Have` names every origin that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OriginRef {
    /// Index in the sender's table of this link.
    Known(u32),
    /// First mention: the next index is this dbid.
    New(DatabaseId),
}

/// One origin's state in a [`Message::Have`]: the seqs the sender holds (all of
/// `1..=contiguous` plus the ranges beyond the first gap) and how many of them, from 1, some
/// main server holds as far as the sender knows (seed 001: only what a main server holds is
/// safe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveEntry {
    /// The origin.
    pub origin: OriginRef,
    /// Every seq in `1..=contiguous` is held.
    pub contiguous: u64,
    /// Inclusive ranges held beyond the first gap, ascending.
    pub beyond: Vec<(u64, u64)>,
    /// Seqs `1..=safe` are held by a main server.
    pub safe: u64,
}

/// A sealed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First frame on a link, both ways: who we are.
    Hello {
        /// Sender's dbid.
        dbid: DatabaseId,
        /// Sender's process.
        instance: InstanceId,
        /// Sender's role.
        role: Role,
    },
    /// Anti-entropy: what the sender holds. The first `Have` on a link is `full` (the receiver
    /// replaces its model of the sender); later ones carry only the origins that changed since
    /// the sender's previous `Have` on this link, so an idle system exchanges nothing and a busy
    /// one a few bytes per active origin. Links are ordered, so applying them in order rebuilds
    /// the sender's vector exactly.
    Have {
        /// Replace the model (and the origin table) instead of updating it.
        full: bool,
        /// Changed origins.
        entries: Vec<HaveEntry>,
        /// The sender's total count of held seqs once these entries are applied (absent on all
        /// but the last frame of a split `Have`): a receiver whose model disagrees asks for a
        /// [`Message::Resync`].
        total: Option<u64>,
    },
    /// Asks the receiver for the units it holds in these ranges (the sender lacks them), at most
    /// `limit` of them, urgent first. Origins are indexes of the receiver's own table for this
    /// link (it named them in its `Have`). Answered by [`Message::Units`] frames, the last one
    /// with `end`.
    Want {
        /// (origin index, first seq, last seq).
        ranges: Vec<(u32, u64, u64)>,
        /// Most units to send.
        limit: u32,
    },
    /// The sender's model of our vector disagrees with our total: send a full `Have`.
    Resync,
    /// Units, each in its own encoding.
    Units {
        /// Encoded units.
        #[serde(with = "units_as_bytes")]
        units: Vec<Vec<u8>>,
        /// The last frame answering a [`Message::Want`] (eager pushes are never `end`).
        end: bool,
    },
    /// Asks for a [`Message::Pong`] (round-trip time, and liveness of an idle link).
    Ping {
        /// The sender's clock when sent (microseconds), echoed back.
        sent: u64,
    },
    /// Answers a [`Message::Ping`].
    Pong {
        /// The `sent` of the ping.
        sent: u64,
    },
    /// NAT traversal ([`crate::proto::punch`]): the sender's addresses as its relays observe
    /// them, for punching round `round`. Only heeded on the peer's relay link.
    CallMeMaybe {
        /// The round, 1-based.
        round: u32,
        /// The sender's candidates.
        addrs: Vec<std::net::SocketAddr>,
    },
    /// One-time pads ([`crate::proto::pads`]), sent after `Hello` on every link: the pads the
    /// sender holds from the receiver (the receiver revokes its usable pads that are not
    /// listed: the sender lost them), and the sender's own pads for the receiver that are still
    /// live (the receiver erases the others: used up or revoked).
    Pads {
        /// The receiver's pads the sender holds, each with the end of the highest range it
        /// opened (the receiver's cursor moves past it: a rolled-back disk never reuses).
        inbound: Vec<(PadId, u64)>,
        /// The sender's pads for the receiver that are still live.
        outbound: Vec<PadId>,
    },
    /// Part of a new pad the sender generated for the receiver, in order. Only on a direct link
    /// (never a relay link: whoever records relay traffic and later steals the system key must
    /// find no pad material in it).
    PadOffer {
        /// The pad.
        pad: PadId,
        /// The pad's whole length.
        len: u64,
        /// Where `chunk` starts.
        offset: u64,
        /// Pad bytes.
        #[serde(with = "crate::unit::serde_bytes_compat")]
        chunk: Vec<u8>,
    },
    /// The last part of a pad offer: the receiver checks the hash, stores the pad durably and
    /// answers [`Message::PadAccepted`]. Only then does the sender use the pad.
    PadComplete {
        /// The pad.
        pad: PadId,
        /// BLAKE3 of the whole pad.
        hash: [u8; 32],
    },
    /// The pad is stored durably by the receiver of the offer.
    PadAccepted {
        /// The pad.
        pad: PadId,
    },
    /// Units whose sensitive part is encrypted with one-time pad material (relay links).
    PaddedUnits {
        /// The units.
        units: Vec<PaddedUnit>,
    },
    /// Units the sender holds and will not send on this link: each has a sensitive part and the
    /// sender has no pad left for us. The receiver stops asking this link for them (they come
    /// over a direct link, or once a new pad is handed over).
    Withheld {
        /// (origin, seq).
        units: Vec<(DatabaseId, u64)>,
    },
    /// Own units of the sender that the receiver says it holds (its `Have`), by seq and
    /// physkey: the receiver compares them with what it holds under those seqs, and sends back
    /// as [`Message::Units`] the units it holds there under other physkeys (the sender handed
    /// those seqs out twice: its data directory was rolled back in place). Only on a direct
    /// link; see `crate::proto::node::own_origin`.
    Offer {
        /// (seq, physkey) of each unit.
        units: Vec<(u64, Physkey)>,
    },
    /// Answers an [`Message::Offer`], after the units sent back for it: the sender compared the
    /// offered seqs up to `upto` (all of them, unless its answer reached its bounds).
    Compared {
        /// The last offered seq compared.
        upto: u64,
    },
}

/// A pad's id: 16 random bytes, chosen by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PadId(pub [u8; 16]);

impl std::fmt::Display for PadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A unit whose sensitive part travels under a one-time pad ([`crate::proto::pads`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaddedUnit {
    /// The unit's encoding without its sensitive part (format version 1).
    #[serde(with = "crate::unit::serde_bytes_compat")]
    pub unit: Vec<u8>,
    /// The pad.
    pub pad: PadId,
    /// Where in the pad the MAC key (32 bytes) and then the key stream start.
    pub offset: u64,
    /// The sensitive part XOR the pad bytes after the MAC key.
    #[serde(with = "crate::unit::serde_bytes_compat")]
    pub ct: Vec<u8>,
    /// One-time Poly1305 tag over the pad id, the offset, `unit` and `ct`.
    pub mac: [u8; 16],
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The bytes are not a message.
    #[error("malformed message")]
    Malformed,
    /// A unit inside is not valid.
    #[error("invalid unit in message: {0}")]
    Unit(#[from] UnitError),
}

impl Message {
    /// Encodes with postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec cannot fail.
        postcard::to_stdvec(self).expect("postcard into Vec")
    }

    /// Decodes, refusing trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        match postcard::take_from_bytes(bytes) {
            Ok((message, [])) => Ok(message),
            _ => Err(MessageError::Malformed),
        }
    }

    /// A units message.
    pub fn units(units: &[TransferUnit], end: bool) -> Message {
        Message::Units { units: units.iter().map(TransferUnit::encode).collect(), end }
    }
}

impl Announce {
    /// Encodes with postcard.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard into Vec")
    }

    /// Decodes, refusing trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Announce, MessageError> {
        match postcard::take_from_bytes(bytes) {
            Ok((announce, [])) => Ok(announce),
            _ => Err(MessageError::Malformed),
        }
    }
}

/// Each unit of a [`Message::Units`] as one byte string: the same bytes on the wire as postcard's
/// sequence of `u8` (a varint length, then the bytes), but encoded and decoded with one copy
/// instead of a visitor call per byte (it was ~2 % of a receiving node's CPU).
mod units_as_bytes {
    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::unit::serde_bytes_compat;

    struct Unit<'a>(&'a [u8]);

    impl Serialize for Unit<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serde_bytes_compat::serialize(self.0, s)
        }
    }

    struct UnitBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for UnitBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde_bytes_compat::deserialize(d).map(UnitBuf)
        }
    }

    pub fn serialize<S: Serializer>(units: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(units.len()))?;
        for u in units {
            seq.serialize_element(&Unit(u))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Vec<u8>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of encoded units")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The hint comes from the peer: bound what it may make us reserve.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(UnitBuf(u)) = seq.next_element()? {
                    out.push(u);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Decodes the units of a [`Message::Units`], each checked against `payload_limit`.
pub fn decode_units(
    units: &[Vec<u8>],
    payload_limit: usize,
) -> Result<Vec<TransferUnit>, MessageError> {
    units
        .iter()
        .map(|u| TransferUnit::decode(u, payload_limit).map_err(MessageError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::tests::sample_unit;
    use proptest::prelude::*;

    /// The byte-string encoding of the units is postcard's encoding of `Vec<Vec<u8>>`: peers of
    /// either build read each other.
    #[test]
    fn units_are_encoded_as_postcard_byte_sequences() {
        /// `Message` with the units as plain vectors (the variants before `Units` stand in).
        #[derive(serde::Serialize)]
        #[allow(dead_code)]
        enum Plain {
            Hello,
            Have,
            Want,
            Resync,
            Units { units: Vec<Vec<u8>>, end: bool },
        }
        let units = vec![vec![1u8, 2, 3], vec![], vec![0xff; 300]];
        let ours = Message::Units { units: units.clone(), end: true }.encode();
        let Message::Units { .. } = Message::decode(&ours).unwrap() else { unreachable!() };
        let theirs = postcard::to_stdvec(&Plain::Units { units, end: true }).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn round_trips() {
        let m = Message::units(&[sample_unit(1, b"a"), sample_unit(2, b"bb")], true);
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        let Message::Units { units, .. } = &m else { unreachable!() };
        assert_eq!(decode_units(units, 10).unwrap()[1].payload, b"bb");
        assert!(decode_units(units, 1).is_err());
        let a = Announce {
            dbid: "ITB85JUYCJS4IQA".parse().unwrap(),
            device: DeviceId([1; 16]),
            instance: InstanceId([2; 16]),
            role: Role::Lane,
            addrs: vec!["10.0.0.1:7000".parse().unwrap()],
            reply: false,
        };
        assert_eq!(Announce::decode(&a.encode()).unwrap(), a);
        let mut long = a.encode();
        long.push(0);
        assert!(Announce::decode(&long).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
            let _ = Announce::decode(&bytes);
        }
    }
}
