//! netsim: the deterministic simulator that runs meshnode's sans-IO core with virtual time.
//!
//! The simulator itself arrives with the sync-protocol issue; this crate exists now so the
//! workspace has its final shape and `cargo test --workspace` covers it from the start.
