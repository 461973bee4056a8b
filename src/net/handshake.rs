//! The link handshake: both ends prove membership of the system, and agree forward-secret
//! session keys, before a link carries any frame. Sans-IO: bytes in, bytes out, time and RNG
//! passed in.
//!
//! Both ends run the same two steps; neither waits for the other before its first message:
//!
//! ```text
//! initiator                               responder
//!   hello_i  ----------------------------->
//!            <----------------------------- hello_r    (both sent at once)
//!   proof_i  ----------------------------->            (each sent once the other's hello
//!            <----------------------------- proof_r     passed the visible checks)
//!
//! hello (95 bytes): | kind 0x01 | version 1 | role (0 initiator, 1 responder) |
//!                   | RmSystem (16) | environment tag (4) | key epoch (8, BE) |
//!                   | nonce (32) | x25519 ephemeral public key (32) |
//! proof (33 bytes): | kind 0x02 | MAC (32) |
//! ```
//!
//! The hello is visible, like discovery: a peer of another RmSystem, environment, version or a
//! clock too far off is refused from it alone, and counted as such. Then:
//!
//! ```text
//! E    = the initiator's epoch (each end checks the other's is within its window)
//! M    = membership secret: the Purpose::LinkProof key of epoch E, as two BLAKE3 keyed tags
//! DH   = X25519(own ephemeral, peer ephemeral), refused unless contributory
//! TH   = SHA-256("meshnode link v1 transcript" || hello_i || hello_r)
//! PRK  = HKDF-SHA256-Extract(salt = TH, ikm = M || DH)
//! proof_X  = BLAKE3-keyed(HKDF-Expand(PRK, "meshnode link v1 proof " X), TH)
//! key X->Y = HKDF-Expand(PRK, "meshnode link v1 key " X)       X = initiator | responder
//! ```
//!
//! Why this holds:
//! - without the system key a node has no M, so it can neither make a proof nor derive a key;
//!   a proof is checked in constant time and says nothing about M;
//! - the session keys need DH, whose ephemeral secrets are dropped when the handshake ends:
//!   traffic recorded today stays secret if the system key leaks later (forward secrecy);
//! - TH covers both fresh nonces and ephemerals, so a replayed or reflected handshake proves
//!   nothing: a captured proof is over another transcript, and the role is in every label.
//!
//! For QUIC, TLS already gives confidentiality and forward secrecy; [`proof_for_exporter`] and
//! [`verify_exporter_proof`] bind the same membership secret to the TLS session through its
//! exporter (RFC 5705 / RFC 8446 section 7.5), so a proof cannot be replayed into another session.
//!
//! This module does no IO, reads no clock, does not frame messages (see `tcp`) and never logs.

use std::fmt;

use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use ring::aead::{LessSafeKey, UnboundKey, CHACHA20_POLY1305};
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::Zeroizing;

use crate::crypto::seal::{chacha_open, chacha_seal_into};
use crate::crypto::{CryptoError, Epoch, KeySchedule, Purpose, TAG_LEN};
use crate::id::{Environment, RmSystem};
use crate::wire::{EnvironmentTag, RejectReason, Rejection, Tag, DEFAULT_MAX_FRAME_LEN};

/// The handshake layout version written in every hello and exporter proof.
pub const LINK_PROTOCOL_VERSION: u8 = 1;

/// Length of a hello message.
pub const HELLO_LEN: usize = 3 + RmSystem::WIRE_LEN + 4 + 8 + 32 + 32;

/// Length of a proof message.
pub const PROOF_LEN: usize = 1 + 32;

/// The label a QUIC driver passes to rustls' `export_keying_material` (no context).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-meshnode-link-membership-v1";

/// How many exporter bytes a QUIC driver asks for.
pub const EXPORTER_LEN: usize = 32;

/// Length of an exporter proof message.
pub const EXPORTER_PROOF_LEN: usize = EXPORTER_HEADER_LEN + 32;

