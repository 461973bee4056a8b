//! The node's side of the control socket, run inside the driver's tokio loop.
//!
//! Topology: one accept task; per connection a reader task (bounded lines in, parsed into
//! [`ControlEvent`]s on one bounded channel to the loop) and a writer task (reply lines out of
//! a bounded queue). The loop owns [`Control`], which turns requests into core inputs, routes
//! the core's answers back to the requesting connection in order, and streams
//! `Output::Deliver`ed units to the subscriber within its window (see [`super::delivery`]).
//!
//! Batching ([`Control::handle_burst`]): each loop turn takes the event that woke it and every
//! event already queued (across connections, without waiting for more, at most [`MAX_BATCH`]
//! events), and feeds the submits as one `Input::SubmitBatch` (one disk sync) and the
//! acknowledgements as one `Input::AcknowledgeBatch` (one store flush). Each connection's
//! replies keep its request order: a request that would be answered out of order (a connection
//! that mixes submits and acks in one burst, or asks for status behind its own submits) ends
//! the burst and is handled first on the next turn.
//!
//! This module makes no protocol decisions of the core's and does not authenticate clients:
//! access is the file mode (0600, in a 0700 data directory).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::delivery::{ClientId, Deliveries};
use super::protocol::{self, Request};
use super::ControlError;
use crate::id::DatabaseId;
use crate::ledger::{Receipt, Submission};
use crate::proto::{Input, Node, Output, Protocol, Time};
use crate::store::{Store, StoreError};
use crate::unit::TransferUnit;

/// Reply lines queued for one connection before it is judged stuck and closed. Larger than the
/// subscriber window, so a subscriber that reads is never closed, and than two full bursts of
/// receipts, so a client pipelining submits is never closed either.
const CLIENT_QUEUE: usize = 4 * super::delivery::WINDOW_UNITS + 2 * MAX_BATCH;
/// Requests parsed and waiting for the loop, from all connections together.
const EVENT_QUEUE: usize = MAX_BATCH;
/// Most events taken in one loop turn (so most submits in one group commit, and most
/// acknowledgements in one cursor flush). Requests parsed while a commit's fdatasync runs wait
/// here for the next one: at 1,024 a pipelining client was held to ~1,000 units per fdatasync
/// (~180k units/s on the LAN bench, with the loop thread half idle); see docs/PERFORMANCE.md.
pub const MAX_BATCH: usize = 4096;

/// The answer to a submit on a connection whose earlier submit was refused.
const NOT_SUBMITTED: &str =
    "not submitted: an earlier submit on this connection was refused; reconnect to submit again";

/// Where the control socket goes and whose cursor it serves.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The socket path (`D/run/control.sock`).
    pub socket: PathBuf,
    /// The application whose delivery cursor the node keeps (`NodeConfig::app`).
    pub app: String,
}

/// What the connection tasks tell the loop.
#[derive(Debug)]
pub enum ControlEvent {
    /// A client connected; replies go to `writer`.
    Connected {
        /// Its id.
        client: ClientId,
        /// Its reply queue.
        writer: mpsc::Sender<Outgoing>,
    },
    /// A well-formed request.
    Request {
        /// Who asked.
        client: ClientId,
        /// What.
        request: Request,
    },
    /// A line that is not a request; answered with an error line.
    Bad {
        /// Who sent it.
        client: ClientId,
        /// The error line's message.
        message: String,
    },
    /// The client went away (or was cut off after an over-long line).
    Closed {
        /// Who.
        client: ClientId,
    },
}

/// A reply on its way to a client. Receipts and delivered units are turned into JSON by the
/// connection's writer task, on a runtime worker, not on the loop thread that every unit
/// passes through.
#[derive(Debug)]
pub enum Outgoing {
    /// A line ready to send.
    Line(String),
    /// The reply to an accepted submit.
    Receipt(Receipt),
    /// A unit for the subscriber.
    Unit(TransferUnit),
}

impl Outgoing {
    fn into_line(self) -> String {
        match self {
            Outgoing::Line(line) => line,
            Outgoing::Receipt(receipt) => protocol::receipt_line(&receipt),
            Outgoing::Unit(unit) => protocol::unit_line(&unit),
        }
    }
}

