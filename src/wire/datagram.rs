//! UDP datagrams (seed: "Typical UDP packet format: Packet Type 4 bytes | Visible Header
//! Variable length | Payload data variable length, encrypted") and visible discovery packets.
//!
//! ```text
//! sealed:    | tag (4) | visible header (54) | ciphertext | AEAD tag (16)  |
//! discovery: | tag (4) | visible header (54) | body       | keyed tag (16) |
//! ```
//!
//! The visible header (see [`VisibleHeader`]) is readable but authenticated: for sealed
//! datagrams the tag and header are the AEAD associated data and the nonce is
//! `(sender, counter)`; for discovery (IDQY, IDRP, readable by design) a keyed tag from
//! [`Purpose::DiscoveryTag`] covers every byte before it. The nonce counter doubles as the
//! replay sequence number, checked only after authentication so that forgeries cannot move a
//! replay window.
//!
//! No flag is defined yet: senders write 0 and receivers pass the byte up (it is
//! authenticated). This module does not fragment (payloads over [`MAX_DATAGRAM_LEN`] are the
//! caller's to split), does not define discovery bodies, and does no IO.

use std::collections::BTreeMap;

use super::header::{EnvironmentTag, VisibleHeader, MAX_DATAGRAM_LEN};
use super::{Rejection, Tag, WireError};
use crate::crypto::{
    Epoch, EpochKey, KeySchedule, Nonce, NonceSequence, Purpose, ReplayGuard, TAG_LEN,
};
use crate::id::{Environment, RmSystem};

/// Bytes a datagram adds to its payload or body: tag, visible header and the 16-byte AEAD or
/// keyed tag. Sealed and discovery packets have the same overhead.
pub const DATAGRAM_OVERHEAD: usize = PREFIX_LEN + TAG_LEN;

/// Default number of senders whose replay windows a [`DatagramOpener`] keeps.
pub const DEFAULT_REPLAY_SENDERS: usize = 4096;

/// Tag and visible header: the authenticated prefix.
const PREFIX_LEN: usize = Tag::LEN + VisibleHeader::LEN;

/// Most derived keys a [`DatagramOpener`] caches. Keys are derived before authentication, for
/// any epoch in the accepted window, so a wide window (short period, large clock skew) must not
/// let forged packets grow the cache. 16 holds every accepted epoch of the default window
/// (2 either side, two purposes); past it the key farthest from ours is dropped and derived
/// again if needed, which costs one HKDF expansion.
const MAX_CACHED_KEYS: usize = 16;

/// A datagram that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedDatagram {
    /// The packet type; may be [`Tag::Unknown`], which the caller skips and counts.
    pub tag: Tag,
    /// The authenticated visible header.
    pub header: VisibleHeader,
    /// The decrypted payload, or for a discovery packet its body (never encrypted).
    pub plaintext: Vec<u8>,
}

/// Seals outgoing datagrams and tags outgoing discovery packets of one process.
///
/// Both kinds draw from the one [`NonceSequence`], so a receiver's single replay guard sees
/// each counter once: use one sealer per purpose and give each its own sequence (keys of
/// different purposes are independent, so their counters may overlap).
#[derive(Debug)]
pub struct DatagramSealer {
    schedule: KeySchedule,
    purpose: Purpose,
    system: RmSystem,
    environment: EnvironmentTag,
    nonces: NonceSequence,
    sealed_key: Option<EpochKey>,
    discovery_key: Option<EpochKey>,
    max_len: usize,
}

impl DatagramSealer {
    /// Largest payload that fits one datagram.
    pub const MAX_PAYLOAD_LEN: usize = MAX_DATAGRAM_LEN - DATAGRAM_OVERHEAD;

    /// A sealer for `purpose` keys of `schedule`, which must be the schedule of `system` in
    /// `env` (otherwise every receiver rejects the packets).
    pub fn new(
        schedule: KeySchedule,
        purpose: Purpose,
        system: RmSystem,
        env: &Environment,
        nonces: NonceSequence,
    ) -> DatagramSealer {
        DatagramSealer {
            schedule,
            purpose,
            system,
            environment: EnvironmentTag::of(env),
            nonces,
            sealed_key: None,
            discovery_key: None,
            max_len: MAX_DATAGRAM_LEN,
        }
    }