const KIND_HELLO: u8 = 0x01;
const KIND_PROOF: u8 = 0x02;
const KIND_EXPORTER_PROOF: u8 = 0x03;
const EXPORTER_HEADER_LEN: usize = 2 + RmSystem::WIRE_LEN + 4 + 8;

/// Why a handshake failed. Each maps to a [`Rejection`] for the reject counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer is of another system (visible in its hello).
    #[error("link peer is of another system {system}")]
    ForeignSystem {
        /// The peer's RmSystem.
        system: RmSystem,
    },
    /// The peer is of our system but another environment.
    #[error("link peer is of another environment (tag {environment})")]
    ForeignEnvironment {
        /// The peer's environment tag.
        environment: EnvironmentTag,
    },
    /// The peer's proof does not verify: another system key, or a replayed or forged handshake.
    #[error("link peer did not prove membership of the system (wrong key or replay)")]
    BadProof,
    /// The peer's key epoch is outside our window: one of the clocks is off by more than the
    /// configured maximum skew.
    #[error("link peer key epoch {epoch} is outside the accepted window around {current}")]
    StaleEpoch {
        /// The peer's epoch.
        epoch: u64,
        /// Ours.
        current: u64,
    },
    /// Bytes that are not the expected handshake message, or a degenerate ephemeral key.
    #[error("malformed link handshake message of {len} bytes")]
    Malformed {
        /// Length received.
        len: usize,
    },
    /// A handshake layout version this build does not speak.
    #[error("link handshake version {version} is not supported")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
}

impl HandshakeError {
    /// The same fault as a [`Rejection`] (handshake frames travel under [`Tag::Tubs`]).
    pub fn rejection(&self) -> Rejection {
        match *self {
            HandshakeError::ForeignSystem { system } => Rejection::ForeignSystem { system },
            HandshakeError::ForeignEnvironment { environment } => {
                Rejection::ForeignEnvironment { environment }
            }
            HandshakeError::BadProof => Rejection::NonMemberLink,
            HandshakeError::StaleEpoch { epoch, current } => {
                Rejection::StaleEpoch { epoch, current }
            }
            HandshakeError::Malformed { .. } => Rejection::Malformed { tag: Tag::Tubs },
            HandshakeError::UnsupportedVersion { version } => {
                Rejection::UnsupportedVersion { version }
            }
        }
    }

    /// The counter this failure goes to.
    pub fn reason(&self) -> RejectReason {
        self.rejection().reason()
    }
}

/// Which end of the link we are. The initiator opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Opened the link (TCP connect, QUIC client).
    Initiator,
    /// Accepted it (TCP accept, QUIC server).
    Responder,
}

impl Role {
    /// The other end's role.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Role::Initiator => 0,
            Role::Responder => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Role> {
        match byte {
            0 => Some(Role::Initiator),
            1 => Some(Role::Responder),
            _ => None,
        }
    }

    fn proof_label(self) -> &'static [u8] {
        match self {
            Role::Initiator => b"meshnode link v1 proof initiator",
            Role::Responder => b"meshnode link v1 proof responder",
        }
    }

    fn key_label(self) -> &'static [u8] {
        match self {
            Role::Initiator => b"meshnode link v1 key initiator",
            Role::Responder => b"meshnode link v1 key responder",
        }
    }

    fn exporter_label(self) -> &'static [u8] {
        match self {
            Role::Initiator => b"meshnode link v1 exporter proof initiator",
            Role::Responder => b"meshnode link v1 exporter proof responder",
        }
    }
}

/// What a node needs to open or accept links: its system's key schedule and visible identity,
/// and the frame limit.
#[derive(Debug, Clone)]
pub struct LinkParams {
    schedule: KeySchedule,
    system: RmSystem,
    environment: EnvironmentTag,
    max_frame_len: usize,
}

