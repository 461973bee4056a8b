//! The node's run loop under tokio: owns the sockets and timers, feeds the sans-IO core
//! ([`crate::proto::Node`]) and executes its outputs. It makes no protocol decisions.
//!
//! - Discovery: one receiver on the shared discovery group and one on the environment group
//!   (see [`super::discovery`]), one sender per discovery interface (which also receives the
//!   unicast IDRP answers sent to it).
//! - Links: QUIC ([`super::quic`]) on a UDP socket bound to the same address as the TCP
//!   listener ([`super::tcp`]), so one announced address serves both. Each link gets a reader
//!   task (frames in) and a writer task (frames out, bounded queue), whatever carries it.
//! - Transport choice (the core only says "link to this address"): QUIC first; when the QUIC
//!   path fails (no handshake in time, idle timeout: UDP blocked or lost) TCP at once, and that
//!   address goes straight to TCP for `quic_retry`. After that, an outbound TCP link probes
//!   QUIC every `quic_retry`; a probe that works brings up a QUIC link beside it and the core
//!   keeps the better kind, so the node returns to QUIC without operator action.
//! - Refused handshakes (another system, a wrong key, junk) become `Input::LinkRejected`, so
//!   the core's rejection counters show them.
//! - Time: the wall clock in microseconds, read here and passed in; the core clamps it.
//! - Status: a snapshot of [`crate::proto::Node::status`] is written to `run/status.json` in the
//!   data directory every second (atomically), so `meshnode --status` can show a running node.
//! - Control socket ([`crate::control`]): its requests become `Input::SubmitBatch` and
//!   `Input::AcknowledgeBatch` (all that is queued per turn); their answers and
//!   `Output::Deliver` go to its clients. Without a
//!   control socket (`control: None`) those outputs are only logged, and units stay behind the
//!   durable cursor until an application acknowledges them.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::control::server::{Control, ControlConfig, ControlEvent};
use crate::net::discovery::{group_receiver, group_sender};
use crate::net::handshake::LinkParams;
use crate::net::link::{Link, LinkFailure};
use crate::net::quic::{QuicEndpoint, QuicLinkError, QuicTimeouts};
use crate::net::relay_client::RelayMembership;
use crate::net::relay_task::{spawn_relay, RelayEvent, RelayHandle, RelayTarget};
use crate::net::tcp::TcpLink;
use crate::proto::{
    DatagramDest, Input, LinkId, LinkKind, Node, Output, Protocol, ReceivedDatagram, RelayIndex,
    RelayOutput, Time,
};
use crate::store::Store;
use crate::wire::RejectReason;

/// Frames queued for one link before the link is judged too slow and closed.
const LINK_QUEUE: usize = 4096;

/// Relay events (deliveries above all) queued for the loop before the relay tasks wait.
const RELAY_EVENTS: usize = 1024;

/// Events taken from the queue in one turn of the loop before the outputs are drained.
const BURST: usize = 256;
/// Group commits of local submits that may wait for their log sync at once: one syncing while
/// the next is sealed and written (double buffering). No control event is read beyond it.
const SUBMITS_SYNCING: usize = 2;

/// The longest a QUIC attempt may take before TCP is tried (a LAN handshake takes a
/// millisecond, an intercontinental one a few hundred).
const QUIC_ATTEMPT: Duration = Duration::from_secs(3);

/// The sockets and settings a driver runs with.
#[derive(Debug)]
pub struct DriverConfig {
    /// Interfaces discovery runs on.
    pub interfaces: Vec<Ipv4Addr>,
    /// The shared discovery group and port.
    pub discovery_group: SocketAddrV4,
    /// The environment group and port.
    pub env_group: SocketAddrV4,
    /// Where TCP links are accepted (already bound).
    pub listener: std::net::TcpListener,
    /// Where QUIC links are accepted and opened from (already bound, normally to the
    /// listener's address); `None`: TCP only.
    pub quic_socket: Option<StdUdpSocket>,
    /// Link security.
    pub link_params: LinkParams,
    /// How long a link attempt (connect and handshake) may take.
    pub connect_timeout: Duration,
    /// After the QUIC path to an address failed, how long links to it use TCP before QUIC is
    /// tried again.
    pub quic_retry: Duration,
    /// Where the status snapshot goes (`None`: nowhere).
    pub status_path: Option<PathBuf>,
    /// The control socket (`None`: none).
    pub control: Option<ControlConfig>,
    /// The rendezvous relays (`[[relay]]`), in `RelayIndex` order, and what proves our
    /// membership to them (`None` when no relay is configured).
    pub relays: Vec<RelayTarget>,
    /// The membership proof for the relays.
    pub relay_membership: Option<Arc<RelayMembership>>,
}

