//! Entry points for the relay path's fuzz targets in `fuzz/` (feature `fuzzing`; also used by
//! unit tests). Each is the whole body of one target; each checks an oracle and panics if it
//! fails. Keys are the fixed test keys of `crate::wire::fuzzing`.

use super::envelope::{Envelope, Record, RelayPlain};
use super::session::{Session, MAX_REASSEMBLY_BYTES, MAX_UNACKED_BYTES};
use crate::id::{Environment, InstanceId};
use crate::proto::io::Time;
use crate::wire::fuzzing::{test_schedule, NOW, SYSTEM};
use crate::wire::relay::Mailbox;

fn envelope() -> Envelope {
    Envelope::new(test_schedule(), SYSTEM, &Environment::live(), InstanceId([7; 16]))
}

/// Opens `data` as a payload (never panics, never opens: it is not sealed under the test
/// key); then reads `data` as a postcard [`RelayPlain`] and, if it is one that fits, seals it
/// and checks that it opens to itself in a payload of a size class.
pub fn relay_payload(data: &[u8]) {
    let mut env = envelope();
    let mailbox = Mailbox([1; 16]);
    assert!(env.open(NOW, &mailbox, data).is_err(), "random bytes opened");
    let Ok((plain, _)) = postcard::take_from_bytes::<RelayPlain>(data) else { return };
    let Ok(sealed) = env.seal(NOW, &mailbox, &plain) else { return };
    assert!(super::envelope::SIZE_CLASSES.contains(&sealed.len()));
    assert_eq!(env.open(NOW, &mailbox, &sealed).as_ref(), Ok(&plain));
    assert!(env.open(NOW, &Mailbox([2; 16]), &sealed).is_err(), "another mailbox opened it");
}

/// Feeds an open session fragment records made from `data` (6 bytes each: message, index,
/// count, length), then acks and timeouts. Messages come out in order and memory stays under
/// the bounds. Returns how many messages came out.
pub fn relay_reassembly(data: &[u8]) -> u64 {
    let mut s = Session::answer(1, Time(0), 0);
    s.on_record(
        Time(0),
        &Record::Ack { session: 1, cumulative: 0, sacks: vec![], partial: vec![] },
    );
    let mut now = Time(0);
    let mut delivered = 0u64;
    for op in data.chunks(6) {
        let [m, i, c, l, f, k] = <[u8; 6]>::try_from(op).unwrap_or([0; 6]);
        now = now.plus_millis(u64::from(k));
        let record = match k % 4 {
            0 => Record::Ack {
                session: 1,
                cumulative: u64::from(m),
                sacks: vec![(u64::from(i), u64::from(c))],
                partial: vec![(u64::from(l), vec![(u16::from(f), u16::from(k))])],
            },
            _ => Record::Fragment {
                session: 1,
                message: u64::from(m % 64),
                urgency: k % 3,
                index: u16::from(i % 16),
                count: u16::from(c % 16),
                bytes: vec![f; usize::from(l) * 4],
            },
        };
        s.on_record(now, &record);
        s.handle_timeout(now);
        while s.poll_message().is_some() {
            delivered += 1;
        }
        let _ = s.take_ack();
        while s.next_fragment(now, 2_000).is_some() {}
        assert!(s.memory() <= MAX_UNACKED_BYTES + MAX_REASSEMBLY_BYTES);
        assert!(delivered <= 64, "each message number is delivered once");
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_valid_plain_round_trips() {
        let plain = RelayPlain {
            sender: "ITB85JUYCJS4IQA".parse().unwrap(),
            recipient: "ABCDEFGHIJKLMNO".parse().unwrap(),
            sent_ms: 5,
            records: vec![Record::Fin { session: 9 }],
        };
        relay_payload(&postcard::to_stdvec(&plain).unwrap());
        // Messages 1 and 2 of one fragment each, in reverse order: both delivered.
        assert_eq!(relay_reassembly(&[2, 0, 1, 3, 9, 1, 1, 0, 1, 3, 9, 1]), 2);
        assert_eq!(relay_reassembly(&[2, 0, 1, 3, 9, 1]), 0, "message 1 missing");
    }

    proptest! {
        #[test]
        fn fuzz_entries_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2_000)) {
            relay_payload(&data);
            prop_assert!(relay_reassembly(&data) <= 63);
        }
    }
}
