//! AEAD sealing with XChaCha20-Poly1305 and the nonce scheme.
//!
//! Nonce (24 bytes) = sender instance id (16 random bytes chosen once per process) || a 64-bit
//! counter that the process increments for every message it seals. Why it never repeats under
//! one key: within a process the counter only goes up and sealing stops before it wraps
//! ([`CryptoError::NonceExhausted`]); two processes would need to draw the same 128-bit instance
//! id, which the birthday bound puts below 2^-64 even after 2^32 process starts. A process never
//! shares its [`NonceSequence`] across threads without a lock, and a data directory is used by
//! one process at a time, so no two writers share an instance id. The counter doubles as the
//! replay sequence number checked by [`crate::crypto::ReplayGuard`].

use std::fmt;
use std::sync::Mutex;

use ring::aead::{Aad, LessSafeKey, UnboundKey, CHACHA20_POLY1305};
use zeroize::{Zeroize, Zeroizing};

use super::{CryptoError, Epoch, Purpose};
use crate::id::InstanceId;

/// Length of the Poly1305 authentication tag appended to every sealed payload.
pub const TAG_LEN: usize = 16;

/// A 24-byte nonce: sender instance id then counter (big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    /// The sealing process.
    pub sender: InstanceId,
    /// Per-process message counter.
    pub counter: u64,
}

impl Nonce {
    /// Encoded length.
    pub const LEN: usize = 24;

    /// The 24 nonce bytes.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..16].copy_from_slice(&self.sender.0);
        out[16..].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    /// Inverse of [`Nonce::to_bytes`].
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        let mut sender = [0u8; 16];
        sender.copy_from_slice(&bytes[..16]);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&bytes[16..]);
        Nonce { sender: InstanceId(sender), counter: u64::from_be_bytes(counter) }
    }
}

/// The nonces of one sealing process: never hands out the same one twice.
#[derive(Debug)]
pub struct NonceSequence {
    sender: InstanceId,
    next: u64,
}

impl NonceSequence {
    /// Starts at counter 1 for `sender` (the process's instance id).
    pub fn new(sender: InstanceId) -> Self {
        NonceSequence { sender, next: 1 }
    }

    /// The next unused nonce.
    pub fn next_nonce(&mut self) -> Result<Nonce, CryptoError> {
        if self.next == u64::MAX {
            return Err(CryptoError::NonceExhausted);
        }
        let nonce = Nonce { sender: self.sender, counter: self.next };
        self.next += 1;
        Ok(nonce)
    }
}

/// XChaCha20-Poly1305 as specified in draft-irtf-cfrg-xchacha §2.3: HChaCha20 of the key and
/// the first 16 nonce bytes gives a subkey, which seals with the IETF ChaCha20-Poly1305 AEAD
/// (RFC 8439) under the nonce `0^4 || last 8 nonce bytes`. This is how the `chacha20poly1305`
/// crate builds it too; the two primitives come from vetted crates (HChaCha20 from RustCrypto's
/// `chacha20`, the AEAD from `ring`, whose assembly is 1.7x faster on a 330-byte record and 2x on
/// an 8 KiB datagram than the portable Rust one; see docs/PERFORMANCE.md). The output is the
/// same, byte for byte: the tests check it against `chacha20poly1305::XChaCha20Poly1305`.
///
/// The subkey depends only on the first 16 nonce bytes, which for a [`Nonce`] are the sender's
/// instance id: a node seals runs of messages under its own id and opens runs from one sender,
/// so the last subkey is kept and HChaCha20 runs once per run, not once per message (it was
/// ~3% of a LAN node's CPU).
struct XChaCha20Poly1305 {
    key: Zeroizing<[u8; 32]>,
    last: Mutex<Option<([u8; 16], LessSafeKey)>>,
}

impl Clone for XChaCha20Poly1305 {
    fn clone(&self) -> Self {
        XChaCha20Poly1305::new(*self.key)
    }
}

impl XChaCha20Poly1305 {
    fn new(key: [u8; 32]) -> Self {
        XChaCha20Poly1305 { key: Zeroizing::new(key), last: Mutex::new(None) }
    }

    /// Calls `f` with the per-message AEAD key and the 12-byte nonce for `nonce`.
    fn with_message_key<R>(
        &self,
        nonce: &[u8; Nonce::LEN],
        f: impl FnOnce(&LessSafeKey, [u8; 12]) -> R,
    ) -> R {
        let (prefix, suffix) = nonce.split_at(16);
        let prefix: [u8; 16] = prefix.try_into().expect("a 24-byte nonce has a 16-byte prefix");
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(suffix);
        // Another thread sealing under the same key at this moment: derive without the cache
        // rather than wait.
        let Ok(mut last) = self.last.try_lock() else {
            return f(&self.subkey(&prefix), short);
        };
        match &*last {
            Some((cached, key)) if *cached == prefix => f(key, short),
            _ => {
                let key = &last.insert((prefix, self.subkey(&prefix))).1;
                f(key, short)
            }
        }
    }