impl LinkParams {
    /// Links of `system` in `env`; `schedule` must be that system's (otherwise every proof
    /// fails). Frames up to [`DEFAULT_MAX_FRAME_LEN`].
    pub fn new(schedule: KeySchedule, system: RmSystem, env: &Environment) -> LinkParams {
        LinkParams {
            schedule,
            system,
            environment: EnvironmentTag::of(env),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// Frames (sealed payload) up to `max_len` bytes, sent or received.
    pub fn with_max_frame_len(mut self, max_len: usize) -> LinkParams {
        self.max_frame_len = max_len;
        self
    }

    /// The frame limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Our RmSystem.
    pub fn system(&self) -> RmSystem {
        self.system
    }

    fn check_visible(
        &self,
        system: RmSystem,
        environment: EnvironmentTag,
        current: Epoch,
        epoch: Epoch,
    ) -> Result<(), HandshakeError> {
        if system != self.system {
            return Err(HandshakeError::ForeignSystem { system });
        }
        if environment != self.environment {
            return Err(HandshakeError::ForeignEnvironment { environment });
        }
        if !self.schedule.accepts(current, epoch) {
            return Err(HandshakeError::StaleEpoch { epoch: epoch.0, current: current.0 });
        }
        Ok(())
    }

    /// M: 256 bits from the LinkProof key of `epoch`. The schedule hands out keys, not bytes,
    /// so M is two outputs of the key's BLAKE3 keyed hash (a PRF) under distinct labels.
    fn membership_secret(&self, epoch: Epoch) -> Zeroizing<[u8; 32]> {
        let key = self.schedule.key(Purpose::LinkProof, epoch);
        let mut out = Zeroizing::new([0u8; 32]);
        out[..16].copy_from_slice(&key.tag(b"meshnode link v1 membership secret 0"));
        out[16..].copy_from_slice(&key.tag(b"meshnode link v1 membership secret 1"));
        out
    }
}

/// A decoded hello. Its fields are visible and unauthenticated until the proofs verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) role: Role,
    pub(crate) system: RmSystem,
    pub(crate) environment: EnvironmentTag,
    pub(crate) epoch: Epoch,
    pub(crate) nonce: [u8; 32],
    pub(crate) ephemeral: [u8; 32],
}

impl Hello {
    pub(crate) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        let parts: [&[u8]; 6] = [
            &[KIND_HELLO, LINK_PROTOCOL_VERSION, self.role.byte()],
            &self.system.to_bytes(),
            &self.environment.0,
            &self.epoch.0.to_be_bytes(),
            &self.nonce,
            &self.ephemeral,
        ];
        // The parts add up to HELLO_LEN (pinned by the known-bytes test).
        let mut at = 0;
        for part in parts {
            let end = at + part.len();
            out[at..end].copy_from_slice(part);
            at = end;
        }
        out
    }

    /// Checks kind, then version (a newer layout may have another length), then length.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        let malformed = HandshakeError::Malformed { len: bytes.len() };
        let mut rest = bytes;
        let [kind, version] = take::<2>(&mut rest).ok_or(malformed.clone())?;
        if kind != KIND_HELLO {
            return Err(malformed);
        }
        if version != LINK_PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedVersion { version });
        }
        if bytes.len() != HELLO_LEN {
            return Err(malformed);
        }
        let [role] = take::<1>(&mut rest).ok_or(malformed.clone())?;
        let role = Role::from_byte(role).ok_or(malformed.clone())?;
        let system = RmSystem::from_bytes(take(&mut rest).ok_or(malformed.clone())?);
        let environment = EnvironmentTag(take(&mut rest).ok_or(malformed.clone())?);
        let epoch = Epoch(u64::from_be_bytes(take(&mut rest).ok_or(malformed.clone())?));
        let nonce = take(&mut rest).ok_or(malformed.clone())?;
        let ephemeral = take(&mut rest).ok_or(malformed)?;
        Ok(Hello { role, system, environment, epoch, nonce, ephemeral })
    }
}

