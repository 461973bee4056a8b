//! The member's half of a relay connection (design §1.2-§1.4): QUIC to the relay with its
//! pinned key, the admission proof, then posts, subscriptions, deliveries and `Taken`.
//!
//! ```text
//! member                                             relay
//!   QUIC + TLS 1.3, ALPN meshnode-relay/1  <------->  signs the handshake with its key
//!   (handshake must verify under the pinned key)
//!                                     <----------  opens the one stream: Challenge
//!   Auth (signature over nonce, exporter, ...) ->
//!                                     <----------  Welcome { observed } | Refused + close
//! ```
//!
//! The relay opens the stream: a QUIC stream is invisible to the peer until bytes are sent on
//! it, and the relay speaks first. (The design had the client open it; the relay opening it
//! also means clients can never open streams at all: the relay allows none.)
//!
//! This is the first piece of the node's relay client. [`RelayClient::connect`] uses its own
//! ephemeral socket; `QuicEndpoint::connect_relay` dials from the node's link socket, so the
//! observed address is the NAT mapping hole punching will use. Not here yet (design step 7):
//! reconnect with backoff, and the driver task that feeds the core.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use zeroize::Zeroizing;

use crate::crypto::admission::{AdmissionError, AdmissionKey, AuthTranscript, EXPORTER_LABEL};
use crate::datadir::SystemSecrets;
use crate::id::{Environment, InstallId, RmSystem};
use crate::net::quic::tls;
use crate::net::quic::QuicLinkError;
use crate::wire::relay::{
    Auth, Deliver, Mailbox, Post, RefuseReason, RelayFrame, RelayFrameDecoder, RelayWireError,
    Signature, Welcome, RELAY_PROTOCOL_VERSION,
};
use crate::wire::EnvironmentTag;

/// Keep-alive of relay connections (iroh uses 15 s too).
pub const RELAY_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Idle timeout of relay connections: three keep-alives.
pub const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Close codes of relay refusals are this plus the reason byte. Wire-visible.
pub const REFUSAL_CLOSE_BASE: u32 = 0x200;

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 32 * 1024;

