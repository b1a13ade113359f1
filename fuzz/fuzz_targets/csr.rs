//! CSRs and certificates from clients, through the public paths that read them:
//! `Pki::issue_service` with `KeySource::Csr` (which runs `csr_public_key`, private to the crate:
//! shape, key type, self-signature) and `tessera::pki::parse_pem_certs` followed by
//! `Pki::verify_certificate` (the `POST /v1/certs/verify` and forward-auth check).
//!
//! An input starting with 0x30 (a DER SEQUENCE) is taken as DER and wrapped in PEM, once as a
//! CSR and once as a certificate, so the mutator works on the ASN.1 itself; anything else is
//! taken as PEM text (lossy UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::{
    identity::ServiceName,
    ids::{TenantName, TenantScope},
    pki::{self, KeySource, PkiError, ceiling::Ceiling, verify::MAX_CHAIN},
    store::NoRecord,
};
use tessera_fuzz::{Fixture, fixture};

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // Half the inputs are verified for a caller limited to one tenant.
    let scope = if data.len() % 2 == 0 {
        TenantScope::All
    } else {
        TenantScope::One(TenantName::default_tenant())
    };
    if data.first() == Some(&0x30) {
        issue(f, pki::pem("CERTIFICATE REQUEST", data));
        certificates(f, &scope, &pki::pem("CERTIFICATE", data));
    } else {
        let text = String::from_utf8_lossy(data).into_owned();
        certificates(f, &scope, &text);
        issue(f, text);
    }
});

/// Issues a certificate for the CSR: a certificate, or the 400 about the `csr` field.
fn issue(f: &Fixture, csr: String) {
    let Ok(name) = ServiceName::parse("fuzz") else {
        unreachable!()
    };
    let result = f.rt.block_on(f.pki.issue_service(
        &NoRecord,
        TenantName::default_tenant(),
        name,
        KeySource::Csr(csr),
        3600,
        Ceiling::from_bits(0),
        f.now,
    ));
    match result {
        Ok((issued, private_key)) => {
            assert!(private_key.is_none(), "a key was made for a CSR");
            assert_eq!(issued.chain.len(), 1);
        }
        Err(PkiError::Invalid { field: "csr", .. }) => {}
        Err(e) => panic!("a CSR led to {e:?}, not a 400"),
    }
}

/// Splits PEM text into certificates and verifies it as a client certificate chain.
fn certificates(f: &Fixture, scope: &TenantScope, text: &str) {
    let parsed = pki::parse_pem_certs(text, MAX_CHAIN);
    if let Ok(certs) = &parsed {
        assert!((1..=MAX_CHAIN).contains(&certs.len()));
    }
    match f.pki.verify_certificate(scope, text, f.now) {
        Ok(v) => {
            assert!(parsed.is_ok(), "verified what parse_pem_certs refused");
            assert_eq!(v.valid, v.code == pki::CertCode::Valid);
            if v.valid {
                assert!(v.identity.is_some() && v.serial.is_some());
            }
        }
        Err(PkiError::Invalid {
            field: "certificate",
            ..
        }) => {}
        Err(e) => panic!("a certificate led to {e:?}, not a 400"),
    }
}
