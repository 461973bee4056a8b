//! `meshnode run`: the node on real sockets (LAN discovery, QUIC links with a TCP fallback) until SIGINT/SIGTERM,
//! with its control socket in `run/control.sock` (see [`crate::control`]).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::RngCore;

use crate::control::{self, server::ControlConfig};
use crate::id::InstanceId;
use crate::net::discovery::{self, DEFAULT_PORT, DISCOVERY_GROUP};
use crate::net::driver::{self, DriverConfig};
use crate::net::handshake::LinkParams;
use crate::net::relay_client::RelayMembership;
use crate::net::relay_task::RelayTarget;
use crate::proto::{ConfiguredPeer, Node, NodeConfig, Role};

/// Where the running node writes its status snapshot, inside the data directory.
pub(crate) const STATUS_FILE: &str = "run/status.json";

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// Interface address to discover peers on (repeatable); default: every private IPv4
    /// interface that is up. `127.0.0.1` runs a mesh on this machine only.
    #[arg(long = "discovery-if", value_name = "ADDR")]
    discovery_if: Vec<Ipv4Addr>,
    /// UDP port of the discovery and environment groups (every node of a LAN must agree).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    discovery_port: u16,
    /// Where links are accepted; port 0 picks one (it is announced in discovery).
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// This machine's role: lane, store-server or main-server (head office).
    #[arg(long, default_value = "lane", value_parser = parse_role)]
    role: Role,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "lane" => Ok(Role::Lane),
        "store-server" => Ok(Role::StoreServer),
        "main-server" => Ok(Role::MainServer),
        other => Err(format!("unknown role {other:?}; use lane, store-server or main-server")),
    }
}

/// A line for the operator on stderr. Not `eprintln!`, which panics when the write fails: the
/// log may be on the disk that just filled up.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Runs the node until SIGINT/SIGTERM. When its store fails (a write, sync or index that
/// leaves what is durable unknown: a full or failing disk), the node stops, and this reopens
/// the data directory after a pause (1 s, doubling to a minute while it keeps failing), which
/// replays what reached the disk, so a node recovers once the disk does, without an operator.
/// The failure is kept in `run/store-failure.json` for `--status`.
pub(super) fn run(dir: &Path, args: RunArgs) -> anyhow::Result<()> {
    let stop = Stop::listen()?;
    let mut failure: Option<StoreFailure> = None;
    let mut consecutive = 0u32;
    loop {
        let started = Instant::now();
        let mut on_started = || {
            // A record left by an earlier process (killed, or stopped while it waited) is no
            // longer waiting for anything either.
            let record = failure.clone().or_else(|| StoreFailure::read(dir));
            if let Some(mut f) = record.filter(|f| f.next_attempt_unix_ms.is_some()) {
                f.next_attempt_unix_ms = None;
                f.write(dir);
            }
            if failure.is_some() {
                say!("meshnode reopened its data directory after the store failure");
            }
        };
        let ended = run_once(dir, &args, &stop, &mut on_started);
        if stop.is_requested() {
            // Stopping: whatever the run ended with is the process's result.
            return match ended? {
                Ended::Stopped => Ok(()),
                Ended::StoreFailed(cause) => bail!("the store failed while stopping: {cause}"),
            };
        }
        let record = match (ended, failure.take()) {
            (Ok(Ended::Stopped), _) => return Ok(()),
            (Ok(Ended::StoreFailed(cause)), previous) => {
                StoreFailure::new(cause, previous.map_or(0, |f| f.restarts))
            }
            // The first start reports its error as before.
            (Err(e), None) => return Err(e),
            // A restart that cannot open the data directory yet (the disk still failing, or a
            // lock not released yet) tries again later; the failure it recovers from stays the
            // one shown.
            (Err(e), Some(mut previous)) => {
                previous.last_error = Some(format!("{e:#}"));
                previous
            }
        };
        if started.elapsed() >= STEADY_RUN {
            consecutive = 0;
        }
        consecutive += 1;
        let pause = RESTART_PAUSE_FIRST
            .saturating_mul(1 << (consecutive - 1).min(6))
            .min(RESTART_PAUSE_MAX);
        let record = record.next_attempt_in(pause);
        record.write(dir);
        match &record.last_error {
            None => say!(
                "meshnode: the store failed: {}\n  the node stopped; it reopens {} in {} s (replaying its daily logs: nothing acknowledged is lost). If this repeats, check that disk: free space, `dmesg`.",
                record.cause,
                dir.display(),
                pause.as_secs()
            ),
            Some(e) => say!(
                "meshnode: cannot reopen {} yet: {e}\n  trying again in {} s",
                dir.display(),
                pause.as_secs()
            ),
        }
        failure = Some(record);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("cannot start the async runtime")?;
        let stopped = runtime.block_on(async {
            tokio::select! {
                () = stop.requested() => true,
                () = tokio::time::sleep(pause) => false,
            }
        });
        if stopped {
            if let Some(mut f) = failure {
                f.next_attempt_unix_ms = None;
                f.write(dir);
            }
            say!("meshnode stopped (its store had failed; the next start reopens it)");
            return Ok(());
        }
    }
}

