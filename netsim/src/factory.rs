//! The node factory the CLI runs: the real protocol core (`meshnode::proto::Node`), built by
//! [`CoreFactory`]. The toy protocol (`crate::toy`) remains for the
//! engine's own tests, which need deliberately buggy protocols.

use crate::CoreFactory;

/// The protocol [`cli_factory`] builds, as reports name it.
pub const PROTOCOL: &str = "meshnode";

/// The factory of one CLI run (each run, and each thread, gets its own).
pub fn cli_factory() -> CoreFactory {
    CoreFactory::default()
}
