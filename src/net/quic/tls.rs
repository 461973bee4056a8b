//! TLS for QUIC links: rustls 1.3 with the ring provider, a self-signed certificate per
//! endpoint, and a server-certificate verifier that accepts any certificate.
//!
//! Why accepting any certificate is safe here: TLS gives the link encryption and forward
//! secrecy only; membership is proven after the TLS handshake by
//! [`proof_for_exporter`](crate::net::handshake::proof_for_exporter), a MAC under the system's
//! membership secret over the session's exporter (RFC 8446 section 7.5). The exporter is
//! derived from the whole TLS transcript, both key shares included, so it differs per session.
//! A man in the middle runs two TLS sessions, one with each end, with two exporters: to pass
//! either end's check it must produce a proof over that session's exporter, which needs the
//! system key; relaying the honest proofs does not help, since each is over the other session.
//! Certificates therefore carry no identity. The verifier still checks the handshake signature
//! against the presented certificate, so the TLS handshake itself is sound.
//!
//! The server does not ask for a client certificate (the client's membership proof covers the
//! client), 0-RTT is off (no replayable early data) and session resumption is off (every link
//! runs a full handshake with fresh key shares).
//!
//! This module opens no socket and knows nothing of membership.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{QuicLinkError, ALPN};

/// The name a client asks for (SNI) and the certificate's subject name. It means nothing: see
/// the module doc.
pub(super) const SERVER_NAME: &str = "meshnode";

/// The ring provider: no C build beyond ring's own, and no aws-lc.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: a fresh self-signed certificate (ECDSA P-256), TLS 1.3, ALPN
/// [`ALPN`], no client authentication, no session tickets.
pub(super) fn server_crypto(
    provider: &Arc<CryptoProvider>,
) -> Result<QuicServerConfig, QuicLinkError> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
    let cert = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(key))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    Ok(QuicServerConfig::try_from(tls)?)
}

/// The client side: TLS 1.3, ALPN [`ALPN`], any server certificate (see the module doc), no
/// resumption, no early data.
pub(super) fn client_crypto(
    provider: &Arc<CryptoProvider>,
) -> Result<QuicClientConfig, QuicLinkError> {
    let verifier = AnyCertificate { algorithms: provider.signature_verification_algorithms };
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    Ok(QuicClientConfig::try_from(tls)?)
}

/// Accepts any server certificate, and checks the handshake signature against it.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Identity comes from the exporter-bound membership proof, not from the certificate.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable in practice: only TLS 1.3 is enabled. Checked all the same.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
