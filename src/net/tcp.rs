//! The TCP link, the fallback when UDP is blocked: seed frames carry the link handshake, then
//! the core's frames sealed with the session keys.
//!
//! ```text
//! | TUBS | len | hello |   | TUBS | len | proof |            handshake, both ways at once
//! | TUDA | len | ChaCha20-Poly1305(core frame) | tag (16) |   every later frame, both ways
//! ```
//!
//! Tags: handshake messages travel under `TUBS`, which the seed defines as "background setup:
//! link control" (its kind byte tells hello from proof); sealed frames under `TUDA`, whatever
//! the core frame inside is, so an observer learns lengths and timing but not packet types.
//! The 8-byte frame header is the AEAD associated data and the nonce is an implicit
//! per-direction counter from 0: the stream is ordered, so the counter must match exactly and a
//! replayed, reordered, dropped or altered frame does not open. After the handshake, frames of
//! any other tag are skipped and counted, never fatal (seed: do not block by packet type).
//!
//! Limits: a handshake frame may hold at most [`HANDSHAKE_MAX_FRAME_LEN`] bytes and a sealed
//! frame [`LinkParams::max_frame_len`]; a header announcing more ends the link before its
//! payload is read. The whole setup (TCP connect and handshake) runs under one timeout.
//!
//! Topology for a driver: `connect` or `accept` gives a [`TcpLink`]; [`TcpLink::into_split`]
//! gives a [`TcpLinkReader`] for a reader task (`recv` is cancel-safe, fit for `select!`) and a
//! [`TcpLinkWriter`] for a writer task fed by a bounded channel. Any error ends the link: drop
//! both halves and report the link down. This module does not retry, reconnect, keep alive or
//! count (callers count [`LinkError::reason`]).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::{debug, trace};

use super::handshake::{
    ExpectHello, HandshakeError, LinkOpener, LinkParams, LinkSealer, LinkSession, Role,
};
use crate::crypto::{CryptoError, Epoch, TAG_LEN};
use crate::wire::{
    encode_frame, Frame, FrameDecoder, RejectReason, Tag, WireError, FRAME_HEADER_LEN,
};

/// The tag of handshake frames.
pub const HANDSHAKE_TAG: Tag = Tag::Tubs;

/// The tag of sealed frames.
pub const DATA_TAG: Tag = Tag::Tuda;

/// Largest handshake frame payload accepted (a hello is 95 bytes).
pub const HANDSHAKE_MAX_FRAME_LEN: usize = 128;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Why a TCP link could not be set up, or ended. Every variant ends the link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer was refused (or refused us) in the handshake.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Connect and handshake did not finish in time.
    #[error("link setup did not finish within {timeout:?}")]
    Timeout {
        /// The limit.
        timeout: Duration,
    },
    /// The peer closed the connection before the handshake finished (it may have refused us:
    /// the reason is in its log, ours is usually the same, seen from our side).
    #[error("link closed by the peer during the handshake")]
    ClosedInHandshake,
    /// A frame of another tag where a handshake message was due.
    #[error("unexpected {tag} frame during the link handshake")]
    UnexpectedFrame {
        /// Its tag.
        tag: Tag,
    },
    /// A frame over the limit, received or asked to send.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The connection ended inside a frame.
    #[error("link closed {len} bytes into a frame")]
    Truncated {
        /// Bytes of the unfinished frame.
        len: usize,
    },
    /// A sealed frame did not open: altered, replayed, reordered or of another session.
    #[error("sealed link frame does not decrypt (tampered, replayed or reordered)")]
    Decrypt,
    /// 2^64 - 1 frames were sealed on this link; open a new one.
    #[error("link nonce counter exhausted; reopen the link")]
    NonceExhausted,
    /// The socket failed.
    #[error("link io: {0}")]
    Io(#[from] io::Error),
}

impl LinkError {
    /// The reject counter this error goes to, if it is a peer fault rather than a local or
    /// network condition.
    pub fn reason(&self) -> Option<RejectReason> {
        match self {
            LinkError::Handshake(err) => Some(err.reason()),
            LinkError::UnexpectedFrame { .. } => Some(RejectReason::Malformed),
            LinkError::Wire(WireError::FrameTooLarge { .. }) => Some(RejectReason::Oversized),
            LinkError::Truncated { .. } => Some(RejectReason::Truncated),
            LinkError::Decrypt => Some(RejectReason::DecryptFailure),
            _ => None,
        }
    }
}

