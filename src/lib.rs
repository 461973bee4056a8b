//! meshnode: a peer-to-peer mesh node that carries retail business transactions to every
//! machine of a system that needs them, over whatever path exists today.
//!
//! Layers, top to bottom (see `ARCHITECTURE.md` in the shared folder): the CLI, the data
//! directory, the ledger (store + DATI logs), the wire format, and crypto underneath all.

pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod datadir;
pub mod dati;
pub mod id;
pub mod ledger;
pub mod net;
pub mod proto;
pub mod relay;
pub mod store;
pub mod unit;
pub mod wire;

pub use id::{DatabaseId, DeviceId, Environment, InstallId, InstanceId, Physkey, RmSystem};
pub use unit::{FileScopes, TransferUnit, UnitKind, Urgency};
