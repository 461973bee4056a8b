//! The relay payload envelope (design §2.2): what a relay sees of a payload, and the records
//! inside the seal.
//!
//! ```text
//! | version=1 (1) | epoch low byte (1) | nonce (24) | ciphertext | Poly1305 tag (16) |
//!   total length exactly one of 1,024 / 4,096 / 16,384 bytes (the size classes)
//! AAD   = version ‖ epoch byte ‖ mailbox[16] ‖ RmSystem ‖ env tag
//! key   = KeySchedule::key(Purpose::Relay, epoch)
//! nonce = blake3 keyed by the key's tag key over "relay nonce" ‖ instance ‖ counter, 24 bytes
//! ```
//!
//! The plaintext is a postcard [`RelayPlain`] followed by zeros up to the class length; the
//! decoder refuses any non-zero padding. Mailboxes are daily pseudonyms
//! ([`mailbox`], [`presence_mailbox`], §2.5).
//!
//! This module does not fragment, schedule or choose relays (see `fragment`, `session`,
//! `mixer`) and never sees a socket.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::{Epoch, EpochKey, KeySchedule, NonceSequence, Purpose};
use crate::id::{DatabaseId, Environment, InstanceId, RmSystem};
use crate::proto::peers::Role;
use crate::wire::relay::Mailbox;
use crate::wire::EnvironmentTag;

/// Version byte of the envelope.
pub const ENVELOPE_VERSION: u8 = 1;

/// The payload lengths a relay accepts (design §2.2): every payload is exactly one of them.
pub const SIZE_CLASSES: [usize; 3] = [1_024, 4_096, 16_384];

/// Visible bytes before the ciphertext: version, epoch byte, nonce.
pub const HEADER_LEN: usize = 2 + 24;

/// Bytes of a payload that are not plaintext: the header and the tag.
pub const OVERHEAD: usize = HEADER_LEN + crate::crypto::TAG_LEN;

/// The most plaintext bytes (encoded [`RelayPlain`]) any payload carries.
pub const MAX_PLAIN: usize = SIZE_CLASSES[2] - OVERHEAD;

/// Length of one mailbox day (independent of the key period, design §2.5).
pub const MAILBOX_DAY_SECS: u64 = 86_400;

/// Label of the synthetic nonces.
const NONCE_LABEL: &[u8] = b"relay nonce";

/// Most opening keys an [`Envelope`] keeps. Keys are derived before authentication, for any
/// accepted epoch whose low byte a payload names, so forged payloads must not grow the cache;
/// 8 holds the default window (2 epochs either side) with room to spare. Past it the key
/// farthest from ours is dropped (as `wire::datagram` does).
const MAX_CACHED_KEYS: usize = 8;

/// What the sealed part of a payload carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPlain {
    /// Who sealed it (seed "sender#": inside the seal, never visible).
    pub sender: DatabaseId,
    /// Who it is for; a receiver drops payloads naming another (a relay moving payloads
    /// between mailboxes of one day is refused by the AAD already).
    pub recipient: DatabaseId,
    /// The sender's clock, ms (presence ages out by it).
    pub sent_ms: u64,
    /// The records, in order.
    pub records: Vec<Record>,
}

/// One record of a [`RelayPlain`] (design §2.2; the punching candidates and pads of steps 8
/// and 9 are not here yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Opens a session (a random id of the opener).
    Syn {
        /// The session.
        session: u64,
    },
    /// Answers a `Syn`.
    SynAck {
        /// The session.
        session: u64,
    },
    /// One piece of a message (a core frame's plaintext).
    Fragment {
        /// The session.
        session: u64,
        /// Message number in the session, from 1 (seed "message#").
        message: u64,
        /// 0 urgent, 1 normal, 2 background.
        urgency: u8,
        /// Which piece, from 0.
        index: u16,
        /// How many pieces.
        count: u16,
        /// The piece.
        bytes: Vec<u8>,
    },
    /// What the sender of the record holds of the other direction.
    Ack {
        /// The session.
        session: u64,
        /// Every message up to this one is delivered.
        cumulative: u64,
        /// Complete messages beyond `cumulative`, as inclusive ranges (at most 8).
        sacks: Vec<(u64, u64)>,
        /// Incomplete messages and the fragment ranges held (at most 8 messages).
        partial: Vec<(u64, Vec<(u16, u16)>)>,
    },
    /// Ends a session.
    Fin {
        /// The session.
        session: u64,
    },
    /// "I am a member and read my mailbox" (broadcast mailbox only, design §2.6).
    Presence {
        /// The sender's role.
        role: Role,
        /// The sender's process.
        instance: InstanceId,
    },
}

