//! Transports that reach a peer, run under tokio: the link handshake and the TCP link.
//!
//! - [`discovery`]: the multicast sockets of LAN discovery (groups, TTL 1, interfaces).
//! - [`driver`]: the run loop that feeds the core and executes its outputs.
//! - [`handshake`]: sans-IO mutual proof of membership with forward-secret session keys
//!   (x25519 + the system key), and the same proof bound to a TLS exporter for QUIC.
//! - [`quic`]: the preferred link: QUIC (quinn, TLS 1.3) with the exporter-bound membership
//!   proof, seed frames on one stream, split into a reader and a writer half like TCP.
//! - [`tcp`]: the TCP fallback link: seed frames, the handshake, then sealed frames, split
//!   into a reader and a writer half for a driver's reader and writer tasks.
//!
//! A link hands the core ([`crate::proto`]) a reliable ordered stream of opaque frames: a
//! driver maps [`tcp::TcpLink`] to `Input::LinkUp { outbound: link.outbound(), .. }`, each
//! received frame to `Input::Frame`, each `Output::Frame` to [`tcp::TcpLinkWriter::send`],
//! and any [`LinkError`] to `Input::LinkDown` (counting [`LinkError::reason`]).
//!
//! This module makes no protocol decisions: it does not choose peers, retry or reconnect, keeps
//! no link alive beyond QUIC's own keep-alive, and holds no relay code yet.

pub mod discovery;
pub mod driver;
pub mod handshake;
pub mod quic;
pub mod tcp;

pub use handshake::{HandshakeError, LinkParams, Role};
pub use tcp::{LinkError, TcpLink, TcpLinkReader, TcpLinkWriter};