/// How the node's run ended.
enum Ended {
    /// SIGINT or SIGTERM: a clean stop.
    Stopped,
    /// The store failed; why.
    StoreFailed(String),
}

/// The first pause before reopening a failed store; it doubles while the store keeps failing.
const RESTART_PAUSE_FIRST: Duration = Duration::from_secs(1);
/// The longest pause before reopening a failed store.
const RESTART_PAUSE_MAX: Duration = Duration::from_secs(60);
/// How long a failed store may take to close before the next start goes ahead without it.
const FAILED_CLOSE_WITHIN: Duration = Duration::from_secs(10);
/// A run this long resets the pause to [`RESTART_PAUSE_FIRST`].
const STEADY_RUN: Duration = Duration::from_secs(60);

/// One start of the node: open the data directory, run until stopped or until the store
/// fails, close. `on_started` runs once the node is about to run.
fn run_once(
    dir: &Path,
    args: &RunArgs,
    stop: &Arc<Stop>,
    on_started: &mut dyn FnMut(),
) -> anyhow::Result<Ended> {
    let mut rng = rand::rngs::OsRng;
    let instance = InstanceId::random(&mut rng);
    let (datadir, ledger) = open_waiting(dir, instance)?;
    let interfaces = if args.discovery_if.is_empty() {
        let found = discovery::private_ipv4_interfaces().context("cannot list interfaces")?;
        if found.is_empty() {
            bail!("no private IPv4 interface is up; choose one with --discovery-if ADDR (127.0.0.1 for this machine only)");
        }
        found
    } else {
        args.discovery_if.clone()
    };
    let (listener, quic_socket) = bind_link_ports(args.listen, datadir.config.links.quic)?;
    let bound = listener.local_addr()?;
    let advertise: Vec<SocketAddr> = if bound.ip().is_unspecified() {
        interfaces.iter().map(|ip| SocketAddr::new((*ip).into(), bound.port())).collect()
    } else {
        vec![bound]
    };
    let secrets = &datadir.secrets;
    let env_group = discovery::env_group(secrets.rmsystem, &secrets.env);
    let discovery_group = SocketAddrV4::new(DISCOVERY_GROUP, args.discovery_port);
    let env_group = SocketAddrV4::new(env_group, args.discovery_port);
    let mut cfg = NodeConfig::new(
        secrets.rmsystem,
        secrets.env.clone(),
        datadir.key_schedule(),
        args.role,
        datadir.device_id,
        instance,
        SocketAddr::V4(discovery_group),
        SocketAddr::V4(env_group),
    );
    cfg.advertise = advertise.clone();
    cfg.rng_seed = rng.next_u64();
    cfg.offline_ping_ms = datadir.config.links.offline_ping_secs.saturating_mul(1000);
    cfg.configured = datadir
        .config
        .peer
        .iter()
        .map(|p| ConfiguredPeer { addr: p.address, priority: p.priority, role: p.role })
        .collect();
    cfg.relay_path = datadir.config.relay_path.core(datadir.config.relay.len());
    // Punching needs the links' QUIC socket (its NAT mapping is what the relays observe).
    cfg.hole_punch = datadir.config.relay_path.hole_punch && datadir.config.links.quic;
    cfg.pad_bytes = datadir.config.relay_path.pad_bytes;
    let relays: Vec<RelayTarget> =
        datadir.config.relay.iter().map(|r| RelayTarget { addr: r.addr, key: r.key }).collect();
    let relay_membership = if relays.is_empty() {
        None
    } else {
        let membership = RelayMembership::of(secrets)
            .context("cannot derive the relay admission key from this node's install id")?;
        Some(Arc::new(membership))
    };
    let link_params = LinkParams::new(datadir.key_schedule(), secrets.rmsystem, &secrets.env);
    let control = ControlConfig { socket: control::socket_path(dir), app: cfg.app.clone() };
    let node = Node::new(cfg, ledger);
    let driver_cfg = DriverConfig {
        interfaces: interfaces.clone(),
        discovery_group,
        env_group,
        listener,
        quic_socket,
        link_params,
        connect_timeout: Duration::from_secs(5),
        quic_retry: Duration::from_secs(datadir.config.links.quic_retry_secs),
        status_path: Some(dir.join(STATUS_FILE)),
        control: Some(control),
        relays,
        relay_membership,
    };
    tracing::info!(dbid = %node.dbid(), ?interfaces, ?advertise, %discovery_group, %env_group, "node starting");
    say!(
        "meshnode {} running: links on {}, discovery on {:?} ({discovery_group}, {env_group})",
        node.dbid(),
        advertise.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        interfaces
    );
    // The core's loop runs on this thread (`block_on`); two workers run the socket readers,
    // the links and the control connections (JSON parsing and formatting), so those no longer
    // wait behind a group commit's fdatasync: 2.3x the units/s of a single-thread runtime
    // through the control socket (docs/PERFORMANCE.md).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    on_started();
    let node = runtime.block_on(async { driver::run(node, driver_cfg, stop.requested()).await })?;
    if let Some(cause) = node.store_failure() {
        let cause = cause.to_string();
        // Sockets and tasks first, so that peers see the node go now. A failed ledger cannot
        // checkpoint (the next open replays its logs instead), and closing it joins its sync
        // thread, which a disk that hangs holds forever: wait a while, then leave it.
        drop(runtime);
        let (closed, ledger_closed) = std::sync::mpsc::channel();
        let closing = std::thread::Builder::new().name("close-failed".into()).spawn(move || {
            drop(node);
            let _ = closed.send(());
        });
        if closing.is_ok() && ledger_closed.recv_timeout(FAILED_CLOSE_WITHIN).is_err() {
            tracing::warn!(
                "the failed store did not close within {FAILED_CLOSE_WITHIN:?}; reopening anyway"
            );
        }
        drop(datadir);
        return Ok(Ended::StoreFailed(cause));
    }
    node.into_ledger().close().context("cannot close the store cleanly")?;
    drop(datadir);
    say!("meshnode stopped");
    Ok(Ended::Stopped)
}

