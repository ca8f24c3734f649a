//! This run's certificate, certificate pinning, and the QUIC configurations built on them.
//!
//! Each run makes a fresh self-signed certificate; its SHA-256 fingerprint travels in the
//! ticket, and each side accepts exactly the certificate whose fingerprint it was given. The
//! handshake signature is still verified against that certificate: certificates are public,
//! so checking the fingerprint alone would let anyone who saw a ticket impersonate its owner.
//! A bare `ip:port` carries no fingerprint: [`PeerAuth::Unverified`] then takes any
//! certificate, and the users compare a [`verification_code`] instead.

use std::sync::Arc;

use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::ticket::Ticket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// ALPN protocol id; bumped together with the transfer framing version.
pub const ALPN: &[u8] = b"p2pcopy/3";
/// Name the client asks for; only the pinned fingerprint matters.
pub const SERVER_NAME: &str = "p2pcopy";

/// The certificate and key of this run.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// Generates a fresh self-signed certificate (ECDSA P-256).
    pub fn generate() -> Result<Identity, Error> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| Error::Internal(format!("cannot generate a certificate: {e}")))?;
        let cert = ck.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
        let fingerprint = Fingerprint::of_certificate(&cert);
        Ok(Identity {
            cert,
            key,
            fingerprint,
        })
    }

    /// SHA-256 of our certificate.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Short id used to bind probes to this session.
    pub fn short_id(&self) -> [u8; 8] {
        short_id(&self.fingerprint)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Short id of a fingerprint, as carried by probes.
pub fn short_id(fp: &Fingerprint) -> [u8; 8] {
    fp.as_bytes()[..8].try_into().expect("8 bytes")
}

/// A code both users can compare to detect a man in the middle when a bare `ip:port` was
/// used instead of a ticket: the same on both sides only if each sees the other's real
/// certificate.
pub fn verification_code(a: &Fingerprint, b: &Fingerprint) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = blake3::Hasher::new_derive_key("p2pcopy 2026-11 verification code");
    h.update(lo.as_bytes());
    h.update(hi.as_bytes());
    let n =
        u32::from_be_bytes(h.finalize().as_bytes()[..4].try_into().expect("4 bytes")) % 100_000_000;
    format!("{:04}-{:04}", n / 10_000, n % 10_000)
}

fn provider() -> Arc<CryptoProvider> {
    // One explicit provider: rustls panics when two are compiled in and none is chosen.
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which certificate the peer must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAuth {
    /// Exactly the certificate with this fingerprint, from the peer's ticket: the peer is
    /// authenticated.
    Pinned(Fingerprint),
    /// Any certificate: the link is encrypted but NOT authenticated, so whoever sits on the
    /// path can be in the middle. This is what a bare `ip:port` gets, as it carries no
    /// fingerprint; the two users must then compare the [`verification_code`] to know they
    /// reached each other.
    Unverified,
}

impl PeerAuth {
    /// Pins a full ticket's fingerprint; a bare `ip:port` carries none, so it is
    /// [`PeerAuth::Unverified`].
    pub fn for_ticket(ticket: &Ticket) -> PeerAuth {
        match ticket.fingerprint() {
            Some(fp) => PeerAuth::Pinned(fp),
            None => PeerAuth::Unverified,
        }
    }
}

/// The certificate verifier of both roles: checks the peer's certificate against its
/// [`PeerAuth`].
#[derive(Debug)]
struct PeerVerifier {
    auth: PeerAuth,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self.auth {
            PeerAuth::Pinned(fp) if Fingerprint::of_certificate(end_entity) != fp => Err(
                rustls::Error::General("peer certificate does not match the ticket".into()),
            ),
            PeerAuth::Pinned(_) | PeerAuth::Unverified => Ok(()),
        }
    }
}

/// The signature checks are the same for both directions: rustls' own, over the pinned
/// certificate.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    signature_checks!();
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    signature_checks!();
}

/// Client (sender side) configuration that accepts the server certificate `peer` allows.
pub fn client_config(id: &Identity, peer: PeerAuth) -> Result<quinn::ClientConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier {
        auth: peer,
        provider: provider.clone(),
    });
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(internal)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![id.cert.clone()], id.key())
        .map_err(internal)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(internal)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(crate::quic::transport_config(None)));
    Ok(cfg)
}

/// Server (receiver side) configuration that requires a client certificate, one that `peer`
/// allows.
pub fn server_config(id: &Identity, peer: PeerAuth) -> Result<quinn::ServerConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier {
        auth: peer,
        provider: provider.clone(),
    });
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(internal)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone()], id.key())
        .map_err(internal)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(internal)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(crate::quic::transport_config(None)));
    // Stray handshakes cost nothing here: one transfer, one peer.
    cfg.max_incoming(16);
    // When the sender's NAT gives it a new public port mid-transfer (a rebinding), QUIC
    // follows it to the new address on the same connection; only a dead path needs the
    // CLI's reconnect.
    cfg.migration(true);
    Ok(cfg)
}

/// Fingerprint of the certificate the peer presented on an established connection.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.first().map(|c| Fingerprint::of_certificate(c))
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("TLS setup: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_code_is_symmetric_and_sensitive() {
        let a = Fingerprint::from_bytes([1; 32]);
        let b = Fingerprint::from_bytes([2; 32]);
        let c = Fingerprint::from_bytes([3; 32]);
        assert_eq!(verification_code(&a, &b), verification_code(&b, &a));
        assert_ne!(verification_code(&a, &b), verification_code(&a, &c));
        let code = verification_code(&a, &b);
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
    }

    #[test]
    fn identities_differ_and_build_configs() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        client_config(&a, PeerAuth::Pinned(*b.fingerprint())).unwrap();
        server_config(&b, PeerAuth::Pinned(*a.fingerprint())).unwrap();
        server_config(&b, PeerAuth::Unverified).unwrap();
        client_config(&a, PeerAuth::Unverified).unwrap();
    }

    #[test]
    fn only_a_full_ticket_pins() {
        let full: Ticket = include_str!("../fuzz/seeds/ticket/cli-sender")
            .parse()
            .unwrap();
        let fp = full.fingerprint().unwrap();
        assert_eq!(PeerAuth::for_ticket(&full), PeerAuth::Pinned(fp));
        let bare: Ticket = "192.0.2.1:4000".parse().unwrap();
        assert_eq!(PeerAuth::for_ticket(&bare), PeerAuth::Unverified);
    }

    #[test]
    fn a_pin_refuses_other_certificates_and_unverified_takes_any() {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let verifier = |auth| PeerVerifier {
            auth,
            provider: provider(),
        };
        let pinned = verifier(PeerAuth::Pinned(*a.fingerprint()));
        assert!(pinned.check(&a.cert).is_ok());
        assert!(pinned.check(&b.cert).is_err());
        let unverified = verifier(PeerAuth::Unverified);
        assert!(unverified.check(&a.cert).is_ok());
        assert!(unverified.check(&b.cert).is_ok());
    }
}