/// Why a payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not one of the size classes.
    #[error("payload of {len} bytes is not a size class")]
    BadClass {
        /// Its length.
        len: usize,
    },
    /// A version this build does not know.
    #[error("unknown envelope version {version}")]
    UnknownVersion {
        /// The version byte.
        version: u8,
    },
    /// No key of the accepted epochs opens it (wrong system, mailbox, epoch or tampered).
    #[error("payload does not open")]
    Decrypt,
    /// It opened, but the plaintext is not a [`RelayPlain`] followed by zeros.
    #[error("malformed payload plaintext")]
    Malformed,
    /// The records do not fit the largest class.
    #[error("{len} bytes of records exceed a payload")]
    TooLarge {
        /// Encoded length.
        len: usize,
    },
    /// This process sealed 2^64 payloads.
    #[error("nonce counter exhausted")]
    NonceExhausted,
}

/// The smallest class that holds `plain_len` bytes of encoded [`RelayPlain`].
pub fn class_for(plain_len: usize) -> Option<usize> {
    SIZE_CLASSES.into_iter().find(|c| plain_len + OVERHEAD <= *c)
}

/// The encoded length of `plain` (postcard).
pub fn encoded_len(plain: &RelayPlain) -> usize {
    // Plain data into a size counter cannot fail.
    postcard::experimental::serialized_size(plain).unwrap_or(usize::MAX)
}

/// The mailbox of `dbid` on `day` (Unix seconds / [`MAILBOX_DAY_SECS`]).
pub fn mailbox(keys: &KeySchedule, dbid: &DatabaseId, day: u64) -> Mailbox {
    let mut data = Vec::with_capacity(32);
    data.extend_from_slice(b"mailbox v1");
    data.extend_from_slice(dbid.as_bytes());
    Mailbox(keys.key(Purpose::RelayMailbox, Epoch(day)).tag(&data))
}

/// The system's presence mailbox on `day` (broadcasts, design §2.6).
pub fn presence_mailbox(keys: &KeySchedule, day: u64) -> Mailbox {
    Mailbox(keys.key(Purpose::RelayMailbox, Epoch(day)).tag(b"presence v1"))
}

/// The mailbox day at Unix time `unix_secs`.
pub fn mailbox_day(unix_secs: u64) -> u64 {
    unix_secs / MAILBOX_DAY_SECS
}

/// Seals and opens payloads of one system and environment.
///
/// Keys are derived once per epoch (HKDF per payload was the cost of the relay path): the
/// sealing key of the current epoch, the opening keys of a few accepted epochs and the
/// mailbox key of the current day are kept. One [`NonceSequence`] numbers every payload
/// this process seals.
#[derive(Debug)]
pub struct Envelope {
    keys: KeySchedule,
    rmsystem: RmSystem,
    env_tag: EnvironmentTag,
    nonces: NonceSequence,
    seal_key: Option<EpochKey>,
    open_keys: BTreeMap<Epoch, EpochKey>,
    mailbox_key: Option<EpochKey>,
    derived: u64,
}

