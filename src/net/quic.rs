//! The QUIC link, preferred over TCP: quinn over UDP, TLS 1.3 for encryption and forward
//! secrecy, and membership proven by the exporter-bound proof of [`super::handshake`].
//!
//! ```text
//! client (initiator)                                  server (responder)
//!   QUIC + TLS 1.3 handshake, ALPN "meshnode/1"  <-->  (any self-signed certificate)
//!   opens the one bidirectional stream:
//!   | TUBS | len | exporter proof |  ------------->
//!                                  <-------------  | TUBS | len | exporter proof |
//!   each end checks the other's proof against its own exporter of this TLS session
//!   | TUDA | len | core frame |      <------------>  | TUDA | len | core frame |
//! ```
//!
//! The proof (see [`proof_for_exporter`]) carries the visible RmSystem, environment and key
//! epoch, like the TCP hello, so another system is refused as `ForeignSystem` before any MAC
//! is checked; a wrong key is `BadProof` (counted as `NonMemberLink`). Each end sends its proof
//! without waiting for the other's: a proof is a MAC over this session's exporter only, so it
//! tells a non-member nothing it could use elsewhere. Why a certificate that proves nothing is
//! safe: see the doc of the `tls` submodule.
//!
//! Frames are the seed framing of [`crate::wire`] (tag, length, payload) on that one stream,
//! not sealed again (TLS protects them). A header announcing more than
//! [`LinkParams::max_frame_len`] ends the link before its payload is read; frames of tags other
//! than `TUDA` are skipped and counted, never fatal.
//!
//! A refusing end closes the connection with an application close code naming the reason
//! ([`QuicLinkError::Refused`] at the other end), after giving its own proof up to
//! [`REFUSAL_GRACE`] to be acknowledged, so the other end reaches its own verdict too.
//! Dropping both halves of a link closes it with code 0: the peer's reader gets `Ok(None)`.
//!
//! Liveness: keep-alives every [`KEEP_ALIVE_INTERVAL`] (2 s) and an idle timeout of
//! [`IDLE_TIMEOUT`] (6 s, three keep-alives lost): a dead or unreachable peer ends the link
//! with [`QuicLinkError::is_path_failure`] within about 6 s.
//!
//! Topology for a driver: one [`QuicEndpoint`] per node (one UDP socket, client and server).
//! Its accept task runs each incoming handshake in its own task (at most
//! [`MAX_PENDING_HANDSHAKES`] at once, each under the setup timeout), so a slow or silent
//! client does not hold up the next; [`QuicEndpoint::accept`] hands out the results.
//! [`QuicLink::into_split`] gives a reader (cancel-safe `recv`) and a writer, as for TCP.
//!
//! This module does not choose peers, retry, fall back to TCP or count: callers count
//! [`QuicLinkError::reason`] and decide on [`QuicLinkError::is_path_failure`].

pub(crate) mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::NoInitialCipherSuite;
use quinn::{Connection, ConnectionError, IdleTimeout, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, trace, Instrument};
use zeroize::Zeroizing;

use super::handshake::{
    proof_for_exporter, verify_exporter_proof, HandshakeError, LinkParams, Role, EXPORTER_LABEL,
    EXPORTER_LEN,
};
use super::tcp::{DATA_TAG, HANDSHAKE_MAX_FRAME_LEN, HANDSHAKE_TAG};
use crate::crypto::Epoch;
use crate::wire::{encode_frame, Frame, FrameDecoder, RejectReason, Tag, WireError};

/// The TLS application protocol of links.
pub const ALPN: &[u8] = b"meshnode/1";