/// Decodes a proof message into its MAC.
pub(crate) fn decode_proof(bytes: &[u8]) -> Result<[u8; 32], HandshakeError> {
    match bytes.split_first() {
        Some((&KIND_PROOF, mac)) => {
            <[u8; 32]>::try_from(mac).map_err(|_| HandshakeError::Malformed { len: bytes.len() })
        }
        _ => Err(HandshakeError::Malformed { len: bytes.len() }),
    }
}

/// The first state: our hello is sent, the peer's is awaited.
pub struct ExpectHello {
    params: LinkParams,
    role: Role,
    epoch: Epoch,
    hello: [u8; HELLO_LEN],
    secret: EphemeralSecret,
}

impl fmt::Debug for ExpectHello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectHello").field("role", &self.role).field("epoch", &self.epoch).finish()
    }
}

impl ExpectHello {
    /// Starts a handshake as `role` at Unix time `now_unix_secs`: returns the state and the
    /// hello to send now. `rng` must be a cryptographic RNG (the ephemeral key and nonce).
    pub fn start<R: RngCore + CryptoRng>(
        params: &LinkParams,
        role: Role,
        now_unix_secs: u64,
        rng: &mut R,
    ) -> (ExpectHello, Vec<u8>) {
        let secret = EphemeralSecret::random_from_rng(&mut *rng);
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let epoch = params.schedule.epoch_at(now_unix_secs);
        let hello = Hello {
            role,
            system: params.system,
            environment: params.environment,
            epoch,
            nonce,
            ephemeral: PublicKey::from(&secret).to_bytes(),
        }
        .encode();
        let state = ExpectHello { params: params.clone(), role, epoch, hello, secret };
        (state, hello.to_vec())
    }

    /// Takes the peer's hello: checks its visible fields, runs the exchange and returns the
    /// next state with our proof to send.
    pub fn handle_hello(self, bytes: &[u8]) -> Result<(ExpectProof, Vec<u8>), HandshakeError> {
        let malformed = HandshakeError::Malformed { len: bytes.len() };
        let peer = Hello::decode(bytes)?;
        if peer.role != self.role.peer() {
            return Err(malformed);
        }
        self.params.check_visible(peer.system, peer.environment, self.epoch, peer.epoch)?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(peer.ephemeral));
        if !shared.was_contributory() {
            // A low-order point: the exchange would add no secret (no forward secrecy).
            return Err(malformed);
        }
        let (hello_i, hello_r, key_epoch) = match self.role {
            Role::Initiator => (&self.hello[..], bytes, self.epoch),
            Role::Responder => (bytes, &self.hello[..], peer.epoch),
        };
        let transcript: [u8; 32] = Sha256::new()
            .chain_update(b"meshnode link v1 transcript")
            .chain_update(hello_i)
            .chain_update(hello_r)
            .finalize()
            .into();
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(&*self.params.membership_secret(key_epoch));
        ikm[32..].copy_from_slice(shared.as_bytes());
        let prk = Hkdf::<Sha256>::new(Some(&transcript), &ikm[..]);
        let own_proof = blake3::keyed_hash(&expand(&prk, self.role.proof_label()), &transcript);
        let expected = blake3::keyed_hash(&expand(&prk, peer.role.proof_label()), &transcript);
        let mut message = Vec::with_capacity(PROOF_LEN);
        message.push(KIND_PROOF);
        message.extend_from_slice(own_proof.as_bytes());
        let state = ExpectProof {
            expected,
            sealer: LinkSealer::new(&expand(&prk, self.role.key_label())),
            opener: LinkOpener::new(&expand(&prk, peer.role.key_label())),
            transcript,
            epoch: key_epoch,
            peer_epoch: peer.epoch,
        };
        Ok((state, message))
    }
}

/// The second state: our proof is sent, the peer's is awaited.
pub struct ExpectProof {
    expected: blake3::Hash,
    sealer: LinkSealer,
    opener: LinkOpener,
    transcript: [u8; 32],
    epoch: Epoch,
    peer_epoch: Epoch,
}

