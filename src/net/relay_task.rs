//! The node's connections to its rendezvous relays (design §2.1): one task per configured
//! relay keeps it connected, carries the core's posts and subscriptions to it, and hands its
//! deliveries and verdicts back to the loop. It makes no protocol decisions: which mailboxes,
//! what to post and when are the core's ([`crate::proto::RelayOutput`]).
//!
//! - Connect from the node's QUIC link socket when there is one, so the address the relay
//!   observes is the NAT mapping the links use (hole punching needs it); else from a socket of
//!   its own.
//! - Reconnect after a failure with backoff, 1 s doubling to 60 s, with jitter so a fleet of
//!   stores does not return to a restarted relay in step. A refusal (not admitted, bad proof)
//!   waits the full minute: retrying sooner cannot change the relay's mind.
//! - Posts wait in a bounded queue; a full queue, or a relay that is down, drops the post: the
//!   relay sessions retransmit what is not acknowledged end to end, so a dropped post is one
//!   more lost payload, which the core already handles. `Taken` ids have a queue of their own
//!   and are never dropped while connected.
//! - The subscription is a value, not a message (a `watch`): the latest set is what counts,
//!   and it is sent again on every reconnect.
//! - `Taken` is sent only after the core handled the payload (the loop calls
//!   [`RelayHandle::taken`] after `handle` returns); a crash in between only causes a
//!   redelivery, which the session drops as a duplicate.
//! - A clean stop ([`RelayHandle::finish`]): the posts already queued (the relay sessions'
//!   `Fin`s) are sent and the task waits, at most [`FINISH_WITHIN`], for the relay to confirm
//!   them before it closes the connection, so the peers hear of the stop at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use crate::net::relay_client::{RelayClient, RelayClientError, RelayMembership};
use crate::proto::RelayIndex;
use crate::wire::relay::{Mailbox, Post, PostRefuseReason, RefuseReason, RelayFrame};

/// Posts queued for one relay before new ones are dropped (the sessions resend them).
const POST_QUEUE: usize = 1024;
/// First wait before a reconnect.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait before a reconnect, and the wait after a refusal.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Connect plus admission handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A post the relay has not confirmed (`Posted` or `PostRefused`) within this long means the
/// connection is dead although QUIC has not noticed yet (a relay killed and restarted leaves
/// the old connection silent until the 45 s idle timeout): reconnect.
const POSTED_WITHIN: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(30);
/// Most delivery ids acknowledged in one `Taken` frame.
const TAKEN_BATCH: usize = 256;
/// Longest wait at a clean stop for the relay to confirm the last posts.
pub const FINISH_WITHIN: Duration = Duration::from_secs(2);

/// One configured relay: where it listens and its public key (pinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Its public key, as `meshnode relay --status` prints it.
    pub key: [u8; 32],
}