/// How often an idle link sends a keep-alive (a QUIC PING).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// How long a link may hear nothing before it is dead: three keep-alive intervals, so one or
/// two lost keep-alives do not end a link. Both ends use the smaller of their two values.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// Default limit on an incoming link's setup (QUIC handshake and proofs).
pub const ACCEPT_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Incoming handshakes run at once; more are refused at the QUIC level until one finishes.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// How long a refusing end waits for its own proof to be acknowledged before closing.
pub const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// A second exporter label, for a non-secret id of the session shown in logs.
const SESSION_ID_LABEL: &[u8] = b"EXPORTER-meshnode-link-session-id-v1";

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 16 * 1024;

/// Finished incoming handshakes waiting for [`QuicEndpoint::accept`].
const ACCEPTED_QUEUE: usize = 16;

/// Application close code: the link is done (also quinn's code when the last handle drops).
const CLOSE_DONE: u32 = 0;
/// Application close code: the setup did not finish in time.
const CLOSE_SETUP_TIMEOUT: u32 = 1;
/// Application close code: refused for a reason that is not a peer fault.
const CLOSE_REFUSED: u32 = 2;

/// Application close codes of refusals, one per reason. Wire-visible: never renumber.
const REFUSAL_CODES: [(RejectReason, u32); 12] = [
    (RejectReason::ForeignSystem, 0x101),
    (RejectReason::ForeignEnvironment, 0x102),
    (RejectReason::BadTag, 0x103),
    (RejectReason::DecryptFailure, 0x104),
    (RejectReason::Replay, 0x105),
    (RejectReason::StaleEpoch, 0x106),
    (RejectReason::Malformed, 0x107),
    (RejectReason::Truncated, 0x108),
    (RejectReason::Oversized, 0x109),
    (RejectReason::UnknownType, 0x10a),
    (RejectReason::UnsupportedVersion, 0x10b),
    (RejectReason::NonMemberLink, 0x10c),
];

/// Timeouts of an endpoint's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicTimeouts {
    /// Limit on an incoming link's setup.
    pub accept_setup: Duration,
    /// A link that hears nothing this long is dead.
    pub idle: Duration,
    /// An idle link sends a keep-alive this often; keep it well under `idle`.
    pub keep_alive: Duration,
}

impl Default for QuicTimeouts {
    /// [`ACCEPT_SETUP_TIMEOUT`], [`IDLE_TIMEOUT`] and [`KEEP_ALIVE_INTERVAL`].
    fn default() -> QuicTimeouts {
        QuicTimeouts {
            accept_setup: ACCEPT_SETUP_TIMEOUT,
            idle: IDLE_TIMEOUT,
            keep_alive: KEEP_ALIVE_INTERVAL,
        }
    }
}

