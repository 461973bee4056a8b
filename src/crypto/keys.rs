//! The system key and the keys derived from it.
//!
//! Every key is `HKDF-SHA256(ikm = system key, salt = "meshnode v1" || RmSystem || env,
//! info = purpose label || epoch)`. Binding RmSystem and environment into the salt means a key
//! of another system or environment never opens our packets even if someone copied the system
//! key between them. Epoch = Unix time / period (default 24 h): the current key changes on a
//! schedule by derivation alone.
//!
//! Receivers accept epochs within a window around their own, sized from the configured maximum
//! clock skew (default one day): two nodes each off by that much in opposite directions are
//! `2 * skew` apart, so the window is `max(1, ceil(2 * skew / period))` epochs either side. A
//! fixed "previous, current, next" window refused traffic between such nodes (netsim seed 96,
//! `netsim/tests/core_chain.rs::regression_seed_96_all_faults`). This module does not read
//! clocks: callers pass Unix time in.

use std::fmt;

use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::id::{Environment, RmSystem};

/// Default epoch period: 24 hours.
pub const DEFAULT_EPOCH_PERIOD_SECS: u64 = 86_400;

/// Default largest clock error of one node, either way: one day. Two nodes may then differ by
/// two days.
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 = 86_400;

/// The long random secret shared by the members of a system (seed "Key"). 256 bits.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SystemKey([u8; 32]);

impl SystemKey {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// A fresh key from a cryptographic RNG.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut out = [0u8; 32];
        rng.fill_bytes(&mut out);
        SystemKey(out)
    }

    /// Wraps raw key bytes (from the key file).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SystemKey(bytes)
    }

    /// The raw bytes, for writing the key file only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SystemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemKey(..)")
    }
}

/// What a derived key is for. Keys of different purposes are independent, so a flaw in the use
/// of one cannot be turned against another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// The tag on visible discovery packets (IDQY/IDRP).
    DiscoveryTag,
    /// Sealed LAN datagrams (multicast and unicast UDP).
    LanDatagram,
    /// Link (QUIC/TCP) membership proofs and sealed frames.
    Link,
    /// The membership secret of the link handshake (`net::handshake`): mixed with an x25519
    /// exchange into the proofs and session keys of one TCP link, or bound to a TLS exporter on
    /// QUIC. Kept apart from [`Purpose::Link`], which seals the core's frames.
    LinkProof,
    /// Payloads sent through rendezvous relays.
    Relay,
    /// The daily mailbox pseudonyms on rendezvous relays (design §2.5): a key apart from
    /// [`Purpose::Relay`] with its own one-day epoch, so mailbox ids say nothing about the
    /// payload key.
    RelayMailbox,
    /// USB / folder media bundles.
    MediaBundle,
    /// Records of the TUBT daily log files (DATI).
    Log,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::DiscoveryTag => b"meshnode discovery-tag",
            Purpose::LanDatagram => b"meshnode lan-datagram",
            Purpose::Link => b"meshnode link",
            Purpose::LinkProof => b"meshnode link-proof",
            Purpose::Relay => b"meshnode relay",
            Purpose::RelayMailbox => b"meshnode relay-mailbox",
            Purpose::MediaBundle => b"meshnode media-bundle",
            Purpose::Log => b"meshnode log",
        }
    }
}

/// A key epoch: Unix time divided by the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Derives the per-purpose, per-epoch keys of one system, and says which epochs a receiver
/// accepts.
#[derive(Clone)]
pub struct KeySchedule {
    hkdf: Hkdf<Sha256>,
    period_secs: u64,
    max_clock_skew_secs: u64,
}

impl fmt::Debug for KeySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySchedule")
            .field("period_secs", &self.period_secs)
            .field("max_clock_skew_secs", &self.max_clock_skew_secs)
            .finish()
    }
}