/// What the IO tasks tell the loop.
#[derive(Debug)]
enum Event {
    Datagram {
        from: SocketAddr,
        to: DatagramDest,
        bytes: Vec<u8>,
    },
    LinkUp {
        link: LinkId,
        remote: SocketAddr,
        outbound: bool,
        kind: LinkKind,
        writer: Writer,
    },
    Frame {
        link: LinkId,
        bytes: Vec<u8>,
    },
    LinkDown {
        link: LinkId,
    },
    ConnectFailed {
        to: SocketAddr,
    },
    /// The QUIC path to this address failed: use TCP for a while.
    QuicPathFailed {
        to: SocketAddr,
    },
    /// A QUIC link to this address works.
    QuicWorks {
        to: SocketAddr,
    },
    /// A link refused for a fault of the other end.
    Rejected {
        reason: RejectReason,
        in_handshake: bool,
    },
    /// One-time pad material from the OS RNG, for the core.
    PadMaterial {
        peer: crate::id::DatabaseId,
        material: Vec<u8>,
    },
}

type Writer = mpsc::Sender<Vec<u8>>;

/// A link the loop knows about.
#[derive(Debug)]
struct LinkHandle {
    writer: Writer,
    remote: SocketAddr,
    outbound: bool,
    kind: LinkKind,
}

/// How links are opened: shared by the loop and its connect tasks.
struct Transports {
    params: LinkParams,
    quic: Option<QuicEndpoint>,
    connect_timeout: Duration,
    next_link: AtomicU64,
    tx: mpsc::Sender<Event>,
    /// A copy of the QUIC socket's descriptor, for punch datagrams.
    punch_socket: Option<Arc<StdUdpSocket>>,
}

/// The loop's view of links and of the QUIC path per address.
struct Links {
    transports: Arc<Transports>,
    open: HashMap<LinkId, LinkHandle>,
    /// Addresses whose QUIC path failed (or was last probed) at this instant.
    quic_failed: HashMap<SocketAddr, Instant>,
    quic_retry: Duration,
}