impl fmt::Debug for ExpectProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectProof").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

impl ExpectProof {
    /// Takes the peer's proof; on success the link is up.
    pub fn handle_proof(self, bytes: &[u8]) -> Result<LinkSession, HandshakeError> {
        let mac = decode_proof(bytes)?;
        // blake3::Hash compares in constant time.
        if blake3::Hash::from(mac) != self.expected {
            return Err(HandshakeError::BadProof);
        }
        Ok(LinkSession {
            sealer: self.sealer,
            opener: self.opener,
            transcript: self.transcript,
            epoch: self.epoch,
            peer_epoch: self.peer_epoch,
        })
    }
}

/// A finished handshake: the peer proved membership; the keys of both directions.
pub struct LinkSession {
    sealer: LinkSealer,
    opener: LinkOpener,
    transcript: [u8; 32],
    epoch: Epoch,
    peer_epoch: Epoch,
}

impl fmt::Debug for LinkSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSession")
            .field("epoch", &self.epoch)
            .field("peer_epoch", &self.peer_epoch)
            .finish_non_exhaustive()
    }
}

impl LinkSession {
    /// The key epoch of the membership secret (the initiator's).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The epoch the peer announced.
    pub fn peer_epoch(&self) -> Epoch {
        self.peer_epoch
    }

    /// The transcript hash, equal at both ends (not secret): a link id for logs and tests.
    pub fn transcript_hash(&self) -> [u8; 32] {
        self.transcript
    }

    /// The sealer of our direction and the opener of the peer's.
    pub fn into_parts(self) -> (LinkSealer, LinkOpener) {
        (self.sealer, self.opener)
    }
}

/// ChaCha20-Poly1305 (RFC 8439) under one link key: ring's implementation (boxed: ring's key
/// type has room for an AES key schedule, ~0.5 KiB, and links are moved around).
fn link_cipher(key: &[u8; 32]) -> Box<LessSafeKey> {
    Box::new(LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key is a ChaCha20-Poly1305 key"),
    ))
}

/// Seals the frames of one direction: ChaCha20-Poly1305, the nonce a counter from 0 that is
/// never sent (the stream is ordered, so the receiver knows it).
pub struct LinkSealer {
    cipher: Box<LessSafeKey>,
    next: u64,
}

impl fmt::Debug for LinkSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSealer").field("next", &self.next).finish_non_exhaustive()
    }
}

impl LinkSealer {
    fn new(key: &[u8; 32]) -> LinkSealer {
        LinkSealer { cipher: link_cipher(key), next: 0 }
    }

    /// Seals `plaintext` with `aad` authenticated: ciphertext then 16-byte tag. Fails only
    /// after 2^64 - 1 frames ([`CryptoError::NonceExhausted`]); the link must then be reopened.
    pub fn seal(&mut self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plaintext.len().saturating_add(TAG_LEN));
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// [`Self::seal`], appending to `out`.
    pub fn seal_into(
        &mut self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        if self.next == u64::MAX {
            return Err(CryptoError::NonceExhausted);
        }
        let nonce = counter_nonce(self.next);
        self.next += 1;
        chacha_seal_into(&self.cipher, nonce, aad, plaintext, out);
        Ok(())
    }
}

/// Opens the frames of one direction, in order: the expected counter advances only when a
/// frame opens, so a replayed, reordered, dropped or tampered frame fails to decrypt.
pub struct LinkOpener {
    cipher: Box<LessSafeKey>,
    next: u64,
}

impl fmt::Debug for LinkOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkOpener").field("next", &self.next).finish_non_exhaustive()
    }
}

impl LinkOpener {
    fn new(key: &[u8; 32]) -> LinkOpener {
        LinkOpener { cipher: link_cipher(key), next: 0 }
    }

