//! Composing payloads from a session's records, and when and where they leave (design §2.3).
//!
//! - A payload takes the due handshake records, a pending `Ack` (piggybacked), then fragments
//!   round-robin across the queued messages (the session picks them) while they fit the
//!   largest class; the envelope then picks the smallest class that holds it.
//! - A payload leaves after a random delay from the core's RNG by the urgency of what waits
//!   (urgent U(0, 20 ms), normal U(0, 200 ms), background U(0, 2 s) by default); payloads
//!   that fill up are sent at once, so bulk transfers wait for nothing.
//! - Relay choice: uniform among the relays up and not in backoff, never the one of the
//!   previous payload of this session when two or more are up.
//!
//! This module does not seal or number anything.

use rand::Rng;

use super::envelope::{Record, MAX_PLAIN};
use super::session::{record_len, Session};
use crate::id::DatabaseId;
use crate::proto::io::Time;

/// Most bytes of a [`super::envelope::RelayPlain`] besides its records, in its postcard
/// encoding: the sender and recipient (fixed arrays), `sent_ms` (a varint, at most 10 bytes)
/// and the record count (a varint, at most 3 bytes below 2^21; a payload holds far fewer
/// records). `plain_overhead_matches_the_encoding` checks it against real encodings.
pub const PLAIN_OVERHEAD: usize = 2 * DatabaseId::LEN + 10 + 3;

/// Room for records in the largest payload.
pub const RECORD_ROOM: usize = MAX_PLAIN - PLAIN_OVERHEAD;

/// The longest random delays per urgency (0 urgent, 1 normal, 2 background), ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays(pub [u64; 3]);

impl Default for Delays {
    fn default() -> Self {
        Delays([20, 200, 2_000])
    }
}

impl Delays {
    /// A delay for `urgency` drawn from `rng`.
    pub fn draw<R: Rng>(&self, rng: &mut R, urgency: u8) -> u64 {
        let bound = self.0[usize::from(urgency.min(2))];
        rng.gen_range(0..=bound)
    }

    /// The longest delay (part of the session's RTO).
    pub fn bound(&self, urgency: u8) -> u64 {
        self.0[usize::from(urgency.min(2))]
    }
}

/// The records of one payload from `session` at `now`; empty when nothing waits. They always
/// fit a payload: the handshake records are small, an ack is at most
/// [`super::session::MAX_ACK_BYTES`] and fragments are taken while they fit [`RECORD_ROOM`].
pub fn compose(session: &mut Session, now: Time) -> Vec<Record> {
    let mut records = Vec::new();
    let mut used = 0;
    while let Some(r) = session.poll_control() {
        used += record_len(&r);
        records.push(r);
    }
    if session.ack_wanted() || session.has_fragments() {
        if let Some(ack) = session.take_ack() {
            used += record_len(&ack);
            records.push(ack);
        }
    }
    while let Some(f) = session.next_fragment(now, RECORD_ROOM.saturating_sub(used)) {
        used += record_len(&f);
        records.push(f);
    }
    records
}