impl KeySchedule {
    /// The schedule of `system` in `env` keyed by `key`. `period_secs` of 0 is treated as 1. The
    /// maximum clock skew is [`DEFAULT_MAX_CLOCK_SKEW_SECS`]; see [`Self::with_max_clock_skew`].
    pub fn new(key: &SystemKey, system: RmSystem, env: &Environment, period_secs: u64) -> Self {
        let mut salt = Vec::with_capacity(64);
        salt.extend_from_slice(b"meshnode v1");
        salt.extend_from_slice(&system.to_bytes());
        salt.extend_from_slice(env.as_str().as_bytes());
        KeySchedule {
            hkdf: Hkdf::new(Some(&salt), key.expose()),
            period_secs: period_secs.max(1),
            max_clock_skew_secs: DEFAULT_MAX_CLOCK_SKEW_SECS,
        }
    }

    /// The same schedule for nodes whose clocks are each off by at most `secs`, either way.
    ///
    /// Only the accepted window ([`Self::epoch_window`]) depends on it; the keys do not, so
    /// nodes with different settings still open each other's packets while their clocks are
    /// close enough for both.
    pub fn with_max_clock_skew(mut self, secs: u64) -> Self {
        self.max_clock_skew_secs = secs;
        self
    }

    /// The epoch period in seconds.
    pub fn period_secs(&self) -> u64 {
        self.period_secs
    }

    /// The largest clock error of one node, in seconds.
    pub fn max_clock_skew_secs(&self) -> u64 {
        self.max_clock_skew_secs
    }

    /// How many epochs either side of ours are accepted: `max(1, ceil(2 * skew / period))`.
    ///
    /// Two nodes each off by the maximum skew in opposite directions are `2 * skew` apart, so
    /// their epochs differ by at most that many periods, rounded up. At least 1, so that a
    /// changeover near an epoch boundary loses nothing even with exact clocks. The window is
    /// also how long a captured packet stays acceptable to a node whose replay windows were
    /// lost (a restart), so keep the skew honest rather than generous.
    pub fn epoch_window(&self) -> u64 {
        self.max_clock_skew_secs.saturating_mul(2).div_ceil(self.period_secs).max(1)
    }

    /// The epoch at Unix time `unix_secs`.
    pub fn epoch_at(&self, unix_secs: u64) -> Epoch {
        Epoch(unix_secs / self.period_secs)
    }

    /// Whether a packet sealed in `epoch` is accepted when ours is `current`: epochs at most
    /// [`Self::epoch_window`] away either way are.
    pub fn accepts(&self, current: Epoch, epoch: Epoch) -> bool {
        epoch.0.abs_diff(current.0) <= self.epoch_window()
    }

    /// The key for `purpose` in `epoch`.
    pub fn key(&self, purpose: Purpose, epoch: Epoch) -> EpochKey {
        let mut info = Vec::with_capacity(40);
        info.extend_from_slice(purpose.label());
        info.extend_from_slice(&epoch.0.to_be_bytes());
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        self.hkdf.expand(&info, &mut okm).expect("32-byte HKDF output");
        let key = EpochKey::from_bytes(okm, purpose, epoch);
        okm.zeroize();
        key
    }

    /// A purpose key that does not change with epochs, for data kept for years (the log key of
    /// DATI files is per epoch too, but the epoch is stored beside each record).
    pub fn static_key(&self, purpose: Purpose) -> EpochKey {
        self.key(purpose, Epoch(u64::MAX))
    }
}

