//! Relay frames: what a node and a rendezvous relay say to each other on their one QUIC stream
//! (design `docs/design/internet-mesh.md` §1.3 and §1.4).
//!
//! ```text
//! | GNAP (4) | length (u32 BE) = 1 + body | type (1) | postcard body |
//! ```
//!
//! The seed calls `GNAP` the generic header "used to indicate switching protocol": the stream
//! carries relay frames, not link frames. The length is checked against
//! [`MAX_RELAY_FRAME_LEN`] by [`FrameDecoder`] before anything is allocated; vectors inside a
//! body are bounded again after decoding ([`RelayWireError::TooMany`]), so no frame can make a
//! reader hold more than one frame's worth of memory.
//!
//! Errors keep peer faults apart (STYLE, after rustls): malformed bytes
//! ([`RelayWireError::Malformed`], [`RelayWireError::TrailingBytes`]), well formed but over a
//! limit ([`RelayWireError::TooMany`], [`RelayWireError::PayloadTooLarge`]) and not supported
//! ([`RelayWireError::UnknownType`]). Only [`RelayWireError::is_fatal`] errors lose the stream;
//! after any other the decoder has consumed that frame and the next one can be read. Frames of
//! other tags are skipped and counted, never an error.
//!
//! This module does no IO, checks no signature and knows nothing of mailboxes' contents: the
//! payloads are opaque sealed bytes of the sender.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{encode_frame, FrameDecoder, Tag, WireError, FRAME_HEADER_LEN};

/// Version of the relay protocol sent in [`Challenge`].
pub const RELAY_PROTOCOL_VERSION: u8 = 1;

/// The largest payload a `Post` or `Deliver` may carry: the largest size class (§2.2).
pub const MAX_RELAY_PAYLOAD: usize = 16 * 1024;

/// The largest frame body (type byte and postcard): a full payload plus its fields.
pub const MAX_RELAY_FRAME_LEN: usize = MAX_RELAY_PAYLOAD + 256;

/// At most this many mailboxes in one `Subscribe` (§1.4).
pub const MAX_SUBSCRIBE: usize = 16;

/// At most this many seqs in one `Posted` or ids in one `Taken`: fits [`MAX_RELAY_FRAME_LEN`]
/// at the largest varint sizes.
pub const MAX_ACK_ITEMS: usize = 1024;

/// A mailbox id, scoped by the relay to the connection's admitted RmSystem and environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mailbox(pub [u8; 16]);

/// An Ed25519 signature (64 bytes; serde has no impls for arrays over 32).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..4]))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        a.copy_from_slice(&self.0[..32]);
        b.copy_from_slice(&self.0[32..]);
        (a, b).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&a);
        out[32..].copy_from_slice(&b);
        Ok(Signature(out))
    }
}

/// S->C, first frame: who the relay is and the nonce the member signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// [`RELAY_PROTOCOL_VERSION`] of the relay.
    pub version: u8,
    /// The relay's Ed25519 public key; the client checks it against the key it pinned.
    pub relay_key: [u8; 32],
    /// Fresh from the OS RNG for this connection.
    pub nonce: [u8; 32],
}

/// C->S: the membership proof (see `crate::crypto::admission`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// The RmSystem, big-endian (`RmSystem::to_bytes`).
    pub rmsystem: [u8; 16],
    /// The environment tag (`EnvironmentTag`).
    pub env_tag: [u8; 4],
    /// Over the transcript of this connection (nonce, TLS exporter, system, relay key).
    pub signature: Signature,
}

/// S->C: admitted; what the relay saw and allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The member's address as the relay sees it (its NAT mapping).
    pub observed: SocketAddr,
    /// Largest payload accepted.
    pub max_payload: u32,
    /// Largest time to live accepted; longer ones are shortened to it.
    pub max_ttl_secs: u32,
    /// Bytes the system may still store.
    pub quota_left_bytes: u64,
}