    /// The same layout for link frames, which may be larger than a datagram: packets up to
    /// `max_len` bytes (e.g. [`crate::wire::DEFAULT_MAX_FRAME_LEN`]).
    pub fn with_max_len(mut self, max_len: usize) -> DatagramSealer {
        self.max_len = max_len;
        self
    }

    /// Length of the datagram sealing `payload_len` bytes (also of a discovery packet with a
    /// body of that length).
    pub fn sealed_len(payload_len: usize) -> usize {
        payload_len.saturating_add(DATAGRAM_OVERHEAD)
    }

    /// Seals `plaintext` as a `tag` datagram in the epoch of `now_unix_secs`.
    ///
    /// Fails for discovery tags ([`WireError::MustBeVisible`]), payloads over
    /// [`Self::MAX_PAYLOAD_LEN`], and an exhausted nonce sequence.
    pub fn seal(
        &mut self,
        tag: Tag,
        now_unix_secs: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        if tag.is_discovery() {
            return Err(WireError::MustBeVisible { tag });
        }
        let (prefix, nonce, epoch) = self.prefix(tag, now_unix_secs, plaintext.len())?;
        let key = cached_key(&mut self.sealed_key, &self.schedule, self.purpose, epoch);
        let mut out = Vec::with_capacity(Self::sealed_len(plaintext.len()));
        out.extend_from_slice(&prefix);
        key.seal_into(nonce, &prefix, plaintext, &mut out);
        Ok(out)
    }

    /// Builds a `tag` discovery packet: `body` in the clear, followed by a keyed tag over every
    /// byte before it so that members ignore forgeries.
    ///
    /// Fails for non-discovery tags ([`WireError::MustBeSealed`]), bodies over
    /// [`Self::MAX_PAYLOAD_LEN`], and an exhausted nonce sequence.
    pub fn seal_visible(
        &mut self,
        tag: Tag,
        now_unix_secs: u64,
        body: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        if !tag.is_discovery() {
            return Err(WireError::MustBeSealed { tag });
        }
        let (prefix, _, epoch) = self.prefix(tag, now_unix_secs, body.len())?;
        let key = cached_key(&mut self.discovery_key, &self.schedule, Purpose::DiscoveryTag, epoch);
        let mut out = Vec::with_capacity(Self::sealed_len(body.len()));
        out.extend_from_slice(&prefix);
        out.extend_from_slice(body);
        let mac = key.tag(&out);
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// Checks the length, then takes a nonce and encodes tag and header.
    fn prefix(
        &mut self,
        tag: Tag,
        now_unix_secs: u64,
        payload_len: usize,
    ) -> Result<([u8; PREFIX_LEN], Nonce, Epoch), WireError> {
        let len = Self::sealed_len(payload_len);
        if len > self.max_len {
            return Err(WireError::DatagramTooLarge { len, max: self.max_len });
        }
        let nonce = self.nonces.next_nonce()?;
        let epoch = self.schedule.epoch_at(now_unix_secs);
        let header = VisibleHeader {
            flags: 0,
            system: self.system,
            environment: self.environment,
            epoch,
            sender: nonce.sender,
            counter: nonce.counter,
        };
        let mut prefix = [0u8; PREFIX_LEN];
        let (tag_bytes, header_bytes) = prefix.split_at_mut(Tag::LEN);
        tag_bytes.copy_from_slice(tag.as_bytes());
        header_bytes.copy_from_slice(&header.to_bytes());
        Ok((prefix, nonce, epoch))
    }
}

/// Checks and opens received datagrams and discovery packets for one system and environment.
///
/// Checks run cheapest first and stop at the first failure: length and version, RmSystem,
/// environment, key epoch (within the window of [`KeySchedule::accepts`], sized from the
/// maximum clock skew),
/// authentication, and last the replay window, so that only authentic packets touch it.
#[derive(Debug)]
pub struct DatagramOpener {
    schedule: KeySchedule,
    purpose: Purpose,
    system: RmSystem,
    environment: EnvironmentTag,
    replay: ReplayGuard,
    keys: BTreeMap<(Purpose, Epoch), EpochKey>,
    max_len: usize,
}

impl DatagramOpener {
    /// An opener for datagrams sealed with `purpose` keys of `schedule`, the schedule of
    /// `system` in `env`, keeping replay windows for [`DEFAULT_REPLAY_SENDERS`] senders.
    pub fn new(
        schedule: KeySchedule,
        purpose: Purpose,
        system: RmSystem,
        env: &Environment,
    ) -> DatagramOpener {
        DatagramOpener {
            schedule,
            purpose,
            system,
            environment: EnvironmentTag::of(env),
            replay: ReplayGuard::new(DEFAULT_REPLAY_SENDERS),
            keys: BTreeMap::new(),
            max_len: MAX_DATAGRAM_LEN,
        }
    }