impl From<CryptoError> for LinkError {
    fn from(err: CryptoError) -> LinkError {
        match err {
            CryptoError::NonceExhausted => LinkError::NonceExhausted,
            _ => LinkError::Decrypt,
        }
    }
}

/// An authenticated, sealed TCP link to one member of the system.
#[derive(Debug)]
pub struct TcpLink {
    reader: TcpLinkReader,
    writer: TcpLinkWriter,
    remote: SocketAddr,
    role: Role,
    epoch: Epoch,
    session_id: [u8; 32],
}

impl TcpLink {
    /// Connects to `addr` and runs the handshake as initiator, all within `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        params: &LinkParams,
        timeout: Duration,
    ) -> Result<TcpLink, LinkError> {
        let setup = async {
            let stream = TcpStream::connect(addr).await?;
            handshake(stream, params, Role::Initiator).await
        };
        let result = within(timeout, setup).await;
        if let Err(err) = &result {
            debug!(remote = %addr, %err, reason = ?err.reason(), "outbound link refused");
        }
        result
    }

    /// Runs the handshake as responder on an accepted `stream`, within `timeout`. Run one task
    /// per accepted connection so that a slow or silent client does not hold up the next.
    pub async fn accept(
        stream: TcpStream,
        params: &LinkParams,
        timeout: Duration,
    ) -> Result<TcpLink, LinkError> {
        let remote = stream.peer_addr().ok();
        let result = within(timeout, handshake(stream, params, Role::Responder)).await;
        if let Err(err) = &result {
            debug!(remote = ?remote, %err, reason = ?err.reason(), "inbound link refused");
        }
        result
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Whether we opened the link (`Input::LinkUp { outbound }`).
    pub fn outbound(&self) -> bool {
        self.role == Role::Initiator
    }

    /// The key epoch of the handshake.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The handshake transcript hash, equal at both ends: a non-secret id for logs.
    pub fn session_id(&self) -> [u8; 32] {
        self.session_id
    }

    /// Seals and sends one frame; see [`TcpLinkWriter::send`].
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.writer.send(frame).await
    }

    /// The next frame; see [`TcpLinkReader::recv`].
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        self.reader.recv().await
    }

    /// The reading and writing halves, for a reader task and a writer task.
    pub fn into_split(self) -> (TcpLinkReader, TcpLinkWriter) {
        (self.reader, self.writer)
    }
}

/// The receiving half of a [`TcpLink`].
#[derive(Debug)]
pub struct TcpLinkReader {
    frames: FrameReader,
    opener: LinkOpener,
    skipped: u64,
}

impl TcpLinkReader {
    /// The next frame, opened: `Ok(None)` when the peer closed cleanly between frames.
    ///
    /// Cancel-safe: dropping the future loses no bytes. After an error the link is lost (every
    /// later frame fails too): drop both halves.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            let Some(frame) = self.frames.next().await? else {
                return Ok(None);
            };
            if frame.tag != DATA_TAG {
                self.skipped = self.skipped.saturating_add(1);
                trace!(tag = %frame.tag, len = frame.payload.len(), "link frame skipped");
                continue;
            }
            let aad = frame_header(DATA_TAG, frame.payload.len())?;
            return Ok(Some(self.opener.open(&aad, &frame.payload)?));
        }
    }

    /// Frames of tags other than `TUDA` skipped so far.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped
    }
}

/// The sending half of a [`TcpLink`].
#[derive(Debug)]
pub struct TcpLinkWriter {
    stream: OwnedWriteHalf,
    sealer: LinkSealer,
    max_frame_len: usize,
    out: Vec<u8>,
}