/// Why a QUIC endpoint or link could not be set up, or a link ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicLinkError {
    /// We refused the peer's membership proof.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The peer closed the connection refusing us; `reason` is its verdict if it sent one
    /// (not counted here: the peer's word is unauthenticated, and ours is in its log).
    #[error("link refused by the peer (close code {code}, reason {reason:?})")]
    Refused {
        /// The application close code.
        code: u64,
        /// The reason the code names.
        reason: Option<RejectReason>,
    },
    /// No QUIC handshake within the timeout: the peer is down, or UDP is blocked on the path.
    #[error("no quic handshake within {timeout:?}")]
    Unreachable {
        /// The limit.
        timeout: Duration,
    },
    /// QUIC was up but the membership proofs did not finish within the timeout.
    #[error("link setup did not finish within {timeout:?}")]
    Timeout {
        /// The limit.
        timeout: Duration,
    },
    /// The peer closed the link before the proofs were exchanged.
    #[error("link closed by the peer during the handshake")]
    ClosedInHandshake,
    /// A frame of another tag where the proof was due.
    #[error("unexpected {tag} frame during the link handshake")]
    UnexpectedFrame {
        /// Its tag.
        tag: Tag,
    },
    /// A frame over the limit, received or asked to send.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream ended inside a frame.
    #[error("link closed {len} bytes into a frame")]
    Truncated {
        /// Bytes of the unfinished frame.
        len: usize,
    },
    /// The peer reset or stopped the link's stream.
    #[error("link stream reset by the peer (code {code})")]
    StreamReset {
        /// Its error code.
        code: u64,
    },
    /// The link was closed (by us, or cleanly by the peer) while sending.
    #[error("link closed")]
    Closed,
    /// The QUIC connection failed: TLS refused, idle timeout, reset, version mismatch.
    #[error("quic connection: {0}")]
    Connection(ConnectionError),
    /// A connection could not be started (bad address, endpoint stopping).
    #[error("quic connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The TLS session gave no exporter (cannot happen once the handshake is complete).
    #[error("tls exporter unavailable")]
    Exporter,
    /// The TLS configuration could not be built.
    #[error("tls config: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration has no cipher suite QUIC can use.
    #[error("tls config: {0}")]
    CipherSuite(#[from] NoInitialCipherSuite),
    /// The self-signed certificate could not be made.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The socket failed, or no tokio runtime is running.
    #[error("quic io: {0}")]
    Io(#[from] io::Error),
}

impl QuicLinkError {
    /// The reject counter this error goes to, if it is a fault of the peer seen by us rather
    /// than a local or network condition (same mapping as [`super::LinkError::reason`]).
    pub fn reason(&self) -> Option<RejectReason> {
        match self {
            QuicLinkError::Handshake(err) => Some(err.reason()),
            QuicLinkError::UnexpectedFrame { .. } => Some(RejectReason::Malformed),
            QuicLinkError::Wire(WireError::FrameTooLarge { .. }) => Some(RejectReason::Oversized),
            QuicLinkError::Truncated { .. } => Some(RejectReason::Truncated),
            _ => None,
        }
    }

    /// Whether the QUIC path itself failed (no handshake in time, an idle timeout, a socket
    /// error), as opposed to a refusal or a protocol fault: the case for the TCP fallback.
    pub fn is_path_failure(&self) -> bool {
        matches!(
            self,
            QuicLinkError::Unreachable { .. }
                | QuicLinkError::Connection(ConnectionError::TimedOut)
                | QuicLinkError::Io(_)
        )
    }
}

/// One UDP socket that opens QUIC links and accepts them.
///
/// Dropping it stops accepting (its accept task ends, new connections are refused); links
/// already up keep running until dropped. [`QuicEndpoint::close`] ends them all at once.
#[derive(Debug)]
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    params: LinkParams,
    accepted: Mutex<mpsc::Receiver<Result<QuicLink, QuicLinkError>>>,
    acceptor: JoinHandle<()>,
}

