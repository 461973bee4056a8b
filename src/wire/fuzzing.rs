//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; also used by unit tests).
//!
//! Each function is the whole body of one fuzz target, so that a target is one call into the
//! crate. Besides "never panics", each checks an oracle and panics if it fails: the fuzzer
//! reports a panic as a crash. Keys are fixed test keys; nothing here is for production.

use super::{
    DatagramOpener, DatagramSealer, FrameDecoder, Rejection, Tag, DATAGRAM_OVERHEAD,
    MAX_DATAGRAM_LEN,
};
use crate::crypto::{KeySchedule, NonceSequence, Purpose, SystemKey, DEFAULT_EPOCH_PERIOD_SECS};
use crate::id::{Environment, InstanceId, RmSystem};

/// The fixed clock of the fuzz targets: 2023-11-14, epoch 19675.
pub const NOW: u64 = 1_700_000_000;

/// The fixed system of the fuzz targets.
pub const SYSTEM: RmSystem = RmSystem([77, 123, 89, 201_192]);

/// The key schedule of the fuzz targets: a fixed system key, [`SYSTEM`], environment `live`.
pub fn test_schedule() -> KeySchedule {
    KeySchedule::new(
        &SystemKey::from_bytes([0x42; 32]),
        SYSTEM,
        &Environment::live(),
        DEFAULT_EPOCH_PERIOD_SECS,
    )
}

/// A LAN datagram opener for the test system.
pub fn test_opener() -> DatagramOpener {
    DatagramOpener::new(test_schedule(), Purpose::LanDatagram, SYSTEM, &Environment::live())
}

/// A LAN datagram sealer for the test system, sending as `sender`.
pub fn test_sealer(sender: InstanceId) -> DatagramSealer {
    DatagramSealer::new(
        test_schedule(),
        Purpose::LanDatagram,
        SYSTEM,
        &Environment::live(),
        NonceSequence::new(sender),
    )
}

/// Feeds `data[2..]` to a [`FrameDecoder`] in chunks: `data[0]` picks the chunk size (1-256)
/// and `data[1]` the frame limit (0-255 bytes). Checks that every byte is either in a frame or
/// left over, and that no frame exceeds the limit.
pub fn frame_decode(data: &[u8]) {
    let (chunk, max_len, stream) = match data {
        [a, b, rest @ ..] => (usize::from(*a) + 1, usize::from(*b), rest),
        _ => (1, 0, data),
    };
    let mut decoder = FrameDecoder::new(max_len);
    let mut buffer = Vec::new();
    let mut used = 0;
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        let mut rest = &buffer[..];
        loop {
            match decoder.decode(&mut rest) {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= max_len, "frame over the limit");
                    used += frame.encoded_len();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let consumed = buffer.len() - rest.len();
        buffer.drain(..consumed);
    }
    assert_eq!(used + buffer.len(), stream.len(), "bytes lost or invented");
}

/// Opens `data` as a LAN datagram, then as the sealed part after a valid header (to reach the
/// decryption), then checks that `data` sealed as a payload opens to itself and that flipping
/// one byte of it (chosen by `data`) is rejected.
pub fn datagram_open(data: &[u8]) {
    let mut opener = test_opener();
    if let Ok(opened) = opener.open(data, NOW) {
        panic!("forged datagram accepted: {opened:?}");
    }

    let mut sealer = test_sealer(InstanceId([7; 16]));
    let Ok(sealed) = sealer.seal(Tag::Tubt, NOW, data) else {
        assert!(data.len() > MAX_DATAGRAM_LEN - DATAGRAM_OVERHEAD, "seal failed");
        return;
    };
    let prefix_len = DATAGRAM_OVERHEAD - crate::crypto::TAG_LEN;
    let mut grafted = sealed.get(..prefix_len).unwrap_or_default().to_vec();
    grafted.extend_from_slice(data);
    if grafted != sealed {
        assert!(opener.open(&grafted, NOW).is_err(), "forged payload accepted");
    }

    let opened = opener.open(&sealed, NOW).expect("a sealed datagram opens");
    assert_eq!((opened.tag, &opened.plaintext[..]), (Tag::Tubt, data));
    assert!(matches!(opener.open(&sealed, NOW), Err(Rejection::Replay { .. })));
    flip_one_byte_is_rejected(&sealed, data, DatagramOpener::open);
}

/// Opens `data` as a discovery packet, then checks that `data` sent as an IDQY body opens to
/// itself and that flipping one byte of it (chosen by `data`) is rejected.
pub fn visible_open(data: &[u8]) {
    let mut opener = test_opener();
    if let Ok(opened) = opener.open_visible(data, NOW) {
        panic!("forged discovery packet accepted: {opened:?}");
    }
    let mut sealer = test_sealer(InstanceId([8; 16]));
    let Ok(packet) = sealer.seal_visible(Tag::Idqy, NOW, data) else {
        assert!(data.len() > MAX_DATAGRAM_LEN - DATAGRAM_OVERHEAD, "seal_visible failed");
        return;
    };
    let opened = opener.open_visible(&packet, NOW).expect("a tagged packet opens");
    assert_eq!((opened.tag, &opened.plaintext[..]), (Tag::Idqy, data));
    flip_one_byte_is_rejected(&packet, data, DatagramOpener::open_visible);
}

fn flip_one_byte_is_rejected(
    packet: &[u8],
    data: &[u8],
    open: fn(&mut DatagramOpener, &[u8], u64) -> Result<super::OpenedDatagram, Rejection>,
) {
    let (Some(&at), Some(&mask)) = (data.first(), data.last()) else {
        return;
    };
    let mut bad = packet.to_vec();
    let index = usize::from(at) * 257 % bad.len().max(1);
    if let Some(byte) = bad.get_mut(index) {
        *byte ^= mask.max(1);
    }
    assert!(open(&mut test_opener(), &bad, NOW).is_err(), "tampered byte {index} accepted");
}

/// Feeds `data[1..]` to a [`super::relay::RelayFrameDecoder`] in chunks of `data[0] + 1`
/// bytes. Every frame decoded must encode and decode back to itself; a non-fatal error must
/// leave the decoder usable.
pub fn relay_frame(data: &[u8]) {
    use super::relay::{RelayFrame, RelayFrameDecoder};
    let (chunk, stream) = match data {
        [a, rest @ ..] => (usize::from(*a) + 1, rest),
        _ => (1, data),
    };
    let mut decoder = RelayFrameDecoder::default();
    let mut buffer = Vec::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        let mut rest = &buffer[..];
        loop {
            match decoder.decode(&mut rest) {
                Ok(Some(frame)) => {
                    let body = frame.to_body().expect("a decoded frame encodes");
                    assert_eq!(RelayFrame::from_body(&body).as_ref(), Ok(&frame));
                }
                Ok(None) => break,
                Err(err) if err.is_fatal() => return,
                Err(_) => continue,
            }
        }
        let used = buffer.len() - rest.len();
        buffer.drain(..used);
    }
}