struct Client {
    /// `None` once the client stopped reading (queue full) or its socket failed for writing.
    /// Its requests still count: an acknowledgement it sent before dying moves the cursor.
    writer: Option<mpsc::Sender<Outgoing>>,
    /// A submit of this connection was refused: later ones are not submitted, so nothing after
    /// a refused unit is stored (the connection keeps the application's order).
    refusing: bool,
    /// A submit of this connection went to the core alone (one the ledger is expected to
    /// refuse) and is not answered yet: its next submits wait for the answer, which may set
    /// `refusing` (answers can come late while log syncs are pipelined).
    alone_unanswered: bool,
}

/// The control socket's state in the driver loop.
pub struct Control {
    path: PathBuf,
    events: mpsc::Receiver<ControlEvent>,
    clients: HashMap<ClientId, Client>,
    /// Who submitted, in order: each `Accepted`/`Refused` answers the front.
    submits: VecDeque<ClientId>,
    /// Per connection, its submits not answered yet. With log syncs pipelined an answer comes
    /// after later events, so another request of that connection waits for it (the replies of
    /// one connection stay in order).
    unanswered: HashMap<ClientId, usize>,
    /// Who acknowledged, in order: each `Acknowledged`/`AcknowledgeFailed` answers the front.
    acks: VecDeque<ClientId>,
    /// An event taken off the queue that could not join the last burst; handled first.
    held: Option<ControlEvent>,
    deliveries: Deliveries,
}

/// What a burst gathered: submits and acknowledgements in arrival order, with their senders.
#[derive(Default)]
struct Burst {
    submits: Vec<Submission>,
    submitters: Vec<ClientId>,
    acks: Vec<(DatabaseId, u64)>,
    ackers: Vec<ClientId>,
    /// Per connection in the burst: whether it submitted (else it acknowledged).
    kinds: HashMap<ClientId, bool>,
}

impl Burst {
    fn is_empty(&self) -> bool {
        self.submits.is_empty() && self.acks.is_empty()
    }
}