    /// HChaCha20 of the key and `prefix`, as a ring AEAD key.
    fn subkey(&self, prefix: &[u8; 16]) -> LessSafeKey {
        let mut subkey =
            chacha20::hchacha::<chacha20::cipher::consts::U10>((&*self.key).into(), prefix.into());
        let key = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice())
            .expect("a 32-byte key is a ChaCha20-Poly1305 key");
        subkey.as_mut_slice().zeroize();
        LessSafeKey::new(key)
    }
}

/// Appends `plaintext` sealed with ring's ChaCha20-Poly1305 under `key` and `nonce` to `out`
/// (ciphertext then tag). Shared by the epoch keys and the link sealers.
pub(crate) fn chacha_seal_into(
    key: &LessSafeKey,
    nonce: [u8; 12],
    aad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[start..],
        )
        // Only fails for messages over 256 GiB, far above every limit in meshnode.
        .expect("ChaCha20-Poly1305 message length");
    out.extend_from_slice(tag.as_ref());
}

/// Opens `sealed` (ciphertext then tag) with ring's ChaCha20-Poly1305 under `key` and `nonce`.
pub(crate) fn chacha_open(
    key: &LessSafeKey,
    nonce: [u8; 12],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < TAG_LEN {
        return Err(CryptoError::Truncated { len: sealed.len() });
    }
    let mut buf = sealed.to_vec();
    let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
    let len =
        key.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| CryptoError::Decrypt)?.len();
    buf.truncate(len);
    Ok(buf)
}

/// One derived key, ready to seal and open.
#[derive(Clone)]
pub struct EpochKey {
    cipher: XChaCha20Poly1305,
    mac_key: [u8; 32],
    purpose: Purpose,
    epoch: Epoch,
}

impl fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EpochKey({:?}, epoch {})", self.purpose, self.epoch)
    }
}

impl Drop for EpochKey {
    fn drop(&mut self) {
        self.mac_key.zeroize();
    }
}

impl EpochKey {
    pub(super) fn from_bytes(mut key: [u8; 32], purpose: Purpose, epoch: Epoch) -> Self {
        let cipher = XChaCha20Poly1305::new(key);
        // The tag key is derived from, and independent of, the AEAD key.
        let mac_key = blake3::derive_key("meshnode v1 tag key", &key);
        key.zeroize();
        EpochKey { cipher, mac_key, purpose, epoch }
    }

    /// The epoch this key belongs to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The purpose of this key.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// Appends `plaintext` sealed under `nonce` with `aad` authenticated to `out`
    /// (ciphertext then tag).
    pub fn seal_into(&self, nonce: Nonce, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        self.seal_with_raw_nonce(&nonce.to_bytes(), aad, plaintext, out);
    }

    /// Appends `plaintext` sealed under the raw 24-byte `nonce` to `out` (ciphertext then tag).
    ///
    /// For nonces that are not an instance id and a counter: the relay envelope's synthetic
    /// nonces ([`EpochKey::synthetic_nonce`]). The caller guarantees that a nonce is never used
    /// twice under this key.
    pub fn seal_with_raw_nonce(
        &self,
        nonce: &[u8; Nonce::LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        self.cipher.with_message_key(nonce, |key, nonce| {
            chacha_seal_into(key, nonce, aad, plaintext, out)
        });
    }

    /// Opens `sealed` (ciphertext then tag) under the raw 24-byte `nonce`; fails on any change
    /// to the bytes, the nonce, the associated data or the key.
    pub fn open_with_raw_nonce(
        &self,
        nonce: &[u8; Nonce::LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.cipher.with_message_key(nonce, |key, nonce| chacha_open(key, nonce, aad, sealed))
    }

    /// A synthetic nonce: a PRF (BLAKE3 keyed by this key's tag key) of `label`, `instance`
    /// and `counter`, cut to 24 bytes. Unique under this key as long as `(instance, counter)`
    /// is (the [`NonceSequence`] argument), and unlinkable to the instance without the key,
    /// unlike [`Nonce`], which shows the instance id.
    pub fn synthetic_nonce(
        &self,
        label: &[u8],
        instance: InstanceId,
        counter: u64,
    ) -> [u8; Nonce::LEN] {
        let mut hasher = blake3::Hasher::new_keyed(&self.mac_key);
        hasher.update(label);
        hasher.update(&instance.0);
        hasher.update(&counter.to_be_bytes());
        let mut out = [0u8; Nonce::LEN];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..Nonce::LEN]);
        out
    }