/// The current wall-clock time for the core.
pub fn wall_time() -> Time {
    Time(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
}

/// How long a node whose store failed waits for the log syncs still running before it stops.
const FAILED_SYNCS_WITHIN: Duration = Duration::from_secs(10);

/// Runs `node` until `shutdown` completes, then returns it (for a clean close of its ledger).
pub async fn run<S: Store>(
    mut node: Node<S>,
    cfg: DriverConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<Node<S>> {
    let (tx, mut rx) = mpsc::channel::<Event>(8192);

    let discovery = Arc::new(UdpSocket::from_std(nonblocking(group_receiver(
        cfg.discovery_group,
        &cfg.interfaces,
    )?)?)?);
    let env = Arc::new(UdpSocket::from_std(nonblocking(group_receiver(
        cfg.env_group,
        &cfg.interfaces,
    )?)?)?);
    let mut senders = Vec::new();
    for interface in &cfg.interfaces {
        senders.push(Arc::new(UdpSocket::from_std(nonblocking(group_sender(*interface)?)?)?));
    }
    if senders.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no discovery interface"));
    }
    // Multicast loops back (several nodes may share a machine); our own datagrams are known
    // by their source, our senders' addresses, and dropped before they cost a decryption.
    let own: Arc<[SocketAddr]> =
        senders.iter().map(|s| s.local_addr()).collect::<io::Result<Vec<_>>>()?.into();
    let discovery_dest = DatagramDest::Group(SocketAddr::V4(cfg.discovery_group));
    spawn_udp_reader(discovery, discovery_dest, own.clone(), tx.clone());
    let env_dest = DatagramDest::Group(SocketAddr::V4(cfg.env_group));
    spawn_udp_reader(env, env_dest, own.clone(), tx.clone());
    for sender in &senders {
        let local = sender.local_addr()?;
        spawn_udp_reader(sender.clone(), DatagramDest::Unicast(local), own.clone(), tx.clone());
    }
    // Punch datagrams leave from the QUIC socket's own port (a copy of the descriptor), so the
    // NAT mapping they open is the one QUIC uses.
    let punch_socket = match &cfg.quic_socket {
        Some(socket) => Some(Arc::new(socket.try_clone()?)),
        None => None,
    };
    let quic = match cfg.quic_socket {
        Some(socket) => {
            let (endpoint, local) =
                QuicEndpoint::with_socket(socket, &cfg.link_params, QuicTimeouts::default())
                    .map_err(io::Error::other)?;
            info!(%local, "quic links");
            Some(endpoint)
        }
        None => None,
    };
    let transports = Arc::new(Transports {
        params: cfg.link_params,
        quic,
        connect_timeout: cfg.connect_timeout,
        next_link: AtomicU64::new(1),
        tx: tx.clone(),
        punch_socket,
    });
    cfg.listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(cfg.listener)?;
    spawn_tcp_accept_loop(listener, transports.clone());
    if transports.quic.is_some() {
        spawn_quic_accept_loop(transports.clone());
    }

    let mut control = match &cfg.control {
        Some(c) => {
            let cursor = node.ledger().store().cursor(&c.app).map_err(io::Error::other)?;
            let payload_limit = node.ledger().payload_limit();
            Some(Control::start(c, cursor, payload_limit).map_err(io::Error::other)?)
        }
        None => None,
    };

    let (relay_tx, mut relay_rx) = mpsc::channel::<RelayEvent>(RELAY_EVENTS);
    let mut relays: Vec<RelayHandle> = match &cfg.relay_membership {
        Some(membership) => cfg
            .relays
            .iter()
            .zip(0u16..)
            .map(|(target, i)| {
                let quic = transports.quic.as_ref().map(QuicEndpoint::quinn_endpoint);
                spawn_relay(
                    RelayIndex(i),
                    target.clone(),
                    membership.clone(),
                    quic,
                    relay_tx.clone(),
                )
            })
            .collect(),
        None => Vec::new(),
    };
    drop(relay_tx);

    // Local submits' fdatasyncs run on the ledger's sync thread; each one ended wakes the loop.
    let synced = Arc::new(tokio::sync::Notify::new());
    let notify = synced.clone();
    node.pipeline_log_syncs(Box::new(move || notify.notify_one()))?;

    let mut links = Links {
        transports: transports.clone(),
        open: HashMap::new(),
        quic_failed: HashMap::new(),
        quic_retry: cfg.quic_retry,
    };
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    node.handle_timeout(wall_time());
    loop {
        drain_outputs(&mut node, &mut control, &senders, &mut links).await;
        while let Some(out) = node.poll_relay_output() {
            to_relay(out, &relays);
        }
        if let Some(cause) = node.store_failure() {
            // Nothing more can be stored: stop (the refusals above are out), and let the caller
            // reopen the data directory, which replays what reached the disk.
            tracing::error!(%cause, "the store failed: stopping the node");
            break;
        }
        if let Some(control) = control.as_mut() {
            control.pump(|origin, seq| node.unit(origin, seq));
        }
        let wait = node
            .poll_timeout()
            .map(|at| Duration::from_micros(at.0.saturating_sub(wall_time().0)))
            .unwrap_or(Duration::from_secs(3600));
        let control_ready =
            node.submits_syncing() < SUBMITS_SYNCING && control.as_ref().is_none_or(Control::ready);
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = synced.notified() => node.handle(wall_time(), Input::LogsSynced),
            event = rx.recv() => {
                let Some(event) = event else { break };
                feed_burst(&mut node, event, &mut rx, &mut links);
            }
            Some(event) = relay_rx.recv(), if !relays.is_empty() => {
                feed_relay(&mut node, event, &relays);
            }
            Some(event) = recv_control(&mut control), if control_ready => {
                if let Some(control) = control.as_mut() {
                    control.handle_burst(&mut node, wall_time(), event);
                }
            }
            () = tokio::time::sleep(wait) => node.handle_timeout(wall_time()),
            _ = every_second.tick() => {
                // Harmless when nothing is due; brings the snapshot's clock (uptime, last
                // seen) up to now.
                node.handle_timeout(wall_time());
                links.probe_quic();
                if let Some(path) = &cfg.status_path {
                    write_status(path, &node);
                }
            }
        }
    }
    // Submits still syncing are answered (their clients may still be there), and received
    // units still syncing are indexed, before the ledger closes.
    let failed = node.store_failure().is_some();
    let syncs_done = async {
        while node.syncing() > 0 {
            synced.notified().await;
            node.handle(wall_time(), Input::LogsSynced);
            drain_outputs(&mut node, &mut control, &senders, &mut links).await;
        }
    };
    if !failed {
        syncs_done.await;
    } else if tokio::time::timeout(FAILED_SYNCS_WITHIN, syncs_done).await.is_err() {
        // A disk that failed may also hang: what is still syncing is not known durable anyway.
        tracing::warn!("log syncs still running {FAILED_SYNCS_WITHIN:?} after the store failed");
    }
    // The relay sessions end with a `Fin` (their peers see the link down now, not after
    // minutes of silence); the relay tasks send it and wait for the relay to confirm it.
    node.handle(wall_time(), Input::Stopping);
    while let Some(out) = node.poll_relay_output() {
        to_relay(out, &relays);
    }
    for relay in &mut relays {
        relay.finish();
    }
    let finished = async {
        for relay in &mut relays {
            relay.finished().await;
        }
    };
    let _ = tokio::time::timeout(crate::net::relay_task::FINISH_WITHIN, finished).await;
    drop(relays);
    // Closing the writers ends the links; the peers see them go down.
    links.open.clear();
    if let Some(quic) = &transports.quic {
        quic.close();
    }
    if let Some(mut control) = control {
        // Acknowledgements already read count (the cursor is flushed when the ledger closes);
        // what a client sends from here on is not read, and it sees the connection close.
        while let Some(event) = control.try_recv() {
            if let ControlEvent::Request {
                request: crate::control::protocol::Request::Ack { .. },
                ..
            } = event
            {
                control.handle_event(&mut node, wall_time(), event);
            }
        }
        control.close();
    }
    if let Some(path) = &cfg.status_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(node)
}

