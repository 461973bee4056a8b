//! Network-namespace topologies for tests of the real `meshnode` binary (the LAN issue builds
//! this; today it is documentation only: nothing here runs `ip`).
//!
//! # Proposed API
//!
//! ```text
//! let topo = Topology::new("ms7")            // prefix: every namespace, bridge and veth is
//!     .bridge("ho")                           //   named "ms7-..." so a crashed test's leftovers
//!     .bridge("store1")                       //   are found and deleted by prefix
//!     .wan("store1", "ho", Wan { delay_ms: 20, jitter_ms: 5, rate_kbit: 20_000, loss_pct: 0.0 })
//!     .node("head-office", &[("ho", "10.0.0.1/24")])
//!     .node("store1-server", &[("store1", "10.1.1.1/24")])
//!     .node("store1-lane1", &[("store1", "10.1.1.10/24")])
//!     .build()?;                              // -> Guard; Err names the failed `ip` command
//!
//! let child = topo.spawn("store1-lane1", Command::new(meshnode_bin()).args(["run", ...]))?;
//! topo.cut_wan("store1")?;                    // nft drop on the WAN veth; heal_wan to undo
//! topo.partition(&["store1-lane1"])?;         // drop everything to and from a node
//! topo.set_netem("store1", Netem { loss_pct: 5.0, ..Netem::default() })?;
//! drop(topo);                                 // kills spawned children, deletes namespaces,
//!                                             //   bridges and veths (also on panic)
//! ```
//!
//! # Design notes
//!
//! - One namespace per node, one bridge (in its own namespace) per LAN segment, multicast
//!   enabled on the bridge so discovery works as on a store LAN; a WAN link is a veth pair
//!   between two segment routers with `tc netem` (delay, jitter, loss, rate) on both ends.
//! - The guard's `Drop` deletes by prefix, so a leftover from a killed run is cleaned by the
//!   next `Topology::new` with the same prefix; tests use a prefix per test name.
//! - Addresses are private test addresses inside the namespaces only; nothing leaves the host.
//! - Linux and root only: the constructor returns a typed error (`NetnsError::NotRoot`,
//!   `MissingTool { tool }`) and tests `#[ignore = "needs root and iproute2"]` elsewhere.
//! - The same `Fault` vocabulary as the simulator (`crate::Fault`), so a failing simulated
//!   scenario can be replayed against real binaries (with real time, so not byte for byte).
//!
//! Not here: anything the simulator needs; the simulator never touches the host network.