    /// Seals into a new vector.
    pub fn seal(&self, nonce: Nonce, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        self.seal_into(nonce, aad, plaintext, &mut out);
        out
    }

    /// Opens `sealed` (ciphertext then tag); fails on any change to the bytes, the nonce, the
    /// associated data or the key.
    pub fn open(&self, nonce: Nonce, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.open_with_raw_nonce(&nonce.to_bytes(), aad, sealed)
    }

    /// A 16-byte keyed tag (BLAKE3 keyed hash) over visible bytes, for discovery packets that
    /// are readable by design but must not be forgeable by non-members.
    pub fn tag(&self, data: &[u8]) -> [u8; 16] {
        let hash = blake3::keyed_hash(&self.mac_key, data);
        let mut out = [0u8; 16];
        out.copy_from_slice(&hash.as_bytes()[..16]);
        out
    }

    /// Checks a tag made by [`EpochKey::tag`] in constant time.
    pub fn verify_tag(&self, data: &[u8], tag: &[u8]) -> bool {
        let expected = self.tag(data);
        tag.len() == expected.len()
            && expected.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// A short non-secret fingerprint, for tests and diagnostics (never the key itself).
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.tag(b"fingerprint")[..8]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeySchedule, SystemKey};
    use proptest::prelude::*;

    fn key(epoch: u64) -> EpochKey {
        let s = KeySchedule::new(
            &SystemKey::from_bytes([7; 32]),
            "1,2,3,4".parse().unwrap(),
            &"live".parse().unwrap(),
            86_400,
        );
        s.key(Purpose::LanDatagram, Epoch(epoch))
    }