/// SIGINT and SIGTERM, heard for the whole process, across the node's restarts (each start
/// has a runtime of its own, dropped with everything it ran).
struct Stop {
    requested: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stop {
    /// Installs the handlers (before returning, so that no signal is missed) and waits for
    /// them on a thread of their own.
    fn listen() -> anyhow::Result<Arc<Stop>> {
        use tokio::signal::unix::{signal, SignalKind};
        let stop = Arc::new(Stop { requested: AtomicBool::new(false), notify: Default::default() });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("cannot start the signal handler")?;
        let handlers = runtime
            .block_on(async { (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) });
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the node runs until killed; kill -9 loses nothing
            // acknowledged.
            return Ok(stop);
        };
        let heard = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                runtime.block_on(async {
                    loop {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = int.recv() => {}
                        }
                        if heard.requested.swap(true, Ordering::SeqCst) {
                            // A second signal: something hangs (a disk that does not answer
                            // a sync). Exit now; like kill -9, this loses nothing acknowledged.
                            say!("meshnode: a second stop signal: exiting without waiting");
                            std::process::exit(1);
                        }
                        heard.notify.notify_waiters();
                    }
                });
            })
            .context("cannot start the signal handler")?;
        Ok(stop)
    }

    /// Whether a stop was asked for.
    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Completes once a stop was asked for (at once if it was already).
    async fn requested(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.requested.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// The last store failure of this data directory (`run/store-failure.json`), for `--status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoreFailure {
    /// What failed, as the store reported it.
    pub cause: String,
    /// When (Unix ms).
    pub at_unix_ms: u64,
    /// How many times this `meshnode run` reopened (or tried to reopen) the data directory
    /// after a failure.
    pub restarts: u32,
    /// When the next reopen is due (Unix ms); `null` once the node runs again (or stopped).
    pub next_attempt_unix_ms: Option<u64>,
    /// Why the last reopen failed, if it did (the disk still failing, a lock still held).
    #[serde(default)]
    pub last_error: Option<String>,
    /// The `meshnode run` process.
    pub pid: u32,
}

