//! The local control socket: how the CLI and applications (a POS implementor) talk to a running
//! node. A Unix stream socket at `D/run/control.sock`, mode 0600, created by `meshnode run`
//! (which holds the data directory's lock, so a socket file found at start is stale and is
//! replaced) and removed when it stops.
//!
//! # Protocol
//!
//! JSON lines both ways. Each request gets its reply lines in request order; errors are
//! `{"error":"<what failed and how to fix it>"}` (with a `"code"` where a client may act on
//! it), and a bad line costs only that line (an over-long one closes the connection).
//!
//! - `{"op":"submit", "kind":"TUBT", "urgent":false, "background":false, "physkey":"..",
//!   "scopes":["up"], "body":<any JSON>}` (or `"payload":"<text>"` or `"payload_hex":".."`
//!   instead of `body`; optionally a sensitive part, `"sensitive":"<text>"` or
//!   `"sensitive_hex":".."`, which never goes into a multicast datagram and crosses a relay
//!   only under a one-time pad; the fields of a `meshnode submit --jsonl` line). Reply: the receipt
//!   `{"origin":..,"seq":..,"physkey":..[,"existing":true]}` once the unit is durable, or an
//!   error. After a refused submit the connection refuses later submits without storing them
//!   (so nothing after a refused unit is stored); reconnect to go on. Requests may be
//!   pipelined, and should be: every submit already read when the node turns to its control
//!   socket, from all connections (at most [`server::MAX_BATCH`]), is one group commit, so
//!   pipelined or concurrent submits share disk syncs.
//! - `{"op":"subscribe","from_start":false}`: reply `{"subscribed":{..}}`, then delivered
//!   units of other origins, one line each: `{"origin","seq","physkey","kind","urgency",
//!   "created_ms","scopes","payload"}` (`payload_hex` instead of `payload` when the bytes are
//!   not UTF-8; `sensitive` or `sensitive_hex` when the unit has a sensitive part), in
//!   per-origin order. Starts at the first unit not acknowledged, per origin;
//!   with `from_start`, replays every held unit from seq 1 (acknowledged ones included). At
//!   most [`delivery::WINDOW_UNITS`] units (or [`delivery::WINDOW_BYTES`] of payload) are sent
//!   ahead of the acknowledgements. One subscriber at a time: the node keeps one delivery
//!   cursor (`NodeConfig::app`); a second subscribe is refused (`"code":"subscriber_busy"`)
//!   while the first is connected.
//! - `{"op":"ack","origin":..,"seq":..}`: the application has durably applied every unit of
//!   `origin` up to `seq`; the cursor moves. Reply `{"acked":{..}}` only once the cursor is
//!   durable on disk (the acknowledgements read in one loop turn share one store flush): from
//!   then on the node never delivers those units again, even after kill -9 or power loss, so
//!   the application may forget them. If the flush fails the reply is an error and the
//!   application acknowledges again (the units may come again after a crash). Only units
//!   already sent may be acknowledged; acknowledging an old one again is harmless (and answers
//!   once the cursor is durable). Any connection may acknowledge; a subscriber need not wait
//!   for a reply before acknowledging the next unit.
//! - `{"op":"status"}`: reply `{"status":<as in run/status.json>,"control":{..}}`.
//!
//! # Exactly once
//!
//! A unit is sent again until it is acknowledged: to a reconnecting subscriber, and after a
//! node restart (the cursor is durable). So an application that applies a unit and records
//! `(origin, seq)` in the same transaction, then acknowledges, sees each unit applied exactly
//! once across crashes of either side; one that cannot must drop a unit whose `(origin, seq)`
//! it already applied (at most the units not covered by an `acked` reply it has read come
//! again).
//!
//! This module does not authenticate clients (the file mode does), and does not deliver units
//! of this node's own origin (the application submitted them).

pub mod client;
pub mod delivery;
pub mod protocol;
pub mod server;

use std::io;
use std::path::{Path, PathBuf};

/// Where the control socket is, inside the data directory.
pub const SOCKET_FILE: &str = "run/control.sock";

/// The control socket of the data directory `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The node could not create its socket.
    #[error("cannot create the control socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A client could not connect for a reason other than "no node runs".
    #[error("cannot connect to the control socket {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("control socket: {source}")]
    Io {
        /// Why.
        source: io::Error,
    },
}
