//! Admission to a rendezvous relay by an install-id proof (design §1.3).
//!
//! Every member derives the same Ed25519 key pair from the install id:
//!
//! ```text
//! seed = HKDF-SHA256(ikm = install id, salt = "meshnode relay admission v1",
//!                    info = RmSystem bytes || env tag)
//! ```
//!
//! The relay holds only the public half, the [`Verifier`], registered by the system's operator
//! with `meshnode relay admit`. A member proves membership by signing the [`AuthTranscript`]:
//! the relay's fresh nonce, the TLS exporter of this very QUIC session, the system and the
//! relay's own key. So the relay cannot impersonate a member (it has no private key), a proof
//! is worthless on another session or at another relay, and a man in the middle, which runs two
//! TLS sessions with two exporters, cannot forward one.
//!
//! The install id never leaves the member; the system key is not involved at all. Ed25519 is
//! ring's (never hand-rolled). This module does no IO and knows nothing of frames.

use std::fmt;
use std::str::FromStr;

use hkdf::Hkdf;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::id::{InstallId, RmSystem};

/// HKDF salt of the admission seed.
const SEED_SALT: &[u8] = b"meshnode relay admission v1";

/// blake3 context of the signed message.
const AUTH_CONTEXT: &str = "meshnode relay auth v1";

/// Length of a TLS exporter value bound into the proof.
pub const EXPORTER_LEN: usize = 32;

/// The TLS exporter label both ends use for the proof (RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-meshnode-relay-auth-v1";

/// Why admission keys could not be made, parsed or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// ring refused the seed (cannot happen for 32 bytes; kept so nothing panics).
    #[error("cannot make the admission key pair")]
    KeyPair,
    /// A verifier that is not 64 hex digits.
    #[error("invalid relay verifier {input:?}: expected 64 hex digits, as printed by `meshnode key relay-verifier`")]
    BadVerifier {
        /// What was given.
        input: String,
    },
    /// The signature does not verify under this verifier.
    #[error("the admission proof does not verify")]
    BadProof,
}

/// What a member signs: everything that ties the proof to one session at one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthTranscript {
    /// The relay's nonce from its `Challenge`.
    pub nonce: [u8; 32],
    /// This TLS session's exporter under [`EXPORTER_LABEL`].
    pub exporter: [u8; EXPORTER_LEN],
    /// The system claimed.
    pub rmsystem: RmSystem,
    /// The environment tag claimed.
    pub env_tag: [u8; 4],
    /// The relay's Ed25519 public key.
    pub relay_key: [u8; 32],
}

impl AuthTranscript {
    /// The 32 bytes signed.
    fn message(&self) -> [u8; 32] {
        let mut material = Vec::with_capacity(32 + EXPORTER_LEN + 16 + 4 + 32);
        material.extend_from_slice(&self.nonce);
        material.extend_from_slice(&self.exporter);
        material.extend_from_slice(&self.rmsystem.to_bytes());
        material.extend_from_slice(&self.env_tag);
        material.extend_from_slice(&self.relay_key);
        blake3::derive_key(AUTH_CONTEXT, &material)
    }
}

/// A member's signing key, derived from the install id. Never stored, never logged.
pub struct AdmissionKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for AdmissionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdmissionKey(verifier {})", self.verifier())
    }
}

impl AdmissionKey {
    /// The key pair of `rmsystem`/`env_tag` from its install id.
    pub fn derive(
        install_id: &InstallId,
        rmsystem: RmSystem,
        env_tag: [u8; 4],
    ) -> Result<AdmissionKey, AdmissionError> {
        let mut info = Vec::with_capacity(20);
        info.extend_from_slice(&rmsystem.to_bytes());
        info.extend_from_slice(&env_tag);
        let mut seed = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(SEED_SALT), &install_id.0)
            .expand(&info, &mut seed[..])
            .map_err(|_| AdmissionError::KeyPair)?;
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed[..]).map_err(|_| AdmissionError::KeyPair)?;
        Ok(AdmissionKey { pair })
    }

    /// The public half, which the relay's operator admits.
    pub fn verifier(&self) -> Verifier {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        Verifier(out)
    }

    /// Signs `transcript`.
    pub fn sign(&self, transcript: &AuthTranscript) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(&transcript.message()).as_ref());
        out
    }
}

/// The public key that admits a system at a relay. Public: it proves nothing by itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Verifier(pub [u8; 32]);