/// Why a relay refused a connection (also counted per reason by the relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
#[non_exhaustive]
pub enum RefuseReason {
    /// The RmSystem and environment are not admitted here.
    UnknownSystem,
    /// The signature does not verify under any admitted verifier of that system.
    BadProof,
    /// No `Auth` in time.
    AuthTimeout,
    /// A frame that does not parse, or one not allowed at this point.
    Malformed,
    /// Too many connections or posts from this source.
    RateLimited,
    /// A reason this build does not know (a newer relay).
    Other(u8),
}

/// Why a relay refused one `Post`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
#[non_exhaustive]
pub enum PostRefuseReason {
    /// The system's quota (bytes or payload count) is used up.
    QuotaFull,
    /// Over [`MAX_RELAY_PAYLOAD`].
    TooLarge,
    /// Not one of the size classes.
    BadClass,
    /// A time to live of zero.
    Ttl,
    /// The connection posts faster than the relay allows.
    RateLimited,
    /// A reason this build does not know.
    Other(u8),
}

/// C->S: store `payload` in `mailbox` (and forward it to a subscriber).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// The client's number for this post, echoed in `Posted`/`PostRefused`.
    pub seq: u32,
    /// Where.
    pub mailbox: Mailbox,
    /// How long the relay keeps it.
    pub ttl_secs: u32,
    /// A presence broadcast (kept per system, not deleted by `Taken`).
    pub broadcast: bool,
    /// Opaque sealed bytes.
    pub payload: Vec<u8>,
}

/// S->C: a stored payload of a subscribed mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// The relay's id of the payload, for `Taken`.
    pub id: u64,
    /// Its mailbox.
    pub mailbox: Mailbox,
    /// The bytes as posted.
    pub payload: Vec<u8>,
}

/// One relay frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayFrame {
    /// S->C, first.
    Challenge(Challenge),
    /// C->S, the proof.
    Auth(Auth),
    /// S->C, admitted.
    Welcome(Welcome),
    /// S->C, not admitted; the relay closes the connection after it.
    Refused {
        /// Why.
        reason: RefuseReason,
    },
    /// C->S: the mailboxes to deliver from (replaces the set).
    Subscribe {
        /// At most [`MAX_SUBSCRIBE`].
        mailboxes: Vec<Mailbox>,
    },
    /// C->S: store a payload.
    Post(Post),
    /// S->C: these posts are durable.
    Posted {
        /// Their seqs.
        seqs: Vec<u32>,
    },
    /// S->C: this post was not stored.
    PostRefused {
        /// Its seq.
        seq: u32,
        /// Why.
        reason: PostRefuseReason,
    },
    /// S->C: a payload.
    Deliver(Deliver),
    /// C->S: delete these delivered payloads.
    Taken {
        /// Their ids.
        ids: Vec<u64>,
    },
    /// S->C: the member's address changed (NAT rebinding).
    Observed {
        /// As seen now.
        addr: SocketAddr,
    },
}

/// Why relay bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayWireError {
    /// The stream announced a frame over the limit: the stream is lost.
    #[error(transparent)]
    Frame(#[from] WireError),
    /// A GNAP frame with no type byte.
    #[error("relay frame without a type byte")]
    Empty,
    /// A type byte this build does not know.
    #[error("relay frame type {kind} is not supported")]
    UnknownType {
        /// The type byte.
        kind: u8,
    },
    /// The body does not parse as the type's fields.
    #[error("relay frame type {kind} is malformed: {source}")]
    Malformed {
        /// The type byte.
        kind: u8,
        /// postcard's reason.
        source: postcard::Error,
    },
    /// Bytes after the body.
    #[error("relay frame type {kind} has {len} bytes after its body")]
    TrailingBytes {
        /// The type byte.
        kind: u8,
        /// How many.
        len: usize,
    },
    /// A list over its bound.
    #[error("relay frame type {kind} lists {len} {what}, more than {max}")]
    TooMany {
        /// The type byte.
        kind: u8,
        /// What is listed.
        what: &'static str,
        /// How many.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A payload over [`MAX_RELAY_PAYLOAD`].
    #[error("relay payload of {len} bytes is over the limit of {max} bytes")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl RelayWireError {
    /// Whether the stream is lost (no later frame can be found): end the connection. Other
    /// errors cost only the frame they name.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RelayWireError::Frame(_))
    }
}

