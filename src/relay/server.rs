//! The relay's tokio driver: quinn on `--listen`, one task per connection, and one loop that
//! owns the [`RelayCore`] (design §1.2). It makes no protocol decisions.
//!
//! ```text
//! accept task --(per connection)--> conn task: QUIC handshake, opens the stream, reads frames
//!                                      |  Event::{Connected, Frame, BadFrame, Remote, Gone}
//!                                      v  (bounded channel)
//!                                   core loop: RelayCore::handle_*, commit (store flush) before
//!                                      |  Posted, handle_timeout, status.json every second,
//!                                      |  admitted.toml reloaded when its mtime changes
//!                                      v  bounded channel per connection
//!                                   writer task: frames onto the stream; Close -> close code
//! ```
//!
//! A connection whose writer channel is full (a reader far behind) is closed, not waited for:
//! one slow member must not stall the relay. Store errors end the relay (the operator must
//! act); peer faults cost at most that connection.
//!
//! Files in the relay's data directory: `relay.key` (Ed25519 PKCS#8, 0600), `admitted.toml`,
//! `store/` (sled), `lock`, `run/status.json`. This module does not parse CLI arguments.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::{Connection, SendStream, VarInt};
use rand::RngCore;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn, Instrument};
use zeroize::Zeroizing;

use super::admitted::AdmittedFile;
use super::core::{ConnId, RelayCore, RelayLimits, RelayOutput};
use super::store::{RelayStore, RelayStoreError, SledRelayStore};
use crate::crypto::admission::EXPORTER_LABEL;
use crate::net::quic::{tls, QuicLinkError};
use crate::net::relay_client::{transport, REFUSAL_CLOSE_BASE};
use crate::wire::relay::{RelayFrame, RelayFrameDecoder, RelayWireError};

/// The relay's identity key.
pub const RELAY_KEY_FILE: &str = "relay.key";
/// The admitted systems.
pub const ADMITTED_FILE: &str = "admitted.toml";
/// The sled store.
pub const STORE_DIR: &str = "store";
/// The status snapshot a running relay writes every second.
pub const STATUS_FILE: &str = "run/status.json";

/// QUIC handshakes and stream setup in flight at once; more are refused at the QUIC level.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Limit on a connection's QUIC handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for one connection before it is dropped as too slow.
const WRITER_QUEUE: usize = 2048;
/// Events queued for the core loop.
const EVENT_QUEUE: usize = 1024;
/// Events handled before one commit (group commit of posts).
const EVENTS_PER_COMMIT: usize = 256;
/// How long a refusing relay lets its `Refused` frame be acknowledged before closing.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayServerError {
    /// IO on a named file.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// `relay.key` is not an Ed25519 PKCS#8 key.
    #[error("{path} is not a relay key (Ed25519 PKCS#8); restore it from a backup, or move it away to make a new one (members must then pin the new key)")]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// The key file is readable by others.
    #[error(
        "{path} is readable by group or others (mode {mode:o}); fix it with `chmod 600 {path}`"
    )]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] QuicLinkError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] RelayStoreError),
    /// No tokio runtime.
    #[error("relay runtime: {0}")]
    Runtime(std::io::Error),
}

/// The relay's Ed25519 identity: members pin its public key.
pub struct RelayIdentity {
    pkcs8: Zeroizing<Vec<u8>>,
    public: [u8; 32],
}

impl std::fmt::Debug for RelayIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelayIdentity({})", hex::encode(self.public))
    }
}

