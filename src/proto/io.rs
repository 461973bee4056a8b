//! The sans-IO contract: what a driver feeds the protocol core and what it drains from it.
//!
//! The core owns no sockets, reads no clock and has no global RNG. A driver (the tokio node in
//! `net/`, or netsim's simulator) does four things and makes no protocol decisions:
//! 1. reads a socket or link and calls [`Protocol::handle`] with the current [`Time`];
//! 2. drains [`Protocol::poll_output`] until it returns `None`, executing each [`Output`], then
//!    [`Protocol::poll_relay_output`] likewise (relay posts and subscriptions);
//! 3. sleeps until [`Protocol::poll_timeout`] and then calls [`Protocol::handle_timeout`];
//! 4. repeats.
//!
//! Contract: time passed in never goes back (a driver clamps); an extra `handle_timeout` is
//! harmless; outputs are drained after every input, in order.

use std::fmt;
use std::net::SocketAddr;

use crate::ledger::{Receipt, Submission};
use crate::unit::TransferUnit;

/// A point in time: microseconds since the Unix epoch, as the node's clock claims it (so it may
/// be skewed against other nodes; the core uses it for timers and for key epochs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// From milliseconds.
    pub fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1000))
    }

    /// Whole milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// Whole seconds (for key epochs).
    pub fn as_secs(self) -> u64 {
        self.0 / 1_000_000
    }

    /// `self + micros`, saturating.
    pub fn plus_micros(self, micros: u64) -> Time {
        Time(self.0.saturating_add(micros))
    }

    /// `self + ms`, saturating.
    pub fn plus_millis(self, ms: u64) -> Time {
        self.plus_micros(ms.saturating_mul(1000))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// A reliable, ordered, message-preserving link to one peer (QUIC stream or TCP connection in
/// production, a simulated stream in netsim). Ids are chosen by the driver, unique per node and
/// below `1 << 63`; the ids from there up belong to the core's relay sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

impl LinkId {
    /// The bit of ids the core chooses for relay sessions; drivers use ids below it.
    pub const RELAY_BIT: u64 = 1 << 63;

    /// Whether this is a relay session's id (chosen by the core, never by a driver).
    pub fn is_relay(self) -> bool {
        self.0 & Self::RELAY_BIT != 0
    }
}

/// The position of a relay in the configured `[[relay]]` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RelayIndex(pub u16);

/// What carries a link. The core prefers a better kind when a peer has two links (so a TCP
/// fallback gives way to QUIC once UDP works again) and shows it in the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// A relay session (design §2): sealed, padded payloads through relay mailboxes. The worst
    /// kind: any direct link replaces it. Its link ids are chosen by the core
    /// ([`LinkId::is_relay`]); its frames never leave the core as [`Output::Frame`].
    Relay,
    /// A simulated stream (netsim, unit tests).
    Simulated,
    /// TCP with the sealed frames of the seed: the fallback when UDP is blocked.
    Tcp,
    /// QUIC (TLS 1.3): preferred.
    Quic,
}

/// Where a datagram goes or came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DatagramDest {
    /// A LAN multicast group (discovery or environment group), TTL 1.
    Group(SocketAddr),
    /// One host.
    Unicast(SocketAddr),
}

/// One datagram of an [`Input::Datagrams`] burst.
#[derive(Debug, Clone)]
pub struct ReceivedDatagram {
    /// Sender address.
    pub from: SocketAddr,
    /// Where it was sent.
    pub to: DatagramDest,
    /// The bytes, untrusted.
    pub bytes: Vec<u8>,
}