const CHALLENGE: u8 = 1;
const AUTH: u8 = 2;
const WELCOME: u8 = 3;
const REFUSED: u8 = 4;
const SUBSCRIBE: u8 = 5;
const POST: u8 = 6;
const POSTED: u8 = 7;
const POST_REFUSED: u8 = 8;
const DELIVER: u8 = 9;
const TAKEN: u8 = 10;
const OBSERVED: u8 = 11;

impl RelayFrame {
    /// The type byte on the wire.
    pub fn kind(&self) -> u8 {
        match self {
            RelayFrame::Challenge(_) => CHALLENGE,
            RelayFrame::Auth(_) => AUTH,
            RelayFrame::Welcome(_) => WELCOME,
            RelayFrame::Refused { .. } => REFUSED,
            RelayFrame::Subscribe { .. } => SUBSCRIBE,
            RelayFrame::Post(_) => POST,
            RelayFrame::Posted { .. } => POSTED,
            RelayFrame::PostRefused { .. } => POST_REFUSED,
            RelayFrame::Deliver(_) => DELIVER,
            RelayFrame::Taken { .. } => TAKEN,
            RelayFrame::Observed { .. } => OBSERVED,
        }
    }

    /// The frame body: type byte and postcard fields, without the GNAP header.
    pub fn to_body(&self) -> Result<Vec<u8>, RelayWireError> {
        self.check_limits()?;
        let mut out = vec![self.kind()];
        let kind = self.kind();
        let malformed = |source| RelayWireError::Malformed { kind, source };
        let body = match self {
            RelayFrame::Challenge(c) => postcard::to_stdvec(c),
            RelayFrame::Auth(a) => postcard::to_stdvec(a),
            RelayFrame::Welcome(w) => postcard::to_stdvec(w),
            RelayFrame::Refused { reason } => postcard::to_stdvec(reason),
            RelayFrame::Subscribe { mailboxes } => postcard::to_stdvec(mailboxes),
            RelayFrame::Post(p) => postcard::to_stdvec(p),
            RelayFrame::Posted { seqs } => postcard::to_stdvec(seqs),
            RelayFrame::PostRefused { seq, reason } => postcard::to_stdvec(&(seq, reason)),
            RelayFrame::Deliver(d) => postcard::to_stdvec(d),
            RelayFrame::Taken { ids } => postcard::to_stdvec(ids),
            RelayFrame::Observed { addr } => postcard::to_stdvec(addr),
        }
        .map_err(malformed)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Appends the whole frame (GNAP header and body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), RelayWireError> {
        let body = self.to_body()?;
        if body.len() > MAX_RELAY_FRAME_LEN {
            return Err(WireError::FrameTooLarge {
                len: u64::try_from(body.len()).unwrap_or(u64::MAX),
                max: u64::try_from(MAX_RELAY_FRAME_LEN).unwrap_or(u64::MAX),
            }
            .into());
        }
        encode_frame(Tag::Gnap, &body, out)?;
        Ok(())
    }

    /// Length of [`RelayFrame::encode`]'s output.
    pub fn encoded_len(&self) -> Result<usize, RelayWireError> {
        Ok(FRAME_HEADER_LEN.saturating_add(self.to_body()?.len()))
    }

    /// Parses a frame body (type byte and postcard fields). Never panics; allocates at most
    /// about `body.len()` bytes.
    pub fn from_body(body: &[u8]) -> Result<RelayFrame, RelayWireError> {
        let (&kind, rest) = body.split_first().ok_or(RelayWireError::Empty)?;
        fn take<'a, T: Deserialize<'a>>(kind: u8, rest: &'a [u8]) -> Result<T, RelayWireError> {
            let (value, left) = postcard::take_from_bytes::<T>(rest)
                .map_err(|source| RelayWireError::Malformed { kind, source })?;
            if !left.is_empty() {
                return Err(RelayWireError::TrailingBytes { kind, len: left.len() });
            }
            Ok(value)
        }
        let frame = match kind {
            CHALLENGE => RelayFrame::Challenge(take(kind, rest)?),
            AUTH => RelayFrame::Auth(take(kind, rest)?),
            WELCOME => RelayFrame::Welcome(take(kind, rest)?),
            REFUSED => RelayFrame::Refused { reason: take(kind, rest)? },
            SUBSCRIBE => RelayFrame::Subscribe { mailboxes: take(kind, rest)? },
            POST => RelayFrame::Post(take(kind, rest)?),
            POSTED => RelayFrame::Posted { seqs: take(kind, rest)? },
            POST_REFUSED => {
                let (seq, reason) = take(kind, rest)?;
                RelayFrame::PostRefused { seq, reason }
            }
            DELIVER => RelayFrame::Deliver(take(kind, rest)?),
            TAKEN => RelayFrame::Taken { ids: take(kind, rest)? },
            OBSERVED => RelayFrame::Observed { addr: take(kind, rest)? },
            kind => return Err(RelayWireError::UnknownType { kind }),
        };
        frame.check_limits()?;
        Ok(frame)
    }

    /// The bounds of §1.4 that the types alone do not carry.
    fn check_limits(&self) -> Result<(), RelayWireError> {
        let kind = self.kind();
        let too_many = |what, len, max| {
            if len > max {
                Err(RelayWireError::TooMany { kind, what, len, max })
            } else {
                Ok(())
            }
        };
        let payload = |len: usize| {
            if len > MAX_RELAY_PAYLOAD {
                Err(RelayWireError::PayloadTooLarge { len, max: MAX_RELAY_PAYLOAD })
            } else {
                Ok(())
            }
        };
        match self {
            RelayFrame::Subscribe { mailboxes } => {
                too_many("mailboxes", mailboxes.len(), MAX_SUBSCRIBE)
            }
            RelayFrame::Posted { seqs } => too_many("seqs", seqs.len(), MAX_ACK_ITEMS),
            RelayFrame::Taken { ids } => too_many("ids", ids.len(), MAX_ACK_ITEMS),
            RelayFrame::Post(p) => payload(p.payload.len()),
            RelayFrame::Deliver(d) => payload(d.payload.len()),
            _ => Ok(()),
        }
    }
}

/// Splits a relay stream into frames; skips (and counts) frames of other tags.
///
/// Contract as for [`FrameDecoder`]: the caller keeps unconsumed bytes and passes them again
/// with new bytes appended. After a fatal error ([`RelayWireError::is_fatal`]) every call
/// fails again; after another error the bad frame has been consumed.
#[derive(Debug, Clone)]
pub struct RelayFrameDecoder {
    frames: FrameDecoder,
    skipped: u64,
}

impl Default for RelayFrameDecoder {
    fn default() -> Self {
        RelayFrameDecoder { frames: FrameDecoder::new(MAX_RELAY_FRAME_LEN), skipped: 0 }
    }
}

impl RelayFrameDecoder {
    /// Takes the next relay frame from the front of `buf`; `Ok(None)` while incomplete.
    pub fn decode(&mut self, buf: &mut &[u8]) -> Result<Option<RelayFrame>, RelayWireError> {
        loop {
            let Some(frame) = self.frames.decode(buf)? else { return Ok(None) };
            if frame.tag != Tag::Gnap {
                self.skipped = self.skipped.saturating_add(1);
                continue;
            }
            return RelayFrame::from_body(&frame.payload).map(Some);
        }
    }

