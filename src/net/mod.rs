//! Transports that reach a peer, run under tokio: discovery, the link handshake, QUIC links
//! with their TCP fallback, and the driver that runs the core over them.
//!
//! - [`discovery`]: the multicast sockets of LAN discovery (groups, TTL 1, interfaces).
//! - [`driver`]: the run loop that feeds the core and executes its outputs.
//! - [`link`]: one established link whichever transport carries it (reader and writer halves).
//! - [`handshake`]: sans-IO mutual proof of membership with forward-secret session keys
//!   (x25519 + the system key), and the same proof bound to a TLS exporter for QUIC.
//! - [`quic`]: the preferred link: QUIC (quinn, TLS 1.3) with the exporter-bound membership
//!   proof, seed frames on one stream, split into a reader and a writer half like TCP.
//! - [`relay_client`]: a member's connection to a rendezvous relay (admission, post, take).
//! - [`tcp`]: the TCP fallback link: seed frames, the handshake, then sealed frames, split
//!   into a reader and a writer half for a driver's reader and writer tasks.
//!
//! A link hands the core ([`crate::proto`]) a reliable ordered stream of opaque frames: the
//! driver maps a [`link::Link`] to `Input::LinkUp { outbound, kind, .. }`, each received
//! frame to `Input::Frame`, each `Output::Frame` to [`link::LinkWriter::send`], a failure to
//! `Input::LinkDown`, and a refused handshake to `Input::LinkRejected` (the counters).
//!
//! The core decides whom to link to; the driver decides how: QUIC first, TCP when the QUIC
//! path fails, and QUIC again later (see [`driver`]). The driver does not use relays yet.

pub mod discovery;
pub mod driver;
pub mod handshake;
pub mod link;
pub mod quic;
pub mod relay_client;
pub mod relay_task;
pub mod tcp;

pub use handshake::{HandshakeError, LinkParams, Role};
pub use tcp::{LinkError, TcpLink, TcpLinkReader, TcpLinkWriter};