/// What a relay task tells the loop.
#[derive(Debug)]
pub enum RelayEvent {
    /// Admitted (again); `observed` is our address as the relay sees it.
    Up {
        /// The relay.
        relay: RelayIndex,
        /// Our address as it sees it.
        observed: SocketAddr,
    },
    /// The admitted connection ended.
    Down {
        /// The relay.
        relay: RelayIndex,
    },
    /// The relay refused us.
    Refused {
        /// The relay.
        relay: RelayIndex,
        /// Why.
        reason: RefuseReason,
    },
    /// A payload from a subscribed mailbox; answer with [`RelayHandle::taken`] once handled.
    Payload {
        /// The relay.
        relay: RelayIndex,
        /// The relay's id of the payload.
        id: u64,
        /// Where it was posted.
        mailbox: Mailbox,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// The relay refused one of our posts.
    PostRefused {
        /// The relay.
        relay: RelayIndex,
        /// Why.
        reason: PostRefuseReason,
    },
}

/// A post the loop hands a relay task.
#[derive(Debug)]
struct Outgoing {
    mailbox: Mailbox,
    ttl_secs: u32,
    broadcast: bool,
    bytes: Vec<u8>,
}

/// The loop's handle on one relay task; dropping it ends the task and its connection.
#[derive(Debug)]
pub struct RelayHandle {
    /// `None` once [`RelayHandle::finish`] closed it.
    posts: Option<mpsc::Sender<Outgoing>>,
    /// Ids of handled deliveries. Unbounded but small: one id per delivery the loop took from
    /// the bounded event channel, drained at every turn of the task; apart from the posts, so
    /// a backlog of posts never drops one (a lost `Taken` leaves the payload at the relay,
    /// counted against the quota, until its TTL).
    taken: mpsc::UnboundedSender<u64>,
    subscription: watch::Sender<Vec<Mailbox>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RelayHandle {
    /// Queues a post; `false` when it was dropped (queue full or the task ended).
    pub fn post(&self, mailbox: Mailbox, ttl_secs: u32, broadcast: bool, bytes: Vec<u8>) -> bool {
        let post = Outgoing { mailbox, ttl_secs, broadcast, bytes };
        self.posts.as_ref().is_some_and(|p| p.try_send(post).is_ok())
    }

    /// A clean stop: no more posts; the task sends those queued, waits for the relay to
    /// confirm them (at most [`FINISH_WITHIN`]) and ends. Await [`RelayHandle::finished`].
    pub fn finish(&mut self) {
        self.posts = None;
    }

    /// Resolves when the task has ended.
    pub async fn finished(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Replaces the subscribed mailboxes (sent now if connected, and on every reconnect).
    pub fn subscribe(&self, mailboxes: Vec<Mailbox>) {
        self.subscription.send_replace(mailboxes);
    }

    /// The payload `id` was handled: the relay may delete it.
    pub fn taken(&self, id: u64) {
        // Only fails once the task ended; the relay then delivers it again, and the session
        // drops the duplicate.
        let _ = self.taken.send(id);
    }
}

/// Starts the task that keeps `relay` connected, dialing from `quic` (the links' endpoint)
/// when given. Must run inside a tokio runtime.
pub fn spawn_relay(
    relay: RelayIndex,
    target: RelayTarget,
    membership: Arc<RelayMembership>,
    quic: Option<quinn::Endpoint>,
    events: mpsc::Sender<RelayEvent>,
) -> RelayHandle {
    let (posts, posts_rx) = mpsc::channel(POST_QUEUE);
    let (taken, taken_rx) = mpsc::unbounded_channel();
    let (subscription, subs) = watch::channel(Vec::new());
    let span = tracing::info_span!("relay", index = relay.0, addr = %target.addr);
    let task = RelayTask {
        relay,
        target,
        membership,
        quic,
        events,
        posts: posts_rx,
        taken: taken_rx,
        subs,
    };
    let task = tokio::spawn(task.run().instrument(span));
    RelayHandle { posts: Some(posts), taken, subscription, task }
}

struct RelayTask {
    relay: RelayIndex,
    target: RelayTarget,
    membership: Arc<RelayMembership>,
    quic: Option<quinn::Endpoint>,
    events: mpsc::Sender<RelayEvent>,
    posts: mpsc::Receiver<Outgoing>,
    taken: mpsc::UnboundedReceiver<u64>,
    subs: watch::Receiver<Vec<Mailbox>>,
}

/// How a connection attempt or an admitted connection ended.
enum Ended {
    /// The loop is gone: stop.
    Stop,
    /// Try again after the backoff.
    Retry,
    /// Refused: try again after the longest backoff.
    Refused,
}

impl RelayTask {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let ended = match self.connect().await {
                Ok(client) => {
                    let admitted = Instant::now();
                    let ended = self.serve(client).await;
                    // A relay that admits and then drops us at once is not redialed every
                    // second: the backoff starts over only after a connection that held.
                    if admitted.elapsed() >= STABLE {
                        backoff = BACKOFF_MIN;
                    }
                    if matches!(ended, Ended::Stop) {
                        return;
                    }
                    if !matches!(ended, Ended::Refused) {
                        self.tell(RelayEvent::Down { relay: self.relay }).await;
                    }
                    ended
                }
                Err(err) => self.failed(err).await,
            };
            let wait = match ended {
                Ended::Stop => return,
                Ended::Refused => BACKOFF_MAX,
                Ended::Retry => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    wait
                }
            };
            // Up to a quarter less, so that many nodes do not come back at the same instant.
            let wait = wait.mul_f64(1.0 - rand::thread_rng().gen_range(0.0..0.25));
            if self.idle(wait).await {
                return;
            }
        }
    }

