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
mod tests {
    use std::future::Future;
    use std::sync::{Arc, Mutex};

    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::crypto::{KeySchedule, SystemKey};
    use crate::id::{Environment, RmSystem};
    use crate::net::handshake::{HELLO_LEN, PROOF_LEN};

    /// Deadline for whole test steps: never reached when things work.
    const DEADLINE: Duration = Duration::from_secs(30);
    /// Handshake timeout of the links under test.
    const SETUP: Duration = Duration::from_secs(10);
    /// Bytes of one direction's handshake on the wire.
    const HANDSHAKE_BYTES: usize = 2 * FRAME_HEADER_LEN + HELLO_LEN + PROOF_LEN;

    fn params_with(key: [u8; 32], system: &str) -> LinkParams {
        let system: RmSystem = system.parse().unwrap();
        let env = Environment::live();
        let schedule = KeySchedule::new(&SystemKey::from_bytes(key), system, &env, 86_400);
        LinkParams::new(schedule, system, &env)
    }

    fn params() -> LinkParams {
        params_with([7; 32], "77,123,89,201192")
    }

    async fn deadline<T>(step: impl Future<Output = T>) -> T {
        tokio::time::timeout(DEADLINE, step).await.expect("test step deadline")
    }

    /// A listener that runs each accepted handshake in its own task and reports the results.
    async fn serve(
        params: LinkParams,
        timeout: Duration,
    ) -> (SocketAddr, mpsc::Receiver<Result<TcpLink, LinkError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (params, tx) = (params.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(TcpLink::accept(stream, &params, timeout).await).await;
                });
            }
        });
        (addr, rx)
    }

    async fn next_accepted(
        rx: &mut mpsc::Receiver<Result<TcpLink, LinkError>>,
    ) -> Result<TcpLink, LinkError> {
        deadline(rx.recv()).await.expect("listener task alive")
    }

    /// Forwards one client to `upstream`, recording what the client sent and flipping one bit
    /// at `flip` (an offset in the client's byte stream) if given.
    async fn proxy(upstream: SocketAddr, flip: Option<usize>) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&record);
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            let mut offset = 0;
            let mut chunk = vec![0u8; 4096];
            loop {
                let n = match client_read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let bytes = &mut chunk[..n];
                if let Some(at) = flip.and_then(|at| at.checked_sub(offset)) {
                    if let Some(byte) = bytes.get_mut(at) {
                        *byte ^= 0x04;
                    }
                }
                offset += n;
                record.lock().unwrap().extend_from_slice(bytes);
                if server_write.write_all(bytes).await.is_err() {
                    break;
                }
            }
            let _ = server_write.shutdown().await;
        });
        (addr, recorded)
    }

    /// Sets up a link through `addr` (a listener from `serve`, or a proxy to one).
    async fn link_pair(
        addr: SocketAddr,
        rx: &mut mpsc::Receiver<Result<TcpLink, LinkError>>,
    ) -> (TcpLink, TcpLink) {
        let client = deadline(TcpLink::connect(addr, &params(), SETUP)).await.unwrap();
        let server = next_accepted(rx).await.unwrap();
        (client, server)
    }

    fn numbered_frame(from: u8, n: u32) -> Vec<u8> {
        let mut frame = vec![from];
        frame.extend_from_slice(&n.to_be_bytes());
        frame.resize(5 + usize::try_from(n % 700).unwrap(), from);
        frame
    }

    #[tokio::test]
    async fn members_exchange_a_thousand_frames_each_way_in_order() {
        const FRAMES: u32 = 1_000;
        let (addr, mut rx) = serve(params(), SETUP).await;
        let (client, server) = link_pair(addr, &mut rx).await;
        assert!(client.outbound() && !server.outbound());
        assert_eq!(client.session_id(), server.session_id());
        assert_eq!(client.epoch(), server.epoch());
        assert_eq!(client.remote(), addr);

        let sender = |mut writer: TcpLinkWriter, from: u8| {
            tokio::spawn(async move {
                for n in 0..FRAMES {
                    writer.send(&numbered_frame(from, n)).await?;
                }
                writer.shutdown().await?;
                Ok::<_, LinkError>(())
            })
        };
        let receiver = |mut reader: TcpLinkReader, from: u8| {
            tokio::spawn(async move {
                for n in 0..FRAMES {
                    let frame = reader.recv().await?;
                    assert_eq!(frame, Some(numbered_frame(from, n)), "frame {n} from {from}");
                }
                assert_eq!(reader.recv().await?, None, "clean close after the last frame");
                Ok::<_, LinkError>(reader.skipped_frames())
            })
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let tasks = [sender(client_write, 1), sender(server_write, 2)];
        let readers = [receiver(server_read, 1), receiver(client_read, 2)];
        deadline(async {
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            for reader in readers {
                assert_eq!(reader.await.unwrap().unwrap(), 0);
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_wrong_system_key_gets_bad_proof_and_no_link() {
        let (addr, mut rx) = serve(params(), SETUP).await;
        let wrong = params_with([8; 32], "77,123,89,201192");
        let client = deadline(TcpLink::connect(addr, &wrong, SETUP)).await;
        assert!(
            matches!(client, Err(LinkError::Handshake(HandshakeError::BadProof))),
            "{client:?}"
        );
        let server = next_accepted(&mut rx).await;
        assert!(
            matches!(server, Err(LinkError::Handshake(HandshakeError::BadProof))),
            "{server:?}"
        );
        let err = server.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::NonMemberLink));
    }

    #[tokio::test]
    async fn another_rm_system_is_refused_as_foreign_at_both_ends() {
        let (addr, mut rx) = serve(params(), SETUP).await;
        // Even with the same key bytes: the RmSystem is checked first, and also salts the keys.
        let foreign = params_with([7; 32], "1,2,3,4");
        let client = deadline(TcpLink::connect(addr, &foreign, SETUP)).await.unwrap_err();
        let ours: RmSystem = "77,123,89,201192".parse().unwrap();
        assert!(
            matches!(
                client,
                LinkError::Handshake(HandshakeError::ForeignSystem { system }) if system == ours
            ),
            "{client:?}"
        );
        let server = next_accepted(&mut rx).await.unwrap_err();
        assert_eq!(server.reason(), Some(RejectReason::ForeignSystem), "{server:?}");
    }

    #[tokio::test]
    async fn garbage_and_truncated_handshakes_fail_and_the_listener_keeps_serving() {
        let short = Duration::from_millis(300);
        let (addr, mut rx) = serve(params(), short).await;

        // An HTTP request: its "length" is far over the handshake limit.
        let mut http = deadline(TcpStream::connect(addr)).await.unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let _ = http.shutdown().await;
        let err = next_accepted(&mut rx).await.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::Oversized), "{err:?}");

        // Random bytes, many times.
        let mut rng = StdRng::seed_from_u64(42);
        for round in 0..20 {
            let mut bytes = vec![0u8; 1 + usize::try_from(rng.next_u32() % 300).unwrap()];
            rng.fill_bytes(&mut bytes);
            if round % 2 == 0 {
                // Also a plausible header: a handshake tag and a small length.
                bytes.splice(..0, *b"TUBS\x00\x00\x00\x5f");
            }
            let mut client = deadline(TcpStream::connect(addr)).await.unwrap();
            // The listener may refuse before reading all: a reset here is part of the test.
            let _ = client.write_all(&bytes).await;
            let _ = client.shutdown().await;
            assert!(next_accepted(&mut rx).await.is_err(), "round {round}");
        }

        // A hello cut short, then the connection closed.
        let mut rng = StdRng::seed_from_u64(43);
        let (_, hello) = ExpectHello::start(&params(), Role::Initiator, unix_now(), &mut rng);
        let mut hello_frame = Vec::new();
        encode_frame(HANDSHAKE_TAG, &hello, &mut hello_frame).unwrap();
        let mut cut = deadline(TcpStream::connect(addr)).await.unwrap();
        cut.write_all(&hello_frame[..50]).await.unwrap();
        cut.shutdown().await.unwrap();
        let err = next_accepted(&mut rx).await.unwrap_err();
        assert!(matches!(err, LinkError::Truncated { len: 50 }), "{err:?}");
        assert_eq!(err.reason(), Some(RejectReason::Truncated));

        // A whole hello and then silence: that handshake times out, and meanwhile a good
        // client is served.
        let mut stalled = deadline(TcpStream::connect(addr)).await.unwrap();
        stalled.write_all(&hello_frame).await.unwrap();
        let mut client = deadline(TcpLink::connect(addr, &params(), short)).await.unwrap();
        let (first, second) = (next_accepted(&mut rx).await, next_accepted(&mut rx).await);
        let (server, err) = match (first, second) {
            (Ok(server), Err(err)) | (Err(err), Ok(server)) => (server, err),
            other => panic!("expected one link and one timeout: {other:?}"),
        };
        assert!(matches!(err, LinkError::Timeout { .. }), "{err:?}");
        let (mut server_read, _server_write) = server.into_split();
        client.send(b"still serving").await.unwrap();
        assert_eq!(deadline(server_read.recv()).await.unwrap().unwrap(), b"still serving");
        drop((http, cut, stalled));
    }

    #[tokio::test]
    async fn a_replayed_handshake_does_not_yield_a_link() {
        let (addr, mut rx) = serve(params(), SETUP).await;
        let (via, recorded) = proxy(addr, None).await;
        let (mut client, server) = link_pair(via, &mut rx).await;
        let (mut server_read, _server_write) = server.into_split();
        client.send(b"captured frame").await.unwrap();
        assert_eq!(deadline(server_read.recv()).await.unwrap().unwrap(), b"captured frame");
        let captured = recorded.lock().unwrap().clone();
        assert!(captured.len() > HANDSHAKE_BYTES, "hello, proof and one frame");

        // The initiator's handshake, replayed to a fresh responder.
        let mut replay = deadline(TcpStream::connect(addr)).await.unwrap();
        replay.write_all(&captured[..HANDSHAKE_BYTES]).await.unwrap();
        replay.shutdown().await.unwrap();
        let err = next_accepted(&mut rx).await.unwrap_err();
        assert!(matches!(err, LinkError::Handshake(HandshakeError::BadProof)), "{err:?}");
        // The replaying client got the fresh responder's hello and proof, then the end.
        let mut answer = Vec::new();
        deadline(replay.read_to_end(&mut answer)).await.unwrap();
        assert_eq!(answer.len(), HANDSHAKE_BYTES);
    }

    #[tokio::test]
    async fn a_flipped_bit_in_a_sealed_frame_closes_the_link_with_a_decrypt_error() {
        let (addr, mut rx) = serve(params(), SETUP).await;
        // Flip a bit in the ciphertext of the first sealed frame after the handshake.
        let (via, _) = proxy(addr, Some(HANDSHAKE_BYTES + FRAME_HEADER_LEN + 2)).await;
        let (mut client, mut server) = link_pair(via, &mut rx).await;
        client.send(b"tampered in flight").await.unwrap();
        let err = deadline(server.recv()).await.unwrap_err();
        assert!(matches!(err, LinkError::Decrypt), "{err:?}");
        assert_eq!(err.reason(), Some(RejectReason::DecryptFailure));
        // The opener did not advance: the link stays unusable, as it must be dropped.
        client.send(b"next").await.unwrap();
        assert!(matches!(deadline(server.recv()).await, Err(LinkError::Decrypt)));
    }

    #[tokio::test]
    async fn frame_limits_hold_both_ways() {
        let small = params().with_max_frame_len(1_000);
        let (addr, mut rx) = serve(small.clone(), SETUP).await;
        let mut client = deadline(TcpLink::connect(addr, &small, SETUP)).await.unwrap();
        let mut server = next_accepted(&mut rx).await.unwrap();
        let err = client.send(&[0; 1_000 - TAG_LEN + 1]).await.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::Oversized), "refused before sending");
        client.send(&[1; 1_000 - TAG_LEN]).await.unwrap();
        assert_eq!(deadline(server.recv()).await.unwrap().unwrap(), [1; 1_000 - TAG_LEN]);

        // A peer with a larger limit sends more than we take: the link ends at the header.
        let (addr, mut rx) = serve(small, SETUP).await;
        let mut client = deadline(TcpLink::connect(addr, &params(), SETUP)).await.unwrap();
        let mut server = next_accepted(&mut rx).await.unwrap();
        client.send(&[2; 5_000]).await.unwrap();
        let err = deadline(server.recv()).await.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::Oversized), "{err:?}");
    }

    #[tokio::test]
    async fn unknown_tags_after_the_handshake_are_skipped_and_counted() {
        let (addr, mut rx) = serve(params(), SETUP).await;
        // A hand-driven initiator that can put any frame on the wire.
        let stream = deadline(TcpStream::connect(addr)).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut frames = FrameReader::new(read, HANDSHAKE_MAX_FRAME_LEN);
        let mut rng = StdRng::seed_from_u64(44);
        let (state, hello) = ExpectHello::start(&params(), Role::Initiator, unix_now(), &mut rng);
        write_handshake(&mut write, &hello).await.unwrap();
        let (state, proof) = state.handle_hello(&frames.next_handshake().await.unwrap()).unwrap();
        write_handshake(&mut write, &proof).await.unwrap();
        let session = state.handle_proof(&frames.next_handshake().await.unwrap()).unwrap();
        let (mut sealer, _) = session.into_parts();

        let mut stream = Vec::new();
        encode_frame(Tag::Unknown(*b"NEW1"), b"from a newer build", &mut stream).unwrap();
        encode_frame(Tag::Tubt, b"not sealed", &mut stream).unwrap();
        let header = frame_header(DATA_TAG, 5 + TAG_LEN).unwrap();
        stream.extend_from_slice(&header);
        sealer.seal_into(&header, b"after", &mut stream).unwrap();
        write.write_all(&stream).await.unwrap();

        let mut server = next_accepted(&mut rx).await.unwrap();
        assert_eq!(deadline(server.recv()).await.unwrap().unwrap(), b"after");
        assert_eq!(server.reader.skipped_frames(), 2);
    }

    #[tokio::test]
    async fn connect_times_out_when_the_peer_never_answers() {
        // Bound and listening (the kernel completes the TCP handshake) but never accepted.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let timeout = Duration::from_millis(200);
        let err =
            deadline(TcpLink::connect(silent.local_addr().unwrap(), &params(), timeout)).await;
        assert!(matches!(err, Err(LinkError::Timeout { timeout: t }) if t == timeout), "{err:?}");
    }
}