impl Links {
    /// Whether a link to `to` should try QUIC first now.
    fn quic_first(&self, to: SocketAddr) -> bool {
        self.transports.quic.is_some()
            && self.quic_failed.get(&to).is_none_or(|at| at.elapsed() >= self.quic_retry)
    }

    /// Opens a link to `to` in the background: QUIC first unless its path failed lately, TCP
    /// when the QUIC path fails. Answers with `LinkUp` or `ConnectFailed`.
    fn connect(&self, to: SocketAddr) {
        let quic_first = self.quic_first(to);
        let transports = self.transports.clone();
        let span = tracing::debug_span!("connect", %to);
        tokio::spawn(
            async move {
                if quic_first {
                    match transports.connect_quic(to).await {
                        Ok(link) => return transports.start_link(link).await,
                        Err(err) if err.is_quic_path_failure() => {
                            info!(%err, "quic path failed: falling back to tcp");
                            let _ = transports.tx.send(Event::QuicPathFailed { to }).await;
                        }
                        Err(err) => {
                            debug!(%err, "quic link attempt failed");
                            transports.report(&err).await;
                            let _ = transports.tx.send(Event::ConnectFailed { to }).await;
                            return;
                        }
                    }
                }
                match TcpLink::connect(to, &transports.params, transports.connect_timeout).await {
                    Ok(link) => transports.start_link(Link::Tcp(link)).await,
                    Err(err) => {
                        debug!(%err, "tcp link attempt failed");
                        transports.report(&LinkFailure::Tcp(err)).await;
                        let _ = transports.tx.send(Event::ConnectFailed { to }).await;
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Sends punch datagrams to `to` from the QUIC socket: three, at 0, 100 and 250 ms, so one
    /// lost or early one does not spoil the round. QUIC drops them unread: an 8-byte datagram
    /// whose first byte has the fixed bit clear is no QUIC packet (test in `net::quic`).
    fn punch(&self, to: SocketAddr) {
        let Some(socket) = self.transports.punch_socket.clone() else { return };
        tokio::spawn(async move {
            let mut datagram = *b"\0MNP____";
            let mut last = Duration::ZERO;
            for at in [0, 100, 250].map(Duration::from_millis) {
                tokio::time::sleep(at - last).await;
                last = at;
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut datagram[4..]);
                if let Err(err) = socket.send_to(&datagram[..8], to) {
                    debug!(%to, %err, "punch datagram not sent");
                }
            }
        });
    }

    /// Dials a punched path: QUIC only, shortly after our own punches left (so the other NAT
    /// has seen ours when our handshake arrives, or its retransmission does), within the QUIC
    /// attempt limit. A failure is only logged: the core's round times out.
    fn connect_punched(&self, to: SocketAddr) {
        let transports = self.transports.clone();
        let span = tracing::debug_span!("connect_punched", %to);
        tokio::spawn(
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match transports.connect_quic(to).await {
                    Ok(link) => {
                        info!("hole punching worked: direct quic link");
                        transports.start_link(link).await;
                    }
                    Err(err) => debug!(%err, "punched quic attempt failed"),
                }
            }
            .instrument(span),
        );
    }

    /// Tries QUIC again beside each outbound TCP link whose path failed `quic_retry` ago; a
    /// probe that works brings up a second link and the core keeps the QUIC one.
    fn probe_quic(&mut self) {
        if self.transports.quic.is_none() {
            return;
        }
        let due: Vec<SocketAddr> = self
            .open
            .values()
            .filter(|l| l.kind == LinkKind::Tcp && l.outbound)
            .map(|l| l.remote)
            .filter(|to| self.quic_first(*to))
            .collect();
        for to in due {
            // Until the probe ends, this counts as the last failure: one probe at a time.
            self.quic_failed.insert(to, Instant::now());
            let transports = self.transports.clone();
            let span = tracing::debug_span!("quic_probe", %to);
            tokio::spawn(
                async move {
                    match transports.connect_quic(to).await {
                        Ok(link) => {
                            info!("quic works again: upgrading the tcp link");
                            transports.start_link(link).await;
                        }
                        Err(err) => debug!(%err, "quic still fails"),
                    }
                }
                .instrument(span),
            );
        }
    }
}

impl Transports {
    async fn connect_quic(&self, to: SocketAddr) -> Result<Link, LinkFailure> {
        let Some(quic) = &self.quic else {
            let off = io::Error::other("quic links are off");
            return Err(LinkFailure::Quic(QuicLinkError::Io(off)));
        };
        let timeout = self.connect_timeout.min(QUIC_ATTEMPT);
        quic.connect(to, timeout).await.map(Link::Quic).map_err(LinkFailure::Quic)
    }

    /// Counts a refusal that is the other end's fault.
    async fn report(&self, err: &LinkFailure) {
        if let Some(reason) = err.reason() {
            let _ = self.tx.send(Event::Rejected { reason, in_handshake: true }).await;
        }
    }

    /// Registers an established link with the loop and runs its reader and writer tasks.
    async fn start_link(&self, link: Link) {
        let id = LinkId(self.next_link.fetch_add(1, Ordering::Relaxed));
        let (remote, outbound, kind) = (link.remote(), link.outbound(), link.kind());
        let (mut reader, mut writer) = link.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(LINK_QUEUE);
        let up = Event::LinkUp { link: id, remote, outbound, kind, writer: wtx };
        if self.tx.send(up).await.is_err() {
            return;
        }
        if kind == LinkKind::Quic {
            let _ = self.tx.send(Event::QuicWorks { to: remote }).await;
        }
        info!(link = id.0, %remote, outbound, ?kind, "link up");
        let span = tracing::info_span!("link", id = id.0, %remote, ?kind);
        tokio::spawn(
            async move {
                while let Some(frame) = wrx.recv().await {
                    if let Err(err) = writer.send(&frame).await {
                        debug!(%err, "link write failed");
                        break;
                    }
                }
                writer.shutdown().await;
            }
            .instrument(span.clone()),
        );
        let tx = self.tx.clone();
        tokio::spawn(
            async move {
                loop {
                    match reader.recv().await {
                        Ok(Some(bytes)) => {
                            if tx.send(Event::Frame { link: id, bytes }).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(err) => {
                            debug!(%err, "link read failed");
                            if let Some(reason) = err.reason() {
                                // Oversized, truncated or undecryptable frames from a member.
                                let rejected = Event::Rejected { reason, in_handshake: false };
                                let _ = tx.send(rejected).await;
                            }
                            if err.is_quic_path_failure() {
                                let _ = tx.send(Event::QuicPathFailed { to: remote }).await;
                            }
                            break;
                        }
                    }
                }
                let _ = tx.send(Event::LinkDown { link: id }).await;
            }
            .instrument(span),
        );
    }
}

/// Hands one relay action of the core to its relay's task.
fn to_relay(out: RelayOutput, relays: &[RelayHandle]) {
    match out {
        RelayOutput::Subscribe { relay, mailboxes } => {
            if let Some(r) = relays.get(usize::from(relay.0)) {
                r.subscribe(mailboxes);
            }
        }
        RelayOutput::Post { relay, mailbox, ttl_secs, broadcast, bytes } => {
            let queued = relays
                .get(usize::from(relay.0))
                .is_some_and(|r| r.post(mailbox, ttl_secs, broadcast, bytes));
            if !queued {
                // The relay session resends what is not acknowledged end to end.
                debug!(relay = relay.0, "relay post queue full: post dropped");
            }
        }
    }
}

/// Feeds one relay event to the core; a delivered payload is taken once handled.
fn feed_relay<S: Store>(node: &mut Node<S>, event: RelayEvent, relays: &[RelayHandle]) {
    let now = wall_time();
    match event {
        RelayEvent::Up { relay, observed } => node.handle(now, Input::RelayUp { relay, observed }),
        RelayEvent::Down { relay } => node.handle(now, Input::RelayDown { relay }),
        RelayEvent::Refused { relay, reason } => {
            node.handle(now, Input::RelayRefused { relay, reason })
        }
        RelayEvent::PostRefused { relay, reason } => {
            node.handle(now, Input::RelayPostRefused { relay, reason })
        }
        RelayEvent::Payload { relay, id, mailbox, bytes } => {
            node.handle(now, Input::RelayPayload { relay, mailbox, bytes: &bytes });
            if let Some(r) = relays.get(usize::from(relay.0)) {
                r.taken(id);
            }
        }
    }
}

/// The next control event, or never when there is no control socket.
async fn recv_control(control: &mut Option<Control>) -> Option<ControlEvent> {
    match control {
        Some(control) => control.recv().await,
        None => std::future::pending().await,
    }
}

fn nonblocking(socket: StdUdpSocket) -> io::Result<StdUdpSocket> {
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Feeds `first` and every event already queued behind it (up to [`BURST`]), handing runs of
/// datagrams over together so the units they carry share one group commit.
fn feed_burst<S: Store>(
    node: &mut Node<S>,
    first: Event,
    rx: &mut mpsc::Receiver<Event>,
    links: &mut Links,
) {
    let mut datagrams = Vec::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(event) = next.take() {
        match event {
            Event::Datagram { from, to, bytes } => {
                datagrams.push(ReceivedDatagram { from, to, bytes })
            }
            other => {
                feed_datagrams(node, &mut datagrams);
                feed(node, other, links);
            }
        }
        taken += 1;
        if taken < BURST {
            next = rx.try_recv().ok();
        }
    }
    feed_datagrams(node, &mut datagrams);
}

fn feed_datagrams<S: Store>(node: &mut Node<S>, datagrams: &mut Vec<ReceivedDatagram>) {
    let now = wall_time();
    match datagrams.len() {
        0 => {}
        1 => {
            let d = datagrams.remove(0);
            node.handle(now, Input::Datagram { from: d.from, to: d.to, bytes: &d.bytes });
        }
        _ => node.handle(now, Input::Datagrams(std::mem::take(datagrams))),
    }
}

fn feed<S: Store>(node: &mut Node<S>, event: Event, links: &mut Links) {
    let now = wall_time();
    match event {
        Event::Datagram { from, to, bytes } => {
            node.handle(now, Input::Datagram { from, to, bytes: &bytes });
        }
        Event::LinkUp { link, remote, outbound, kind, writer } => {
            links.open.insert(link, LinkHandle { writer, remote, outbound, kind });
            node.handle(now, Input::LinkUp { link, remote, outbound, kind });
        }
        Event::Frame { link, bytes } => node.handle(now, Input::Frame { link, bytes: &bytes }),
        Event::LinkDown { link } => {
            links.open.remove(&link);
            node.handle(now, Input::LinkDown { link });
        }
        Event::ConnectFailed { to } => node.handle(now, Input::ConnectFailed { to }),
        Event::QuicPathFailed { to } => {
            links.quic_failed.insert(to, Instant::now());
        }
        Event::QuicWorks { to } => {
            links.quic_failed.remove(&to);
        }
        Event::Rejected { reason, in_handshake } => {
            node.handle(now, Input::LinkRejected { reason, in_handshake })
        }
        Event::PadMaterial { peer, material } => {
            node.handle(now, Input::PadMaterial { peer, material })
        }
    }
}

/// Carries out the core's outputs: the control socket's to it, the rest here.
async fn drain_outputs<S: Store>(
    node: &mut Node<S>,
    control: &mut Option<Control>,
    senders: &[Arc<UdpSocket>],
    links: &mut Links,
) {
    while let Some(out) = node.poll_output() {
        let out = match control.as_mut() {
            Some(control) => control.handle_output(out),
            None => Some(out),
        };
        if let Some(out) = out {
            execute(out, senders, links).await;
        }
    }
}

async fn execute(out: Output, senders: &[Arc<UdpSocket>], links: &mut Links) {
    match out {
        Output::Datagram { to: DatagramDest::Group(group), bytes } => {
            for sender in senders {
                if let Err(err) = sender.send_to(&bytes, group).await {
                    // A firewall drop on output shows as EPERM: not fatal.
                    debug!(%group, %err, "multicast send failed");
                }
            }
        }
        Output::Datagram { to: DatagramDest::Unicast(addr), bytes } => {
            if let Err(err) = senders[0].send_to(&bytes, addr).await {
                debug!(%addr, %err, "datagram send failed");
            }
        }
        Output::Frame { link, bytes } => {
            if let Some(handle) = links.open.get(&link) {
                if handle.writer.try_send(bytes).is_err() {
                    warn!(?link, "link queue full or closed: closing the link");
                    links.open.remove(&link);
                    let _ = links.transports.tx.try_send(Event::LinkDown { link });
                }
            }
        }
        Output::Connect { to } => links.connect(to),
        Output::Punch { to } => links.punch(to),
        Output::ConnectPunched { to } => links.connect_punched(to),
        Output::GeneratePad { peer, len } => {
            // Key material comes from the operating system, never from the core's seeded RNG.
            let mut material = vec![0u8; len];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut material);
            let event = Event::PadMaterial { peer, material };
            if links.transports.tx.try_send(event).is_err() {
                warn!(%peer, "event queue full: the pad is made at the next direct link");
            }
        }
        Output::Close { link } => {
            links.open.remove(&link);
        }
        Output::Accepted(receipt) => {
            debug!(origin = %receipt.origin, seq = receipt.seq, "accepted")
        }
        Output::Refused { reason } => warn!(%reason, "submission refused"),
        Output::Acknowledged { .. } | Output::AcknowledgeFailed { .. } => {}
        // No control socket: the unit stays behind the durable cursor and is delivered again
        // at the next start.
        Output::Deliver(_) => {}
    }
}

fn spawn_udp_reader(
    socket: Arc<UdpSocket>,
    to: DatagramDest,
    own: Arc<[SocketAddr]>,
    tx: mpsc::Sender<Event>,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((_, from)) if own.contains(&from) => {}
                Ok((n, from)) => {
                    let bytes = buf[..n].to_vec();
                    if tx.send(Event::Datagram { from, to, bytes }).await.is_err() {
                        return;
                    }
                }
                Err(err) => debug!(%err, "datagram receive failed"),
            }
        }
    });
}