impl Envelope {
    /// Payloads of `rmsystem` in `env`, sealed by process `instance`.
    pub fn new(
        keys: KeySchedule,
        rmsystem: RmSystem,
        env: &Environment,
        instance: InstanceId,
    ) -> Envelope {
        Envelope {
            keys,
            rmsystem,
            env_tag: EnvironmentTag::of(env),
            nonces: NonceSequence::new(instance),
            seal_key: None,
            open_keys: BTreeMap::new(),
            mailbox_key: None,
            derived: 0,
        }
    }

    /// The key schedule (for mailboxes).
    pub fn keys(&self) -> &KeySchedule {
        &self.keys
    }

    /// How many keys were derived so far (the caches at work).
    #[cfg(test)]
    pub(crate) fn keys_derived(&self) -> u64 {
        self.derived
    }

    /// [`mailbox`] with the day's mailbox key kept.
    pub fn mailbox(&mut self, dbid: &DatabaseId, day: u64) -> Mailbox {
        let mut data = Vec::with_capacity(32);
        data.extend_from_slice(b"mailbox v1");
        data.extend_from_slice(dbid.as_bytes());
        Mailbox(self.mailbox_key(day).tag(&data))
    }

    /// [`presence_mailbox`] with the day's mailbox key kept.
    pub fn presence_mailbox(&mut self, day: u64) -> Mailbox {
        Mailbox(self.mailbox_key(day).tag(b"presence v1"))
    }

    fn mailbox_key(&mut self, day: u64) -> &EpochKey {
        let (keys, derived) = (&self.keys, &mut self.derived);
        cached_key(&mut self.mailbox_key, keys, derived, Purpose::RelayMailbox, Epoch(day))
    }

    /// The opening key of `epoch`; the cache holds accepted epochs only (pruned by `open`)
    /// and at most [`MAX_CACHED_KEYS`]: when full, the key farthest from `current` goes.
    fn open_key(&mut self, epoch: Epoch, current: Epoch) -> &EpochKey {
        if self.open_keys.len() >= MAX_CACHED_KEYS && !self.open_keys.contains_key(&epoch) {
            let farthest = self.open_keys.keys().copied().max_by_key(|e| e.0.abs_diff(current.0));
            if let Some(farthest) = farthest {
                self.open_keys.remove(&farthest);
            }
        }
        let (keys, derived) = (&self.keys, &mut self.derived);
        self.open_keys.entry(epoch).or_insert_with(|| {
            *derived += 1;
            keys.key(Purpose::Relay, epoch)
        })
    }

    fn aad(&self, version: u8, epoch_byte: u8, mailbox: &Mailbox) -> Vec<u8> {
        let mut aad = Vec::with_capacity(2 + 16 + 16 + 4);
        aad.push(version);
        aad.push(epoch_byte);
        aad.extend_from_slice(&mailbox.0);
        aad.extend_from_slice(&self.rmsystem.to_bytes());
        aad.extend_from_slice(&self.env_tag.0);
        aad
    }

    /// Seals `plain` for `mailbox` at Unix time `now_secs`: exactly a size class long, the
    /// smallest that fits.
    pub fn seal(
        &mut self,
        now_secs: u64,
        mailbox: &Mailbox,
        plain: &RelayPlain,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let body = postcard::to_stdvec(plain).map_err(|_| EnvelopeError::Malformed)?;
        let class = class_for(body.len()).ok_or(EnvelopeError::TooLarge { len: body.len() })?;
        let sequence = self.nonces.next_nonce().map_err(|_| EnvelopeError::NonceExhausted)?;
        let epoch = self.keys.epoch_at(now_secs);
        let epoch_byte = epoch.0.to_le_bytes()[0];
        let aad = self.aad(ENVELOPE_VERSION, epoch_byte, mailbox);
        let (keys, derived) = (&self.keys, &mut self.derived);
        let key = cached_key(&mut self.seal_key, keys, derived, Purpose::Relay, epoch);
        let nonce = key.synthetic_nonce(NONCE_LABEL, sequence.sender, sequence.counter);
        let mut padded = body;
        padded.resize(class - OVERHEAD, 0);
        let mut out = Vec::with_capacity(class);
        out.push(ENVELOPE_VERSION);
        out.push(epoch_byte);
        out.extend_from_slice(&nonce);
        key.seal_with_raw_nonce(&nonce, &aad, &padded, &mut out);
        debug_assert_eq!(out.len(), class);
        Ok(out)
    }

