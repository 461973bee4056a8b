//! The wire format: packet tags, TCP frames, sealed UDP datagrams and visible discovery
//! packets, and the reasons a received packet is dropped.
//!
//! Layouts follow the seed (`002_...txt`, "Filtering Techniques"):
//!
//! ```text
//! TCP frame:    | tag (4) | length (4, big-endian) | payload                               |
//! UDP datagram: | tag (4) | visible header (54)    | payload sealed with XChaCha20-Poly1305 |
//! discovery:    | tag (4) | visible header (54)    | body | keyed tag (16)                  |
//! ```
//!
//! - `tag`: the four-byte packet types; unknown ones are values, not errors.
//! - `frame`: TCP framing and an incremental decoder for a byte stream.
//! - `header`: the visible header of datagrams and discovery packets.
//! - `datagram`: [`DatagramSealer`] and [`DatagramOpener`].
//! - `reject`: [`Rejection`] (why a packet was dropped) and [`RejectCounters`].
//! - [`relay`]: the frames between a node and a rendezvous relay (GNAP, postcard bodies).
//!
//! This module does no IO, reads no clock (time is a parameter) and does not log. It does
//! not define message bodies (those are postcard messages of the proto layer), does not
//! fragment or reassemble, and does not authenticate TCP links: a frame's payload is whatever
//! the link layer puts there.

mod datagram;
mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod header;
mod reject;
pub mod relay;
mod tag;

pub use datagram::{
    DatagramOpener, DatagramSealer, OpenedDatagram, DATAGRAM_OVERHEAD, DEFAULT_REPLAY_SENDERS,
};
pub use frame::{encode_frame, Frame, FrameDecoder, DEFAULT_MAX_FRAME_LEN, FRAME_HEADER_LEN};
pub use header::{
    peek_tag, EnvironmentTag, VisibleHeader, DATAGRAM_FORMAT_VERSION, MAX_DATAGRAM_LEN,
};
pub use reject::{RejectClass, RejectCounters, RejectReason, Rejection};
pub use tag::Tag;

use crate::crypto::CryptoError;

/// Why bytes could not be encoded, or a stream could not be decoded.
///
/// Decoding a single received datagram never yields this: it yields a [`Rejection`]. A
/// [`WireError`] from [`FrameDecoder`] means the stream is lost and its link must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame length above the limit: received (the stream cannot resync, drop the link) or
    /// asked to encode (over the 4 GiB the length field can hold).
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge {
        /// Payload length announced or given.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The sealed datagram would exceed [`MAX_DATAGRAM_LEN`]; fragment the payload first.
    #[error("datagram of {len} bytes is over the limit of {max} bytes")]
    DatagramTooLarge {
        /// Length the datagram would have.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A discovery tag (IDQY, IDRP) given to `seal`: discovery is sent visible.
    #[error("{tag} is a discovery packet and is sent visible; use seal_visible")]
    MustBeVisible {
        /// The tag given.
        tag: Tag,
    },
    /// A non-discovery tag given to `seal_visible`: only discovery may travel unencrypted.
    #[error("{tag} is not a discovery packet and must be sealed; use seal")]
    MustBeSealed {
        /// The tag given.
        tag: Tag,
    },
    /// Sealing failed (the nonce counter is exhausted).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}
