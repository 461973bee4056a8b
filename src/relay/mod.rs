//! The rendezvous relay (`meshnode relay`, design `docs/design/internet-mesh.md` §1): a
//! store-and-forward mailbox service over QUIC that admits the members of a system by an
//! install-id proof and never holds a system key.
//!
//! - [`admitted`]: `R/admitted.toml`, the systems admitted, their verifiers and quotas.
//! - [`store`]: [`store::RelayStore`], payloads on sled (durable) or in memory.
//! - [`core`]: [`core::RelayCore`], the sans-IO logic: admission, posts, quotas, TTL, delivery.
//! - [`server`]: the thin tokio/quinn driver, the relay's identity key and its status file.
//!
//! The relay sees RmSystems, mailbox ids, sizes and sealed bytes, nothing else; it cannot read
//! payloads or impersonate a member. This module does not run the node side of the relay path
//! (that is `crate::net::relay_client` and, later, the core's relay session).

pub mod admitted;
pub mod core;
pub mod server;
pub mod store;

pub use self::admitted::{Admitted, AdmittedFile, SystemPolicy};
pub use self::core::{RelayCore, RelayLimits, RelayOutput, RelayStatus};
pub use self::store::{MemoryRelayStore, RelayStore, Scope, SledRelayStore};