impl RelayIdentity {
    /// Reads `dir/relay.key`, or creates it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<RelayIdentity, RelayServerError> {
        let path = dir.join(RELAY_KEY_FILE);
        if !path.exists() {
            let file_err = |source| RelayServerError::File { path: path.clone(), source };
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| RelayServerError::BadKey { path: path.clone() })?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(file_err)?;
            file.write_all(pkcs8.as_ref()).map_err(file_err)?;
            file.sync_all().map_err(file_err)?;
        }
        RelayIdentity::load(dir)
    }

    /// Reads `dir/relay.key`.
    pub fn load(dir: &Path) -> Result<RelayIdentity, RelayServerError> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(RELAY_KEY_FILE);
        let file_err = |source| RelayServerError::File { path: path.clone(), source };
        let mode = std::fs::metadata(&path).map_err(file_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(RelayServerError::KeyFileMode { path, mode });
        }
        let pkcs8 = Zeroizing::new(std::fs::read(&path).map_err(file_err)?);
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| RelayServerError::BadKey { path: path.clone() })?;
        let public = <[u8; 32]>::try_from(pair.public_key().as_ref())
            .map_err(|_| RelayServerError::BadKey { path })?;
        Ok(RelayIdentity { pkcs8, public })
    }

    /// The public key members pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }
}

/// What the relay runs with.
#[derive(Debug)]
pub struct RelayServerConfig {
    /// The relay's data directory.
    pub dir: PathBuf,
    /// The bound UDP socket to listen on (the caller binds it, so it can name the address
    /// in its error and tests can bind port 0).
    pub socket: std::net::UdpSocket,
    /// Limits of the core.
    pub limits: RelayLimits,
}

/// What connection tasks tell the core loop.
#[derive(Debug)]
enum Event {
    Connected {
        conn: ConnId,
        remote: SocketAddr,
        nonce: [u8; 32],
        exporter: [u8; 32],
        writer: mpsc::Sender<WriterMessage>,
    },
    Frame {
        conn: ConnId,
        frame: RelayFrame,
    },
    BadFrame {
        conn: ConnId,
        unknown_type: bool,
    },
    Remote {
        conn: ConnId,
        remote: SocketAddr,
    },
    Gone {
        conn: ConnId,
    },
}

#[derive(Debug)]
enum WriterMessage {
    Frame(Vec<u8>),
    Close(u32),
}

/// Runs the relay until `shutdown` completes (or the store fails).
pub async fn run(
    cfg: RelayServerConfig,
    identity: &RelayIdentity,
    store: SledRelayStore,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RelayServerError> {
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(tls::relay_server_crypto(&identity.pkcs8)?));
    server.transport_config(Arc::new(transport(0)));
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        cfg.socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(RelayServerError::Runtime)?;
    let local = endpoint.local_addr().map_err(RelayServerError::Runtime)?;
    let admitted_path = cfg.dir.join(ADMITTED_FILE);
    let mut admitted_mtime = mtime(&admitted_path);
    let admitted = match AdmittedFile::load(&admitted_path) {
        Ok(file) => file.check(&admitted_path).unwrap_or_default(),
        Err(err) => {
            warn!(%err, "admitted systems not loaded; admitting nobody until the file is fixed");
            Default::default()
        }
    };
    info!(%local, key = %hex::encode(identity.public), systems = admitted.systems.len(), "relay starting");
    eprintln!("meshnode relay running on {local}; key {}", hex::encode(identity.public));
    let mut core = RelayCore::new(identity.public, store, admitted, cfg.limits);
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let acceptor = tokio::spawn(accept_loop(endpoint.clone(), events_tx).in_current_span());
    let mut writers: BTreeMap<ConnId, mpsc::Sender<WriterMessage>> = BTreeMap::new();
    let started = std::time::Instant::now();
    let status_path = cfg.dir.join(STATUS_FILE);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    let result = loop {
        let sleep = core.poll_timeout().map(|at| {
            Duration::from_millis(at.saturating_sub(now_ms())).min(Duration::from_secs(3600))
        });
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            event = events.recv() => {
                let Some(event) = event else { break Ok(()) };
                let mut handled = 0;
                let mut next = Some(event);
                let mut failed = None;
                while let Some(event) = next.take() {
                    if let Err(err) = handle_event(&mut core, &mut writers, event) {
                        failed = Some(err);
                        break;
                    }
                    handled += 1;
                    if handled < EVENTS_PER_COMMIT {
                        next = events.try_recv().ok();
                    }
                }
                if let Some(err) = failed {
                    break Err(err.into());
                }
            }
            _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() => {
                if let Err(err) = core.handle_timeout(now_ms()) {
                    break Err(err.into());
                }
            }
            _ = tick.tick() => {
                let mtime_now = mtime(&admitted_path);
                if mtime_now != admitted_mtime {
                    admitted_mtime = mtime_now;
                    match AdmittedFile::load(&admitted_path).and_then(|f| f.check(&admitted_path)) {
                        Ok(admitted) => {
                            info!(systems = admitted.systems.len(), "admitted systems reloaded");
                            core.set_admitted(admitted);
                        }
                        Err(err) => warn!(%err, "admitted systems not reloaded; keeping the old list"),
                    }
                }
                write_status(&status_path, &core, local, started.elapsed());
            }
        }
        if let Err(err) = core.commit() {
            break Err(err.into());
        }
        route_outputs(&mut core, &mut writers);
    };
    acceptor.abort();
    endpoint.close(VarInt::from_u32(0), b"relay stopping");
    let flushed = core.store_mut().flush();
    let _ = std::fs::remove_file(&status_path);
    flushed?;
    result
}