impl Control {
    /// Binds the socket (replacing a stale one: the caller holds the data directory's lock) and
    /// starts accepting. Must run inside a tokio runtime.
    pub fn start(
        cfg: &ControlConfig,
        cursor: BTreeMap<DatabaseId, u64>,
        payload_limit: usize,
    ) -> Result<Control, ControlError> {
        let listener = bind(&cfg.socket)?;
        listener
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(listener))
            .map(|listener| {
                // Hex doubles a binary payload; the rest of a request is small.
                let line_limit = payload_limit.saturating_mul(2).saturating_add(64 << 10);
                let (tx, events) = mpsc::channel(EVENT_QUEUE);
                spawn_accept_loop(listener, line_limit, tx);
                info!(socket = %cfg.socket.display(), "control socket ready");
                Control {
                    path: cfg.socket.clone(),
                    events,
                    clients: HashMap::new(),
                    submits: VecDeque::new(),
                    unanswered: HashMap::new(),
                    acks: VecDeque::new(),
                    held: None,
                    deliveries: Deliveries::new(cursor),
                }
            })
            .map_err(|source| ControlError::Bind { path: cfg.socket.clone(), source })
    }

    /// The next event from the connections (never `None` while the accept task runs).
    pub async fn recv(&mut self) -> Option<ControlEvent> {
        if let Some(event) = self.held.take() {
            return Some(event);
        }
        self.events.recv().await
    }

    /// An event that is already queued, without waiting (for draining at shutdown).
    pub fn try_recv(&mut self) -> Option<ControlEvent> {
        self.held.take().or_else(|| self.events.try_recv().ok())
    }

    /// Acts on `first` and on every event already queued (at most [`MAX_BATCH`]): submits go to
    /// the core as one batch, acknowledgements as another; other events are handled as they
    /// come, unless their connection has a request in the burst (then the burst ends and the
    /// event is handled first next turn, keeping the connection's replies in order). A request
    /// of a connection whose submits are not all answered is held too (`must_wait`).
    pub fn handle_burst<S: Store>(&mut self, node: &mut Node<S>, now: Time, first: ControlEvent) {
        let mut burst = Burst::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next.take() {
            taken += 1;
            if self.must_wait(&event) {
                self.held = Some(event);
                break;
            }
            if let Some(event) = self.join(node, &mut burst, event) {
                let in_burst = match &event {
                    ControlEvent::Request { client, .. } | ControlEvent::Bad { client, .. } => {
                        burst.kinds.contains_key(client)
                    }
                    _ => false,
                };
                // A submit that cannot join (the ledger will refuse it) goes to the core alone,
                // and ends the turn: its connection must be refusing before it submits again.
                let alone =
                    matches!(event, ControlEvent::Request { request: Request::Submit(_), .. });
                if in_burst || (alone && !burst.is_empty()) {
                    self.held = Some(event);
                    break;
                }
                self.handle_event(node, now, event);
                if alone {
                    break;
                }
            }
            if taken >= MAX_BATCH {
                break;
            }
            next = self.events.try_recv().ok();
        }
        if !burst.submits.is_empty() {
            for client in burst.submitters {
                self.expect_answer(client);
            }
            node.handle(now, Input::SubmitBatch(burst.submits));
        }
        if !burst.acks.is_empty() {
            self.acks.extend(burst.ackers);
            node.handle(now, Input::AcknowledgeBatch(burst.acks));
        }
    }

    /// Adds a submit or an acknowledgement to the burst when it can join; gives back any other
    /// event (also a submit the ledger would refuse: it must not take the others down with it).
    fn join<S: Store>(
        &mut self,
        node: &Node<S>,
        burst: &mut Burst,
        event: ControlEvent,
    ) -> Option<ControlEvent> {
        let ControlEvent::Request { client, request } = event else { return Some(event) };
        // A request of a connection already gone is dropped (as `handle_event` does).
        let c = self.clients.get(&client)?;
        let submitted = burst.kinds.get(&client).copied();
        match request {
            Request::Submit(sub)
                if !c.refusing && submitted != Some(false) && node.ledger().check(&sub).is_ok() =>
            {
                burst.kinds.insert(client, true);
                burst.submits.push(sub);
                burst.submitters.push(client);
                None
            }
            Request::Ack { origin, seq } if submitted != Some(true) => {
                match self.deliveries.acknowledge(origin, seq) {
                    Ok(_) => {
                        burst.kinds.insert(client, false);
                        burst.acks.push((origin, seq));
                        burst.ackers.push(client);
                        None
                    }
                    // Nothing moved: the same error is answered when the event is handled.
                    Err(_) => Some(ControlEvent::Request { client, request }),
                }
            }
            request => Some(ControlEvent::Request { client, request }),
        }
    }

    /// Acts on one event: requests become core inputs (a batch of one) or direct replies.
    pub fn handle_event<S: Store>(&mut self, node: &mut Node<S>, now: Time, event: ControlEvent) {
        match event {
            ControlEvent::Connected { client, writer } => {
                let c = Client { writer: Some(writer), refusing: false, alone_unanswered: false };
                self.clients.insert(client, c);
            }
            ControlEvent::Closed { client } => self.drop_client(client),
            ControlEvent::Bad { client, message } => {
                self.reply(client, protocol::error_line(&message))
            }
            ControlEvent::Request { client, request } => {
                let Some(c) = self.clients.get(&client) else { return };
                match request {
                    Request::Submit(sub) => {
                        if c.refusing {
                            self.reply(client, protocol::error_line(NOT_SUBMITTED));
                            return;
                        }
                        self.expect_answer(client);
                        if let Some(c) = self.clients.get_mut(&client) {
                            c.alone_unanswered = true;
                        }
                        node.handle(now, Input::Submit(sub));
                    }
                    Request::Subscribe { .. } if c.writer.is_none() => {}
                    Request::Subscribe { from_start } => {
                        match self.deliveries.subscribe(client, from_start) {
                            Ok(()) => {
                                debug!(client = client.0, from_start, "subscribed");
                                self.reply(client, protocol::subscribed_line(from_start));
                            }
                            Err(busy) => {
                                let message = busy.to_string();
                                let code = protocol::SUBSCRIBER_BUSY;
                                self.reply(client, protocol::error_line_with_code(&message, code))
                            }
                        }
                    }
                    Request::Ack { origin, seq } => {
                        match self.deliveries.acknowledge(origin, seq) {
                            Ok(_) => {
                                // Answered once the cursor is durable (`Output::Acknowledged`).
                                self.acks.push_back(client);
                                node.handle(now, Input::AcknowledgeBatch(vec![(origin, seq)]));
                            }
                            Err(e) => self.reply(client, protocol::error_line(&e.to_string())),
                        }
                    }
                    Request::Status => {
                        // Brings the core's clock (uptime, last seen) up to now; harmless.
                        node.handle_timeout(now);
                        let line = json!({
                            "status": node.status(),
                            "control": {
                                "clients": self.clients.len(),
                                "subscribed": self.deliveries.subscriber().is_some(),
                                "pending": self.deliveries.pending(),
                            },
                        })
                        .to_string();
                        self.reply(client, line);
                    }
                }
            }
        }
    }

    /// Takes the outputs meant for control clients; gives the others back to the driver.
    pub fn handle_output(&mut self, out: Output) -> Option<Output> {
        match out {
            Output::Accepted(receipt) => {
                if let Some(client) = self.answered() {
                    self.queue(client, Outgoing::Receipt(receipt));
                }
                None
            }
            Output::Refused { reason } => {
                warn!(%reason, "submission refused");
                if let Some(client) = self.answered() {
                    // Later submits of a refused connection in the same batch get the answer
                    // they would have got had they come one at a time.
                    let already = self
                        .clients
                        .get_mut(&client)
                        .map(|c| std::mem::replace(&mut c.refusing, true));
                    let message = if already == Some(true) {
                        NOT_SUBMITTED.to_string()
                    } else {
                        format!("unit refused; nothing was written: {reason}")
                    };
                    self.reply(client, protocol::error_line(&message));
                }
                None
            }
            Output::Acknowledged { origin, seq } => {
                if let Some(client) = self.acks.pop_front() {
                    self.reply(client, protocol::acked_line(&origin, seq));
                }
                None
            }
            Output::AcknowledgeFailed { origin, seq, reason } => {
                warn!(%origin, seq, %reason, "acknowledgement not durable");
                if let Some(client) = self.acks.pop_front() {
                    let message = format!(
                        "acknowledgement of {origin} up to {seq} is not durable: {reason}; acknowledge again"
                    );
                    self.reply(client, protocol::error_line(&message));
                }
                None
            }
            Output::Deliver(unit) => {
                self.deliveries.handle_deliver(unit.origin, unit.seq);
                None
            }
            other => Some(other),
        }
    }

    /// Sends the subscriber what its window allows, reading the units with `get` (the node's
    /// [`Node::unit`](crate::proto::Node::unit): the store, or units received and still waiting
    /// for their log sync, which the node delivers before it).
    pub fn pump(
        &mut self,
        get: impl Fn(&DatabaseId, u64) -> Result<Option<TransferUnit>, StoreError>,
    ) {
        while let Some((client, origin, seq)) = self.deliveries.poll_send() {
            match get(&origin, seq) {
                Ok(Some(unit)) => {
                    let len = unit.payload.len();
                    if !self.queue(client, Outgoing::Unit(unit)) {
                        return;
                    }
                    self.deliveries.mark_sent(origin, seq, len);
                }
                Ok(None) => {
                    if !self.deliveries.skip(origin, seq) {
                        // Each turn until the restart: the failed sync itself was logged.
                        debug!(%origin, seq, "a unit handed for delivery is gone; restart meshnode");
                        return;
                    }
                }
                Err(err) => {
                    warn!(%origin, seq, %err, "cannot read a unit for the subscriber");
                    return;
                }
            }
        }
    }

    /// Removes the socket file (the connections end with the runtime).
    pub fn close(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    fn reply(&mut self, client: ClientId, line: String) {
        self.queue(client, Outgoing::Line(line));
    }

    /// Queues a line; a client whose queue is full is cut off (its connection is closed for
    /// writing; what it already sent is still read). Returns whether it was queued.
    fn queue(&mut self, client: ClientId, line: Outgoing) -> bool {
        let Some(c) = self.clients.get_mut(&client) else { return false };
        let Some(writer) = &c.writer else { return false };
        match writer.try_send(line) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(client = client.0, "control client does not read its replies: closing it");
                c.writer = None;
                self.deliveries.unsubscribe(client);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(client = client.0, "control client stopped reading");
                c.writer = None;
                self.deliveries.unsubscribe(client);
                false
            }
        }
    }

    /// Whether the held event, if any, can be handled now (see `Control::must_wait`); the
    /// driver reads no control event while it cannot.
    pub fn ready(&self) -> bool {
        self.held.as_ref().is_none_or(|event| !self.must_wait(event))
    }

    /// A request (other than a submit, which joins the queue behind its own) of a connection
    /// whose submits are not all answered waits for the answers.
    fn must_wait(&self, event: &ControlEvent) -> bool {
        let (client, submit) = match event {
            ControlEvent::Request { client, request } => {
                (client, matches!(request, Request::Submit(_)))
            }
            ControlEvent::Bad { client, .. } => (client, false),
            _ => return false,
        };
        let alone = self.clients.get(client).is_some_and(|c| c.alone_unanswered);
        (!submit || alone) && self.unanswered.get(client).is_some_and(|n| *n > 0)
    }

    fn expect_answer(&mut self, client: ClientId) {
        self.submits.push_back(client);
        *self.unanswered.entry(client).or_insert(0) += 1;
    }

    /// The connection the next `Accepted`/`Refused` answers.
    fn answered(&mut self) -> Option<ClientId> {
        let client = self.submits.pop_front()?;
        if let std::collections::hash_map::Entry::Occupied(mut n) = self.unanswered.entry(client) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
                if let Some(c) = self.clients.get_mut(&client) {
                    c.alone_unanswered = false;
                }
            }
        }
        Some(client)
    }

    fn drop_client(&mut self, client: ClientId) {
        self.clients.remove(&client);
        self.deliveries.unsubscribe(client);
    }
}

