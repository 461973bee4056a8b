//! netsim: the deterministic simulator that runs meshnode's sans-IO core with virtual time,
//! virtual LANs and WAN links, and faults; one seed replays a whole run.
//!
//! - [`engine`]: the event queue, the nodes and the [`NodeFactory`] that builds them;
//! - [`network`]: segments, WAN links, routes, queues, links and faults;
//! - [`scenario`]: topologies, workloads and fault timelines from a seed;
//! - `checks` and [`stats`]: delivery, loss and order accounting, and the [`Report`];
//! - [`disk`]: the disk-full store wrapper;
//! - [`relay`]: rendezvous relays (mailboxes, subscribers, down and up);
//! - [`toy`]: a toy protocol for the engine's tests and the CLI (feature `toy`);
//! - [`netns`]: network-namespace labs for tests of the real binary (Linux, root).

#![warn(missing_docs)]

mod checks;
pub mod core;
pub mod disk;
pub mod engine;
#[cfg(feature = "toy")]
pub mod factory;
pub mod netns;
pub mod network;
pub mod relay;
pub mod scenario;
pub mod stats;
#[cfg(feature = "toy")]
pub mod toy;

pub use core::CoreFactory;
pub use disk::{DiskFull, FailingStore};
pub use engine::{BuildContext, NodeFactory, Simulation, TraceEntry};
pub use network::{
    Fault, NodeId, NodeSpec, PathParams, PeerSpec, RelaySpec, Role, SegmentId, Topology, WanId,
};
pub use scenario::{ChainParams, FaultSet, Scenario, ScenarioKind, SimConfig};
pub use stats::Report;
