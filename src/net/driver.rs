//! The node's run loop under tokio: owns the sockets and timers, feeds the sans-IO core
//! ([`crate::proto::Node`]) and executes its outputs. It makes no protocol decisions.
//!
//! - Discovery: one receiver on the shared discovery group and one on the environment group
//!   (see [`super::discovery`]), one sender per discovery interface (which also receives the
//!   unicast IDRP answers sent to it).
//! - Links: TCP ([`super::tcp`]) for now; an accept loop runs one handshake task per client,
//!   and each link gets a reader task (frames in) and a writer task (frames out, bounded queue).
//! - Time: the wall clock in microseconds, read here and passed in; the core clamps it.
//! - Status: a snapshot of [`crate::proto::Node::status`] is written to `run/status.json` in the
//!   data directory every second (atomically), so `meshnode --status` can show a running node.
//! - Control socket ([`crate::control`]): its requests become `Input::SubmitBatch` and
//!   `Input::AcknowledgeBatch` (all that is queued per turn); their answers and
//!   `Output::Deliver` go to its clients. Without a
//!   control socket (`control: None`) those outputs are only logged, and units stay behind the
//!   durable cursor until an application acknowledges them.
//!
//! Not yet here: QUIC.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::control::server::{Control, ControlConfig, ControlEvent};
use crate::net::discovery::{group_receiver, group_sender};
use crate::net::handshake::LinkParams;
use crate::net::tcp::TcpLink;
use crate::proto::{DatagramDest, Input, LinkId, Node, Output, Protocol, Time};
use crate::store::Store;

/// Frames queued for one link before the link is judged too slow and closed.
const LINK_QUEUE: usize = 4096;

/// The sockets and settings a driver runs with.
#[derive(Debug)]
pub struct DriverConfig {
    /// Interfaces discovery runs on.
    pub interfaces: Vec<Ipv4Addr>,
    /// The shared discovery group and port.
    pub discovery_group: SocketAddrV4,
    /// The environment group and port.
    pub env_group: SocketAddrV4,
    /// Where links are accepted (already bound).
    pub listener: std::net::TcpListener,
    /// Link security.
    pub link_params: LinkParams,
    /// How long a link attempt (connect and handshake) may take.
    pub connect_timeout: Duration,
    /// Where the status snapshot goes (`None`: nowhere).
    pub status_path: Option<PathBuf>,
    /// The control socket (`None`: none).
    pub control: Option<ControlConfig>,
}

/// What the IO tasks tell the loop.
#[derive(Debug)]
enum Event {
    Datagram { from: SocketAddr, to: DatagramDest, bytes: Vec<u8> },
    LinkUp { link: LinkId, remote: SocketAddr, outbound: bool, writer: mpsc::Sender<Vec<u8>> },
    Frame { link: LinkId, bytes: Vec<u8> },
    LinkDown { link: LinkId },
    ConnectFailed { to: SocketAddr },
}