/// Binds `path` with mode 0600: bound under a temporary name, restricted, then renamed over
/// whatever is at `path` (a stale socket of a node that is gone), so no one ever connects to a
/// socket with a wider mode.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, ControlError> {
    let err = |source| ControlError::Bind { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("sock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

fn spawn_accept_loop(listener: UnixListener, line_limit: usize, tx: mpsc::Sender<ControlEvent>) {
    let next = Arc::new(AtomicU64::new(1));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(%err, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let client = ClientId(next.fetch_add(1, Ordering::Relaxed));
            spawn_connection(stream, client, line_limit, tx.clone());
        }
    });
}

fn spawn_connection(
    stream: UnixStream,
    client: ClientId,
    line_limit: usize,
    tx: mpsc::Sender<ControlEvent>,
) {
    let (read, write) = stream.into_split();
    let (wtx, wrx) = mpsc::channel::<Outgoing>(CLIENT_QUEUE);
    tokio::spawn(async move {
        if tx.send(ControlEvent::Connected { client, writer: wtx }).await.is_err() {
            return;
        }
        debug!(client = client.0, "control client connected");
        tokio::spawn(write_replies(write, wrx));
        read_requests(read, client, line_limit, &tx).await;
        let _ = tx.send(ControlEvent::Closed { client }).await;
        debug!(client = client.0, "control client gone");
    });
}