/// Feeds one event to the core. Store errors stop the relay (returned).
fn handle_event(
    core: &mut RelayCore<SledRelayStore>,
    writers: &mut BTreeMap<ConnId, mpsc::Sender<WriterMessage>>,
    event: Event,
) -> Result<(), RelayStoreError> {
    let now = now_ms();
    match event {
        Event::Connected { conn, remote, nonce, exporter, writer } => {
            writers.insert(conn, writer);
            core.handle_connected(now, conn, remote, nonce, exporter);
        }
        Event::Frame { conn, frame } => core.handle_frame(now, conn, frame)?,
        Event::BadFrame { conn, unknown_type } => core.handle_bad_frame(conn, unknown_type),
        Event::Remote { conn, remote } => core.handle_remote_changed(conn, remote),
        Event::Gone { conn } => {
            writers.remove(&conn);
            core.handle_disconnected(conn);
        }
    }
    Ok(())
}

/// Hands the core's outputs to the connections' writers.
fn route_outputs(
    core: &mut RelayCore<SledRelayStore>,
    writers: &mut BTreeMap<ConnId, mpsc::Sender<WriterMessage>>,
) {
    while let Some(output) = core.poll_output() {
        let (conn, message) = match output {
            RelayOutput::Send { conn, frame } => {
                let mut bytes = Vec::new();
                if let Err(err) = frame.encode(&mut bytes) {
                    warn!(%err, "relay frame not encoded");
                    continue;
                }
                (conn, WriterMessage::Frame(bytes))
            }
            RelayOutput::Close { conn, reason } => {
                (conn, WriterMessage::Close(REFUSAL_CLOSE_BASE + u32::from(u8::from(reason))))
            }
        };
        let Some(writer) = writers.get(&conn) else { continue };
        if writer.try_send(message).is_err() {
            debug!(conn, "relay connection too slow or gone; closing it");
            writers.remove(&conn);
            core.handle_disconnected(conn);
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, events: mpsc::Sender<Event>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut next_id: ConnId = 0;
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            debug!(%remote, "relay connection refused: too many handshakes pending");
            incoming.refuse();
            continue;
        };
        next_id = next_id.wrapping_add(1);
        let conn = next_id;
        let events = events.clone();
        let span = tracing::debug_span!("relay_conn", conn, %remote);
        tokio::spawn(
            async move {
                let setup = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    let connection = incoming.await.ok()?;
                    let (send, recv) = connection.open_bi().await.ok()?;
                    Some((connection, send, recv))
                })
                .await;
                drop(permit);
                let Ok(Some((connection, send, recv))) = setup else {
                    debug!("relay connection setup failed");
                    return;
                };
                serve_connection(conn, connection, send, recv, events).await;
            }
            .instrument(span),
        );
    }
}