    /// Opens a payload delivered from `mailbox` at Unix time `now_secs`: tries each accepted
    /// epoch whose low byte matches. Never panics on any bytes.
    pub fn open(
        &mut self,
        now_secs: u64,
        mailbox: &Mailbox,
        bytes: &[u8],
    ) -> Result<RelayPlain, EnvelopeError> {
        if !SIZE_CLASSES.contains(&bytes.len()) {
            return Err(EnvelopeError::BadClass { len: bytes.len() });
        }
        let (header, sealed) = bytes.split_at(HEADER_LEN);
        let (&[version, epoch_byte], nonce) = header.split_at(2) else {
            return Err(EnvelopeError::Malformed);
        };
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnknownVersion { version });
        }
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| EnvelopeError::Malformed)?;
        let aad = self.aad(version, epoch_byte, mailbox);
        let current = self.keys.epoch_at(now_secs).0;
        let keys = &self.keys;
        self.open_keys.retain(|e, _| keys.accepts(Epoch(current), *e));
        let window = self.keys.epoch_window().min(1 << 16);
        let first = current.saturating_sub(window);
        let last = current.saturating_add(window);
        let mut plaintext = None;
        // At most 2 * window + 1 candidates, of which one in 256 matches the byte.
        let mut e = first;
        loop {
            if e.to_le_bytes()[0] == epoch_byte {
                let key = self.open_key(Epoch(e), Epoch(current));
                if let Ok(p) = key.open_with_raw_nonce(&nonce, &aad, sealed) {
                    plaintext = Some(p);
                    break;
                }
            }
            if e >= last {
                break;
            }
            e += 1;
        }
        let plaintext = plaintext.ok_or(EnvelopeError::Decrypt)?;
        match postcard::take_from_bytes::<RelayPlain>(&plaintext) {
            Ok((plain, rest)) if rest.iter().all(|b| *b == 0) => Ok(plain),
            _ => Err(EnvelopeError::Malformed),
        }
    }
}

