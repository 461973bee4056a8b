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
//! Relays are different (design §1.2): a member must know it talks to *its* relay, so the relay
//! signs the handshake with its Ed25519 identity key and the client pins that key
//! ([`relay_client_crypto`], [`relay_server_crypto`]).
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

/// The TLS application protocol of relay connections (design §1.2).
pub const RELAY_ALPN: &[u8] = b"meshnode-relay/1";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the raw key follows.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The server side of a relay: a self-signed certificate made from the relay's own Ed25519
/// key (PKCS#8 from `R/relay.key`), so that the handshake signature proves the key members
/// pin. TLS 1.3, ALPN [`RELAY_ALPN`], no client authentication (members prove themselves by
/// the admission proof), no tickets, no early data.
pub fn relay_server_crypto(pkcs8: &[u8]) -> Result<QuicServerConfig, QuicLinkError> {
    let provider = provider();
    let der = PrivatePkcs8KeyDer::from(pkcs8.to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
    let cert =
        rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?.self_signed(&key_pair)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(der))?;
    tls.alpn_protocols = vec![RELAY_ALPN.to_vec()];
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    Ok(QuicServerConfig::try_from(tls)?)
}

/// The client side of a relay connection: the server must sign the TLS 1.3 handshake with
/// the pinned Ed25519 key `relay_key` (the `key` shown by `meshnode relay --status`).
pub fn relay_client_crypto(relay_key: [u8; 32]) -> Result<QuicClientConfig, QuicLinkError> {
    let provider = provider();
    let verifier = PinnedKey { relay_key, algorithms: provider.signature_verification_algorithms };
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![RELAY_ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    Ok(QuicClientConfig::try_from(tls)?)
}

/// Accepts the server only if its TLS 1.3 `CertificateVerify` signature verifies under the
/// pinned key. The certificate itself is ignored: the signature covers the transcript, so
/// only the holder of the pinned private key can produce it (as with raw public keys, RFC
/// 7250). TLS 1.2 is refused.
#[derive(Debug)]
struct PinnedKey {
    relay_key: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Identity is proven by the handshake signature under the pinned key (below).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls 1.2 is not used by relays".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&self.relay_key);
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &rustls::pki_types::SubjectPublicKeyInfoDer::from(spki),
            dss,
            &self.algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
