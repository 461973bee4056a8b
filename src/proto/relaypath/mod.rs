//! The relay path (design `docs/design/internet-mesh.md` §2): between two peers with no direct
//! link, a relay session carries core messages as sealed, padded payloads through mailboxes on
//! the relays.
//!
//! - [`envelope`]: what a relay sees of a payload, the records inside, mailbox pseudonyms.
//! - [`fragment`]: splitting messages into fragments and reassembling them.
//! - [`session`]: the reliable, ordered session over lossy, duplicating relays.

pub mod envelope;
pub mod fragment;
pub mod session;