/// The current wall-clock time for the core.
pub fn wall_time() -> Time {
    Time(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
}

/// Runs `node` until `shutdown` completes, then returns it (for a clean close of its ledger).
pub async fn run<S: Store>(
    mut node: Node<S>,
    cfg: DriverConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<Node<S>> {
    let (tx, mut rx) = mpsc::channel::<Event>(8192);
    let next_link = Arc::new(AtomicU64::new(1));
    let params = Arc::new(cfg.link_params);

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
    spawn_udp_reader(
        discovery,
        DatagramDest::Group(SocketAddr::V4(cfg.discovery_group)),
        tx.clone(),
    );
    spawn_udp_reader(env, DatagramDest::Group(SocketAddr::V4(cfg.env_group)), tx.clone());
    for sender in &senders {
        let local = sender.local_addr()?;
        spawn_udp_reader(sender.clone(), DatagramDest::Unicast(local), tx.clone());
    }
    cfg.listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(cfg.listener)?;
    spawn_accept_loop(listener, params.clone(), cfg.connect_timeout, next_link.clone(), tx.clone());

    let mut control = match &cfg.control {
        Some(c) => {
            let cursor = node.ledger().store().cursor(&c.app).map_err(io::Error::other)?;
            let payload_limit = node.ledger().payload_limit();
            Some(Control::start(c, cursor, payload_limit).map_err(io::Error::other)?)
        }
        None => None,
    };

    let mut writers: HashMap<LinkId, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut status_every = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    node.handle_timeout(wall_time());
    loop {
        while let Some(out) = node.poll_output() {
            let out = match control.as_mut() {
                Some(control) => control.handle_output(out),
                None => Some(out),
            };
            if let Some(out) = out {
                execute(out, &senders, &mut writers, &params, cfg.connect_timeout, &next_link, &tx)
                    .await;
            }
        }
        if let Some(control) = control.as_mut() {
            control.pump(node.ledger().store());
        }
        let wait = node
            .poll_timeout()
            .map(|at| Duration::from_micros(at.0.saturating_sub(wall_time().0)))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            event = rx.recv() => {
                let Some(event) = event else { break };
                feed(&mut node, event, &mut writers);
            }
            Some(event) = recv_control(&mut control) => {
                if let Some(control) = control.as_mut() {
                    control.handle_burst(&mut node, wall_time(), event);
                }
            }
            () = tokio::time::sleep(wait) => node.handle_timeout(wall_time()),
            _ = status_every.tick() => {
                if let Some(path) = &cfg.status_path {
                    write_status(path, &node);
                }
            }
        }
    }
    // Closing the writers ends the links; the peers see them go down.
    writers.clear();
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

fn feed<S: Store>(
    node: &mut Node<S>,
    event: Event,
    writers: &mut HashMap<LinkId, mpsc::Sender<Vec<u8>>>,
) {
    let now = wall_time();
    match event {
        Event::Datagram { from, to, bytes } => {
            node.handle(now, Input::Datagram { from, to, bytes: &bytes });
        }
        Event::LinkUp { link, remote, outbound, writer } => {
            writers.insert(link, writer);
            node.handle(now, Input::LinkUp { link, remote, outbound });
        }
        Event::Frame { link, bytes } => node.handle(now, Input::Frame { link, bytes: &bytes }),
        Event::LinkDown { link } => {
            writers.remove(&link);
            node.handle(now, Input::LinkDown { link });
        }
        Event::ConnectFailed { to } => node.handle(now, Input::ConnectFailed { to }),
    }
}

async fn execute(
    out: Output,
    senders: &[Arc<UdpSocket>],
    writers: &mut HashMap<LinkId, mpsc::Sender<Vec<u8>>>,
    params: &Arc<LinkParams>,
    connect_timeout: Duration,
    next_link: &Arc<AtomicU64>,
    tx: &mpsc::Sender<Event>,
) {
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
            if let Some(writer) = writers.get(&link) {
                if writer.try_send(bytes).is_err() {
                    warn!(?link, "link queue full or closed: closing the link");
                    writers.remove(&link);
                    let _ = tx.try_send(Event::LinkDown { link });
                }
            }
        }
        Output::Connect { to } => {
            let (params, tx, next_link) = (params.clone(), tx.clone(), next_link.clone());
            tokio::spawn(async move {
                match TcpLink::connect(to, &params, connect_timeout).await {
                    Ok(link) => start_link(link, &next_link, tx).await,
                    Err(err) => {
                        debug!(%to, %err, "link attempt failed");
                        let _ = tx.send(Event::ConnectFailed { to }).await;
                    }
                }
            });
        }
        Output::Close { link } => {
            writers.remove(&link);
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

/// Registers an established link with the loop and runs its reader and writer tasks.
async fn start_link(link: TcpLink, next_link: &AtomicU64, tx: mpsc::Sender<Event>) {
    let id = LinkId(next_link.fetch_add(1, Ordering::Relaxed));
    let (remote, outbound) = (link.remote(), link.outbound());
    let (mut reader, mut writer) = link.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(LINK_QUEUE);
    if tx.send(Event::LinkUp { link: id, remote, outbound, writer: wtx }).await.is_err() {
        return;
    }
    info!(link = id.0, %remote, outbound, "link up");
    tokio::spawn(async move {
        while let Some(frame) = wrx.recv().await {
            if let Err(err) = writer.send(&frame).await {
                debug!(link = id.0, %err, "link write failed");
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let reader_tx = tx.clone();
    tokio::spawn(async move {
        loop {
            match reader.recv().await {
                Ok(Some(bytes)) => {
                    if reader_tx.send(Event::Frame { link: id, bytes }).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    debug!(link = id.0, %err, "link read failed");
                    break;
                }
            }
        }
        let _ = reader_tx.send(Event::LinkDown { link: id }).await;
    });
}

fn spawn_udp_reader(socket: Arc<UdpSocket>, to: DatagramDest, tx: mpsc::Sender<Event>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match socket.recv_from(&mut buf).await {
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

fn spawn_accept_loop(
    listener: TcpListener,
    params: Arc<LinkParams>,
    timeout: Duration,
    next_link: Arc<AtomicU64>,
    tx: mpsc::Sender<Event>,
) {
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
            let (params, tx, next_link) = (params.clone(), tx.clone(), next_link.clone());
            tokio::spawn(async move {
                match TcpLink::accept(stream, &params, timeout).await {
                    Ok(link) => start_link(link, &next_link, tx).await,
                    Err(err) => debug!(%remote, %err, "inbound link refused"),
                }
            });
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
