//! The visible header of UDP datagrams and discovery packets (seed: "Packet Type 4 bytes |
//! Visible Header Variable length | Payload data variable length, encrypted").
//!
//! ```text
//! | version (1) = 1 | flags (1) | RmSystem (16) | environment tag (4) | key epoch (8) |
//! | sender instance id (16) | nonce counter (8) |          all big-endian, 54 bytes
//! ```
//!
//! Readable so that a receiver drops another system's or environment's traffic, and picks the
//! epoch key, without trying keys. This module only lays the header out: authentication,
//! epoch and replay checks are in `datagram`.

use std::fmt;

use super::{Rejection, Tag};
use crate::crypto::{Epoch, Nonce};
use crate::id::{Environment, InstanceId, RmSystem};

/// Largest datagram sent or accepted: the IPv4 UDP payload limit.
pub const MAX_DATAGRAM_LEN: usize = 65_507;

/// The layout version written in every visible header.
pub const DATAGRAM_FORMAT_VERSION: u8 = 1;

/// The first 4 bytes of `blake3::derive_key("meshnode env tag v1", name)`: tells environments
/// apart on a shared LAN without spelling the name out.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvironmentTag(pub [u8; 4]);

impl EnvironmentTag {
    /// The tag of `env`.
    pub fn of(env: &Environment) -> EnvironmentTag {
        let [a, b, c, d, ..] = blake3::derive_key("meshnode env tag v1", env.as_str().as_bytes());
        EnvironmentTag([a, b, c, d])
    }
}

impl fmt::Display for EnvironmentTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EnvironmentTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvironmentTag({self})")
    }
}

/// The readable, authenticated header after the tag. The version byte is not a field: it is
/// always [`DATAGRAM_FORMAT_VERSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisibleHeader {
    /// Reserved; 0 from this build, passed up unchanged.
    pub flags: u8,
    /// The sender's system.
    pub system: RmSystem,
    /// The sender's environment.
    pub environment: EnvironmentTag,
    /// The key epoch the packet was sealed or tagged in.
    pub epoch: Epoch,
    /// The sending process.
    pub sender: InstanceId,
    /// The sender's nonce counter: unique per sender, the replay sequence number.
    pub counter: u64,
}

impl VisibleHeader {
    /// Encoded length.
    pub const LEN: usize = 1 + 1 + RmSystem::WIRE_LEN + 4 + 8 + InstanceId::LEN + 8;

    /// The AEAD nonce of this packet.
    pub fn nonce(&self) -> Nonce {
        Nonce { sender: self.sender, counter: self.counter }
    }

    /// The encoded header, version byte first.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let parts: [&[u8]; 7] = [
            &[DATAGRAM_FORMAT_VERSION],
            &[self.flags],
            &self.system.to_bytes(),
            &self.environment.0,
            &self.epoch.0.to_be_bytes(),
            &self.sender.0,
            &self.counter.to_be_bytes(),
        ];
        // The parts add up to LEN (pinned by the known-bytes test), so every range is in bounds.
        let mut at = 0;
        for part in parts {
            let end = at + part.len();
            out[at..end].copy_from_slice(part);
            at = end;
        }
        out
    }

    /// Parses a header from the start of `bytes` (after the tag), checking length and version
    /// only; bytes after the header are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Result<VisibleHeader, Rejection> {
        let len = bytes.len();
        let short = || Rejection::Truncated { len, min: Self::LEN };
        let mut rest = bytes;
        let [version] = take::<1>(&mut rest).ok_or_else(short)?;
        if version != DATAGRAM_FORMAT_VERSION {
            return Err(Rejection::UnsupportedVersion { version });
        }
        let [flags] = take::<1>(&mut rest).ok_or_else(short)?;
        let system = RmSystem::from_bytes(take(&mut rest).ok_or_else(short)?);
        let environment = EnvironmentTag(take(&mut rest).ok_or_else(short)?);
        let epoch = Epoch(u64::from_be_bytes(take(&mut rest).ok_or_else(short)?));
        let sender = InstanceId(take(&mut rest).ok_or_else(short)?);
        let counter = u64::from_be_bytes(take(&mut rest).ok_or_else(short)?);
        Ok(VisibleHeader { flags, system, environment, epoch, sender, counter })
    }
}

/// The tag of a received datagram, to route it to [`DatagramOpener::open`] or, for discovery
/// tags, [`DatagramOpener::open_visible`]. `None` if it is shorter than a tag.
///
/// [`DatagramOpener::open`]: super::DatagramOpener::open
/// [`DatagramOpener::open_visible`]: super::DatagramOpener::open_visible
pub fn peek_tag(bytes: &[u8]) -> Option<Tag> {
    bytes.first_chunk::<4>().map(|t| Tag::from_bytes(*t))
}

/// Takes the first `N` bytes of `bytes`, advancing it.
pub(super) fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    *bytes = rest;
    Some(*head)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_bytes() {
        let live = Environment::live();
        assert_eq!(EnvironmentTag::of(&live).to_string(), "d42edcf7");
        assert_ne!(EnvironmentTag::of(&"test".parse().unwrap()), EnvironmentTag::of(&live));
        let header = VisibleHeader {
            flags: 0,
            system: RmSystem([77, 123, 89, 201_192]),
            environment: EnvironmentTag::of(&live),
            epoch: Epoch(19_675),
            sender: InstanceId([0x11; 16]),
            counter: 1,
        };
        let expected = concat!(
            "01",                               // version
            "00",                               // flags
            "0000004d0000007b00000059000311e8", // RmSystem 77,123,89,201192
            "d42edcf7",                         // environment tag of "live"
            "0000000000004cdb",                 // epoch 19675
            "11111111111111111111111111111111", // sender
            "0000000000000001",                 // counter
        );
        assert_eq!(hex::encode(header.to_bytes()), expected);
        assert_eq!(VisibleHeader::from_bytes(&header.to_bytes()), Ok(header));
        assert_eq!(header.nonce().to_bytes()[16..], 1u64.to_be_bytes());
    }

    #[test]
    fn short_and_newer_headers() {
        let bytes = [1u8; VisibleHeader::LEN];
        for len in 0..VisibleHeader::LEN {
            let expected = Rejection::Truncated { len, min: VisibleHeader::LEN };
            assert_eq!(VisibleHeader::from_bytes(&bytes[..len]), Err(expected));
        }
        assert_eq!(
            VisibleHeader::from_bytes(&[2]),
            Err(Rejection::UnsupportedVersion { version: 2 })
        );
        assert_eq!(peek_tag(b"TUB"), None);
        assert_eq!(peek_tag(b"TUBTx"), Some(Tag::Tubt));
    }

    proptest! {
        #[test]
        fn round_trip(
            flags in any::<u8>(),
            system in any::<[u32; 4]>(),
            environment in any::<[u8; 4]>(),
            epoch in any::<u64>(),
            sender in any::<[u8; 16]>(),
            counter in any::<u64>(),
            trailing in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let header = VisibleHeader {
                flags,
                system: RmSystem(system),
                environment: EnvironmentTag(environment),
                epoch: Epoch(epoch),
                sender: InstanceId(sender),
                counter,
            };
            let mut bytes = header.to_bytes().to_vec();
            prop_assert_eq!(bytes.len(), VisibleHeader::LEN);
            bytes.extend_from_slice(&trailing);
            prop_assert_eq!(VisibleHeader::from_bytes(&bytes), Ok(header));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = VisibleHeader::from_bytes(&bytes);
            let _ = peek_tag(&bytes);
        }
    }
}