    /// Frames of other tags skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl From<u8> for RefuseReason {
    fn from(code: u8) -> Self {
        match code {
            1 => RefuseReason::UnknownSystem,
            2 => RefuseReason::BadProof,
            3 => RefuseReason::AuthTimeout,
            4 => RefuseReason::Malformed,
            5 => RefuseReason::RateLimited,
            other => RefuseReason::Other(other),
        }
    }
}

impl From<RefuseReason> for u8 {
    fn from(reason: RefuseReason) -> u8 {
        match reason {
            RefuseReason::UnknownSystem => 1,
            RefuseReason::BadProof => 2,
            RefuseReason::AuthTimeout => 3,
            RefuseReason::Malformed => 4,
            RefuseReason::RateLimited => 5,
            RefuseReason::Other(other) => other,
        }
    }
}

impl RefuseReason {
    /// The name in status and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefuseReason::UnknownSystem => "unknown_system",
            RefuseReason::BadProof => "bad_proof",
            RefuseReason::AuthTimeout => "auth_timeout",
            RefuseReason::Malformed => "malformed",
            RefuseReason::RateLimited => "rate_limited",
            RefuseReason::Other(_) => "other",
        }
    }
}

impl From<u8> for PostRefuseReason {
    fn from(code: u8) -> Self {
        match code {
            1 => PostRefuseReason::QuotaFull,
            2 => PostRefuseReason::TooLarge,
            3 => PostRefuseReason::BadClass,
            4 => PostRefuseReason::Ttl,
            5 => PostRefuseReason::RateLimited,
            other => PostRefuseReason::Other(other),
        }
    }
}

