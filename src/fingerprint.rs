//! The SHA-256 fingerprint of a certificate: what a ticket carries and what [`crate::tls`]
//! pins.
//!
//! A leaf module (it needs only `sha2`), so the ticket codec can carry fingerprints without
//! depending on the TLS setup above it.

use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 of a DER certificate: a run's identity, printed in its ticket and pinned by the
/// peer that pastes it.
///
/// The default is all zeros, which stands in where a peer presented no certificate.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fingerprint([u8; Fingerprint::LEN]);

impl Fingerprint {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// The fingerprint of a certificate (DER).
    pub fn of_certificate(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// A fingerprint as it travels (in a ticket).
    pub const fn from_bytes(bytes: [u8; Fingerprint::LEN]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; Fingerprint::LEN] {
        &self.0
    }
}

impl From<[u8; Fingerprint::LEN]> for Fingerprint {
    fn from(bytes: [u8; Fingerprint::LEN]) -> Self {
        Fingerprint(bytes)
    }
}

impl AsRef<[u8]> for Fingerprint {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Lowercase hex, as `sha256sum` prints a hash.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_the_sha256_of_the_certificate_shown_as_hex() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let fp = Fingerprint::of_certificate(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(fp.to_string(), hex);
        assert_eq!(format!("{fp:?}"), format!("Fingerprint({hex})"));
        assert_eq!(Fingerprint::from_bytes(*fp.as_bytes()), fp);
        assert_eq!(Fingerprint::from(*fp.as_bytes()), fp);
        assert_eq!(fp.as_ref(), &fp.as_bytes()[..]);
    }

    #[test]
    fn orders_as_its_bytes() {
        let a = Fingerprint::from_bytes([1; 32]);
        let mut b = [1; 32];
        b[31] = 2;
        assert!(a < Fingerprint::from_bytes(b));
        assert_eq!(Fingerprint::default().as_bytes(), &[0; 32]);
    }
}
