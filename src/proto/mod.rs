//! The sync protocol as a sans-IO core: no sockets, no clock reads, no global RNG, so the same
//! code runs under the tokio driver and under netsim's deterministic simulator.
//!
//! - [`io`]: the contract with drivers (inputs, outputs, time).
//! - [`message`]: what travels inside sealed datagrams and frames.
//! - [`peers`]: the peer table.
//! - [`sync`]: anti-entropy bookkeeping (change log, per-link origin tables, what to ask for).
//! - [`node`]: the state machine.
//! - [`relaypath`]: relay sessions, links to peers through relay mailboxes.
//! - [`punch`]: NAT traversal, from a relay session to a direct link.
//! - [`status`]: the snapshot `--status` shows.

pub mod io;
pub mod message;
pub mod node;
pub mod pads;
pub mod peers;
pub mod punch;
pub mod relaypath;
pub mod status;
pub mod sync;

pub use io::{
    DatagramDest, Input, LinkId, LinkKind, Output, Protocol, ReceivedDatagram, RelayIndex,
    RelayOutput, Time,
};
pub use node::{ConfiguredPeer, Node, NodeConfig, NodeStats, OwnConflict};
pub use peers::{DownReason, Peer, PeerState, Role};
pub use status::{LinkStatus, NodeStatus, PeerStatus, Queues};

#[cfg(test)]
mod recv_profile;
#[cfg(test)]
mod tests;
