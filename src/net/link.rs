//! One established link, whichever transport carries it: the driver runs the same reader and
//! writer tasks over a QUIC link ([`super::quic`]) or its TCP fallback ([`super::tcp`]).

use std::fmt;
use std::net::SocketAddr;

use super::quic::{QuicLink, QuicLinkError, QuicLinkReader, QuicLinkWriter};
use super::tcp::{LinkError, TcpLink, TcpLinkReader, TcpLinkWriter};
use crate::proto::LinkKind;
use crate::wire::RejectReason;

/// An authenticated link to one member.
#[derive(Debug)]
pub enum Link {
    /// QUIC (preferred).
    Quic(QuicLink),
    /// TCP (UDP failed on the path).
    Tcp(TcpLink),
}

impl Link {
    /// What carries it.
    pub fn kind(&self) -> LinkKind {
        match self {
            Link::Quic(_) => LinkKind::Quic,
            Link::Tcp(_) => LinkKind::Tcp,
        }
    }

    /// The other end.
    pub fn remote(&self) -> SocketAddr {
        match self {
            Link::Quic(l) => l.remote(),
            Link::Tcp(l) => l.remote(),
        }
    }

    /// Whether we opened it.
    pub fn outbound(&self) -> bool {
        match self {
            Link::Quic(l) => l.outbound(),
            Link::Tcp(l) => l.outbound(),
        }
    }

    /// The two halves, for a reader task and a writer task.
    pub fn into_split(self) -> (LinkReader, LinkWriter) {
        match self {
            Link::Quic(l) => {
                let (r, w) = l.into_split();
                (LinkReader::Quic(r), LinkWriter::Quic(w))
            }
            Link::Tcp(l) => {
                let (r, w) = l.into_split();
                (LinkReader::Tcp(r), LinkWriter::Tcp(w))
            }
        }
    }
}

/// Why a link ended or could not be set up, whichever transport.
#[derive(Debug)]
pub enum LinkFailure {
    /// A QUIC failure.
    Quic(QuicLinkError),
    /// A TCP failure.
    Tcp(LinkError),
}

impl LinkFailure {
    /// The reject counter this failure goes to, if it is a fault of the other end.
    pub fn reason(&self) -> Option<RejectReason> {
        match self {
            LinkFailure::Quic(e) => e.reason(),
            LinkFailure::Tcp(e) => e.reason(),
        }
    }

    /// The QUIC path failed (UDP blocked, peer unreachable over UDP): the case for TCP.
    pub fn is_quic_path_failure(&self) -> bool {
        matches!(self, LinkFailure::Quic(e) if e.is_path_failure())
    }
}

impl fmt::Display for LinkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFailure::Quic(e) => e.fmt(f),
            LinkFailure::Tcp(e) => e.fmt(f),
        }
    }
}

/// The receiving half.
#[derive(Debug)]
pub enum LinkReader {
    /// QUIC.
    Quic(QuicLinkReader),
    /// TCP.
    Tcp(TcpLinkReader),
}

impl LinkReader {
    /// The next frame; `Ok(None)` when the other end closed cleanly. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkFailure> {
        match self {
            LinkReader::Quic(r) => r.recv().await.map_err(LinkFailure::Quic),
            LinkReader::Tcp(r) => r.recv().await.map_err(LinkFailure::Tcp),
        }
    }
}

/// The sending half.
#[derive(Debug)]
pub enum LinkWriter {
    /// QUIC.
    Quic(QuicLinkWriter),
    /// TCP.
    Tcp(TcpLinkWriter),
}

impl LinkWriter {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), LinkFailure> {
        match self {
            LinkWriter::Quic(w) => w.send(frame).await.map_err(LinkFailure::Quic),
            LinkWriter::Tcp(w) => w.send(frame).await.map_err(LinkFailure::Tcp),
        }
    }

    /// Ends the link cleanly.
    pub async fn shutdown(&mut self) {
        let _ = match self {
            LinkWriter::Quic(w) => w.shutdown().await.map_err(LinkFailure::Quic),
            LinkWriter::Tcp(w) => w.shutdown().await.map_err(LinkFailure::Tcp),
        };
    }
}
