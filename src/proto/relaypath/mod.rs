//! The relay path (design `docs/design/internet-mesh.md` §2): between two peers with no direct
//! the relays.
//!
//! - [`envelope`]: what a relay sees of a payload, the records inside, mailbox pseudonyms.

pub mod envelope;
