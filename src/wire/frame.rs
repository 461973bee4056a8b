//! TCP framing (seed: "Typical TCP packet format: Packet Type 4 bytes | Packet length 4 bytes |
//! Payload data variable length").
//!
//! ```text
//! | tag (4 ASCII bytes) | payload length (u32, big-endian) | payload |
//! ```
//!
//! [`FrameDecoder`] takes bytes as they arrive, in chunks of any size, and checks the announced
//! length against its limit as soon as the 8 header bytes are there, before anything is
//! allocated for the payload. A stream has no resync marker, so a length over the limit ends
//! the stream: the caller drops that link. An unknown tag is not an error.
//!
//! This module does not seal or authenticate payloads (the link layer does).

use super::{Tag, WireError};

/// Default limit on a frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 << 20;

/// Bytes before the payload: tag and length.
pub const FRAME_HEADER_LEN: usize = 8;

/// One frame: a tag and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The packet type; [`Tag::Unknown`] frames are skipped and counted by the caller.
    pub tag: Tag,
    /// The payload bytes, as sent.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame of `tag` carrying `payload`.
    pub fn new(tag: Tag, payload: Vec<u8>) -> Frame {
        Frame { tag, payload }
    }

    /// Length of the encoded frame: header plus payload.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN.saturating_add(self.payload.len())
    }

    /// Appends the encoded frame to `out`; see [`encode_frame`].
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        encode_frame(self.tag, &self.payload, out)
    }
}

/// Appends a frame of `tag` carrying `payload` to `out`. Fails only if the payload does not fit
/// the 32-bit length field; a payload over the receiver's limit is the caller's to avoid.
pub fn encode_frame(tag: Tag, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    let len = u32::try_from(payload.len()).map_err(|_| WireError::FrameTooLarge {
        len: u64::try_from(payload.len()).unwrap_or(u64::MAX),
        max: u64::from(u32::MAX),
    })?;
    out.reserve(FRAME_HEADER_LEN.saturating_add(payload.len()));
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Splits a byte stream into frames.
///
/// Contract: the caller keeps the unconsumed bytes and passes them again, with newly received
/// bytes appended, to the next [`FrameDecoder::decode`]. After an error every later call
/// returns the same error: the stream is lost.
///
/// ```
/// # use meshnode::wire::{encode_frame, FrameDecoder, Tag};
/// let mut stream = Vec::new();
/// encode_frame(Tag::Tubt, b"sale", &mut stream).unwrap();
/// let mut decoder = FrameDecoder::default();
/// let mut rest = &stream[..];
/// let frame = decoder.decode(&mut rest).unwrap().unwrap();
/// assert_eq!((frame.tag, &frame.payload[..]), (Tag::Tubt, &b"sale"[..]));
/// assert!(rest.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
    failed: Option<WireError>,
}

impl FrameDecoder {
    /// A decoder that refuses payloads over `max_len` bytes.
    pub fn new(max_len: usize) -> FrameDecoder {
        FrameDecoder { max_len, failed: None }
    }

    /// The payload limit.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Takes the next whole frame from the front of `buf` and advances `buf` past it.
    ///
    /// Returns `Ok(None)`, leaving `buf` as it was, while the frame is incomplete. Fails with
    /// [`WireError::FrameTooLarge`] as soon as a header announces a payload over the limit,
    /// before its payload arrives.
    pub fn decode(&mut self, buf: &mut &[u8]) -> Result<Option<Frame>, WireError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let Some((tag, rest)) = buf.split_first_chunk::<4>() else {
            return Ok(None);
        };
        let Some((len, rest)) = rest.split_first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*len);
        let payload_len = match usize::try_from(len) {
            Ok(n) if n <= self.max_len => n,
            _ => {
                let err = WireError::FrameTooLarge {
                    len: u64::from(len),
                    max: u64::try_from(self.max_len).unwrap_or(u64::MAX),
                };
                self.failed = Some(err.clone());
                return Err(err);
            }
        };
        let Some((payload, rest)) = rest.split_at_checked(payload_len) else {
            return Ok(None);
        };
        let frame = Frame { tag: Tag::from_bytes(*tag), payload: payload.to_vec() };
        *buf = rest;
        Ok(Some(frame))
    }
}

impl Default for FrameDecoder {
    /// A decoder with [`DEFAULT_MAX_FRAME_LEN`].
    fn default() -> FrameDecoder {
        FrameDecoder::new(DEFAULT_MAX_FRAME_LEN)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let tag = prop_oneof![
            proptest::sample::select(Tag::KNOWN.to_vec()),
            any::<[u8; 4]>().prop_map(Tag::from_bytes),
        ];
        (tag, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(t, p)| Frame::new(t, p))
    }

    /// Feeds `stream` to a decoder in chunks of the given sizes (cycled), as a socket reader
    /// would, and returns the frames and the bytes left over.
    fn decode_in_chunks(
        decoder: &mut FrameDecoder,
        stream: &[u8],
        chunks: &[usize],
    ) -> Result<(Vec<Frame>, Vec<u8>), WireError> {
        let mut buffer = Vec::new();
        let mut frames = Vec::new();
        let mut offset = 0;
        for &size in chunks.iter().cycle() {
            if offset >= stream.len() {
                break;
            }
            let end = stream.len().min(offset + size.max(1));
            buffer.extend_from_slice(&stream[offset..end]);
            offset = end;
            let mut rest = &buffer[..];
            while let Some(frame) = decoder.decode(&mut rest)? {
                frames.push(frame);
            }
            let consumed = buffer.len() - rest.len();
            buffer.drain(..consumed);
        }
        Ok((frames, buffer))
    }