pub use super::seal::EpochKey;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn schedule(key: &SystemKey, system: &str, env: &str) -> KeySchedule {
        KeySchedule::new(key, system.parse().unwrap(), &env.parse().unwrap(), 86_400)
    }

    #[test]
    fn keys_differ_by_purpose_epoch_system_env_and_key() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let k = SystemKey::random(&mut rng);
        let other = SystemKey::random(&mut rng);
        let s = schedule(&k, "1,2,3,4", "live");
        let base = s.key(Purpose::LanDatagram, Epoch(10)).fingerprint();
        assert_eq!(base, s.key(Purpose::LanDatagram, Epoch(10)).fingerprint());
        for variant in [
            s.key(Purpose::Link, Epoch(10)),
            s.key(Purpose::LanDatagram, Epoch(11)),
            schedule(&k, "1,2,3,5", "live").key(Purpose::LanDatagram, Epoch(10)),
            schedule(&k, "1,2,3,4", "test").key(Purpose::LanDatagram, Epoch(10)),
            schedule(&other, "1,2,3,4", "live").key(Purpose::LanDatagram, Epoch(10)),
        ] {
            assert_ne!(variant.fingerprint(), base);
        }
    }

    fn schedule_with(period_secs: u64, skew_secs: u64) -> KeySchedule {
        let key = SystemKey::from_bytes([1; 32]);
        KeySchedule::new(&key, "1,2,3,4".parse().unwrap(), &"live".parse().unwrap(), period_secs)
            .with_max_clock_skew(skew_secs)
    }

    #[test]
    fn epoch_window_follows_the_skew() {
        let s = schedule(&SystemKey::from_bytes([1; 32]), "1,2,3,4", "live");
        assert_eq!(s.epoch_at(86_400 * 5 + 3), Epoch(5));
        assert_eq!(s.max_clock_skew_secs(), DEFAULT_MAX_CLOCK_SKEW_SECS);
        assert_eq!(s.epoch_window(), 2, "default: 24 h period, one day skew");
        assert_eq!(schedule_with(86_400, 86_400).epoch_window(), 2);
        assert_eq!(schedule_with(3_600, 86_400).epoch_window(), 48);
        assert_eq!(schedule_with(86_400, 0).epoch_window(), 1, "never below 1");
        assert_eq!(schedule_with(3_600, 0).epoch_window(), 1);
        // Rounded up: 2 * 1 h + 1 s is just over two 1 h periods.
        assert_eq!(schedule_with(3_600, 3_600).epoch_window(), 2);
        assert_eq!(schedule_with(3_600, 3_601).epoch_window(), 3);
        assert_eq!(schedule_with(86_400, 43_200).epoch_window(), 1);
        assert_eq!(schedule_with(86_400, 43_201).epoch_window(), 2);
        assert_eq!(schedule_with(1, u64::MAX).epoch_window(), u64::MAX, "saturates");
    }

    #[test]
    fn accepts_exactly_the_window() {
        for (s, window) in [
            (schedule(&SystemKey::from_bytes([1; 32]), "1,2,3,4", "live"), 2),
            (schedule_with(3_600, 86_400), 48),
            (schedule_with(86_400, 0), 1),
        ] {
            let current = Epoch(1_000);
            assert!(s.accepts(current, current));
            assert!(s.accepts(current, Epoch(1_000 - window)), "{s:?}");
            assert!(s.accepts(current, Epoch(1_000 + window)), "{s:?}");
            assert!(!s.accepts(current, Epoch(1_000 - window - 1)), "{s:?}");
            assert!(!s.accepts(current, Epoch(1_000 + window + 1)), "{s:?}");
        }
        // Near zero and u64::MAX (the static key's epoch) nothing wraps.
        let s = schedule_with(86_400, 86_400);
        assert!(s.accepts(Epoch(0), Epoch(2)));
        assert!(!s.accepts(Epoch(0), Epoch(3)));
        assert!(!s.accepts(Epoch(0), Epoch(u64::MAX)));
        assert!(!s.accepts(Epoch(u64::MAX), Epoch(0)));
    }

    #[test]
    fn nodes_skewed_apart_by_twice_the_maximum_accept_each_other() {
        // The netsim seed 96 case: one clock a day fast, the other a day slow.
        for (period, skew) in [(86_400, 86_400), (3_600, 86_400), (86_400, 3_600), (60, 7)] {
            let s = schedule_with(period, skew);
            for now in [1_700_000_000, 1_700_000_000 + period - 1, 1_700_000_000 + period / 2] {
                let fast = s.epoch_at(now + skew);
                let slow = s.epoch_at(now - skew);
                assert!(s.accepts(fast, slow), "period {period} skew {skew} now {now}");
                assert!(s.accepts(slow, fast), "period {period} skew {skew} now {now}");
            }
        }
    }
}