/// The key of `purpose` for `epoch` in `slot`, derived again (and counted in `derived`) when
/// the epoch changed.
fn cached_key<'a>(
    slot: &'a mut Option<EpochKey>,
    keys: &KeySchedule,
    derived: &mut u64,
    purpose: Purpose,
    epoch: Epoch,
) -> &'a EpochKey {
    if slot.as_ref().is_some_and(|key| key.epoch() != epoch) {
        *slot = None;
    }
    slot.get_or_insert_with(|| {
        *derived += 1;
        keys.key(purpose, epoch)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SystemKey;
    use proptest::prelude::*;

    const NOW: u64 = 1_750_000_000;

    fn keys_of(system: &str) -> KeySchedule {
        KeySchedule::new(
            &SystemKey::from_bytes([9; 32]),
            system.parse().unwrap(),
            &Environment::live(),
            86_400,
        )
    }

    fn envelope_of(system: &str) -> Envelope {
        Envelope::new(
            keys_of(system),
            system.parse().unwrap(),
            &Environment::live(),
            InstanceId([4; 16]),
        )
    }

    fn envelope() -> Envelope {
        envelope_of("77,123,89,201192")
    }

    fn dbid(s: &str) -> DatabaseId {
        s.parse().unwrap()
    }

    fn plain(bytes: usize) -> RelayPlain {
        RelayPlain {
            sender: dbid("ITB85JUYCJS4IQA"),
            recipient: dbid("ABCDEFGHIJKLMNO"),
            sent_ms: NOW * 1000,
            records: vec![
                Record::Syn { session: 7 },
                Record::Fragment {
                    session: 7,
                    message: 1,
                    urgency: 0,
                    index: 0,
                    count: 2,
                    bytes: vec![0xab; bytes],
                },
                Record::Ack {
                    session: 7,
                    cumulative: 3,
                    sacks: vec![(5, 6)],
                    partial: vec![(4, vec![(0, 2)])],
                },
            ],
        }
    }

    #[test]
    fn round_trip_in_every_class() {
        let mut env = envelope();
        let mb = mailbox(env.keys(), &dbid("ABCDEFGHIJKLMNO"), mailbox_day(NOW));
        for (bytes, class) in [(10, 1_024), (900, 1_024), (1_000, 4_096), (12_000, 16_384)] {
            let p = plain(bytes);
            let sealed = env.seal(NOW, &mb, &p).unwrap();
            assert_eq!(sealed.len(), class, "{bytes} bytes");
            assert_eq!(class_for(encoded_len(&p)), Some(class));
            assert_eq!(env.open(NOW, &mb, &sealed).unwrap(), p);
            // A day later (the next epoch) it still opens.
            assert_eq!(env.open(NOW + 86_400, &mb, &sealed).unwrap(), p);
        }
        assert_eq!(
            env.seal(NOW, &mb, &plain(MAX_PLAIN)),
            Err(EnvelopeError::TooLarge { len: encoded_len(&plain(MAX_PLAIN)) })
        );
    }

    #[test]
    fn same_plaintext_twice_gives_different_nonces() {
        let mut env = envelope();
        let mb = Mailbox([1; 16]);
        let a = env.seal(NOW, &mb, &plain(5)).unwrap();
        let b = env.seal(NOW, &mb, &plain(5)).unwrap();
        assert_ne!(a[2..HEADER_LEN], b[2..HEADER_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn tampering_wrong_mailbox_system_or_epoch_is_refused() {
        let mut env = envelope();
        let mb = Mailbox([1; 16]);
        let sealed = env.seal(NOW, &mb, &plain(100)).unwrap();
        for i in (0..sealed.len()).step_by(7).chain([0, 1, 2, 25, 26, sealed.len() - 1]) {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(env.open(NOW, &mb, &bad).is_err(), "byte {i}");
        }
        assert_eq!(env.open(NOW, &Mailbox([2; 16]), &sealed), Err(EnvelopeError::Decrypt));
        let mut other = envelope_of("77,123,89,201193");
        assert_eq!(other.open(NOW, &mb, &sealed), Err(EnvelopeError::Decrypt));
        // Outside the epoch window (2 days either side by default).
        assert_eq!(env.open(NOW + 4 * 86_400, &mb, &sealed), Err(EnvelopeError::Decrypt));
        assert_eq!(
            env.open(NOW, &mb, &sealed[..1_000]),
            Err(EnvelopeError::BadClass { len: 1_000 })
        );
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(env.open(NOW, &mb, &v2), Err(EnvelopeError::UnknownVersion { version: 2 }));
    }

    #[test]
    fn non_zero_padding_is_refused() {
        // Seal by hand what `seal` would, with one padding byte set.
        let mut env = envelope();
        let mb = Mailbox([1; 16]);
        let p = plain(10);
        let mut body = postcard::to_stdvec(&p).unwrap();
        let len = body.len();
        body.resize(1_024 - OVERHEAD, 0);
        let epoch = env.keys.epoch_at(NOW);
        let key = env.keys.key(Purpose::Relay, epoch);
        let byte = epoch.0.to_le_bytes()[0];
        let nonce = key.synthetic_nonce(NONCE_LABEL, InstanceId([5; 16]), 1);
        let aad = env.aad(ENVELOPE_VERSION, byte, &mb);
        let seal = |body: &[u8]| {
            let mut out = vec![ENVELOPE_VERSION, byte];
            out.extend_from_slice(&nonce);
            key.seal_with_raw_nonce(&nonce, &aad, body, &mut out);
            out
        };
        assert_eq!(env.open(NOW, &mb, &seal(&body)).unwrap(), p, "the control opens");
        body[len + 3] = 1;
        assert_eq!(env.open(NOW, &mb, &seal(&body)), Err(EnvelopeError::Malformed));
    }

    /// Keys are derived once per epoch, not per payload: sealing, opening and mailboxes of
    /// one day derive three keys, a new day a few more, and forged epoch bytes at most
    /// `MAX_CACHED_KEYS` kept.
    #[test]
    fn keys_are_derived_once_per_epoch() {
        let mut env = envelope();
        let b = dbid("ABCDEFGHIJKLMNO");
        for i in 0..50 {
            let mb = env.mailbox(&b, mailbox_day(NOW));
            assert_eq!(mb, mailbox(env.keys(), &b, mailbox_day(NOW)));
            assert_eq!(
                env.presence_mailbox(mailbox_day(NOW)),
                presence_mailbox(env.keys(), mailbox_day(NOW))
            );
            let sealed = env.seal(NOW + i, &mb, &plain(10)).unwrap();
            assert_eq!(env.open(NOW + i, &mb, &sealed).unwrap(), plain(10));
        }
        assert_eq!(env.keys_derived(), 3, "sealing, opening and mailbox keys");
        let mb = env.mailbox(&b, mailbox_day(NOW));
        let sealed = env.seal(NOW, &mb, &plain(10)).unwrap();
        assert_eq!(env.open(NOW + 86_400, &mb, &sealed).unwrap(), plain(10));
        assert_eq!(env.keys_derived(), 3, "yesterday's key opens from the cache");
        // Forged payloads naming every epoch byte: the cache stays bounded.
        for byte in (0..=255u8).filter(|b| *b != sealed[1]) {
            let mut forged = sealed.clone();
            forged[1] = byte;
            assert!(env.open(NOW, &mb, &forged).is_err());
        }
        assert!(env.open_keys.len() <= MAX_CACHED_KEYS);
        assert!(env.keys_derived() <= 3 + 5, "{} derived", env.keys_derived());
    }

    #[test]
    fn mailboxes_change_daily_and_per_dbid() {
        let keys = keys_of("77,123,89,201192");
        let a = dbid("ITB85JUYCJS4IQA");
        let b = dbid("ABCDEFGHIJKLMNO");
        assert_eq!(mailbox(&keys, &a, 10), mailbox(&keys, &a, 10));
        assert_ne!(mailbox(&keys, &a, 10), mailbox(&keys, &a, 11));
        assert_ne!(mailbox(&keys, &a, 10), mailbox(&keys, &b, 10));
        assert_ne!(presence_mailbox(&keys, 10), mailbox(&keys, &a, 10));
        assert_ne!(presence_mailbox(&keys, 10), presence_mailbox(&keys, 11));
        let other = keys_of("77,123,89,201193");
        assert_ne!(mailbox(&keys, &a, 10), mailbox(&other, &a, 10));
    }

    proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100),
                             class in 0usize..3, fill in any::<u8>()) {
            let mut env = envelope();
            let _ = env.open(NOW, &Mailbox([1; 16]), &bytes);
            let mut sized = bytes.clone();
            sized.resize(SIZE_CLASSES[class], fill);
            sized[0] = ENVELOPE_VERSION;
            let _ = env.open(NOW, &Mailbox([1; 16]), &sized);
        }

        #[test]
        fn every_output_is_a_class_and_round_trips(n in 0usize..13_000, count in 1u16..5) {
            let mut env = envelope();
            let mut p = plain(n);
            if let Record::Fragment { count: c, .. } = &mut p.records[1] { *c = count; }
            let sealed = env.seal(NOW, &Mailbox([3; 16]), &p).unwrap();
            prop_assert!(SIZE_CLASSES.contains(&sealed.len()));
            prop_assert_eq!(env.open(NOW, &Mailbox([3; 16]), &sealed).unwrap(), p);
        }
    }
}