fn spawn_tcp_accept_loop(listener: TcpListener, transports: Arc<Transports>) {
    tokio::spawn(async move {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let transports = transports.clone();
            tokio::spawn(async move {
                let accepted =
                    TcpLink::accept(stream, &transports.params, transports.connect_timeout).await;
                match accepted {
                    Ok(link) => transports.start_link(Link::Tcp(link)).await,
                    Err(err) => {
                        debug!(%remote, %err, "inbound tcp link refused");
                        transports.report(&LinkFailure::Tcp(err)).await;
                    }
                }
            });
        }
    });
}

fn spawn_quic_accept_loop(transports: Arc<Transports>) {
    tokio::spawn(async move {
        let Some(quic) = &transports.quic else { return };
        while let Some(accepted) = quic.accept().await {
            match accepted {
                Ok(link) => {
                    let transports = transports.clone();
                    tokio::spawn(async move { transports.start_link(Link::Quic(link)).await });
                }
                Err(err) => {
                    debug!(%err, "inbound quic link refused");
                    transports.report(&LinkFailure::Quic(err)).await;
                }
            }
        }
    });
}

/// Writes the status snapshot atomically (temp file, then rename).
fn write_status<S: Store>(path: &std::path::Path, node: &Node<S>) {
    let Ok(json) = serde_json::to_vec_pretty(&node.status()) else { return };
    let tmp = path.with_extension("json.tmp");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