impl From<PostRefuseReason> for u8 {
    fn from(reason: PostRefuseReason) -> u8 {
        match reason {
            PostRefuseReason::QuotaFull => 1,
            PostRefuseReason::TooLarge => 2,
            PostRefuseReason::BadClass => 3,
            PostRefuseReason::Ttl => 4,
            PostRefuseReason::RateLimited => 5,
            PostRefuseReason::Other(other) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = RelayFrame> {
        let mailbox = any::<[u8; 16]>().prop_map(Mailbox);
        let payload = proptest::collection::vec(any::<u8>(), 0..=64);
        prop_oneof![
            (any::<u8>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(v, k, n)| {
                RelayFrame::Challenge(Challenge { version: v, relay_key: k, nonce: n })
            }),
            (any::<[u8; 16]>(), any::<[u8; 4]>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
                |(r, e, a, b)| {
                    let mut sig = [0u8; 64];
                    sig[..32].copy_from_slice(&a);
                    sig[32..].copy_from_slice(&b);
                    RelayFrame::Auth(Auth { rmsystem: r, env_tag: e, signature: Signature(sig) })
                }
            ),
            (arb_addr(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(o, p, t, q)| {
                RelayFrame::Welcome(Welcome {
                    observed: o,
                    max_payload: p,
                    max_ttl_secs: t,
                    quota_left_bytes: q,
                })
            }),
            any::<u8>().prop_map(|r| RelayFrame::Refused { reason: r.into() }),
            proptest::collection::vec(mailbox.clone(), 0..=MAX_SUBSCRIBE)
                .prop_map(|mailboxes| RelayFrame::Subscribe { mailboxes }),
            (any::<u32>(), mailbox.clone(), any::<u32>(), any::<bool>(), payload.clone()).prop_map(
                |(seq, mailbox, ttl_secs, broadcast, payload)| {
                    RelayFrame::Post(Post { seq, mailbox, ttl_secs, broadcast, payload })
                }
            ),
            proptest::collection::vec(any::<u32>(), 0..32)
                .prop_map(|seqs| RelayFrame::Posted { seqs }),
            (any::<u32>(), any::<u8>())
                .prop_map(|(seq, r)| RelayFrame::PostRefused { seq, reason: r.into() }),
            (any::<u64>(), mailbox, payload).prop_map(|(id, mailbox, payload)| {
                RelayFrame::Deliver(Deliver { id, mailbox, payload })
            }),
            proptest::collection::vec(any::<u64>(), 0..32)
                .prop_map(|ids| RelayFrame::Taken { ids }),
            arb_addr().prop_map(|addr| RelayFrame::Observed { addr }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_and_encoded_len(frame in arb_frame()) {
            let mut out = Vec::new();
            frame.encode(&mut out).unwrap();
            prop_assert_eq!(out.len(), frame.encoded_len().unwrap());
            let mut decoder = RelayFrameDecoder::default();
            let mut rest = &out[..];
            prop_assert_eq!(decoder.decode(&mut rest).unwrap(), Some(frame));
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RelayFrame::from_body(&body);
        }
    }

    #[test]
    fn known_bytes() {
        let frame = RelayFrame::PostRefused { seq: 300, reason: PostRefuseReason::QuotaFull };
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        // GNAP, length 4, type 8, varint 300 (ac 02), reason 1.
        assert_eq!(hex::encode(&out), "474e41500000000408ac0201");
        let frame = RelayFrame::Taken { ids: vec![1, 2] };
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        assert_eq!(hex::encode(&out), "474e4150000000040a020102");
    }

    #[test]
    fn errors_name_the_fault() {
        assert_eq!(RelayFrame::from_body(&[]), Err(RelayWireError::Empty));
        assert_eq!(RelayFrame::from_body(&[99]), Err(RelayWireError::UnknownType { kind: 99 }));
        assert!(matches!(
            RelayFrame::from_body(&[TAKEN, 1, 1, 0]),
            Err(RelayWireError::TrailingBytes { kind: TAKEN, len: 1 })
        ));
        assert!(matches!(
            RelayFrame::from_body(&[CHALLENGE, 1]),
            Err(RelayWireError::Malformed { kind: CHALLENGE, .. })
        ));
        let many = RelayFrame::Subscribe { mailboxes: vec![Mailbox([0; 16]); MAX_SUBSCRIBE + 1] };
        assert!(matches!(many.to_body(), Err(RelayWireError::TooMany { .. })));
        // A length prefix claiming a huge vector fails without allocating it.
        let err = RelayFrame::from_body(&[TAKEN, 0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap_err();
        assert!(!err.is_fatal(), "{err}");
        let big = RelayFrame::Post(Post {
            seq: 0,
            mailbox: Mailbox([0; 16]),
            ttl_secs: 1,
            broadcast: false,
            payload: vec![0; MAX_RELAY_PAYLOAD + 1],
        });
        assert!(matches!(big.to_body(), Err(RelayWireError::PayloadTooLarge { .. })));
    }

    #[test]
    fn fuzz_entry_accepts_valid_and_garbage_streams() {
        let mut stream = vec![3];
        RelayFrame::Taken { ids: vec![1, 2, 3] }.encode(&mut stream).unwrap();
        stream.extend_from_slice(b"GNAP\0\0\0\x02\x63\x00");
        RelayFrame::Posted { seqs: vec![9] }.encode(&mut stream).unwrap();
        crate::wire::fuzzing::relay_frame(&stream);
        crate::wire::fuzzing::relay_frame(&[0, 0xff, 0xff]);
        crate::wire::fuzzing::relay_frame(&[]);
    }

    #[test]
    fn oversized_and_foreign_frames() {
        let mut stream = Vec::new();
        encode_frame(Tag::Tuda, b"link frame", &mut stream).unwrap();
        RelayFrame::Taken { ids: vec![7] }.encode(&mut stream).unwrap();
        let mut decoder = RelayFrameDecoder::default();
        let mut rest = &stream[..];
        assert_eq!(decoder.decode(&mut rest).unwrap(), Some(RelayFrame::Taken { ids: vec![7] }));
        assert_eq!(decoder.skipped(), 1);
        let mut huge = b"GNAP".to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut rest = &huge[..];
        let err = decoder.decode(&mut rest).unwrap_err();
        assert!(err.is_fatal(), "{err}");
    }
}