/// Something that happened, fed to [`Protocol::handle`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    /// A datagram arrived from `from`, sent to `to` (a group we joined, or us).
    Datagram {
        /// Sender address.
        from: SocketAddr,
        /// Where it was sent.
        to: DatagramDest,
        /// The bytes, untrusted.
        bytes: &'a [u8],
    },
    /// Datagrams that were waiting together (a driver that reads a burst hands it over at
    /// once): the units they carry share one group commit, which is what lets a receiver keep
    /// up with a sender that batches. Same as one [`Input::Datagram`] each, in order,
    /// otherwise.
    Datagrams(Vec<ReceivedDatagram>),
    /// One frame arrived on a link.
    Frame {
        /// The link.
        link: LinkId,
        /// The bytes, untrusted.
        bytes: &'a [u8],
    },
    /// A link is usable (after [`Output::Connect`], or accepted from a remote).
    LinkUp {
        /// The link.
        link: LinkId,
        /// The remote address.
        remote: SocketAddr,
        /// Whether we opened it.
        outbound: bool,
        /// What carries it.
        kind: LinkKind,
    },
    /// The driver refused a link for a fault of the other end: in its handshake (a non-member,
    /// junk), or later (an oversized, truncated or undecryptable frame ended it). Counted with
    /// the other rejections.
    LinkRejected {
        /// The reason.
        reason: crate::wire::RejectReason,
        /// Refused before it came up (also counted in `links_refused`).
        in_handshake: bool,
    },
    /// A link closed or failed; no more frames will arrive on it.
    LinkDown {
        /// The link.
        link: LinkId,
    },
    /// An [`Output::Connect`] to `to` did not produce a link.
    ConnectFailed {
        /// The address.
        to: SocketAddr,
    },
    /// The driver's connection to relay `relay` is admitted (`Welcome`); `observed` is our
    /// address as the relay sees it. Answered by [`RelayOutput::Subscribe`].
    RelayUp {
        /// The relay.
        relay: RelayIndex,
        /// Our address as it sees it.
        observed: SocketAddr,
    },
    /// The connection to `relay` is gone (the driver reconnects with backoff).
    RelayDown {
        /// The relay.
        relay: RelayIndex,
    },
    /// The relay refused us (counted and shown; the driver backs off).
    RelayRefused {
        /// The relay.
        relay: RelayIndex,
        /// Why.
        reason: crate::wire::relay::RefuseReason,
    },
    /// A payload delivered from a subscribed mailbox. The driver sends `Taken` after `handle`
    /// returns (a crash in between only causes a redelivery, which the session drops).
    RelayPayload {
        /// The relay.
        relay: RelayIndex,
        /// The mailbox it came from (bound into the payload's seal).
        mailbox: crate::wire::relay::Mailbox,
        /// The bytes, untrusted.
        bytes: &'a [u8],
    },
    /// The relay refused a post.
    RelayPostRefused {
        /// The relay.
        relay: RelayIndex,
        /// Why.
        reason: crate::wire::relay::PostRefuseReason,
    },
    /// The local application submits a unit: a batch of one (see [`Input::SubmitBatch`]).
    Submit(Submission),
    /// The local application submits units together: one group commit (one disk sync) for
    /// all, answered by one [`Output::Accepted`] per submission, in order. If the store refuses
    /// the batch, or any submission is invalid (over the payload limit), each submission is
    /// answered [`Output::Refused`] and nothing of the batch is stored. An empty batch is
    /// answered by nothing. With log syncs pipelined (`Node::pipeline_log_syncs`) the answers
    /// come once the sync is done, after an [`Input::LogsSynced`], in submission order; a
    /// failed sync refuses its batch and the later ones, which are then not known durable (a
    /// reopen replays whatever reached the disk).
    SubmitBatch(Vec<Submission>),
    /// A log sync started by a submit ended (pipelined syncs): durable batches are answered
    /// and sent on.
    LogsSynced,
    /// The local application has durably applied the delivered unit `(origin, seq)`. The
    /// cursor moves in memory; it is durable with the node's next checkpoint (at least once per
    /// anti-entropy round, and at a clean stop). Not answered: see
    /// [`Input::AcknowledgeBatch`] for an application that must know when it is durable.
    Acknowledge {
        /// Origin of the delivered unit.
        origin: crate::id::DatabaseId,
        /// Its seq.
        seq: u64,
    },
    /// The local application has durably applied every unit of each `(origin, seq)` up to
    /// `seq`. The cursor moves (never back: an old acknowledgement is harmless) and is made
    /// durable with one store flush for the batch, then each entry is answered, in order, by
    /// [`Output::Acknowledged`] (from then on a crash does not deliver those units again) or,
    /// if the flush failed, [`Output::AcknowledgeFailed`].
    AcknowledgeBatch(Vec<(crate::id::DatabaseId, u64)>),
    /// The driver stops cleanly after this input (its last): every relay session ends with a
    /// `Fin`, posted at once, so the peers see those links go down now instead of after
    /// several relay keepalives of silence. The driver closes its own links itself.
    Stopping,
    /// Pad material made for an [`Output::GeneratePad`].
    PadMaterial {
        /// The peer it is for.
        peer: crate::id::DatabaseId,
        /// The bytes, from the OS RNG (zeroized by the core once stored).
        material: Vec<u8>,
    },
}

