//! The protocol's messages: the plaintext inside sealed datagrams and link frames, and the
//! visible body of discovery packets. Encoded with postcard.
//!
//! | tag  | message | carried by |
//! | ---- | ------- | ---------- |
//! | IDQY | [`Announce`] with `reply: false`: who is out there? | discovery group, tagged |
//! | IDRP | [`Announce`] with `reply: true`: I am here | unicast to the asker, tagged |
//! | TUBS | [`Message::Hello`], [`Message::Digest`], [`Message::Vector`]: link control and anti-entropy | link frames |
//! | TUBT | [`Message::Units`] pushed eagerly | environment group or link frames |
//! | TUDA | [`Message::Units`] sent by anti-entropy (background synchronisation) | link frames |
//!
//! Units travel as their own encoding ([`TransferUnit::encode`]), so the format version of a
//! unit stays with the unit.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::{DatabaseId, DeviceId, InstanceId};
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
    /// Anti-entropy round: a hash of the sender's version vector. A peer whose vector hashes
    /// differently answers with its [`Message::Vector`].
    Digest {
        /// BLAKE3 of the encoded vector, truncated.
        digest: [u8; 16],
        /// An answer to the peer's digest saying ours is the same (so both learn the other
        /// holds exactly what they hold); never answered.
        same: bool,
    },
    /// The sender's version vector ([`crate::store::VersionVector::encode`]). The receiver
    /// sends what the sender lacks, and its own vector when it lacks something in turn.
    Vector {
        /// The encoded vector.
        vector: Vec<u8>,
    },
    /// What main servers hold, as far as the sender knows: per origin, the seqs `1..=n` some
    /// main server holds (seed 001: only what a main server holds is safe). Lets a lane learn,
    /// through its store server, that its units reached head office.
    Safe {
        /// Origin -> contiguous count held by a main server.
        held: Vec<(DatabaseId, u64)>,
    },
    /// Units, each in its own encoding.
    Units {
        /// Encoded units.
        units: Vec<Vec<u8>>,
        /// The sender holds more the receiver lacks: answer with a vector to get the next batch.
        more: bool,
    },
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
    pub fn units(units: &[TransferUnit], more: bool) -> Message {
        Message::Units { units: units.iter().map(TransferUnit::encode).collect(), more }
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