impl QuicEndpoint {
    /// Binds `addr` with the default [`QuicTimeouts`]; returns the endpoint and the bound
    /// address. Must run inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        params: &LinkParams,
    ) -> Result<(QuicEndpoint, SocketAddr), QuicLinkError> {
        QuicEndpoint::bind_with(addr, params, QuicTimeouts::default())
    }

    /// Binds `addr` with the given timeouts. Makes a fresh self-signed certificate.
    pub fn bind_with(
        addr: SocketAddr,
        params: &LinkParams,
        timeouts: QuicTimeouts,
    ) -> Result<(QuicEndpoint, SocketAddr), QuicLinkError> {
        QuicEndpoint::with_socket(std::net::UdpSocket::bind(addr)?, params, timeouts)
    }

    /// Runs on a UDP socket bound by the caller (the node binds its UDP and TCP link ports
    /// together, so one announced address serves both transports).
    pub fn with_socket(
        socket: std::net::UdpSocket,
        params: &LinkParams,
        timeouts: QuicTimeouts,
    ) -> Result<(QuicEndpoint, SocketAddr), QuicLinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let provider = tls::provider();
        let transport = Arc::new(transport_config(timeouts));
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls::server_crypto(&provider)?));
        server.transport_config(Arc::clone(&transport));
        let mut client = quinn::ClientConfig::new(Arc::new(tls::client_crypto(&provider)?));
        client.transport_config(transport);

        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        endpoint.set_default_client_config(client);
        let local = endpoint.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        let span = tracing::debug_span!("quic_endpoint", %local);
        let acceptor = runtime.spawn(
            accept_loop(endpoint.clone(), params.clone(), timeouts.accept_setup, tx)
                .instrument(span),
        );
        debug!(%local, "quic endpoint bound");
        let endpoint =
            QuicEndpoint { endpoint, params: params.clone(), accepted: Mutex::new(rx), acceptor };
        Ok((endpoint, local))
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, QuicLinkError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Opens a link to `addr` as initiator: QUIC handshake and proofs, all within `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<QuicLink, QuicLinkError> {
        let result = match self.endpoint.connect(addr, tls::SERVER_NAME) {
            Ok(connecting) => setup(connecting, Role::Initiator, &self.params, timeout).await,
            Err(err) => Err(err.into()),
        };
        if let Err(err) = &result {
            debug!(remote = %addr, %err, reason = ?err.reason(), "outbound quic link refused");
        }
        result
    }

    /// Connects to a rendezvous relay from this endpoint's socket (design §1.2): the relay
    /// then observes the address of the very socket links and hole punching use. The relay's
    /// pinned key and ALPN apply to this connection only.
    pub async fn connect_relay(
        &self,
        relay: SocketAddr,
        relay_key: [u8; 32],
        membership: &super::relay_client::RelayMembership,
        timeout: Duration,
    ) -> Result<super::relay_client::RelayClient, super::relay_client::RelayClientError> {
        super::relay_client::RelayClient::connect_on(
            self.endpoint.clone(),
            relay,
            relay_key,
            membership,
            timeout,
        )
        .await
    }

    /// The endpoint itself, for the relay tasks: they dial from the links' socket, so relays
    /// observe the NAT mapping links use.
    pub(crate) fn quinn_endpoint(&self) -> quinn::Endpoint {
        self.endpoint.clone()
    }

    /// The next incoming link, or its failure (count [`QuicLinkError::reason`]); `None` once
    /// the endpoint stopped accepting. Cancel-safe.
    pub async fn accept(&self) -> Option<Result<QuicLink, QuicLinkError>> {
        self.accepted.lock().await.recv().await
    }

    /// Closes every link of this endpoint at once (peers see a clean close) and stops
    /// accepting.
    pub fn close(&self) {
        self.acceptor.abort();
        self.endpoint.close(VarInt::from_u32(CLOSE_DONE), b"endpoint closed");
    }
}

impl Drop for QuicEndpoint {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.endpoint.set_server_config(None);
    }
}

/// An authenticated QUIC link to one member of the system.
#[derive(Debug)]
pub struct QuicLink {
    reader: QuicLinkReader,
    writer: QuicLinkWriter,
    remote: SocketAddr,
    role: Role,
    epoch: Epoch,
    session_id: [u8; 32],
}

impl QuicLink {
    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Whether we opened the link (`Input::LinkUp { outbound }`).
    pub fn outbound(&self) -> bool {
        self.role == Role::Initiator
    }

    /// The peer's key epoch in its proof.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// An exporter value of the TLS session under its own label, equal at both ends: a
    /// non-secret id for logs (it reveals nothing of the membership exporter).
    pub fn session_id(&self) -> [u8; 32] {
        self.session_id
    }

    /// Sends one frame; see [`QuicLinkWriter::send`].
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), QuicLinkError> {
        self.writer.send(frame).await
    }

    /// The next frame; see [`QuicLinkReader::recv`].
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, QuicLinkError> {
        self.reader.recv().await
    }

    /// The reading and writing halves, for a reader task and a writer task. The link stays
    /// up until both are dropped.
    pub fn into_split(self) -> (QuicLinkReader, QuicLinkWriter) {
        (self.reader, self.writer)
    }
}

/// The receiving half of a [`QuicLink`].
#[derive(Debug)]
pub struct QuicLinkReader {
    frames: FrameReader,
    skipped: u64,
}

impl QuicLinkReader {
    /// The next frame: `Ok(None)` when the peer finished its direction or closed the link
    /// cleanly between frames.
    ///
    /// Cancel-safe: dropping the future loses no bytes. After an error the link is lost: drop
    /// both halves.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, QuicLinkError> {
        loop {
            let Some(frame) = self.frames.next().await? else {
                return Ok(None);
            };
            if frame.tag != DATA_TAG {
                self.skipped = self.skipped.saturating_add(1);
                trace!(tag = %frame.tag, len = frame.payload.len(), "link frame skipped");
                continue;
            }
            return Ok(Some(frame.payload));
        }
    }

    /// Frames of tags other than `TUDA` skipped so far.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped
    }
}

/// The sending half of a [`QuicLink`].
#[derive(Debug)]
pub struct QuicLinkWriter {
    stream: SendStream,
    max_frame_len: usize,
}

impl QuicLinkWriter {
    /// Sends `frame` as one `TUDA` frame. Refuses a frame over the frame limit, sending
    /// nothing. Returns once the bytes are queued (flow control permitting), not delivered.
    ///
    /// Not cancel-safe: a send dropped mid-write leaves a broken stream, so end the link.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), QuicLinkError> {
        if frame.len() > self.max_frame_len {
            return Err(WireError::FrameTooLarge {
                len: u64::try_from(frame.len()).unwrap_or(u64::MAX),
                max: u64::try_from(self.max_frame_len).unwrap_or(u64::MAX),
            }
            .into());
        }
        let len = u32::try_from(frame.len()).map_err(|_| WireError::FrameTooLarge {
            len: u64::try_from(frame.len()).unwrap_or(u64::MAX),
            max: u64::from(u32::MAX),
        })?;
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(DATA_TAG.as_bytes());
        header[4..].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&header).await.map_err(link_write_error)?;
        self.stream.write_all(frame).await.map_err(link_write_error)?;
        Ok(())
    }

    /// Ends our direction and waits until the peer acknowledged every frame: its reader then
    /// gets `Ok(None)` after the last one. Dropping the link without this may lose frames
    /// still in flight.
    pub async fn shutdown(&mut self) -> Result<(), QuicLinkError> {
        self.stream.finish().map_err(|_| QuicLinkError::Closed)?;
        match self.stream.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(QuicLinkError::StreamReset { code: code.into_inner() }),
            Err(quinn::StoppedError::ConnectionLost(err)) => match link_lost(err) {
                Some(err) => Err(err),
                None => Ok(()),
            },
            Err(quinn::StoppedError::ZeroRttRejected) => Err(QuicLinkError::Closed),
        }
    }
}

/// Frames from the link's receive stream; keeps bytes read past a frame for the next one.
#[derive(Debug)]
struct FrameReader {
    stream: RecvStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    pos: usize,
}

impl FrameReader {
    fn new(stream: RecvStream, max_len: usize) -> FrameReader {
        FrameReader { stream, decoder: FrameDecoder::new(max_len), buf: Vec::new(), pos: 0 }
    }

    /// The next frame; `Ok(None)` at a clean end. Cancel-safe: state lives in self, and
    /// quinn's `read_chunk` is cancel-safe.
    async fn next(&mut self) -> Result<Option<Frame>, QuicLinkError> {
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
            let end = match self.stream.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => {
                    self.buf.extend_from_slice(&chunk.bytes);
                    continue;
                }
                Ok(None) => None,
                Err(quinn::ReadError::ConnectionLost(err)) => link_lost(err),
                Err(quinn::ReadError::Reset(code)) => {
                    Some(QuicLinkError::StreamReset { code: code.into_inner() })
                }
                Err(_) => Some(QuicLinkError::Closed),
            };
            if let Some(err) = end {
                return Err(err);
            }
            return match self.buf.len() {
                0 => Ok(None),
                len => Err(QuicLinkError::Truncated { len }),
            };
        }
    }

    /// The peer's proof message.
    async fn next_handshake(&mut self) -> Result<Vec<u8>, QuicLinkError> {
        match self.next().await {
            Ok(Some(Frame { tag: HANDSHAKE_TAG, payload })) => Ok(payload),
            Ok(Some(Frame { tag, .. })) => Err(QuicLinkError::UnexpectedFrame { tag }),
            Ok(None) | Err(QuicLinkError::Closed) => Err(QuicLinkError::ClosedInHandshake),
            Err(err) => Err(err),
        }
    }
}

/// Runs the accept side: one task per incoming connection, results into `tx`.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    params: LinkParams,
    timeout: Duration,
    tx: mpsc::Sender<Result<QuicLink, QuicLinkError>>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    while let Some(incoming) = endpoint.accept().await {
        if tx.is_closed() {
            break;
        }
        let remote = incoming.remote_address();
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            debug!(%remote, "quic connection refused: too many handshakes pending");
            incoming.refuse();
            continue;
        };
        let (params, tx) = (params.clone(), tx.clone());
        let span = tracing::debug_span!("quic_accept", %remote);
        tokio::spawn(
            async move {
                let result = setup(incoming, Role::Responder, &params, timeout).await;
                if let Err(err) = &result {
                    debug!(%err, reason = ?err.reason(), "inbound quic link refused");
                }
                // The permit is held until the result is taken: a full queue slows accepting.
                let _ = tx.send(result).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Both roles: the QUIC handshake, then the proofs on the one stream, all within `timeout`.
async fn setup(
    connecting: impl std::future::IntoFuture<Output = Result<Connection, ConnectionError>>,
    role: Role,
    params: &LinkParams,
    timeout: Duration,
) -> Result<QuicLink, QuicLinkError> {
    // A timeout too large to add (a misconfiguration) means no practical limit.
    let deadline = Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400));
    let conn = match tokio::time::timeout_at(deadline, connecting.into_future()).await {
        Ok(conn) => conn.map_err(setup_lost)?,
        Err(_) => return Err(QuicLinkError::Unreachable { timeout }),
    };
    match tokio::time::timeout_at(deadline, exchange(&conn, role, params)).await {
        Ok(Ok(link)) => {
            debug!(remote = %link.remote, ?role, epoch = %link.epoch, "quic link up");
            Ok(link)
        }
        Ok(Err((err, send))) => {
            refuse(conn, send, refusal_code(err.reason()));
            Err(err)
        }
        Err(_) => {
            conn.close(VarInt::from_u32(CLOSE_SETUP_TIMEOUT), b"setup timeout");
            Err(QuicLinkError::Timeout { timeout })
        }
    }
}

/// Opens (initiator) or accepts (responder) the stream, sends our proof, checks the peer's.
/// On failure returns the send stream too, if there is one, for [`refuse`].
async fn exchange(
    conn: &Connection,
    role: Role,
    params: &LinkParams,
) -> Result<QuicLink, (QuicLinkError, Option<SendStream>)> {
    let streams = match role {
        Role::Initiator => conn.open_bi().await,
        Role::Responder => conn.accept_bi().await,
    };
    let (mut send, recv) = streams.map_err(|err| (setup_lost(err), None))?;
    let proven = async {
        let mut exporter = Zeroizing::new([0u8; EXPORTER_LEN]);
        conn.export_keying_material(&mut exporter[..], EXPORTER_LABEL, &[])
            .map_err(|_| QuicLinkError::Exporter)?;
        let mut session_id = [0u8; 32];
        conn.export_keying_material(&mut session_id, SESSION_ID_LABEL, &[])
            .map_err(|_| QuicLinkError::Exporter)?;
        let now = unix_now();
        let mut out = Vec::new();
        encode_frame(
            HANDSHAKE_TAG,
            &proof_for_exporter(params, role, now, &exporter[..]),
            &mut out,
        )?;
        send.write_all(&out).await.map_err(|err| match link_write_error(err) {
            QuicLinkError::Closed => QuicLinkError::ClosedInHandshake,
            err => err,
        })?;
        let mut frames = FrameReader::new(recv, HANDSHAKE_MAX_FRAME_LEN);
        let proof = frames.next_handshake().await?;
        let epoch = verify_exporter_proof(params, role, now, &exporter[..], &proof)?;
        frames.decoder = FrameDecoder::new(params.max_frame_len());
        Ok::<_, QuicLinkError>((frames, epoch, session_id))
    };
    match proven.await {
        Ok((frames, epoch, session_id)) => Ok(QuicLink {
            reader: QuicLinkReader { frames, skipped: 0 },
            writer: QuicLinkWriter { stream: send, max_frame_len: params.max_frame_len() },
            remote: conn.remote_address(),
            role,
            epoch,
            session_id,
        }),
        Err(err) => Err((err, Some(send))),
    }
}

/// Closes a refused connection with `code`, in the background: first lets our proof (if we
/// have a stream) be acknowledged, for up to [`REFUSAL_GRACE`], so the peer can judge it too.
fn refuse(conn: Connection, send: Option<SendStream>, code: VarInt) {
    tokio::spawn(
        async move {
            if let Some(mut send) = send {
                if send.finish().is_ok() {
                    let _ = tokio::time::timeout(REFUSAL_GRACE, send.stopped()).await;
                }
            }
            conn.close(code, b"refused");
        }
        .in_current_span(),
    );
}

/// The close code of a refusal for `reason`.
fn refusal_code(reason: Option<RejectReason>) -> VarInt {
    let code = REFUSAL_CODES
        .iter()
        .find(|(known, _)| Some(*known) == reason)
        .map_or(CLOSE_REFUSED, |(_, code)| *code);
    VarInt::from_u32(code)
}

/// The reason a refusal close code names.
fn refusal_reason(code: VarInt) -> Option<RejectReason> {
    let code = code.into_inner();
    REFUSAL_CODES.iter().find(|(_, known)| u64::from(*known) == code).map(|(reason, _)| *reason)
}

/// A connection lost before the link was up.
fn setup_lost(err: ConnectionError) -> QuicLinkError {
    match err {
        ConnectionError::ApplicationClosed(close) => match close.error_code.into_inner() {
            0 => QuicLinkError::ClosedInHandshake,
            code => QuicLinkError::Refused { code, reason: refusal_reason(close.error_code) },
        },
        err => QuicLinkError::Connection(err),
    }
}

/// A connection lost while the link was up: `None` for a clean close (by us, or by the peer
/// with code 0), else the error.
fn link_lost(err: ConnectionError) -> Option<QuicLinkError> {
    match err {
        ConnectionError::LocallyClosed => None,
        ConnectionError::ApplicationClosed(close) if close.error_code.into_inner() == 0 => None,
        err => Some(setup_lost(err)),
    }
}

fn link_write_error(err: quinn::WriteError) -> QuicLinkError {
    match err {
        quinn::WriteError::ConnectionLost(err) => link_lost(err).unwrap_or(QuicLinkError::Closed),
        quinn::WriteError::Stopped(code) => QuicLinkError::StreamReset { code: code.into_inner() },
        quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected => {
            QuicLinkError::Closed
        }
    }
}

fn transport_config(timeouts: QuicTimeouts) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // Over quinn's limit (2^62 ms) means no practical limit; keep the largest value.
    let idle = IdleTimeout::try_from(timeouts.idle).unwrap_or(IdleTimeout::from(VarInt::MAX));
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(timeouts.keep_alive))
        // One stream per link, opened by the client; no unreliable datagrams.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    transport
}

/// Unix time from the system clock (the driver layer may read clocks; the handshake may not).
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests;