async fn read_requests(
    read: OwnedReadHalf,
    client: ClientId,
    line_limit: usize,
    tx: &mpsc::Sender<ControlEvent>,
) {
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let event = match read_line(&mut reader, &mut line, line_limit).await {
            Ok(LineRead::Eof) => return,
            Err(err) => {
                debug!(client = client.0, %err, "control read failed");
                return;
            }
            Ok(LineRead::TooLong) => {
                let message = format!(
                    "request line over {line_limit} bytes; closing the connection (payloads are limited by payload_limit in meshnode.toml)"
                );
                let _ = tx.send(ControlEvent::Bad { client, message }).await;
                return;
            }
            Ok(LineRead::Line) => {
                // Checked first: the lossy conversion walks a valid line byte by byte (5 % of a
                // node's CPU under a stream of submits), `from_utf8` a word at a time.
                let text = match std::str::from_utf8(&line) {
                    Ok(text) => std::borrow::Cow::Borrowed(text),
                    Err(_) => String::from_utf8_lossy(&line),
                };
                if text.trim().is_empty() {
                    continue;
                }
                match protocol::parse_request(text.trim_end_matches('\r')) {
                    Ok(request) => ControlEvent::Request { client, request },
                    Err(e) => ControlEvent::Bad { client, message: e.to_string() },
                }
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads one line into `buf` (without the newline), refusing lines over `limit` bytes before
/// buffering them. A last line without a newline counts as a line.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<LineRead> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() { LineRead::Eof } else { LineRead::Line });
        }
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if buf.len().saturating_add(take) > limit {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(LineRead::Line);
        }
    }
}

async fn write_replies(write: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) {
    let mut out = BufWriter::new(write);
    while let Some(line) = rx.recv().await {
        let mut next = Some(line);
        // Write what is queued, then flush once.
        while let Some(line) = next {
            let mut line = line.into_line();
            line.push('\n');
            if out.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}