impl Verifier {
    /// Checks a member's signature over `transcript`.
    pub fn verify(
        &self,
        transcript: &AuthTranscript,
        signature: &[u8; 64],
    ) -> Result<(), AdmissionError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&transcript.message(), signature)
            .map_err(|_| AdmissionError::BadProof)
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({self})")
    }
}

impl FromStr for Verifier {
    type Err = AdmissionError;

    fn from_str(s: &str) -> Result<Verifier, AdmissionError> {
        hex::decode(s.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Verifier)
            .ok_or_else(|| AdmissionError::BadVerifier { input: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const SYSTEM: RmSystem = RmSystem([77, 123, 89, 201_192]);
    const ENV: [u8; 4] = [1, 2, 3, 4];

    fn transcript() -> AuthTranscript {
        AuthTranscript {
            nonce: [7; 32],
            exporter: [9; 32],
            rmsystem: SYSTEM,
            env_tag: ENV,
            relay_key: [5; 32],
        }
    }

    fn install(seed: u64) -> InstallId {
        InstallId::random(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    #[test]
    fn members_sign_and_the_verifier_checks() {
        let a = AdmissionKey::derive(&install(1), SYSTEM, ENV).unwrap();
        let b = AdmissionKey::derive(&install(1), SYSTEM, ENV).unwrap();
        assert_eq!(a.verifier(), b.verifier(), "every member derives the same key");
        let sig = b.sign(&transcript());
        assert_eq!(a.verifier().verify(&transcript(), &sig), Ok(()));
    }

    #[test]
    fn proof_is_bound_to_the_session() {
        let key = AdmissionKey::derive(&install(1), SYSTEM, ENV).unwrap();
        let sig = key.sign(&transcript());
        let verifier = key.verifier();
        let mut other = transcript();
        other.exporter[0] ^= 1;
        assert_eq!(verifier.verify(&other, &sig), Err(AdmissionError::BadProof));
        let mut other = transcript();
        other.nonce[31] ^= 1;
        assert_eq!(verifier.verify(&other, &sig), Err(AdmissionError::BadProof));
        let mut other = transcript();
        other.relay_key[0] ^= 1;
        assert_eq!(verifier.verify(&other, &sig), Err(AdmissionError::BadProof));
    }

    #[test]
    fn a_verifier_cannot_sign() {
        // All the relay holds is the public key: the only "signature" it can make from it is
        // some function of public bytes, and none of those verifies.
        let key = AdmissionKey::derive(&install(1), SYSTEM, ENV).unwrap();
        let verifier = key.verifier();
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&verifier.0);
        forged[32..].copy_from_slice(&verifier.0);
        assert_eq!(verifier.verify(&transcript(), &forged), Err(AdmissionError::BadProof));
        assert_eq!(verifier.verify(&transcript(), &[0; 64]), Err(AdmissionError::BadProof));
        // A key pair seeded from the verifier bytes is another key.
        let from_public = Ed25519KeyPair::from_seed_unchecked(&verifier.0).unwrap();
        let mut sig = [0u8; 64];
        sig.copy_from_slice(from_public.sign(&transcript().message()).as_ref());
        assert_eq!(verifier.verify(&transcript(), &sig), Err(AdmissionError::BadProof));
    }

    #[test]
    fn another_system_and_a_bare_rmsystem_fail() {
        let member = AdmissionKey::derive(&install(1), SYSTEM, ENV).unwrap().verifier();
        // Another system's key (its own install id and RmSystem).
        let other = AdmissionKey::derive(&install(2), RmSystem([1, 2, 3, 4]), ENV).unwrap();
        let sig = other.sign(&transcript());
        assert_eq!(member.verify(&transcript(), &sig), Err(AdmissionError::BadProof));
        // Knowing only the RmSystem: a key from a random install id.
        let bare = AdmissionKey::derive(&install(3), SYSTEM, ENV).unwrap();
        let sig = bare.sign(&transcript());
        assert_eq!(member.verify(&transcript(), &sig), Err(AdmissionError::BadProof));
        // The same install id in another environment is another key too.
        let env = AdmissionKey::derive(&install(1), SYSTEM, [0; 4]).unwrap();
        assert_ne!(env.verifier(), member);
    }

    #[test]
    fn verifier_text_round_trip() {
        let v = AdmissionKey::derive(&install(1), SYSTEM, ENV).unwrap().verifier();
        assert_eq!(v.to_string().parse::<Verifier>(), Ok(v));
        let err = "abc".parse::<Verifier>().unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
