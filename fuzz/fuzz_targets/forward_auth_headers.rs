//! The headers `/v1/auth/check` reads from a gateway (src/http/routes/forward_auth.rs). Its
//! helpers (`header`, `end_client_key`, `parse_scopes`, `unescape_pem`) are private to a private
//! module, so they are mirrored here step for step, over the public building blocks they call:
//! `percent_encoding`, `ApiId::parse`, `Scope::parse`/`Scopes::new`, `ApiKey::parse`,
//! `pki::parse_pem_certs` and `Pki::verify_certificate` on a real PKI. Keep the mirror in step
//! with that file.
//!
//! Input: header values, one a line (a raw header value cannot hold a line break):
//!
//! ```text
//! <key header name> [tenant]    "authorization" reads the key from Authorization
//! <key header value>
//! <X-Client-Cert value>         "@leaf" / "@chain" + rest: a certificate the PKI issued,
//!                               URL-escaped, with the rest of the line appended
//! <X-Tessera-Api-Id value>
//! <X-Tessera-Scopes value>
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tessera::{
    crypto::apikey::ApiKey,
    ids::{ApiId, TenantName, TenantScope},
    keys::{
        model::{Scope, Scopes},
        verify::MAX_KEY_FIELD,
    },
    pki::{self, CertCode, PkiError},
};
use tessera_fuzz::{fixture, header_str};

/// forward_auth.rs `MAX_CERT_HEADER`.
const MAX_CERT_HEADER: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let mut next = || lines.next().unwrap_or_default();
    let options = String::from_utf8_lossy(next()).into_owned();
    let (key_value, cert_value, api_id_value, scopes_value) = (next(), next(), next(), next());

    let mut words = options.split_whitespace();
    let authorization = words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("authorization"));
    let scope = if words.next() == Some("tenant") {
        TenantScope::One(TenantName::default_tenant())
    } else {
        TenantScope::All
    };

    // X-Tessera-Api-Id and X-Tessera-Scopes.
    if let Some(v) = header(api_id_value) {
        let _ = ApiId::parse(v);
    }
    if let Some(list) = header(scopes_value) {
        if let Ok(scopes) = parse_scopes(list) {
            assert!(scopes.iter().count() <= tessera::keys::model::MAX_SCOPES);
        }
    }

    // The end client's key.
    if let Some(key) = end_client_key(key_value, authorization) {
        if key.len() <= MAX_KEY_FIELD {
            if let Ok(k) = ApiKey::parse(key) {
                assert_eq!(k.expose(), key);
            }
        }
    }

    // The end client's certificate.
    let f = fixture();
    let cert = match cert_value.strip_prefix(b"@leaf") {
        Some(rest) => Some(escaped(&f.leaf_pem, rest)),
        None => cert_value
            .strip_prefix(b"@chain")
            .map(|rest| escaped(&f.chain_pem, rest)),
    };
    let Some(value) = header(cert.as_deref().unwrap_or(cert_value)) else {
        return;
    };
    let Some(pem) = unescape_pem(value) else {
        return;
    };
    let verdict = match f.pki.verify_certificate(&scope, &pem, f.now) {
        Ok(v) => v,
        Err(PkiError::Invalid { .. }) => return,
        Err(e) => panic!("the forwarded certificate led to {e:?}, a 500"),
    };
    assert_eq!(verdict.valid, verdict.code == CertCode::Valid);
    if let (true, Some(identity)) = (verdict.valid, verdict.identity) {
        assert!(identity.starts_with("spiffe://"));
        let leaf = pki::parse_pem_certs(&pem, pki::verify::MAX_CHAIN)
            .ok()
            .and_then(|c| c.into_iter().next());
        assert!(leaf.is_some(), "a verified chain without a leaf");
        let _ = leaf.map(|der| pki::fingerprint(&der));
    }
});

/// A certificate as nginx forwards it (`$ssl_client_escaped_cert`), then `rest`.
fn escaped(pem: &str, rest: &[u8]) -> Vec<u8> {
    let mut v = utf8_percent_encode(pem, NON_ALPHANUMERIC)
        .to_string()
        .into_bytes();
    v.extend_from_slice(rest);
    v
}

/// forward_auth.rs `header`: present, readable and not empty once trimmed.
fn header(raw: &[u8]) -> Option<&str> {
    header_str(raw).map(str::trim).filter(|v| !v.is_empty())
}

/// forward_auth.rs `end_client_key`.
fn end_client_key(raw: &[u8], authorization: bool) -> Option<&str> {
    let value = header(raw)?;
    if !authorization {
        return Some(value);
    }
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(token.trim()).filter(|t| !t.is_empty())
        }
        _ => Some(value),
    }
}

/// forward_auth.rs `parse_scopes`.
fn parse_scopes(list: &str) -> Result<Scopes, &'static str> {
    let v = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Scope::parse)
        .collect::<Result<Vec<_>, _>>()?;
    Scopes::new(v)
}

/// forward_auth.rs `unescape_pem`.
fn unescape_pem(value: &str) -> Option<String> {
    if value.len() > MAX_CERT_HEADER {
        return None;
    }
    let text = percent_decode_str(value).decode_utf8().ok()?.into_owned();
    let text = text.replace(
        "-----BEGIN CERTIFICATE----- ",
        "-----BEGIN CERTIFICATE-----\n",
    );
    text.contains("-----BEGIN CERTIFICATE-----").then_some(text)
}