    #[test]
    fn known_bytes() {
        let mut out = Vec::new();
        encode_frame(Tag::Tubt, b"hi", &mut out).unwrap();
        assert_eq!(hex::encode(&out), "54554254000000026869");
        let frame = Frame::new(Tag::Idqy, Vec::new());
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        assert_eq!(hex::encode(&out), "4944515900000000");
        assert_eq!(out.len(), frame.encoded_len());

        let mut rest = &b"\x51\x45\x52\x51\x00\x00\x00\x03abcXY"[..];
        let frame = FrameDecoder::default().decode(&mut rest).unwrap().unwrap();
        assert_eq!(frame, Frame::new(Tag::Qerq, b"abc".to_vec()));
        assert_eq!(rest, b"XY");
    }

    #[test]
    fn incomplete_frames_leave_the_buffer_alone() {
        let mut stream = Vec::new();
        encode_frame(Tag::Tuda, &[7; 10], &mut stream).unwrap();
        let mut decoder = FrameDecoder::default();
        for cut in 0..stream.len() {
            let mut rest = &stream[..cut];
            assert_eq!(decoder.decode(&mut rest), Ok(None), "cut {cut}");
            assert_eq!(rest.len(), cut);
        }
    }

    #[test]
    fn oversized_length_fails_before_the_payload_arrives_and_stays_failed() {
        let mut decoder = FrameDecoder::new(100);
        let mut ok = Vec::new();
        encode_frame(Tag::Tubt, &[1; 100], &mut ok).unwrap();
        let mut rest = &ok[..];
        assert!(decoder.decode(&mut rest).unwrap().is_some());

        // Only the header of a 4 GiB frame: refused at once, nothing allocated for it.
        let header = b"TUBT\xff\xff\xff\xff";
        let err = WireError::FrameTooLarge { len: u64::from(u32::MAX), max: 100 };
        assert_eq!(decoder.decode(&mut &header[..]), Err(err.clone()));
        assert_eq!(decoder.decode(&mut &ok[..]), Err(err), "a lost stream stays lost");

        let mut decoder = FrameDecoder::new(100);
        let header = b"ZZZZ\x00\x00\x00\x65";
        assert_eq!(
            decoder.decode(&mut &header[..]),
            Err(WireError::FrameTooLarge { len: 101, max: 100 }),
            "the limit applies to unknown tags too"
        );
    }

    #[test]
    fn unknown_tags_between_known_ones_are_yielded_not_fatal() {
        let sent = vec![
            Frame::new(Tag::Tubt, b"one".to_vec()),
            Frame::new(Tag::Unknown(*b"NEW1"), b"future".to_vec()),
            Frame::new(Tag::Tuev, Vec::new()),
            Frame::new(Tag::Unknown([0, 1, 2, 3]), vec![0; 40]),
            Frame::new(Tag::Unknown(*b"NEW2"), Vec::new()),
            Frame::new(Tag::Tust, b"status".to_vec()),
        ];
        let mut stream = Vec::new();
        for frame in &sent {
            frame.encode(&mut stream).unwrap();
        }
        let (frames, left) =
            decode_in_chunks(&mut FrameDecoder::default(), &stream, &[3, 1, 7]).unwrap();
        assert!(left.is_empty());
        assert_eq!(frames, sent);
        let known: Vec<Tag> = frames.iter().map(|f| f.tag).filter(Tag::is_known).collect();
        assert_eq!(known, [Tag::Tubt, Tag::Tuev, Tag::Tust]);
        let unknown = frames.iter().filter(|f| !f.tag.is_known()).count();
        assert_eq!(unknown, 3);
    }

    proptest! {
        #[test]
        fn round_trip_in_random_chunks(
            frames in proptest::collection::vec(arb_frame(), 0..12),
            chunks in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let mut stream = Vec::new();
            for frame in &frames {
                let before = stream.len();
                frame.encode(&mut stream).unwrap();
                prop_assert_eq!(stream.len() - before, frame.encoded_len());
            }
            let (decoded, left) =
                decode_in_chunks(&mut FrameDecoder::default(), &stream, &chunks).unwrap();
            prop_assert!(left.is_empty());
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            max_len in 0usize..300,
            chunks in proptest::collection::vec(1usize..50, 1..5),
        ) {
            let mut decoder = FrameDecoder::new(max_len);
            if let Ok((frames, left)) = decode_in_chunks(&mut decoder, &bytes, &chunks) {
                let used: usize = frames.iter().map(Frame::encoded_len).sum();
                prop_assert_eq!(used + left.len(), bytes.len());
                prop_assert!(frames.iter().all(|f| f.payload.len() <= max_len));
            }
            super::super::fuzzing::frame_decode(&bytes);
        }
    }
}