/// Why a relay connection failed or ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayClientError {
    /// The relay refused us (by a `Refused` frame or its close code).
    #[error("refused by the relay ({})", reason.map_or("no reason given", |r| r.as_str()))]
    Refused {
        /// Its reason, if it gave one.
        reason: Option<RefuseReason>,
    },
    /// The relay's challenge names another key than the one pinned.
    #[error("the relay's challenge names another key than the pinned one")]
    WrongRelayKey,
    /// The relay speaks another protocol version.
    #[error("relay protocol version {version} is not supported (this build speaks {RELAY_PROTOCOL_VERSION})")]
    Version {
        /// Its version.
        version: u8,
    },
    /// A frame that does not belong at this point of the handshake.
    #[error("unexpected relay frame type {kind} during the handshake")]
    Unexpected {
        /// Its type byte.
        kind: u8,
    },
    /// The handshake did not finish in time.
    #[error("relay handshake did not finish within {timeout:?}")]
    Timeout {
        /// The limit.
        timeout: Duration,
    },
    /// The relay closed the connection.
    #[error("relay connection closed")]
    Closed,
    /// Bytes that do not decode.
    #[error(transparent)]
    Wire(#[from] RelayWireError),
    /// QUIC failed (TLS refused: wrong pinned key; unreachable; idle).
    #[error("relay quic connection: {0}")]
    Connection(#[from] ConnectionError),
    /// The connection could not be started.
    #[error("relay quic connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] QuicLinkError),
    /// The admission key could not be made.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The socket.
    #[error("relay io: {0}")]
    Io(#[from] std::io::Error),
}

/// What a member proves to relays: its system, environment and admission key.
#[derive(Debug)]
pub struct RelayMembership {
    rmsystem: RmSystem,
    env_tag: [u8; 4],
    key: AdmissionKey,
}

impl RelayMembership {
    /// From an install id (the member's secret) and the system it belongs to.
    pub fn new(
        install_id: &InstallId,
        rmsystem: RmSystem,
        env: &Environment,
    ) -> Result<RelayMembership, RelayClientError> {
        let env_tag = EnvironmentTag::of(env).0;
        let key = AdmissionKey::derive(install_id, rmsystem, env_tag)?;
        Ok(RelayMembership { rmsystem, env_tag, key })
    }

    /// From a data directory's secrets.
    pub fn of(secrets: &SystemSecrets) -> Result<RelayMembership, RelayClientError> {
        RelayMembership::new(&secrets.install_id, secrets.rmsystem, &secrets.env)
    }
}

/// An admitted connection to one relay.
#[derive(Debug)]
pub struct RelayClient {
    endpoint: quinn::Endpoint,
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: RelayFrameDecoder,
    buf: Vec<u8>,
    welcome: Welcome,
}

impl RelayClient {
    /// Connects to the relay at `relay` whose key is `relay_key` from a fresh ephemeral UDP
    /// socket, proves `membership`, and returns once welcomed, all within `timeout`. Must run
    /// inside a tokio runtime. A node uses [`crate::net::quic::QuicEndpoint::connect_relay`]
    /// instead, so the relay observes its link socket's address.
    pub async fn connect(
        relay: SocketAddr,
        relay_key: [u8; 32],
        membership: &RelayMembership,
        timeout: Duration,
    ) -> Result<RelayClient, RelayClientError> {
        let bind: SocketAddr = match relay {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let endpoint = quinn::Endpoint::client(bind)?;
        RelayClient::connect_on(endpoint, relay, relay_key, membership, timeout).await
    }

    /// [`RelayClient::connect`] on an existing quinn endpoint (its socket, its NAT mapping);
    /// the endpoint's own client and server configurations are not touched.
    pub(crate) async fn connect_on(
        endpoint: quinn::Endpoint,
        relay: SocketAddr,
        relay_key: [u8; 32],
        membership: &RelayMembership,
        timeout: Duration,
    ) -> Result<RelayClient, RelayClientError> {
        let mut config = quinn::ClientConfig::new(Arc::new(tls::relay_client_crypto(relay_key)?));
        config.transport_config(Arc::new(transport(1)));
        let connecting = endpoint.connect_with(config, relay, "meshnode")?;
        let setup = async {
            let conn = connecting.await.map_err(refused_by_code)?;
            let (send, recv) = conn.accept_bi().await.map_err(refused_by_code)?;
            let mut client = RelayClient {
                endpoint,
                conn,
                send,
                recv,
                decoder: RelayFrameDecoder::default(),
                buf: Vec::new(),
                welcome: Welcome {
                    observed: relay,
                    max_payload: 0,
                    max_ttl_secs: 0,
                    quota_left_bytes: 0,
                },
            };
            client.welcome = client.handshake(relay_key, membership).await?;
            Ok(client)
        };
        tokio::time::timeout(timeout, setup)
            .await
            .unwrap_or(Err(RelayClientError::Timeout { timeout }))
    }

    async fn handshake(
        &mut self,
        relay_key: [u8; 32],
        membership: &RelayMembership,
    ) -> Result<Welcome, RelayClientError> {
        let challenge = match self.recv().await? {
            Some(RelayFrame::Challenge(c)) => c,
            Some(RelayFrame::Refused { reason }) => {
                return Err(RelayClientError::Refused { reason: Some(reason) })
            }
            Some(other) => return Err(RelayClientError::Unexpected { kind: other.kind() }),
            None => return Err(RelayClientError::Closed),
        };
        if challenge.version != RELAY_PROTOCOL_VERSION {
            return Err(RelayClientError::Version { version: challenge.version });
        }
        if challenge.relay_key != relay_key {
            return Err(RelayClientError::WrongRelayKey);
        }
        let mut exporter = Zeroizing::new([0u8; 32]);
        self.conn
            .export_keying_material(&mut exporter[..], EXPORTER_LABEL, &[])
            .map_err(|_| RelayClientError::Closed)?;
        let transcript = AuthTranscript {
            nonce: challenge.nonce,
            exporter: *exporter,
            rmsystem: membership.rmsystem,
            env_tag: membership.env_tag,
            relay_key,
        };
        let auth = Auth {
            rmsystem: membership.rmsystem.to_bytes(),
            env_tag: membership.env_tag,
            signature: Signature(membership.key.sign(&transcript)),
        };
        self.send(&RelayFrame::Auth(auth)).await?;
        match self.recv().await? {
            Some(RelayFrame::Welcome(welcome)) => Ok(welcome),
            Some(RelayFrame::Refused { reason }) => {
                Err(RelayClientError::Refused { reason: Some(reason) })
            }
            Some(other) => Err(RelayClientError::Unexpected { kind: other.kind() }),
            None => Err(RelayClientError::Closed),
        }
    }

    /// Our local UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, RelayClientError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Moves the connection to another local UDP socket (as after a network change); the
    /// relay sees a new remote address and answers the next frame with `Observed`. On an
    /// endpoint shared with links ([`crate::net::quic::QuicEndpoint::connect_relay`]) this
    /// moves them all.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<(), RelayClientError> {
        Ok(self.endpoint.rebind(socket)?)
    }

    /// What the relay said when it admitted us: our observed address, its limits.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends one frame. Not cancel-safe.
    pub async fn send(&mut self, frame: &RelayFrame) -> Result<(), RelayClientError> {
        let mut out = Vec::new();
        frame.encode(&mut out)?;
        self.send.write_all(&out).await.map_err(|err| match err {
            quinn::WriteError::ConnectionLost(err) => refused_by_code(err),
            _ => RelayClientError::Closed,
        })
    }

    /// Stores `payload` in `mailbox` for `ttl_secs`; the answer comes as `Posted` or
    /// `PostRefused` with `seq`.
    pub async fn post(
        &mut self,
        seq: u32,
        mailbox: Mailbox,
        ttl_secs: u32,
        payload: Vec<u8>,
    ) -> Result<(), RelayClientError> {
        let post = Post { seq, mailbox, ttl_secs, broadcast: false, payload };
        self.send(&RelayFrame::Post(post)).await
    }

    /// Replaces the subscribed mailboxes.
    pub async fn subscribe(&mut self, mailboxes: Vec<Mailbox>) -> Result<(), RelayClientError> {
        self.send(&RelayFrame::Subscribe { mailboxes }).await
    }

    /// Deletes delivered payloads.
    pub async fn taken(&mut self, ids: Vec<u64>) -> Result<(), RelayClientError> {
        self.send(&RelayFrame::Taken { ids }).await
    }

    /// The next delivered payload, skipping other frames.
    pub async fn next_delivery(&mut self) -> Result<Deliver, RelayClientError> {
        loop {
            match self.recv().await? {
                Some(RelayFrame::Deliver(d)) => return Ok(d),
                Some(_) => continue,
                None => return Err(RelayClientError::Closed),
            }
        }
    }

    /// The next frame; `Ok(None)` when the relay ended the stream. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<RelayFrame>, RelayClientError> {
        loop {
            let mut rest = &self.buf[..];
            let before = rest.len();
            let decoded = self.decoder.decode(&mut rest);
            let used = before - rest.len();
            self.buf.drain(..used);
            if let Some(frame) = decoded? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return Ok(None),
                Err(quinn::ReadError::ConnectionLost(err)) => return Err(refused_by_code(err)),
                Err(_) => return Err(RelayClientError::Closed),
            }
        }
    }

    /// Closes the connection cleanly.
    pub fn close(&self) {
        self.conn.close(VarInt::from_u32(0), b"done");
    }
}

/// A refusal close code becomes [`RelayClientError::Refused`]; other losses stay as they are.
fn refused_by_code(err: ConnectionError) -> RelayClientError {
    match &err {
        ConnectionError::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            let base = u64::from(REFUSAL_CLOSE_BASE);
            match code.checked_sub(base).and_then(|r| u8::try_from(r).ok()) {
                Some(reason) => RelayClientError::Refused { reason: Some(reason.into()) },
                None if code == 0 => RelayClientError::Closed,
                None => RelayClientError::Refused { reason: None },
            }
        }
        _ => RelayClientError::Connection(err),
    }
}

/// Transport of relay connections: keep-alive 15 s, idle 45 s, `peer_bidi` streams the peer
/// may open (the client allows the relay's one; the relay allows none), no datagrams.
pub(crate) fn transport(peer_bidi: u32) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(RELAY_IDLE_TIMEOUT)
        .unwrap_or(quinn::IdleTimeout::from(VarInt::MAX));
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(RELAY_KEEP_ALIVE))
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    transport
}