/// Runs one connection: its writer task, and the reading of frames into events.
async fn serve_connection(
    conn: ConnId,
    connection: Connection,
    send: SendStream,
    mut recv: quinn::RecvStream,
    events: mpsc::Sender<Event>,
) {
    let mut exporter = [0u8; 32];
    if connection.export_keying_material(&mut exporter, EXPORTER_LABEL, &[]).is_err() {
        return;
    }
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let (writer_tx, writer_rx) = mpsc::channel(WRITER_QUEUE);
    tokio::spawn(write_loop(connection.clone(), send, writer_rx).in_current_span());
    let mut remote = connection.remote_address();
    let connected = Event::Connected { conn, remote, nonce, exporter, writer: writer_tx };
    if events.send(connected).await.is_err() {
        return;
    }
    let mut decoder = RelayFrameDecoder::default();
    let mut buf: Vec<u8> = Vec::new();
    'read: loop {
        let chunk = match recv.read_chunk(32 * 1024, true).await {
            Ok(Some(chunk)) => chunk,
            _ => break,
        };
        buf.extend_from_slice(&chunk.bytes);
        let now_remote = connection.remote_address();
        if now_remote != remote {
            remote = now_remote;
            if events.send(Event::Remote { conn, remote }).await.is_err() {
                break;
            }
        }
        loop {
            let mut rest = &buf[..];
            let before = rest.len();
            let decoded = decoder.decode(&mut rest);
            let used = before - rest.len();
            buf.drain(..used);
            let event = match decoded {
                Ok(Some(frame)) => Event::Frame { conn, frame },
                Ok(None) => break,
                Err(err) => {
                    debug!(%err, "bad relay frame");
                    let unknown_type = matches!(err, RelayWireError::UnknownType { .. });
                    let fatal = err.is_fatal();
                    if events.send(Event::BadFrame { conn, unknown_type }).await.is_err() || fatal {
                        break 'read;
                    }
                    continue;
                }
            };
            if events.send(event).await.is_err() {
                break 'read;
            }
        }
    }
    // The stream ended or broke; the connection lives until it closes (a member that finished
    // its direction may still receive, and a refusal closes it after its `Refused` frame).
    connection.closed().await;
    let _ = events.send(Event::Gone { conn }).await;
}

/// Writes frames; on `Close`, lets the last frames be acknowledged, then closes with the code.
async fn write_loop(
    connection: Connection,
    mut send: SendStream,
    mut messages: mpsc::Receiver<WriterMessage>,
) {
    while let Some(message) = messages.recv().await {
        match message {
            WriterMessage::Frame(bytes) => {
                if send.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            WriterMessage::Close(code) => {
                if send.finish().is_ok() {
                    let _ = tokio::time::timeout(REFUSAL_GRACE, send.stopped()).await;
                }
                connection.close(VarInt::from_u32(code), b"refused");
                return;
            }
        }
    }
    // The core dropped this connection (gone, or too slow).
    connection.close(VarInt::from_u32(0), b"closed");
}

/// The status document: the core's view plus what only the driver knows.
pub fn status_json<S: RelayStore>(
    core: &RelayCore<S>,
    listen: Option<SocketAddr>,
    uptime: Option<Duration>,
) -> serde_json::Value {
    let mut status = serde_json::to_value(core.status()).unwrap_or_default();
    let now = now_ms();
    if let Some(systems) = status["systems"].as_array_mut() {
        for system in systems {
            let age = system["usage"]["oldest_posted_ms"]
                .as_u64()
                .map(|posted| now.saturating_sub(posted) / 1000);
            system["usage"]["oldest_age_secs"] = json!(age);
        }
    }
    status["running"] = json!(listen.is_some());
    status["listen"] = json!(listen.map(|l| l.to_string()));
    status["uptime_secs"] = json!(uptime.map(|u| u.as_secs()));
    status["pid"] = json!(std::process::id());
    status["written_ms"] = json!(now);
    status
}

fn write_status(path: &Path, core: &RelayCore<SledRelayStore>, listen: SocketAddr, up: Duration) {
    let mut status = status_json(core, Some(listen), Some(up));
    status["store_bytes_on_disk"] = json!(core.store().size_on_disk());
    let Ok(bytes) = serde_json::to_vec_pretty(&status) else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Wall-clock Unix ms (the driver is where clocks are read).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
