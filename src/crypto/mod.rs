//! Keys and sealing: everything secret is derived from the system key.
//!
//! - [`keys`]: the system key, per-purpose and per-epoch key derivation (HKDF-SHA256), the
//!   accepted epoch window (sized from the maximum clock skew).
//! - [`seal`]: AEAD sealing (XChaCha20-Poly1305) with a nonce scheme that cannot repeat under one
//!   key, and the discovery tag.
//! - [`replay`]: per-sender replay windows.
//! - [`admission`]: the install-id proof that admits a member to a relay (Ed25519, ring).
//!
//! This module does not frame, store or send anything, and never logs key material.

pub mod admission;
pub mod keys;
pub mod replay;
pub mod seal;

pub use keys::{
    Epoch, EpochKey, KeySchedule, Purpose, SystemKey, DEFAULT_EPOCH_PERIOD_SECS,
    DEFAULT_MAX_CLOCK_SKEW_SECS,
};
pub use replay::{ReplayGuard, ReplayWindow};
pub use seal::{Nonce, NonceSequence, TAG_LEN};

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong epoch, tampered bytes or wrong associated data.
    #[error("decryption failed (wrong key, wrong epoch or tampered data)")]
    Decrypt,
    /// Ciphertext shorter than the authentication tag.
    #[error("sealed payload of {len} bytes is shorter than the {TAG_LEN}-byte tag")]
    Truncated {
        /// Length received.
        len: usize,
    },
    /// The epoch is outside the accepted window.
    #[error("key epoch {epoch} is outside the accepted window around {current}")]
    StaleEpoch {
        /// Epoch of the packet.
        epoch: u64,
        /// Our current epoch.
        current: u64,
    },
    /// The sender's counter was seen before or is too old.
    #[error("replayed or too old (sender counter {counter})")]
    Replay {
        /// The repeated counter.
        counter: u64,
    },
    /// This process sealed 2^64 messages; a new instance id is needed.
    #[error("nonce counter exhausted; restart the process")]
    NonceExhausted,
}