impl TcpLinkWriter {
    /// Seals `frame` and writes it. Refuses a frame whose sealed length (`frame.len() + 16`) is
    /// over the frame limit, sending nothing.
    ///
    /// Not cancel-safe: a send dropped mid-write leaves a broken stream, so end the link.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        let sealed_len = frame.len().saturating_add(TAG_LEN);
        if sealed_len > self.max_frame_len {
            return Err(WireError::FrameTooLarge {
                len: u64::try_from(sealed_len).unwrap_or(u64::MAX),
                max: u64::try_from(self.max_frame_len).unwrap_or(u64::MAX),
            }
            .into());
        }
        let header = frame_header(DATA_TAG, sealed_len)?;
        self.out.clear();
        self.out.extend_from_slice(&header);
        self.sealer.seal_into(&header, frame, &mut self.out)?;
        self.stream.write_all(&self.out).await?;
        if self.out.capacity() > READ_CHUNK * 4 {
            // Do not keep one large frame's buffer for the life of the link.
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Closes our direction: the peer's reader then gets `Ok(None)`.
    pub async fn shutdown(&mut self) -> Result<(), LinkError> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// Frames from the read half of a stream; keeps bytes read past a frame for the next one.
#[derive(Debug)]
struct FrameReader {
    stream: OwnedReadHalf,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    pos: usize,
}

impl FrameReader {
    fn new(stream: OwnedReadHalf, max_len: usize) -> FrameReader {
        FrameReader { stream, decoder: FrameDecoder::new(max_len), buf: Vec::new(), pos: 0 }
    }

    /// The next frame; `Ok(None)` at a clean end of stream. Cancel-safe: state lives in self.
    async fn next(&mut self) -> Result<Option<Frame>, LinkError> {
        loop {
            let mut rest = self.buf.get(self.pos..).unwrap_or_default();
            let available = rest.len();
            if let Some(frame) = self.decoder.decode(&mut rest)? {
                self.pos += available - rest.len();
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(Some(frame));
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    len => Err(LinkError::Truncated { len }),
                };
            }
        }
    }

    /// The next handshake message.
    async fn next_handshake(&mut self) -> Result<Vec<u8>, LinkError> {
        match self.next().await? {
            Some(Frame { tag: HANDSHAKE_TAG, payload }) => Ok(payload),
            Some(Frame { tag, .. }) => Err(LinkError::UnexpectedFrame { tag }),
            None => Err(LinkError::ClosedInHandshake),
        }
    }
}

/// Both roles: send our hello at once, answer the peer's hello with our proof, check its proof.
async fn handshake(
    stream: TcpStream,
    params: &LinkParams,
    role: Role,
) -> Result<TcpLink, LinkError> {
    stream.set_nodelay(true)?;
    let remote = stream.peer_addr()?;
    let (read, mut write) = stream.into_split();
    let mut frames = FrameReader::new(read, HANDSHAKE_MAX_FRAME_LEN);
    let (state, hello) = ExpectHello::start(params, role, unix_now(), &mut OsRng);
    write_handshake(&mut write, &hello).await?;
    let (state, proof) = state.handle_hello(&frames.next_handshake().await?)?;
    write_handshake(&mut write, &proof).await?;
    let session: LinkSession = state.handle_proof(&frames.next_handshake().await?)?;
    frames.decoder = FrameDecoder::new(params.max_frame_len());
    let (epoch, session_id) = (session.epoch(), session.transcript_hash());
    let (sealer, opener) = session.into_parts();
    debug!(%remote, ?role, %epoch, "link up");
    Ok(TcpLink {
        reader: TcpLinkReader { frames, opener, skipped: 0 },
        writer: TcpLinkWriter {
            stream: write,
            sealer,
            max_frame_len: params.max_frame_len(),
            out: Vec::new(),
        },
        remote,
        role,
        epoch,
        session_id,
    })
}

async fn write_handshake(write: &mut OwnedWriteHalf, message: &[u8]) -> Result<(), LinkError> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + message.len());
    encode_frame(HANDSHAKE_TAG, message, &mut out)?;
    write.write_all(&out).await?;
    Ok(())
}

/// The 8-byte header of a frame of `tag` with a payload of `len` bytes: also the AEAD
/// associated data, so the tag and length cannot be changed.
fn frame_header(tag: Tag, len: usize) -> Result<[u8; FRAME_HEADER_LEN], LinkError> {
    let len = u32::try_from(len).map_err(|_| WireError::FrameTooLarge {
        len: u64::try_from(len).unwrap_or(u64::MAX),
        max: u64::from(u32::MAX),
    })?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(tag.as_bytes());
    header[4..].copy_from_slice(&len.to_be_bytes());
    Ok(header)
}

async fn within<T>(
    timeout: Duration,
    setup: impl std::future::Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    tokio::time::timeout(timeout, setup).await.unwrap_or(Err(LinkError::Timeout { timeout }))
}

/// Unix time from the system clock (the driver layer may read clocks; the handshake may not).
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests;