    /// Opens the next frame of the stream.
    pub fn open(&mut self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if self.next == u64::MAX {
            return Err(CryptoError::NonceExhausted);
        }
        let out = chacha_open(&self.cipher, counter_nonce(self.next), aad, sealed)?;
        self.next += 1;
        Ok(out)
    }
}

/// Our membership proof bound to a TLS session, for the QUIC path: `exporter` is
/// [`EXPORTER_LEN`] bytes from rustls' `export_keying_material(EXPORTER_LABEL, None)`, equal
/// at both ends of one TLS session only. Send the result on the connection's first stream.
///
/// ```text
/// | kind 0x03 | version 1 | RmSystem (16) | environment tag (4) | epoch (8, BE) | MAC (32) |
/// MAC = BLAKE3-keyed(HKDF-SHA256(salt = exporter, ikm = M(epoch), info = label of role),
///                    the 30 bytes before it)
/// ```
pub fn proof_for_exporter(
    params: &LinkParams,
    role: Role,
    now_unix_secs: u64,
    exporter: &[u8],
) -> Vec<u8> {
    let epoch = params.schedule.epoch_at(now_unix_secs);
    let mut out = Vec::with_capacity(EXPORTER_PROOF_LEN);
    out.extend_from_slice(&[KIND_EXPORTER_PROOF, LINK_PROTOCOL_VERSION]);
    out.extend_from_slice(&params.system.to_bytes());
    out.extend_from_slice(&params.environment.0);
    out.extend_from_slice(&epoch.0.to_be_bytes());
    let mac = exporter_mac(params, role, epoch, exporter, &out);
    out.extend_from_slice(mac.as_bytes());
    out
}

/// Checks the peer's [`proof_for_exporter`] message; `role` is ours, `exporter` our side's
/// exporter bytes of the same session. Returns the peer's epoch.
pub fn verify_exporter_proof(
    params: &LinkParams,
    role: Role,
    now_unix_secs: u64,
    exporter: &[u8],
    bytes: &[u8],
) -> Result<Epoch, HandshakeError> {
    let malformed = HandshakeError::Malformed { len: bytes.len() };
    let mut rest = bytes;
    let [kind, version] = take::<2>(&mut rest).ok_or(malformed.clone())?;
    if kind != KIND_EXPORTER_PROOF {
        return Err(malformed);
    }
    if version != LINK_PROTOCOL_VERSION {
        return Err(HandshakeError::UnsupportedVersion { version });
    }
    if bytes.len() != EXPORTER_PROOF_LEN {
        return Err(malformed);
    }
    let system = RmSystem::from_bytes(take(&mut rest).ok_or(malformed.clone())?);
    let environment = EnvironmentTag(take(&mut rest).ok_or(malformed.clone())?);
    let epoch = Epoch(u64::from_be_bytes(take(&mut rest).ok_or(malformed.clone())?));
    let mac: [u8; 32] = take(&mut rest).ok_or(malformed)?;
    let current = params.schedule.epoch_at(now_unix_secs);
    params.check_visible(system, environment, current, epoch)?;
    let header = bytes.get(..EXPORTER_HEADER_LEN).unwrap_or_default();
    if blake3::Hash::from(mac) != exporter_mac(params, role.peer(), epoch, exporter, header) {
        return Err(HandshakeError::BadProof);
    }
    Ok(epoch)
}

fn exporter_mac(
    params: &LinkParams,
    role: Role,
    epoch: Epoch,
    exporter: &[u8],
    header: &[u8],
) -> blake3::Hash {
    let prk = Hkdf::<Sha256>::new(Some(exporter), &params.membership_secret(epoch)[..]);
    blake3::keyed_hash(&expand(&prk, role.exporter_label()), header)
}

/// 32 bytes of HKDF output for `label`.
fn expand(prk: &Hkdf<Sha256>, label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    prk.expand(label, &mut out[..]).expect("32-byte HKDF output");
    out
}

/// The 96-bit AEAD nonce of frame `counter`: four zero bytes, then the counter big-endian.
fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(*head)
}

#[cfg(test)]
mod tests;