    proptest! {
        /// The XChaCha20-Poly1305 built here from HChaCha20 and ring's AEAD is the one of the
        /// `chacha20poly1305` crate, byte for byte, both ways.
        #[test]
        fn same_bytes_as_the_chacha20poly1305_crate(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 24]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..80),
            plain in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            use chacha20poly1305::aead::{Aead, KeyInit, Payload};
            let reference = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
            let expected = reference
                .encrypt((&nonce).into(), Payload { msg: &plain, aad: &aad })
                .unwrap();
            let ours = EpochKey::from_bytes(key, Purpose::Log, Epoch(1));
            let nonce = Nonce::from_bytes(nonce);
            prop_assert_eq!(&ours.seal(nonce, &aad, &plain), &expected);
            prop_assert_eq!(ours.open(nonce, &aad, &expected).unwrap(), plain);
        }
    }

    proptest! {
        /// One key sealing and opening a run of nonces whose prefixes repeat, alternate and
        /// change (the subkey cache's hits and misses) gives the reference bytes every time.
        #[test]
        fn the_subkey_cache_never_changes_the_bytes(
            key in any::<[u8; 32]>(),
            prefixes in proptest::collection::vec(any::<[u8; 16]>(), 1..4),
            picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<u64>()), 1..24),
        ) {
            use chacha20poly1305::aead::{Aead, KeyInit, Payload};
            let reference = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
            let ours = EpochKey::from_bytes(key, Purpose::Log, Epoch(1));
            let copy = ours.clone();
            for (i, (pick, counter)) in picks.into_iter().enumerate() {
                let mut nonce = [0u8; 24];
                nonce[..16].copy_from_slice(&prefixes[pick.index(prefixes.len())]);
                nonce[16..].copy_from_slice(&counter.to_le_bytes());
                let plain = vec![i as u8; i * 7];
                let expected = reference
                    .encrypt((&nonce).into(), Payload { msg: &plain, aad: b"aad" })
                    .unwrap();
                let at = Nonce::from_bytes(nonce);
                let key = if i % 3 == 0 { &copy } else { &ours };
                prop_assert_eq!(&key.seal(at, b"aad", &plain), &expected);
                prop_assert_eq!(key.open(at, b"aad", &expected).unwrap(), plain);
            }
        }
    }

    /// A published test vector (draft-irtf-cfrg-xchacha-03, appendix A.3.1).
    #[test]
    fn xchacha_test_vector() {
        let key: [u8; 32] =
            hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .unwrap()
                .try_into()
                .unwrap();
        let nonce: [u8; 24] = hex::decode("404142434445464748494a4b4c4d4e4f5051525354555657")
            .unwrap()
            .try_into()
            .unwrap();
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let sealed = EpochKey::from_bytes(key, Purpose::Log, Epoch(1)).seal(
            Nonce::from_bytes(nonce),
            &aad,
            plain,
        );
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        assert_eq!(
            hex::encode(ct),
            concat!(
                "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb",
                "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452",
                "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
                "21f9664c97637da9768812f615c68b13b52e",
            )
        );
        assert_eq!(hex::encode(tag), "c0875924c1c7987947deafd8780acf49");
    }

    #[test]
    fn nonces_never_repeat() {
        let mut seq = NonceSequence::new(InstanceId([1; 16]));
        let a = seq.next_nonce().unwrap();
        let b = seq.next_nonce().unwrap();
        assert_ne!(a.to_bytes(), b.to_bytes());
        assert_eq!(Nonce::from_bytes(a.to_bytes()), a);
        seq.next = u64::MAX;
        assert_eq!(seq.next_nonce(), Err(CryptoError::NonceExhausted));
    }

    #[test]
    fn tamper_wrong_key_wrong_aad_are_rejected() {
        let k = key(1);
        let nonce = Nonce { sender: InstanceId([2; 16]), counter: 5 };
        let sealed = k.seal(nonce, b"header", b"payload");
        assert_eq!(k.open(nonce, b"header", &sealed).unwrap(), b"payload");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(k.open(nonce, b"header", &bad), Err(CryptoError::Decrypt));
        }
        assert_eq!(key(2).open(nonce, b"header", &sealed), Err(CryptoError::Decrypt));
        assert_eq!(k.open(nonce, b"headex", &sealed), Err(CryptoError::Decrypt));
        let other = Nonce { counter: 6, ..nonce };
        assert_eq!(k.open(other, b"header", &sealed), Err(CryptoError::Decrypt));
        assert_eq!(
            k.open(nonce, b"header", &sealed[..10]),
            Err(CryptoError::Truncated { len: 10 })
        );
    }

    #[test]
    fn tags() {
        let k = key(1);
        let t = k.tag(b"IDQY visible");
        assert!(k.verify_tag(b"IDQY visible", &t));
        assert!(!k.verify_tag(b"IDQY visiblf", &t));
        assert!(!key(2).verify_tag(b"IDQY visible", &t));
        assert!(!k.verify_tag(b"IDQY visible", &t[..15]));
    }

    #[test]
    fn raw_nonces_seal_like_structured_ones_and_synthetic_ones_differ() {
        let k = key(1);
        let nonce = Nonce { sender: InstanceId([2; 16]), counter: 5 };
        let a = k.seal(nonce, b"aad", b"payload");
        let mut b = Vec::new();
        k.seal_with_raw_nonce(&nonce.to_bytes(), b"aad", b"payload", &mut b);
        assert_eq!(a, b);
        assert_eq!(k.open_with_raw_nonce(&nonce.to_bytes(), b"aad", &a).unwrap(), b"payload");
        let n1 = k.synthetic_nonce(b"relay nonce", InstanceId([2; 16]), 1);
        assert_eq!(n1, k.synthetic_nonce(b"relay nonce", InstanceId([2; 16]), 1));
        assert_ne!(n1, k.synthetic_nonce(b"relay nonce", InstanceId([2; 16]), 2));
        assert_ne!(n1, k.synthetic_nonce(b"relay nonce", InstanceId([3; 16]), 1));
        assert_ne!(n1, key(2).synthetic_nonce(b"relay nonce", InstanceId([2; 16]), 1));
        let mut sealed = Vec::new();
        k.seal_with_raw_nonce(&n1, b"aad", b"x", &mut sealed);
        let n2 = k.synthetic_nonce(b"relay nonce", InstanceId([2; 16]), 2);
        assert_eq!(k.open_with_raw_nonce(&n2, b"aad", &sealed), Err(CryptoError::Decrypt));
        assert_eq!(
            k.open_with_raw_nonce(&n1, b"aad", &sealed[..3]),
            Err(CryptoError::Truncated { len: 3 })
        );
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(msg in proptest::collection::vec(any::<u8>(), 0..2000), aad in proptest::collection::vec(any::<u8>(), 0..64), counter in any::<u64>()) {
            let k = key(3);
            let nonce = Nonce { sender: InstanceId([9; 16]), counter };
            let sealed = k.seal(nonce, &aad, &msg);
            prop_assert_eq!(sealed.len(), msg.len() + TAG_LEN);
            prop_assert_eq!(k.open(nonce, &aad, &sealed).unwrap(), msg);
        }
    }
}