    /// Accepts packets up to `max_len` bytes (for link frames; see
    /// [`DatagramSealer::with_max_len`]).
    pub fn with_max_len(mut self, max_len: usize) -> DatagramOpener {
        self.max_len = max_len;
        self
    }

    /// Checks and decrypts a sealed datagram received at `now_unix_secs`.
    pub fn open(&mut self, bytes: &[u8], now_unix_secs: u64) -> Result<OpenedDatagram, Rejection> {
        let (tag, header, current, sealed) = self.check_prefix(bytes, now_unix_secs)?;
        let aad = bytes.get(..PREFIX_LEN).unwrap_or_default();
        let key = self.key(self.purpose, header.epoch, current);
        let plaintext =
            key.open(header.nonce(), aad, sealed).map_err(|_| Rejection::DecryptFailure { tag })?;
        self.check_replay(&header)?;
        Ok(OpenedDatagram { tag, header, plaintext })
    }

    /// Checks a discovery packet received at `now_unix_secs` and returns its body.
    pub fn open_visible(
        &mut self,
        bytes: &[u8],
        now_unix_secs: u64,
    ) -> Result<OpenedDatagram, Rejection> {
        let (tag, header, current, _) = self.check_prefix(bytes, now_unix_secs)?;
        let split = bytes.len().saturating_sub(TAG_LEN);
        let (tagged, mac) = bytes.split_at_checked(split).unwrap_or_default();
        let key = self.key(Purpose::DiscoveryTag, header.epoch, current);
        if !key.verify_tag(tagged, mac) {
            return Err(Rejection::BadTag { tag });
        }
        self.check_replay(&header)?;
        let body = tagged.get(PREFIX_LEN..).unwrap_or_default().to_vec();
        Ok(OpenedDatagram { tag, header, plaintext: body })
    }

    /// The checks before authentication; returns the tag, header, our current epoch and the
    /// bytes after the header.
    fn check_prefix<'a>(
        &mut self,
        bytes: &'a [u8],
        now_unix_secs: u64,
    ) -> Result<(Tag, VisibleHeader, Epoch, &'a [u8]), Rejection> {
        if bytes.len() > self.max_len {
            return Err(Rejection::Oversized {
                len: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
                max: u64::try_from(self.max_len).unwrap_or(u64::MAX),
            });
        }
        let truncated = Rejection::Truncated { len: bytes.len(), min: DATAGRAM_OVERHEAD };
        let (tag, rest) = bytes.split_first_chunk::<4>().ok_or(truncated.clone())?;
        // The version is read before the full length is required: a newer layout may be
        // shorter, and is reported as unsupported rather than truncated.
        let header = match VisibleHeader::from_bytes(rest) {
            Err(Rejection::Truncated { .. }) => return Err(truncated),
            other => other?,
        };
        if bytes.len() < DATAGRAM_OVERHEAD {
            return Err(truncated);
        }
        let tag = Tag::from_bytes(*tag);
        if header.system != self.system {
            return Err(Rejection::ForeignSystem { system: header.system });
        }
        if header.environment != self.environment {
            return Err(Rejection::ForeignEnvironment { environment: header.environment });
        }
        let current = self.schedule.epoch_at(now_unix_secs);
        if !self.schedule.accepts(current, header.epoch) {
            return Err(Rejection::StaleEpoch { epoch: header.epoch.0, current: current.0 });
        }
        let schedule = &self.schedule;
        self.keys.retain(|(_, epoch), _| schedule.accepts(current, *epoch));
        let after = bytes.get(PREFIX_LEN..).unwrap_or_default();
        Ok((tag, header, current, after))
    }