/// Something the driver must do, drained from [`Protocol::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send a datagram.
    Datagram {
        /// Group or host.
        to: DatagramDest,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Send one frame on a link (in order after earlier frames of that link).
    Frame {
        /// The link.
        link: LinkId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Open a link to `to`; the driver answers with [`Input::LinkUp`] (`outbound: true`, a link
    /// id it chose) or [`Input::ConnectFailed`]. The core also times attempts out itself.
    Connect {
        /// The address.
        to: SocketAddr,
    },
    /// Close a link.
    Close {
        /// The link.
        link: LinkId,
    },
    /// NAT traversal: send a few small datagrams to `to` from the socket QUIC links use, so our
    /// NAT maps that socket towards `to` and lets its answers in. QUIC ignores them.
    Punch {
        /// A peer's candidate address.
        to: SocketAddr,
    },
    /// NAT traversal: dial `to` over QUIC only (a punched path; no TCP fallback, and a failure
    /// says nothing about the address's QUIC path). Answered like [`Output::Connect`] on
    /// success; a failure needs no answer (the punching round times out).
    ConnectPunched {
        /// A peer's candidate address.
        to: SocketAddr,
    },
    /// Make `len` bytes of one-time pad material for `peer` with the operating system's RNG
    /// and hand them back as [`Input::PadMaterial`] (the core's seeded RNG never makes key
    /// material; see [`crate::proto::pads`]).
    GeneratePad {
        /// The peer the pad is for.
        peer: crate::id::DatabaseId,
        /// Bytes.
        len: usize,
    },
    /// A submitted unit is durable: tell the application (in submission order).
    Accepted(Receipt),
    /// A submission the core could not take (the store refused the write: disk full, an IO
    /// error). Nothing of it was stored and no seq was used; the application keeps it and
    /// retries. Answers submissions in order, like [`Output::Accepted`].
    Refused {
        /// Why, for the application's log and the operator.
        reason: String,
    },
    /// An entry of [`Input::AcknowledgeBatch`] is durable: the cursor on disk covers every unit
    /// of `origin` up to `seq`, so the node will not deliver them again, even after a crash.
    Acknowledged {
        /// The origin acknowledged.
        origin: crate::id::DatabaseId,
        /// Up to this seq.
        seq: u64,
    },
    /// An entry of [`Input::AcknowledgeBatch`] could not be made durable (the store failed):
    /// the units may be delivered again after a crash; the application acknowledges again.
    AcknowledgeFailed {
        /// The origin acknowledged.
        origin: crate::id::DatabaseId,
        /// Up to this seq.
        seq: u64,
        /// Why, for the application's log and the operator.
        reason: String,
    },
    /// Hand a unit to the local application (in per-origin order, each once per node behind
    /// the durable cursor; after a crash, units not acknowledged are handed again).
    Deliver(TransferUnit),
}

/// Something the driver must do with a relay, drained from [`Protocol::poll_relay_output`]
/// (a queue apart from [`Output`], so drivers without relays need no code for it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayOutput {
    /// Replace the set of mailboxes `relay` delivers from.
    Subscribe {
        /// The relay.
        relay: RelayIndex,
        /// At most [`crate::wire::relay::MAX_SUBSCRIBE`].
        mailboxes: Vec<crate::wire::relay::Mailbox>,
    },
    /// Post a payload to a mailbox on `relay`.
    Post {
        /// The relay.
        relay: RelayIndex,
        /// Where.
        mailbox: crate::wire::relay::Mailbox,
        /// How long the relay keeps it.
        ttl_secs: u32,
        /// A presence broadcast.
        broadcast: bool,
        /// The sealed payload (one of the size classes).
        bytes: Vec<u8>,
    },
}

/// The protocol core as a driver sees it.
pub trait Protocol {
    /// Feeds one input at time `now`.
    fn handle(&mut self, now: Time, input: Input<'_>);
    /// Runs the timers due at `now`. Harmless when none is due.
    fn handle_timeout(&mut self, now: Time);
    /// The next thing to do, until `None`.
    fn poll_output(&mut self) -> Option<Output>;
    /// When [`Protocol::handle_timeout`] should next be called.
    fn poll_timeout(&self) -> Option<Time>;
    /// The next relay action, until `None`; drained like [`Protocol::poll_output`] (after it,
    /// after every input). A core without relays has none.
    fn poll_relay_output(&mut self) -> Option<RelayOutput> {
        None
    }
}
