//! The sync protocol as a sans-IO core (issue 4; in progress).
//!
//! [`io`] is the contract between the core and its drivers (the tokio node, netsim).

pub mod io;

pub use io::{DatagramDest, Input, LinkId, Output, Protocol, Time};