/// A relay for the next payload: uniform among `up`, avoiding `previous` when there is a choice.
pub fn choose_relay<R: Rng>(rng: &mut R, up: &[u16], previous: Option<u16>) -> Option<u16> {
    let choices: Vec<u16> = if up.len() >= 2 {
        up.iter().copied().filter(|r| Some(*r) != previous).collect()
    } else {
        up.to_vec()
    };
    if choices.is_empty() {
        return None;
    }
    choices.get(rng.gen_range(0..choices.len())).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::relaypath::envelope::{encoded_len, RelayPlain};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn relays_alternate_when_two_are_up() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut previous = None;
        for _ in 0..50 {
            let r = choose_relay(&mut rng, &[0, 3], previous).unwrap();
            assert_ne!(Some(r), previous);
            previous = Some(r);
        }
        assert_eq!(choose_relay(&mut rng, &[2], Some(2)), Some(2), "the only one");
        assert_eq!(choose_relay(&mut rng, &[], None), None);
    }

    #[test]
    fn a_bulk_message_fills_payloads_and_mixes_messages() {
        let mut s = Session::open(1, Time(0), 0);
        s.on_record(Time(0), &Record::SynAck { session: 1 });
        s.send(&[1u8; 40_000], 1).unwrap();
        s.send(&[2u8; 3_000], 1).unwrap();
        let first = compose(&mut s, Time(0));
        assert!(s.has_fragments(), "more waits");
        assert!(matches!(first[0], Record::Ack { .. }), "the confirming ack rides along");
        let messages: Vec<u64> = first
            .iter()
            .filter_map(|r| match r {
                Record::Fragment { message, .. } => Some(*message),
                _ => None,
            })
            .collect();
        assert_eq!(&messages[..4], &[1, 2, 1, 2], "round-robin across messages");
        let total: usize = first.iter().map(record_len).sum();
        assert!(total <= RECORD_ROOM && total + 1_100 > RECORD_ROOM, "{total}");
        let mut payloads = 1;
        while s.has_fragments() {
            let records = compose(&mut s, Time(0));
            assert!(!records.is_empty());
            payloads += 1;
        }
        assert_eq!(payloads, 3, "43,000 bytes in 16 KiB payloads");
        let d = Delays::default();
        let mut rng = StdRng::seed_from_u64(2);
        assert!((0..100).all(|_| d.draw(&mut rng, 0) <= 20));
        assert_eq!(d.bound(9), 2_000);
    }

    /// `PLAIN_OVERHEAD` is what the encoding adds to the records, at the largest time and
    /// record counts of 1, 127 (one-byte count) and 16,384 (three-byte count).
    #[test]
    fn plain_overhead_matches_the_encoding() {
        let dbid: DatabaseId = "ITB85JUYCJS4IQA".parse().unwrap();
        for (n, count_len) in [(1, 1), (127, 1), (128, 2), (16_384, 3)] {
            let plain = RelayPlain {
                sender: dbid,
                recipient: dbid,
                sent_ms: u64::MAX,
                records: vec![Record::Fin { session: 1 }; n],
            };
            let records: usize = plain.records.iter().map(record_len).sum();
            assert_eq!(encoded_len(&plain), PLAIN_OVERHEAD - 3 + count_len + records, "{n}");
        }
    }

    /// An open session with a large ack owed (scattered pieces of many messages) and
    /// fragments queued: every payload composed seals (fits the largest class).
    #[test]
    fn every_composed_payload_fits_a_payload() {
        use crate::proto::relaypath::fragment::MAX_COUNT;
        let mut s = Session::answer(1, Time(0), 0);
        s.on_record(
            Time(0),
            &Record::Ack { session: 1, cumulative: 0, sacks: vec![], partial: vec![] },
        );
        for message in 2..12 {
            for index in (0..MAX_COUNT).step_by(2) {
                let bytes = vec![1];
                let fragment = Record::Fragment {
                    session: 1,
                    message,
                    urgency: 0,
                    index,
                    count: MAX_COUNT,
                    bytes,
                };
                s.on_record(Time(0), &fragment);
            }
        }
        s.send(&[3u8; 60_000], 0).unwrap();
        let dbid: DatabaseId = "ITB85JUYCJS4IQA".parse().unwrap();
        let mut payloads = 0;
        loop {
            let records = compose(&mut s, Time(0));
            if records.is_empty() {
                break;
            }
            assert!(matches!(records[0], Record::Ack { .. }));
            let plain = RelayPlain { sender: dbid, recipient: dbid, sent_ms: u64::MAX, records };
            assert!(encoded_len(&plain) <= MAX_PLAIN, "{} bytes", encoded_len(&plain));
            payloads += 1;
        }
        assert!(payloads >= 4, "{payloads}");
    }
}