/// Where [`StoreFailure`] is kept, inside the data directory.
pub(crate) const STORE_FAILURE_FILE: &str = "run/store-failure.json";

impl StoreFailure {
    /// A new failure, after `restarts` reopens for earlier ones.
    fn new(cause: String, restarts: u32) -> StoreFailure {
        StoreFailure {
            cause,
            at_unix_ms: super::now_ms(),
            restarts,
            next_attempt_unix_ms: None,
            last_error: None,
            pid: std::process::id(),
        }
    }

    /// The record while `meshnode run` waits `pause` before its next reopen.
    fn next_attempt_in(mut self, pause: Duration) -> StoreFailure {
        self.restarts += 1;
        self.next_attempt_unix_ms = Some(super::now_ms() + pause.as_millis() as u64);
        self
    }

    /// Best effort: a full disk may refuse it too (the next attempt writes it again).
    fn write(&self, dir: &Path) {
        let path = dir.join(STORE_FAILURE_FILE);
        let tmp = path.with_extension("json.tmp");
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| serde_json::to_vec(self).map_err(std::io::Error::other))
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), %e, "cannot record the store failure");
        }
    }

    /// The record in `dir`, if any and readable.
    pub(crate) fn read(dir: &Path) -> Option<StoreFailure> {
        serde_json::from_slice(&std::fs::read(dir.join(STORE_FAILURE_FILE)).ok()?).ok()
    }
}

/// Binds the TCP listener and the UDP socket of QUIC links on one address, so the announced
/// address serves both transports. With port 0, tries fresh ports until both are free there.
fn bind_link_ports(
    listen: SocketAddr,
    quic: bool,
) -> anyhow::Result<(std::net::TcpListener, Option<std::net::UdpSocket>)> {
    let mut last_err = None;
    for _ in 0..32 {
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen} (tcp); choose another --listen"))?;
        if !quic {
            return Ok((listener, None));
        }
        let bound = listener.local_addr()?;
        match std::net::UdpSocket::bind(bound) {
            Ok(socket) => return Ok((listener, Some(socket))),
            Err(err) if listen.port() == 0 => last_err = Some(err),
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("cannot listen on {listen} (udp, for quic links); choose another --listen, or set quic = false under [links]")
                })
            }
        }
    }
    Err(last_err.map_or_else(|| anyhow::anyhow!("no free port"), anyhow::Error::from))
        .with_context(|| format!("no port on {listen} is free for both tcp and udp"))
}

/// Opens the data directory, waiting up to 10 s while another process holds it: an operator's
/// `meshnode --status` or `units` holds it for a moment when no node runs, and a node started
/// (or restarted by a supervisor) at that moment must not fail for it.
fn open_waiting(
    dir: &Path,
    instance: InstanceId,
) -> anyhow::Result<(crate::datadir::DataDir, crate::ledger::Ledger)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match super::open_ledger_as(dir, instance) {
            Err(err)
                if std::time::Instant::now() < deadline
                    && matches!(
                        err.downcast_ref::<crate::datadir::DataDirError>(),
                        Some(crate::datadir::DataDirError::Locked { .. })
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the node runs until killed; kill -9 loses nothing acknowledged.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
