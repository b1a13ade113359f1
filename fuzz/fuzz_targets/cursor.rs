//! The small parsers of path segments, query parameters and fields, on any string (lossy
//! UTF-8): page cursors, certificate serials, SPIFFE ids, trust domains, tenant and service
//! names, object ids, scopes, timestamps and dates. Each accepted value must print back to
//! what was parsed (or to a form that parses to the same value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::{
    clock::{Day, Timestamp},
    identity::{Serial, ServiceName, SpiffeId, TrustDomain},
    ids::{ApiId, CaId, KeyId, TenantId, TenantName},
    keys::model::Scope,
    page::Cursor,
};
use tessera_fuzz::TRUST_DOMAIN;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s: &str = &text;

    if let Ok(c) = Cursor::parse(s) {
        assert_eq!(c.encode(), s.to_ascii_lowercase());
        assert_eq!(Cursor::parse(&c.encode()).as_ref(), Ok(&c));
        assert_eq!(Cursor::from_position(c.position()), c);
    }

    if let Ok(serial) = Serial::parse(s) {
        assert_eq!(serial.as_str(), s);
        // The certificate's bytes map back to the same serial.
        assert!(Serial::from_bytes(&serial.to_bytes()) == serial, "{s:?}");
    }

    spiffe(s);

    if let Ok(t) = TenantName::parse(s) {
        assert_eq!(t.as_str(), s);
    }
    if let Ok(n) = ServiceName::parse(s) {
        assert_eq!(n.as_str(), s);
    }
    if let Ok(d) = TrustDomain::parse(s) {
        assert_eq!(d.as_str(), s);
    }
    if let Ok(id) = ApiId::parse(s) {
        assert_eq!(id.as_str(), s);
    }
    if let Ok(id) = KeyId::parse(s) {
        assert_eq!(id.as_str(), s);
    }
    let _ = TenantId::parse(s);
    let _ = CaId::parse(s);
    if let Ok(scope) = Scope::parse(s) {
        assert_eq!(scope.as_str(), s);
    }

    // Timestamps print without panicking. Their round trip is not asserted: an offset can put
    // an accepted time outside the years 0000..=9999 in UTC, which `Display` cannot show
    // ("9999-12-31T23:59:59-23:59" prints as 1970-01-01T00:00:00.000Z; the keys' `expires_at`
    // refuses anything past 10 years ahead, so the API never stores one).
    if let Ok(t) = Timestamp::parse(s) {
        let _ = t.to_string();
    }
    if let Ok(d) = Day::parse(s) {
        assert_eq!(d.to_string(), s);
    }
});

/// A SPIFFE id, in the fixed trust domain and in the one the input names.
fn spiffe(s: &str) {
    let Ok(fixed) = TrustDomain::parse(TRUST_DOMAIN) else {
        unreachable!()
    };
    round_trip(s, &fixed);
    let named = s
        .strip_prefix("spiffe://")
        .and_then(|r| r.split_once('/'))
        .and_then(|(td, _)| TrustDomain::parse(td).ok());
    if let Some(td) = named {
        round_trip(s, &td);
    }
}

fn round_trip(s: &str, td: &TrustDomain) {
    if let Ok(id) = SpiffeId::parse(s, td) {
        assert_eq!(id.uri(), s);
        assert_eq!(SpiffeId::parse(&id.uri(), td).as_ref(), Ok(&id));
    }
}
