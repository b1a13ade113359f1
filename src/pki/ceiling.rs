//! The permission ceiling of a service certificate: the most its holder may ever do, fixed
//! when it is issued. A binding made later (say `tenant-admin` on a name that had none) can
//! then never lift a certificate above what its issuer held at issuance.
//!
//! The ceiling travels inside the certificate, in a private non-critical extension signed by
//! the CA, so checking it needs no store lookup:
//!
//! ```text
//! id-tessera-ceiling  OBJECT IDENTIFIER ::= { 1 3 6 1 4 1 32473 7470 1 }
//! TesseraCeiling ::= BIT STRING (SIZE (32))  -- bit n: the permission numbered n
//! ```
//!
//! The permission numbers are `access::Permission`'s (bit 0 is the most significant bit of
//! the first octet, as in X.690). A service certificate without the extension (issued before
//! ceilings existed) has the empty ceiling: it authenticates but may do nothing; re-issue it.
//! The bootstrap admin certificate carries none and needs none.
//!
//! The arc is under PEN 32473, which IANA keeps for documentation (RFC 5612): no enterprise
//! can be assigned it, so the OID collides with nobody's. Only Tessera reads it, and only in
//! certificates its own CA signed.

use rcgen::CustomExtension;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::X509Certificate;

/// The extension's OID arcs.
pub const CEILING_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 32473, 7470, 1];

/// A ceiling: a permission bit set (its meaning belongs to `access`; the PKI only carries it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ceiling(u32);

impl Ceiling {
    /// Nothing at all.
    pub const EMPTY: Ceiling = Ceiling(0);

    pub fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// The extension's DER value: a 32-bit BIT STRING, no unused bits.
    fn to_der(self) -> Vec<u8> {
        let mut v = vec![0x03, 0x05, 0x00];
        v.extend_from_slice(&self.0.to_be_bytes());
        v
    }

    /// Reads the extension's value; `None` unless it is exactly what [`Ceiling::to_der`]
    /// writes.
    fn from_der(der: &[u8]) -> Option<Self> {
        match der {
            [0x03, 0x05, 0x00, a, b, c, d] => Some(Self(u32::from_be_bytes([*a, *b, *c, *d]))),
            _ => None,
        }
    }

    /// The non-critical extension carrying this ceiling.
    pub fn extension(self) -> CustomExtension {
        CustomExtension::from_oid_content(CEILING_OID, self.to_der())
    }

    /// The ceiling a certificate carries. `None` without the extension; a malformed one
    /// (never written by Tessera) is the empty ceiling.
    pub fn of(cert: &X509Certificate<'_>) -> Option<Self> {
        let oid = x509_parser::der_parser::oid::Oid::from(CEILING_OID).ok()?;
        cert.extensions()
            .iter()
            .find(|e| e.oid == oid)
            .map(|e| Self::from_der(e.value).unwrap_or(Self::EMPTY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_shapes() {
        let c = Ceiling::from_bits(0x0000_8101);
        assert_eq!(Ceiling::from_der(&c.to_der()), Some(c));
        assert_eq!(Ceiling::from_der(&[0x03, 0x05, 0x01, 0, 0, 0, 1]), None);
        assert_eq!(Ceiling::from_der(&[0x03, 0x02, 0x00, 0xff]), None);
        assert_eq!(Ceiling::from_der(&[]), None);
    }

    #[test]
    fn a_signed_certificate_carries_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.custom_extensions = vec![Ceiling::from_bits(0x0300).extension()];
        let der = p.self_signed(&key).unwrap().der().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(Ceiling::of(&cert), Some(Ceiling::from_bits(0x0300)));
        let ext = cert.extensions().iter().find(|e| !e.critical);
        assert!(ext.is_some());

        let plain = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(plain.der()).unwrap();
        assert_eq!(Ceiling::of(&cert), None);
    }
}