    fn check_replay(&mut self, header: &VisibleHeader) -> Result<(), Rejection> {
        self.replay
            .check_and_record(header.sender, header.counter)
            .map_err(|_| Rejection::Replay { sender: header.sender, counter: header.counter })
    }

    /// The key of `purpose` in `epoch`, derived once per epoch. The cache holds only accepted
    /// epochs (pruned in `check_prefix`) and at most [`MAX_CACHED_KEYS`] keys: when full, the
    /// key farthest from `current` makes room.
    fn key(&mut self, purpose: Purpose, epoch: Epoch, current: Epoch) -> &EpochKey {
        if self.keys.len() >= MAX_CACHED_KEYS && !self.keys.contains_key(&(purpose, epoch)) {
            let farthest =
                self.keys.keys().copied().max_by_key(|(_, cached)| cached.0.abs_diff(current.0));
            if let Some(farthest) = farthest {
                self.keys.remove(&farthest);
            }
        }
        let schedule = &self.schedule;
        self.keys.entry((purpose, epoch)).or_insert_with(|| schedule.key(purpose, epoch))
    }
}

/// The cached key of `purpose` for `epoch`, derived again when the epoch changed.
fn cached_key<'a>(
    slot: &'a mut Option<EpochKey>,
    schedule: &KeySchedule,
    purpose: Purpose,
    epoch: Epoch,
) -> &'a EpochKey {
    if slot.as_ref().is_some_and(|key| key.epoch() != epoch) {
        *slot = None;
    }
    slot.get_or_insert_with(|| schedule.key(purpose, epoch))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crypto::SystemKey;
    use crate::id::InstanceId;
    use crate::wire::fuzzing::{self, test_opener, test_sealer, NOW, SYSTEM};
    use crate::wire::peek_tag;
    use crate::wire::{RejectCounters, RejectReason};

    const PERIOD: u64 = crate::crypto::DEFAULT_EPOCH_PERIOD_SECS;
    const ALICE: InstanceId = InstanceId([0xa1; 16]);

    /// Seconds that put a packet one epoch past the accepted window of the test schedule.
    fn past_window() -> u64 {
        (fuzzing::test_schedule().epoch_window() + 1) * PERIOD
    }

    fn live() -> Environment {
        Environment::live()
    }

    fn sealer_for(key: [u8; 32], system: RmSystem, env: &str) -> DatagramSealer {
        let env: Environment = env.parse().unwrap();
        let schedule = KeySchedule::new(&SystemKey::from_bytes(key), system, &env, PERIOD);
        DatagramSealer::new(schedule, Purpose::LanDatagram, system, &env, NonceSequence::new(ALICE))
    }

    /// Opens with `open`, counting a rejection; returns the rejection or panics on acceptance.
    fn rejected(
        counters: &mut RejectCounters,
        result: Result<OpenedDatagram, Rejection>,
    ) -> Rejection {
        match result {
            Ok(opened) => panic!("accepted: {opened:?}"),
            Err(rejection) => {
                counters.record(&rejection);
                rejection
            }
        }
    }

    fn arb_sealed_tag() -> impl Strategy<Value = Tag> {
        prop_oneof![
            proptest::sample::select(Tag::KNOWN.to_vec()),
            any::<[u8; 4]>().prop_map(Tag::from_bytes),
        ]
        .prop_filter("discovery tags are sent visible", |t| !t.is_discovery())
    }

    #[test]
    fn known_bytes() {
        let header = VisibleHeader {
            flags: 0,
            system: SYSTEM,
            environment: EnvironmentTag::of(&live()),
            epoch: Epoch(19_675),
            sender: InstanceId([0x11; 16]),
            counter: 1,
        };
        // The header bytes themselves are pinned in header.rs.
        let expected = hex::encode(header.to_bytes());
        let mut sealer = test_sealer(InstanceId([0x11; 16]));
        let sealed = sealer.seal(Tag::Tubt, NOW, b"sale 9.95").unwrap();
        assert_eq!(sealed.len(), DatagramSealer::sealed_len(9));
        assert_eq!(hex::encode(&sealed[..PREFIX_LEN]), format!("54554254{expected}"));
        let packet = sealer.seal_visible(Tag::Idqy, NOW, b"who").unwrap();
        assert_eq!(&packet[..4], b"IDQY");
        assert_eq!(&packet[PREFIX_LEN..PREFIX_LEN + 3], b"who", "discovery bodies are visible");
        assert_eq!(packet[PREFIX_LEN - 1], 2, "counter 2: one sequence for both kinds");
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let mut sealer = test_sealer(ALICE);
        let sealed = sealer.seal(Tag::Tubt, NOW, b"a sale of 9.95").unwrap();
        let packet = sealer.seal_visible(Tag::Idrp, NOW, b"I am here").unwrap();
        let mut opener = test_opener();
        let mut counters = RejectCounters::new();
        let mut flips = 0;
        for (bytes, visible) in [(&sealed, false), (&packet, true)] {
            for i in 0..bytes.len() {
                for mask in [0x01, 0x80, 0xff] {
                    let mut bad = bytes.clone();
                    bad[i] ^= mask;
                    let result = if visible {
                        opener.open_visible(&bad, NOW)
                    } else {
                        opener.open(&bad, NOW)
                    };
                    let rejection = rejected(&mut counters, result);
                    flips += 1;
                    let expected = match i {
                        4 => RejectReason::UnsupportedVersion,
                        6..=21 => RejectReason::ForeignSystem,
                        22..=25 => RejectReason::ForeignEnvironment,
                        // The low epoch bit lands in the accepted window; the others do not.
                        26..=33 if !(i == 33 && mask == 0x01) => RejectReason::StaleEpoch,
                        _ if visible => RejectReason::BadTag,
                        _ => RejectReason::DecryptFailure,
                    };
                    assert_eq!(rejection.reason(), expected, "byte {i} ^ {mask:#x}: {rejection}");
                }
            }
        }
        assert_eq!(counters.total(), flips);
        assert_eq!(counters.get(RejectReason::Replay), 0);
        // Nothing was recorded in the replay window: the originals still open, once.
        assert_eq!(opener.open(&sealed, NOW).unwrap().plaintext, b"a sale of 9.95");
        assert_eq!(opener.open_visible(&packet, NOW).unwrap().plaintext, b"I am here");
    }

    #[test]
    fn each_rejection_has_its_reason_and_is_counted() {
        let mut opener = test_opener();
        let mut counters = RejectCounters::new();
        let good = sealer_for([0x42; 32], SYSTEM, "live").seal(Tag::Tubt, NOW, b"x").unwrap();
        assert_eq!(opener.open(&good, NOW).unwrap().plaintext, b"x");

        let cases: Vec<(&str, Vec<u8>, u64, RejectReason)> = vec![
            (
                "wrong system key",
                sealer_for([0x43; 32], SYSTEM, "live").seal(Tag::Tubt, NOW, b"x").unwrap(),
                NOW,
                RejectReason::DecryptFailure,
            ),
            (
                "another RmSystem",
                sealer_for([0x42; 32], RmSystem([1, 2, 3, 4]), "live")
                    .seal(Tag::Tubt, NOW, b"x")
                    .unwrap(),
                NOW,
                RejectReason::ForeignSystem,
            ),
            (
                "another environment",
                sealer_for([0x42; 32], SYSTEM, "test").seal(Tag::Tubt, NOW, b"x").unwrap(),
                NOW,
                RejectReason::ForeignEnvironment,
            ),
            ("replayed", good.clone(), NOW, RejectReason::Replay),
            ("truncated", good[..DATAGRAM_OVERHEAD - 1].to_vec(), NOW, RejectReason::Truncated),
            ("oversized", vec![0; MAX_DATAGRAM_LEN + 1], NOW, RejectReason::Oversized),
            ("after the window", good.clone(), NOW + past_window(), RejectReason::StaleEpoch),
            ("before the window", good.clone(), NOW - past_window(), RejectReason::StaleEpoch),
        ];
        for (name, bytes, now, reason) in &cases {
            let rejection = rejected(&mut counters, opener.open(bytes, *now));
            assert_eq!(rejection.reason(), *reason, "{name}: {rejection}");
        }
        for reason in [RejectReason::ForeignSystem, RejectReason::Replay, RejectReason::Oversized] {
            assert_eq!(counters.get(reason), 1, "{reason}");
        }
        assert_eq!(counters.get(RejectReason::StaleEpoch), 2);
        assert_eq!(counters.total(), u64::try_from(cases.len()).unwrap());

        let mut short = good.clone();
        short.truncate(4);
        assert_eq!(
            opener.open(&short, NOW),
            Err(Rejection::Truncated { len: 4, min: DATAGRAM_OVERHEAD })
        );
        let mut newer = good.clone();
        newer[4] = 2;
        newer.truncate(10);
        assert_eq!(opener.open(&newer, NOW), Err(Rejection::UnsupportedVersion { version: 2 }));
        for len in 0..DATAGRAM_OVERHEAD {
            let reason = opener.open(&good[..len], NOW).unwrap_err().reason();
            assert_eq!(reason, RejectReason::Truncated, "len {len}");
        }
    }

    #[test]
    fn discovery_rejections() {
        let mut opener = test_opener();
        let packet_of = |key, system, env: &str, now| {
            sealer_for(key, system, env).seal_visible(Tag::Idqy, now, b"hi").unwrap()
        };
        let good = packet_of([0x42; 32], SYSTEM, "live", NOW);
        let cases = [
            (packet_of([0x43; 32], SYSTEM, "live", NOW), RejectReason::BadTag),
            (
                packet_of([0x42; 32], RmSystem([1, 2, 3, 4]), "live", NOW),
                RejectReason::ForeignSystem,
            ),
            (packet_of([0x42; 32], SYSTEM, "test", NOW), RejectReason::ForeignEnvironment),
            (packet_of([0x42; 32], SYSTEM, "live", NOW + past_window()), RejectReason::StaleEpoch),
            (good[..DATAGRAM_OVERHEAD - 1].to_vec(), RejectReason::Truncated),
        ];
        let mut counters = RejectCounters::new();
        for (bytes, reason) in &cases {
            let rejection = rejected(&mut counters, opener.open_visible(bytes, NOW));
            assert_eq!(rejection.reason(), *reason, "{rejection}");
        }
        assert_eq!(opener.open_visible(&good, NOW).unwrap().plaintext, b"hi");
        let rejection = rejected(&mut counters, opener.open_visible(&good, NOW));
        assert_eq!(rejection, Rejection::Replay { sender: ALICE, counter: 1 });
        assert_eq!(counters.total(), 6);
    }

    #[test]
    fn every_epoch_in_the_window_is_accepted() {
        // Default schedule: 24 h period, one day of skew per node, so 2 epochs either side.
        assert_eq!(fuzzing::test_schedule().epoch_window(), 2);
        for offset in -2i64..=2 {
            let mut opener = test_opener();
            let now = NOW.checked_add_signed(offset * PERIOD as i64).unwrap();
            let mut sealer = test_sealer(ALICE);
            let sealed = sealer.seal(Tag::Tuev, now, b"event").unwrap();
            let opened = opener.open(&sealed, NOW).unwrap();
            assert_eq!(opened.header.epoch, test_sealer_epoch(now));
            let packet = sealer.seal_visible(Tag::Idrp, now, b"here").unwrap();
            assert_eq!(opener.open_visible(&packet, NOW).unwrap().plaintext, b"here");
        }
    }

    fn test_sealer_epoch(now: u64) -> Epoch {
        fuzzing::test_schedule().epoch_at(now)
    }

    #[test]
    fn forgeries_do_not_move_the_replay_window() {
        let mut sealer = test_sealer(ALICE);
        let first = sealer.seal(Tag::Tubt, NOW, b"one").unwrap();
        let mut forged = first.clone();
        // Counter field (last 8 header bytes) set far ahead: would push counter 1 out.
        forged[PREFIX_LEN - 8..PREFIX_LEN].copy_from_slice(&1_000_000u64.to_be_bytes());
        let mut opener = test_opener();
        assert_eq!(opener.open(&forged, NOW), Err(Rejection::DecryptFailure { tag: Tag::Tubt }));
        assert!(opener.open(&first, NOW).is_ok());
    }

    #[test]
    fn kinds_do_not_cross_and_tags_are_checked() {
        let mut sealer = test_sealer(ALICE);
        assert_eq!(
            sealer.seal(Tag::Idqy, NOW, b""),
            Err(WireError::MustBeVisible { tag: Tag::Idqy })
        );
        assert_eq!(
            sealer.seal_visible(Tag::Tubt, NOW, b""),
            Err(WireError::MustBeSealed { tag: Tag::Tubt })
        );
        let sealed = sealer.seal(Tag::Tubt, NOW, b"secret").unwrap();
        let packet = sealer.seal_visible(Tag::Idqy, NOW, b"hello").unwrap();
        let mut opener = test_opener();
        assert_eq!(peek_tag(&sealed), Some(Tag::Tubt));
        assert_eq!(peek_tag(&packet), Some(Tag::Idqy));
        assert_eq!(peek_tag(b"IDQ"), None);
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "payload is encrypted");
        assert_eq!(opener.open_visible(&sealed, NOW), Err(Rejection::BadTag { tag: Tag::Tubt }));
        assert_eq!(opener.open(&packet, NOW), Err(Rejection::DecryptFailure { tag: Tag::Idqy }));

        let future = sealer.seal(Tag::Unknown(*b"NEWT"), NOW, b"?").unwrap();
        assert_eq!(opener.open(&future, NOW).unwrap().tag, Tag::Unknown(*b"NEWT"));
    }

    #[test]
    fn size_limits() {
        let mut sealer = test_sealer(ALICE);
        let max = vec![7u8; DatagramSealer::MAX_PAYLOAD_LEN];
        let sealed = sealer.seal(Tag::Tuda, NOW, &max).unwrap();
        assert_eq!(sealed.len(), MAX_DATAGRAM_LEN);
        assert_eq!(test_opener().open(&sealed, NOW).unwrap().plaintext, max);
        let over = vec![7u8; DatagramSealer::MAX_PAYLOAD_LEN + 1];
        let err = WireError::DatagramTooLarge { len: MAX_DATAGRAM_LEN + 1, max: MAX_DATAGRAM_LEN };
        assert_eq!(sealer.seal(Tag::Tuda, NOW, &over), Err(err.clone()));
        assert_eq!(sealer.seal_visible(Tag::Idrp, NOW, &over), Err(err));
        // A refused seal took no nonce.
        let next = sealer.seal(Tag::Tuda, NOW, b"").unwrap();
        assert_eq!(VisibleHeader::from_bytes(&next[4..]).unwrap().counter, 2);
    }

    #[test]
    fn key_cache_stays_small_across_epochs() {
        let mut opener = test_opener();
        for day in 0..20 {
            let now = NOW + day * PERIOD;
            let mut sealer = test_sealer(InstanceId([u8::try_from(day).unwrap(); 16]));
            for at in [now - 2 * PERIOD, now - PERIOD, now, now + PERIOD, now + 2 * PERIOD] {
                let sealed = sealer.seal(Tag::Tubt, at, b"x").unwrap();
                opener.open(&sealed, now).unwrap();
                let packet = sealer.seal_visible(Tag::Idqy, at, b"x").unwrap();
                opener.open_visible(&packet, now).unwrap();
            }
            assert!(opener.keys.len() <= 10, "{} keys cached", opener.keys.len());
        }
    }

    #[test]
    fn key_cache_is_capped_for_a_wide_window() {
        // 30 days of skew with a 24 h period: 60 epochs either side, 242 possible keys.
        let schedule = fuzzing::test_schedule().with_max_clock_skew(30 * 86_400);
        assert_eq!(schedule.epoch_window(), 60);
        let mut opener =
            DatagramOpener::new(schedule, Purpose::LanDatagram, SYSTEM, &Environment::live());
        let mut sealer = test_sealer(ALICE);
        for offset in -60i64..=60 {
            let at = NOW.checked_add_signed(offset * PERIOD as i64).unwrap();
            let sealed = sealer.seal(Tag::Tubt, at, b"x").unwrap();
            assert_eq!(opener.open(&sealed, NOW).unwrap().plaintext, b"x", "offset {offset}");
            let packet = sealer.seal_visible(Tag::Idqy, at, b"x").unwrap();
            opener.open_visible(&packet, NOW).unwrap();
            assert!(opener.keys.len() <= MAX_CACHED_KEYS, "{} keys cached", opener.keys.len());
        }
        // An evicted key is derived again.
        let again = sealer.seal(Tag::Tubt, NOW - 60 * PERIOD, b"y").unwrap();
        assert_eq!(opener.open(&again, NOW).unwrap().plaintext, b"y");
        let past = sealer.seal(Tag::Tubt, NOW + 61 * PERIOD, b"z").unwrap();
        let rejection = rejected(&mut RejectCounters::new(), opener.open(&past, NOW));
        assert_eq!(rejection.reason(), RejectReason::StaleEpoch);
    }

    proptest! {
        #[test]
        fn sealed_round_trip(
            tag in arb_sealed_tag(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..1500),
            now in 0u64..4_000_000_000,
            sender in any::<[u8; 16]>(),
            messages in 1usize..4,
        ) {
            let schedule = fuzzing::test_schedule();
            let mut sealer = test_sealer(InstanceId(sender));
            let mut opener = test_opener();
            for counter in 1..=messages {
                let sealed = sealer.seal(tag, now, &plaintext).unwrap();
                prop_assert_eq!(sealed.len(), DatagramSealer::sealed_len(plaintext.len()));
                let opened = opener.open(&sealed, now).unwrap();
                prop_assert_eq!(opened.tag, tag);
                prop_assert_eq!(&opened.plaintext, &plaintext);
                let header = opened.header;
                prop_assert_eq!(header.counter, u64::try_from(counter).unwrap());
                prop_assert_eq!(header.sender, InstanceId(sender));
                prop_assert_eq!(header.epoch, schedule.epoch_at(now));
                prop_assert_eq!((header.system, header.flags), (SYSTEM, 0));
                prop_assert_eq!(VisibleHeader::from_bytes(&sealed[4..]).unwrap(), header);
            }
        }

        #[test]
        fn visible_round_trip(
            tag in prop_oneof![Just(Tag::Idqy), Just(Tag::Idrp)],
            body in proptest::collection::vec(any::<u8>(), 0..1500),
            now in 0u64..4_000_000_000,
        ) {
            let mut sealer = test_sealer(ALICE);
            let packet = sealer.seal_visible(tag, now, &body).unwrap();
            prop_assert_eq!(packet.len(), DatagramSealer::sealed_len(body.len()));
            let opened = test_opener().open_visible(&packet, now).unwrap();
            prop_assert_eq!(opened.tag, tag);
            prop_assert_eq!(opened.plaintext, body);
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_open(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            valid_prefix in any::<bool>(),
        ) {
            let mut input = Vec::new();
            if valid_prefix {
                let sealed = test_sealer(ALICE).seal(Tag::Tubt, NOW, b"").unwrap();
                input.extend_from_slice(&sealed[..PREFIX_LEN]);
            }
            input.extend_from_slice(&bytes);
            let mut opener = test_opener();
            prop_assert!(opener.open(&input, NOW).is_err());
            prop_assert!(opener.open_visible(&input, NOW).is_err());
            fuzzing::datagram_open(&bytes);
            fuzzing::visible_open(&bytes);
        }
    }
}
