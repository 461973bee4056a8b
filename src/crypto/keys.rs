//! The system key and the keys derived from it.
//!
//! Every key is `HKDF-SHA256(ikm = system key, salt = "meshnode v1" || RmSystem || env,
//! info = purpose label || epoch)`. Binding RmSystem and environment into the salt means a key
//! of another system or environment never opens our packets even if someone copied the system
//! key between them. Epoch = Unix time / period (default 24 h): the current key changes on a
//! schedule by derivation alone, and receivers accept the previous, current and next epoch so a
//! changeover and modest clock skew lose nothing.

use std::fmt;

use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::id::{Environment, RmSystem};

/// Default epoch period: 24 hours.
pub const DEFAULT_EPOCH_PERIOD_SECS: u64 = 86_400;

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
    /// Payloads sent through rendezvous relays.
    Relay,
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
            Purpose::Relay => b"meshnode relay",
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

/// Derives the per-purpose, per-epoch keys of one system.
#[derive(Clone)]
pub struct KeySchedule {
    hkdf: Hkdf<Sha256>,
    period_secs: u64,
}

impl fmt::Debug for KeySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySchedule").field("period_secs", &self.period_secs).finish()
    }
}

impl KeySchedule {
    /// The schedule of `system` in `env` keyed by `key`. `period_secs` of 0 is treated as 1.
    pub fn new(key: &SystemKey, system: RmSystem, env: &Environment, period_secs: u64) -> Self {
        let mut salt = Vec::with_capacity(64);
        salt.extend_from_slice(b"meshnode v1");
        salt.extend_from_slice(&system.to_bytes());
        salt.extend_from_slice(env.as_str().as_bytes());
        KeySchedule { hkdf: Hkdf::new(Some(&salt), key.expose()), period_secs: period_secs.max(1) }
    }

    /// The epoch period in seconds.
    pub fn period_secs(&self) -> u64 {
        self.period_secs
    }

    /// The epoch at Unix time `unix_secs`.
    pub fn epoch_at(&self, unix_secs: u64) -> Epoch {
        Epoch(unix_secs / self.period_secs)
    }

    /// Whether a packet sealed in `epoch` is accepted when ours is `current`: the previous,
    /// current and next epoch are.
    pub fn accepts(current: Epoch, epoch: Epoch) -> bool {
        epoch.0.abs_diff(current.0) <= 1
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

    #[test]
    fn epoch_window() {
        let s = schedule(&SystemKey::from_bytes([1; 32]), "1,2,3,4", "live");
        assert_eq!(s.epoch_at(86_400 * 5 + 3), Epoch(5));
        assert!(KeySchedule::accepts(Epoch(5), Epoch(4)));
        assert!(KeySchedule::accepts(Epoch(5), Epoch(6)));
        assert!(!KeySchedule::accepts(Epoch(5), Epoch(7)));
        assert!(!KeySchedule::accepts(Epoch(5), Epoch(3)));
    }
}