    async fn connect(&self) -> Result<RelayClient, RelayClientError> {
        let RelayTarget { addr, key } = self.target;
        match &self.quic {
            Some(quic) => {
                RelayClient::connect_on(quic.clone(), addr, key, &self.membership, CONNECT_TIMEOUT)
                    .await
            }
            None => RelayClient::connect(addr, key, &self.membership, CONNECT_TIMEOUT).await,
        }
    }

    /// A connection attempt failed: the core hears of refusals (its status shows them).
    async fn failed(&self, err: RelayClientError) -> Ended {
        match err {
            RelayClientError::Refused { reason } => {
                let reason = reason.unwrap_or(RefuseReason::Other(0));
                warn!(reason = reason.as_str(), "the relay refused us");
                self.tell(RelayEvent::Refused { relay: self.relay, reason }).await;
                Ended::Refused
            }
            RelayClientError::WrongRelayKey => {
                warn!("the relay's key is not the one configured under [[relay]]; check key =");
                Ended::Refused
            }
            err => {
                debug!(%err, "relay connection failed");
                Ended::Retry
            }
        }
    }

    /// Carries traffic over an admitted connection until it ends.
    async fn serve(&mut self, mut client: RelayClient) -> Ended {
        let observed = client.welcome().observed;
        info!(%observed, "relay admitted us");
        self.tell(RelayEvent::Up { relay: self.relay, observed }).await;
        let mut seq: u32 = 0;
        // Posts sent and not yet confirmed, oldest first.
        let mut unconfirmed: VecDeque<(u32, Instant)> = VecDeque::new();
        // The current subscription goes first on every connection.
        self.subs.mark_changed();
        loop {
            let confirm_by = unconfirmed.front().map(|(_, at)| *at + POSTED_WITHIN);
            tokio::select! {
                // Frames first: confirmations waiting to be read must not lose to the timer.
                biased;
                frame = client.recv() => match frame {
                    Ok(Some(frame)) => {
                        match &frame {
                            RelayFrame::Posted { seqs } => unconfirmed.retain(|(s, _)| !seqs.contains(s)),
                            RelayFrame::PostRefused { seq, .. } => unconfirmed.retain(|(s, _)| s != seq),
                            _ => {}
                        }
                        if let Some(ended) = self.on_frame(frame).await {
                            client.close();
                            return ended;
                        }
                    }
                    Ok(None) => return Ended::Retry,
                    Err(RelayClientError::Refused { reason }) => {
                        let reason = reason.unwrap_or(RefuseReason::Other(0));
                        self.tell(RelayEvent::Refused { relay: self.relay, reason }).await;
                        return Ended::Refused;
                    }
                    Err(err) => {
                        debug!(%err, "relay connection lost");
                        return Ended::Retry;
                    }
                },
                Some(first) = self.taken.recv() => {
                    let mut ids = vec![first];
                    while ids.len() < TAKEN_BATCH {
                        match self.taken.try_recv() {
                            Ok(id) => ids.push(id),
                            Err(_) => break,
                        }
                    }
                    if let Err(err) = client.send(&RelayFrame::Taken { ids }).await {
                        debug!(%err, "relay write failed");
                        return Ended::Retry;
                    }
                }
                post = self.posts.recv() => {
                    let Some(Outgoing { mailbox, ttl_secs, broadcast, bytes }) = post else {
                        finish(&mut client, unconfirmed).await;
                        return Ended::Stop;
                    };
                    seq = seq.wrapping_add(1);
                    unconfirmed.push_back((seq, Instant::now()));
                    let post = Post { seq, mailbox, ttl_secs, broadcast, payload: bytes };
                    if let Err(err) = client.send(&RelayFrame::Post(post)).await {
                        debug!(%err, "relay write failed");
                        return Ended::Retry;
                    }
                }
                changed = self.subs.changed() => {
                    if changed.is_err() {
                        client.close();
                        return Ended::Stop;
                    }
                    let mailboxes = self.subs.borrow_and_update().clone();
                    if let Err(err) = client.subscribe(mailboxes).await {
                        debug!(%err, "relay write failed");
                        return Ended::Retry;
                    }
                }
                () = sleep_until(confirm_by) => {
                    warn!("the relay confirmed no post for {POSTED_WITHIN:?}: reconnecting");
                    client.close();
                    return Ended::Retry;
                }
            }
        }
    }

