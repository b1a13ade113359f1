//! Authentication: one uniform 401, and certificates from elsewhere fail the handshake.

use crate::proc::Timed;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::{Value, json};

use crate::helpers::{Api, Home, Server, client_config};

#[tokio::test]
async fn no_certificate_is_one_uniform_401() {
    let home = Home::new();
    let server = Server::start(&home);
    let anon = server.anonymous();
    let requests: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/v1/whoami", None),
        ("GET", "/v1/apis", None),
        (
            "POST",
            "/v1/apis",
            Some(json!({"name": "x", "purpose": "x", "owner": "x", "risk": "low"})),
        ),
        ("POST", "/v1/keys/verify", Some(json!({"key": "tsk_x"}))),
        ("GET", "/v1/keys/key_00000000000000000", None),
        (
            "POST",
            "/v1/keys/key_00000000000000000/revoke",
            Some(json!({})),
        ),
        // A malformed body does not get past authentication either.
        ("POST", "/v1/apis", Some(json!({"nonsense": true}))),
    ];
    let mut bodies = Vec::new();
    for (method, path, body) in &requests {
        for bearer in [
            None,
            Some("Bearer tsr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            let mut rb = anon.http.request(method.parse().unwrap(), anon.url(path));
            if let Some(b) = body {
                rb = rb.json(b);
            }
            if let Some(h) = bearer {
                rb = rb.header("authorization", h);
            }
            let r = anon.send(rb).await;
            assert_eq!(r.status, 401, "{method} {path}: {}", r.text);
            let mut v = r.json();
            assert!(
                v["error"]["request_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("req_")
            );
            v["error"]["request_id"] = Value::Null;
            bodies.push(v);
        }
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(bodies[0]["error"]["code"], "unauthenticated");
    // Nothing was created by the unauthenticated POSTs.
    let apis = server.admin().get("/v1/apis").await.expect(200);
    assert_eq!(apis["items"].as_array().unwrap().len(), 0);
    // The public routes need no certificate.
    anon.get("/healthz").await.expect(200);
    let ca = anon.get("/v1/pki/ca").await;
    assert_eq!(ca.status, 200);
    assert!(ca.text.contains("BEGIN CERTIFICATE"));
}

fn write(path: &std::path::Path, s: &str) {
    std::fs::write(path, s).unwrap();
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let home = Home::new();
    let server = Server::start(&home);
    let dir = tempfile::tempdir().unwrap();

    // A foreign CA issuing a certificate that copies the admin identity exactly.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tessera Root CA (tessera.local)");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::URI(
        "spiffe://tessera.local/system/admin".try_into().unwrap(),
    )];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let cert_path = dir.path().join("forged.pem");
    let key_path = dir.path().join("forged.key");
    write(&cert_path, &format!("{}{}", leaf_cert.pem(), ca_cert.pem()));
    write(&key_path, &leaf_key.serialize_pem());

    let forged = Api::new(
        &server,
        client_config(&home.certs().join("ca.pem"), Some((&cert_path, &key_path))),
    );
    let err = forged
        .http
        .get(forged.url("/v1/whoami"))
        .send()
        .await
        .expect_err("the handshake must fail");
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // A self-signed certificate with the admin identity fails the same way.
    let self_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://tessera.local/system/admin".try_into().unwrap(),
    )];
    let self_cert = p.self_signed(&self_key).unwrap();
    write(&cert_path, &self_cert.pem());
    write(&key_path, &self_key.serialize_pem());
    let forged = Api::new(
        &server,
        client_config(&home.certs().join("ca.pem"), Some((&cert_path, &key_path))),
    );
    assert!(
        forged
            .http
            .get(forged.url("/v1/whoami"))
            .send()
            .await
            .is_err()
    );

    // The real admin certificate still works.
    let me = server.admin().get("/v1/whoami").await.expect(200);
    assert_eq!(me["identity"], "spiffe://tessera.local/system/admin");
}

#[tokio::test]
async fn curl_as_an_outside_client() {
    let home = Home::new();
    let server = Server::start(&home);
    let certs = home.certs();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(certs.join("ca.pem"))
            .args(args)
            .output_timed()
            .expect("curl must be installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let cert = certs.join("admin.pem");
    let key = certs.join("admin.key");
    let (ok, body) = run(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        &server.url("/v1/whoami"),
    ]);
    assert!(ok, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["identity"], "spiffe://tessera.local/system/admin");
    // Without a certificate: the uniform 401.
    let (ok, body) = run(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &server.url("/v1/whoami"),
    ]);
    assert!(ok);
    assert_eq!(body, "401");
}