    /// A frame from the relay; `Some` when the connection must end.
    async fn on_frame(&mut self, frame: RelayFrame) -> Option<Ended> {
        match frame {
            RelayFrame::Deliver(d) => {
                let event = RelayEvent::Payload {
                    relay: self.relay,
                    id: d.id,
                    mailbox: d.mailbox,
                    bytes: d.payload,
                };
                if self.events.send(event).await.is_err() {
                    return Some(Ended::Stop);
                }
            }
            RelayFrame::PostRefused { seq, reason } => {
                debug!(seq, ?reason, "the relay refused a post");
                self.tell(RelayEvent::PostRefused { relay: self.relay, reason }).await;
            }
            RelayFrame::Posted { .. } => {}
            RelayFrame::Observed { addr } => {
                info!(observed = %addr, "the relay sees us at a new address");
                self.tell(RelayEvent::Up { relay: self.relay, observed: addr }).await;
            }
            RelayFrame::Refused { reason } => {
                self.tell(RelayEvent::Refused { relay: self.relay, reason }).await;
                return Some(Ended::Refused);
            }
            other => {
                debug!(kind = other.kind(), "unexpected frame from the relay: reconnecting");
                return Some(Ended::Retry);
            }
        }
        None
    }

    /// Waits `wait` while no connection is up, dropping what the loop sends meanwhile (the core
    /// knows the relay is down); `true` when the loop is gone.
    async fn idle(&mut self, wait: Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return false,
                post = self.posts.recv() => if post.is_none() { return true },
                // Redelivered on the next connection; the session drops the duplicate.
                Some(_) = self.taken.recv() => {}
            }
        }
    }

    async fn tell(&self, event: RelayEvent) {
        let _ = self.events.send(event).await;
    }
}

/// The loop is stopping and every queued post is sent: waits, at most [`FINISH_WITHIN`], for
/// the relay to confirm them (the last are the relay sessions' `Fin`s, which tell the peers at
/// once that this node stopped; without them a peer sees the link go quiet and calls it down
/// only after several relay keepalives, minutes), then closes the connection. Deliveries that
/// come meanwhile are not taken: the relay keeps them for the next start.
async fn finish(client: &mut RelayClient, mut unconfirmed: VecDeque<(u32, Instant)>) {
    let give_up = Instant::now() + FINISH_WITHIN;
    while !unconfirmed.is_empty() {
        match tokio::time::timeout_at(give_up, client.recv()).await {
            Ok(Ok(Some(RelayFrame::Posted { seqs }))) => {
                unconfirmed.retain(|(s, _)| !seqs.contains(s));
            }
            Ok(Ok(Some(RelayFrame::PostRefused { seq, .. }))) => {
                unconfirmed.retain(|(s, _)| *s != seq);
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None) | Err(_)) | Err(_) => break,
        }
    }
    debug!(unconfirmed = unconfirmed.len(), "relay connection closed at stop");
    client.close();
}

/// Sleeps until `at`, or for ever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
