//! Client certificates end to end: issuance policy (checked with openssl), renewal,
//! revocation on every kind of connection, CRLs, verification codes, CA rotation, the
//! server certificate's hot swap, and tidying.

use crate::proc::Timed;
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    helpers::{Api, Home, Server, client_config},
    raw::RawConn,
};

pub(crate) fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output_timed()
        .expect("openssl must be installed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A certificate written to disk: leaf + chain in `cert`, the key in `key`.
struct CertFiles {
    serial: String,
    cert: PathBuf,
    key: PathBuf,
    leaf: PathBuf,
}

async fn issue_generated(admin: &Api, dir: &Path, name: &str, ttl: u64) -> CertFiles {
    let r = admin
        .post(
            "/v1/certs",
            json!({"identity": name, "generate": true, "ttl_seconds": ttl}),
        )
        .await;
    assert_eq!(r.headers["cache-control"], "no-store");
    let v = r.expect(201);
    write_issued(&v, dir, name, v["private_key"].as_str())
}

fn write_issued(v: &Value, dir: &Path, name: &str, key: Option<&str>) -> CertFiles {
    let leaf = v["certificate"].as_str().unwrap();
    let chain: String = v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let serial = v["serial"].as_str().unwrap().to_owned();
    let cert = dir.join(format!("{name}-{serial}.pem"));
    let leaf_path = dir.join(format!("{name}-{serial}.leaf.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert, format!("{leaf}{chain}")).unwrap();
    std::fs::write(&leaf_path, leaf).unwrap();
    if let Some(k) = key {
        std::fs::write(&key_path, k).unwrap();
    }
    CertFiles {
        serial,
        cert,
        key: key_path,
        leaf: leaf_path,
    }
}

fn csr(dir: &Path, name: &str, keyopt: &[&str], extra: &[&str]) -> (String, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=requested"];
    args.extend_from_slice(keyopt);
    args.extend_from_slice(&[
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    let (ok, out) = openssl(&args);
    assert!(ok, "{out}");
    (std::fs::read_to_string(&csr).unwrap(), key)
}

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

#[tokio::test]
async fn issuance_follows_policy_not_the_csr() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let ca = home.certs().join("ca.pem");

    // A CSR asking for everything: CA:true, keyCertSign, codeSigning, the admin identity.
    let (pem, key) = csr(
        dir.path(),
        "greedy",
        P256,
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "extendedKeyUsage=codeSigning,serverAuth",
            "-addext",
            "subjectAltName=URI:spiffe://tessera.local/system/admin,DNS:evil.example",
        ],
    );
    let v = admin
        .post("/v1/certs", json!({"identity": "billing", "csr": pem}))
        .await
        .expect(201);
    assert!(v.get("private_key").is_none());
    assert_eq!(
        v["identity"],
        "spiffe://tessera.local/tenant/default/svc/billing"
    );
    let files = write_issued(&v, dir.path(), "greedy", None);
    let serial = &files.serial;
    assert_eq!(serial.len(), 40, "160-bit random serial, minimal hex");

    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        files.leaf.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (_, text) = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        files.leaf.to_str().unwrap(),
    ]);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(!text.contains("Certificate Sign"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("Code Signing"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    assert!(!text.contains("evil.example"), "{text}");
    assert!(!text.contains("/system/admin"), "{text}");
    assert_eq!(
        text.matches("URI:").count(),
        2,
        "one SAN URI and one CRL URI: {text}"
    );
    assert!(text.contains("URI:spiffe://tessera.local/tenant/default/svc/billing"));
    assert!(
        text.contains("/v1/pki/crl?issuer=ca_"),
        "CRL distribution point: {text}"
    );
    // It authenticates with the key from the CSR.
    let me = server
        .client(&files.cert, &key)
        .get("/v1/whoami")
        .await
        .expect(200);
    assert_eq!(
        me["identity"],
        "spiffe://tessera.local/tenant/default/svc/billing"
    );
    assert_eq!(me["serial"], serial.as_str());

    // P-384 and Ed25519 CSRs are accepted; RSA is not.
    let (p384, _) = csr(
        dir.path(),
        "p384",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        &[],
    );
    admin
        .post("/v1/certs", json!({"identity": "p384", "csr": p384}))
        .await
        .expect(201);
    let (ed, _) = csr(dir.path(), "ed", &["-newkey", "ed25519"], &[]);
    admin
        .post("/v1/certs", json!({"identity": "ed", "csr": ed}))
        .await
        .expect(201);
    let (rsa, _) = csr(dir.path(), "rsa", &["-newkey", "rsa:2048"], &[]);
    let r = admin
        .post("/v1/certs", json!({"identity": "rsa", "csr": rsa}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "csr");

    // A CSR whose signature does not match is refused.
    let der = ::pem::parse(&pem).unwrap().into_contents();
    let mut tampered = der.clone();
    let last = tampered.len() - 5;
    tampered[last] ^= 0x55;
    let bad = tessera::pki::pem("CERTIFICATE REQUEST", &tampered);
    let r = admin
        .post("/v1/certs", json!({"identity": "x", "csr": bad}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "csr");
    let r = admin
        .post("/v1/certs", json!({"identity": "x", "csr": "not a csr"}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "csr");

    // Identities are service names: nothing outside /tenant/... can be asked for.
    for bad in ["system/admin", "../admin", "Admin", "", "a b"] {
        let r = admin
            .post("/v1/certs", json!({"identity": bad, "generate": true}))
            .await
            .expect(400);
        assert_eq!(r["error"]["field"], "identity");
    }
    let r = admin
        .post(
            "/v1/certs",
            json!({"identity": "x", "generate": true, "ttl_seconds": 999_999_999}),
        )
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "ttl_seconds");
    let r = admin
        .post("/v1/certs", json!({"identity": "x"}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "csr");

    // Generated keys: returned once, work, default TTL 24 h.
    let generated = issue_generated(&admin, dir.path(), "gen", 86_400).await;
    server
        .client(&generated.cert, &generated.key)
        .get("/v1/whoami")
        .await
        .expect(200);
    let got = admin
        .get(&format!("/v1/certs/{}", generated.serial))
        .await
        .expect(200);
    assert_eq!(got["state"], "valid");
    assert!(!got.to_string().contains("PRIVATE"));
    admin.get("/v1/certs/0123").await.expect(400);
    admin.get("/v1/certs/abcdef").await.expect(404);

    // Listing, by identity and paginated.
    let all = admin.get("/v1/certs?limit=100").await.expect(200);
    assert!(all["items"].as_array().unwrap().len() >= 5);
    let billing = admin.get("/v1/certs?identity=billing").await.expect(200);
    assert_eq!(billing["items"].as_array().unwrap().len(), 1);
    let page = admin.get("/v1/certs?limit=2").await.expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_string());
}

#[tokio::test]
async fn revocation_holds_on_new_resumed_and_kept_alive_connections() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let svc = issue_generated(&admin, dir.path(), "svc", 3600).await;
    let ca = home.certs().join("ca.pem");
    let config = Arc::new(client_config(&ca, Some((&svc.cert, &svc.key))));

    // curl, as an outside client, before and after.
    let curl = || {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(&svc.cert)
            .arg("--key")
            .arg(&svc.key)
            .arg(server.url("/v1/whoami"))
            .output_timed()
            .unwrap()
    };
    let out = curl();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // Two connections with a client that would resume if it could: both full handshakes.
    let mut kept = RawConn::connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(
        kept.request("GET", "/v1/whoami", None).await.unwrap().0,
        200
    );
    let second = RawConn::connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(second.handshake_kind(), Some(rustls::HandshakeKind::Full));
    drop(second);

    let r = admin
        .post(
            &format!("/v1/certs/{}/revoke", svc.serial),
            json!({"reason": "key_compromise"}),
        )
        .await
        .expect(200);
    assert_eq!(r["state"], "revoked");
    assert_eq!(r["revocation_reason"], "key_compromise");

    // The connection opened before the revocation: refused on its next request.
    let (status, body) = kept.request("GET", "/v1/whoami", None).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthenticated"));
    // A new (or would-be resumed) connection: refused at the handshake.
    let fresh = async {
        let mut c = RawConn::connect(server.addr, config.clone()).await?;
        c.request("GET", "/v1/whoami", None).await
    }
    .await;
    assert!(fresh.is_err(), "{fresh:?}");
    let out = curl();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
    // Revoking again is harmless; unknown serials are 404; reasons are RFC 5280's.
    admin
        .post(&format!("/v1/certs/{}/revoke", svc.serial), json!({}))
        .await
        .expect(200);
    admin
        .post("/v1/certs/abc/revoke", json!({}))
        .await
        .expect(404);
    let other = issue_generated(&admin, dir.path(), "other", 3600).await;
    let r = admin
        .post(
            &format!("/v1/certs/{}/revoke", other.serial),
            json!({"reason": "because"}),
        )
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "reason");

    // The CRL lists the serial, in DER and PEM, as openssl reads it.
    let der = admin.send(admin.http.get(admin.url("/v1/pki/crl"))).await;
    assert_eq!(der.headers["content-type"], "application/pkix-crl");
    let crl_path = dir.path().join("crl.pem");
    let pem_crl = admin.get("/v1/pki/crl?format=pem").await;
    std::fs::write(&crl_path, &pem_crl.text).unwrap();
    let (ok, text) = openssl(&["crl", "-noout", "-text", "-in", crl_path.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains(&svc.serial.to_uppercase()), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("Next Update"), "{text}");
    // The CRL file in certs/ says the same.
    let files = std::fs::read_to_string(home.certs().join("crls.pem")).unwrap();
    assert_eq!(
        files.matches("BEGIN X509 CRL").count(),
        2,
        "root and issuing CA"
    );
}

pub(crate) fn crl_number(text: &str) -> u64 {
    let after = text.split("X509v3 CRL Number:").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn crl_numbers_only_grow_also_across_restarts() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let read = |admin: Api, dir: PathBuf| async move {
        let pem = admin.get("/v1/pki/crl?format=pem").await.text;
        let p = dir.join("n.pem");
        std::fs::write(&p, pem).unwrap();
        crl_number(&openssl(&["crl", "-noout", "-text", "-in", p.to_str().unwrap()]).1)
    };
    let n1 = read(admin.clone(), dir.path().to_owned()).await;
    let c = issue_generated(&admin, dir.path(), "a", 3600).await;
    admin
        .post(&format!("/v1/certs/{}/revoke", c.serial), json!({}))
        .await
        .expect(200);
    let n2 = read(admin.clone(), dir.path().to_owned()).await;
    assert!(n2 > n1, "{n1} -> {n2}");
    server.terminate();
    let server = Server::start(&home);
    // A restart keeps a current CRL (nodes starting together do not all re-sign it) ...
    let n3 = read(server.admin(), dir.path().to_owned()).await;
    assert_eq!(n3, n2, "a current CRL was re-signed at start");
    // ... and the next one signed after it is numbered above it.
    let c = issue_generated(&server.admin(), dir.path(), "b", 3600).await;
    server
        .admin()
        .post(&format!("/v1/certs/{}/revoke", c.serial), json!({}))
        .await
        .expect(200);
    let n4 = read(server.admin(), dir.path().to_owned()).await;
    assert!(n4 > n3, "{n3} -> {n4}");
    // The root's CRL is served too (nginx checks the whole chain).
    let bundle = server.admin().get("/v1/pki/ca").await.text;
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    let list = server.admin().get("/v1/certs?limit=100").await.expect(200);
    let issuer = list["items"][0]["issuer"].as_str().unwrap().to_owned();
    server
        .anonymous()
        .get(&format!("/v1/pki/crl?issuer={issuer}"))
        .await
        .expect(200);
    server
        .anonymous()
        .get("/v1/pki/crl?issuer=ca_00000000000000000")
        .await
        .expect(404);
    server
        .anonymous()
        .get("/v1/pki/crl?issuer=nope")
        .await
        .expect(400);
}

#[tokio::test]
async fn renewal_keeps_the_identity_and_optionally_the_key() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let svc = issue_generated(&admin, dir.path(), "svc", 3600).await;
    let me = server.client(&svc.cert, &svc.key);

    // Same key.
    let v = me
        .post("/v1/certs/renew", json!({"ttl_seconds": 7200}))
        .await
        .expect(201);
    assert_ne!(v["serial"], svc.serial.as_str());
    assert_eq!(
        v["identity"],
        "spiffe://tessera.local/tenant/default/svc/svc"
    );
    let renewed = write_issued(&v, dir.path(), "svc", None);
    server
        .client(&renewed.cert, &svc.key)
        .get("/v1/whoami")
        .await
        .expect(200);
    let rec = admin
        .get(&format!("/v1/certs/{}", renewed.serial))
        .await
        .expect(200);
    assert_eq!(rec["renewed_from"], svc.serial.as_str());

    // A new key pair from a CSR.
    let (pem, new_key) = csr(dir.path(), "svc-next", P256, &[]);
    let v = me
        .post("/v1/certs/renew", json!({"csr": pem}))
        .await
        .expect(201);
    let rekeyed = write_issued(&v, dir.path(), "svc-next", None);
    server
        .client(&rekeyed.cert, &new_key)
        .get("/v1/whoami")
        .await
        .expect(200);

    // An empty body works; the admin credential is never renewed through the API.
    me.send(me.http.post(me.url("/v1/certs/renew")))
        .await
        .expect(201);
    admin.post("/v1/certs/renew", json!({})).await.expect(403);
    server
        .anonymous()
        .post("/v1/certs/renew", json!({}))
        .await
        .expect(401);
    // A valid root key never stands in for the certificate, even sent on a connection that
    // has one (the route renews the connection's certificate: its caller must be that one).
    let root = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": "default", "name": "portal", "permissions": ["certs:read"]}),
        )
        .await
        .expect(201)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let with_bearer = me
        .http
        .post(me.url("/v1/certs/renew"))
        .header("authorization", format!("Bearer {root}"))
        .json(&json!({}));
    me.send(with_bearer).await.expect(401);
}

#[tokio::test]
async fn verify_endpoint_answers_each_code() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let leaf = |c: &CertFiles| std::fs::read_to_string(&c.leaf).unwrap();
    let full = |c: &CertFiles| std::fs::read_to_string(&c.cert).unwrap();
    let verify = |admin: Api, pem: String| async move {
        admin
            .post("/v1/certs/verify", json!({"certificate": pem}))
            .await
    };

    let good = issue_generated(&admin, dir.path(), "good", 3600).await;
    for pem in [leaf(&good), full(&good)] {
        let v = verify(admin.clone(), pem).await.expect(200);
        assert_eq!(v["code"], "VALID");
        assert_eq!(v["valid"], true);
        assert_eq!(
            v["identity"],
            "spiffe://tessera.local/tenant/default/svc/good"
        );
        assert_eq!(v["tenant"], "default");
        assert_eq!(v["serial"], good.serial.as_str());
    }

    let revoked = issue_generated(&admin, dir.path(), "revoked", 3600).await;
    admin
        .post(&format!("/v1/certs/{}/revoke", revoked.serial), json!({}))
        .await
        .expect(200);
    assert_eq!(
        verify(admin.clone(), leaf(&revoked)).await.expect(200)["code"],
        "REVOKED"
    );

    let short = issue_generated(&admin, dir.path(), "short", 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let v = verify(admin.clone(), leaf(&short)).await.expect(200);
    assert_eq!(v["code"], "EXPIRED");
    assert_eq!(v["valid"], false);

    // A self-signed certificate copying a real identity, and one from a foreign CA.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://tessera.local/tenant/default/svc/good"
            .try_into()
            .unwrap(),
    )];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = p.self_signed(&key).unwrap().pem();
    let v = verify(admin.clone(), forged.clone()).await.expect(200);
    assert_eq!(v["code"], "UNTRUSTED");
    assert!(v["identity"].is_null());
    // The server's own certificate is ours but not a client certificate.
    let server_pem = std::fs::read_to_string(home.certs().join("server.pem")).unwrap();
    assert_eq!(
        verify(admin.clone(), server_pem).await.expect(200)["code"],
        "UNTRUSTED"
    );

    // Garbage and a 100-certificate chain: a fast, bounded 400.
    let r = verify(admin.clone(), "garbage".into()).await.expect(400);
    assert_eq!(r["error"]["field"], "certificate");
    let long = forged.repeat(100);
    let started = std::time::Instant::now();
    let r = verify(admin.clone(), long).await;
    assert!(r.status == 400 || r.status == 413, "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(2));

    // NOT_YET_VALID: a certificate whose validity starts tomorrow, signed by the real CA
    // through the library while the server is stopped.
    server.terminate();
    let tomorrow = {
        use tessera::{
            clock::{Clock, SystemClock},
            crypto::{hex, keyring::MasterKey, secret::Key256},
            identity::ServiceName,
            pki::{KeySource, Pki, Policy},
            store::sled::SledStore,
        };
        let master_hex = std::fs::read_to_string(home.data().join("master.key")).unwrap();
        let master =
            MasterKey::new(Key256::from_slice(&hex::decode(master_hex.trim()).unwrap()).unwrap())
                .unwrap();
        let (db, _) =
            SledStore::open(&home.data().join("db"), &master, &Default::default()).unwrap();
        let (pki, _) = Pki::open(
            Arc::new(db),
            tessera::identity::TrustDomain::parse("tessera.local").unwrap(),
            Policy {
                default_ttl_secs: 3600,
                max_ttl_secs: 3600,
                max_lineage_secs: 86_400,
            },
            None,
            SystemClock.now(),
        )
        .await
        .unwrap();
        let later = SystemClock.now().plus_secs(86_400);
        let (issued, _) = pki
            .issue_service(
                &tessera::store::NoRecord,
                tessera::ids::TenantName::default_tenant(),
                ServiceName::parse("future").unwrap(),
                KeySource::Generate,
                3600,
                tessera::pki::ceiling::Ceiling::EMPTY,
                later,
            )
            .await
            .unwrap();
        issued.cert_pem()
    };
    let server = Server::start(&home);
    let v = verify(server.admin(), tomorrow).await.expect(200);
    assert_eq!(v["code"], "NOT_YET_VALID");
}

#[tokio::test]
async fn ca_rotation_keeps_old_certificates_working() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let old = issue_generated(&admin, dir.path(), "old", 3600).await;
    let old_issuer = admin
        .get(&format!("/v1/certs/{}", old.serial))
        .await
        .expect(200)["issuer"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = admin.post("/v1/pki/rotate", json!({})).await.expect(201);
    let new_issuer = r["issuing"].as_str().unwrap().to_owned();
    assert_ne!(new_issuer, old_issuer);
    assert_eq!(r["retired"][0]["id"], old_issuer.as_str());
    let bundle = server.anonymous().get("/v1/pki/ca").await.text;
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        3,
        "root, new and old issuing CA"
    );
    assert_eq!(
        std::fs::read_to_string(home.certs().join("ca.pem")).unwrap(),
        bundle
    );

    // New issuance uses the new CA; old and new certificates both work and verify.
    let new = issue_generated(&admin, dir.path(), "new", 3600).await;
    let rec = admin
        .get(&format!("/v1/certs/{}", new.serial))
        .await
        .expect(200);
    assert_eq!(rec["issuer"], new_issuer.as_str());
    for c in [&old, &new] {
        server
            .client(&c.cert, &c.key)
            .get("/v1/whoami")
            .await
            .expect(200);
        let pem = std::fs::read_to_string(&c.leaf).unwrap();
        let v = admin
            .post("/v1/certs/verify", json!({"certificate": pem}))
            .await
            .expect(200);
        assert_eq!(v["code"], "VALID");
        let bundle_path = dir.path().join("bundle.pem");
        std::fs::write(&bundle_path, &bundle).unwrap();
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            bundle_path.to_str().unwrap(),
            c.leaf.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
    }
    // The old CA's CRL is still served and follows revocations of its certificates.
    admin
        .post(&format!("/v1/certs/{}/revoke", old.serial), json!({}))
        .await
        .expect(200);
    let crl = server
        .anonymous()
        .get(&format!("/v1/pki/crl?issuer={old_issuer}&format=pem"))
        .await;
    let p = dir.path().join("old.crl");
    std::fs::write(&p, &crl.text).unwrap();
    let (_, text) = openssl(&["crl", "-noout", "-text", "-in", p.to_str().unwrap()]);
    assert!(text.contains(&old.serial.to_uppercase()), "{text}");
    assert!(
        server
            .client(&old.cert, &old.key)
            .http
            .get(server.url("/v1/whoami"))
            .send()
            .await
            .is_err()
    );
    server
        .client(&new.cert, &new.key)
        .get("/v1/whoami")
        .await
        .expect(200);
}

#[tokio::test]
async fn server_certificate_renews_and_swaps_under_an_open_connection() {
    let home = Home::new();
    let server = Server::start_with_config(&home, "[tls]\nserver_cert_lifetime_seconds = 6\n");
    let ca = home.certs().join("ca.pem");
    let config = Arc::new(client_config(
        &ca,
        Some((
            &home.certs().join("admin.pem"),
            &home.certs().join("admin.key"),
        )),
    ));
    let mut kept = RawConn::connect(server.addr, config.clone()).await.unwrap();
    let first_serial = kept.server_serial();
    // New connections are watched until they get a renewed certificate; the connection opened
    // under the first one must still be served after that (a swap that closed or refused the
    // connections made under the old certificate would fail here).
    let mut seen = std::collections::BTreeSet::from([first_serial.clone()]);
    let mut served_after_swap = 0;
    for _ in 0..40 {
        let fresh = RawConn::connect(server.addr, config.clone()).await.unwrap();
        seen.insert(fresh.server_serial());
        let (status, _) = kept.request("GET", "/v1/whoami", None).await.unwrap();
        assert_eq!(status, 200, "the kept connection keeps working");
        if seen.len() >= 3 {
            // Two renewals since the kept connection was opened.
            served_after_swap += 1;
            if served_after_swap == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        served_after_swap == 3,
        "the server certificate was renewed twice and the connection made before still served: \
         {seen:?}"
    );
}

#[tokio::test]
async fn operator_provided_server_certificate_reloads_on_sighup() {
    // A server certificate from the operator's own CA.
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let make = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let c = dir.path().join(format!("{name}.pem"));
        let k = dir.path().join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        tessera::identity::Serial::from_bytes(parsed.raw_serial()).to_string()
    };
    let v1 = make("v1");
    let live_cert = dir.path().join("live.pem");
    let live_key = dir.path().join("live.key");
    std::fs::copy(dir.path().join("v1.pem"), &live_cert).unwrap();
    std::fs::copy(dir.path().join("v1.key"), &live_key).unwrap();
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            live_cert.display(),
            live_key.display()
        ),
    );
    let trust = dir.path().join("trust.pem");
    std::fs::write(&trust, ca_cert.pem()).unwrap();
    let config = Arc::new(client_config(
        &trust,
        Some((
            &home.certs().join("admin.pem"),
            &home.certs().join("admin.key"),
        )),
    ));
    let mut kept = RawConn::connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(kept.server_serial(), v1);
    assert_eq!(
        kept.request("GET", "/v1/whoami", None).await.unwrap().0,
        200
    );

    let v2 = make("v2");
    std::fs::copy(dir.path().join("v2.pem"), &live_cert).unwrap();
    std::fs::copy(dir.path().join("v2.key"), &live_key).unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status_timed()
            .unwrap()
            .success()
    );
    let mut swapped = false;
    for _ in 0..50 {
        let c = RawConn::connect(server.addr, config.clone()).await.unwrap();
        if c.server_serial() == v2 {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(swapped, "SIGHUP reloads the operator's files");
    assert_eq!(
        kept.request("GET", "/v1/whoami", None).await.unwrap().0,
        200
    );
}

#[tokio::test]
async fn tidy_removes_long_dead_certificates_and_keys() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[tidy]\nretention_seconds = 1\ninterval_seconds = 1\n",
    );
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let short = issue_generated(&admin, dir.path(), "short", 1).await;
    admin
        .post(&format!("/v1/certs/{}/revoke", short.serial), json!({}))
        .await
        .expect(200);
    let live = issue_generated(&admin, dir.path(), "live", 3600).await;
    let api = admin.create_api("tidy").await;
    let (dead_id, dead) = admin.issue(&api, json!({})).await;
    admin
        .post(&format!("/v1/keys/{dead_id}/revoke"), json!({}))
        .await
        .expect(200);
    let (live_id, live_key) = admin.issue(&api, json!({})).await;

    let mut gone = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let c = admin
            .get(&format!("/v1/certs/{}", short.serial))
            .await
            .status;
        let k = admin.get(&format!("/v1/keys/{dead_id}")).await.status;
        if c == 404 && k == 404 {
            gone = true;
            break;
        }
    }
    assert!(gone, "dead records were tidied");
    assert_eq!(admin.verify(&dead).await, "NOT_FOUND");
    admin
        .get(&format!("/v1/certs/{}", live.serial))
        .await
        .expect(200);
    admin.get(&format!("/v1/keys/{live_id}")).await.expect(200);
    assert_eq!(admin.verify(&live_key).await, "VALID");
    // The expired certificate also left the CRL.
    let crl = admin.get("/v1/pki/crl?format=pem").await.text;
    let p = dir.path().join("c.pem");
    std::fs::write(&p, crl).unwrap();
    let (_, text) = openssl(&["crl", "-noout", "-text", "-in", p.to_str().unwrap()]);
    assert!(!text.contains(&short.serial.to_uppercase()), "{text}");
}

/// A timestamp field of an answer, as unix seconds.
fn unix(v: &Value, field: &str) -> i64 {
    time::OffsetDateTime::parse(
        v[field].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp()
}

fn lifetime(v: &Value) -> i64 {
    unix(v, "not_after") - unix(v, "not_before")
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn a_renewal_never_outlives_what_it_renews() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let first = admin
        .post(
            "/v1/certs",
            json!({"identity": "brief", "generate": true, "ttl_seconds": 600}),
        )
        .await
        .expect(201);
    let files = write_issued(&first, dir.path(), "brief", first["private_key"].as_str());
    let longest = lifetime(&first);
    assert!(longest <= 660, "{first}");

    // Asking for 30 days from a 10-minute certificate gets at most 10 minutes, and so does
    // every renewal after it: the lifetime never grows along the chain.
    let mut holder = server.client(&files.cert, &files.key);
    for round in 0..3 {
        let v = holder
            .post("/v1/certs/renew", json!({"ttl_seconds": 30 * 86_400}))
            .await
            .expect(201);
        assert!(lifetime(&v) <= longest, "round {round}: {v}");
        assert!(
            unix(&v, "not_after") <= now_unix() + 600 + 2,
            "round {round}: {v}"
        );
        let renewed = write_issued(&v, dir.path(), "brief", None);
        holder = server.client(&renewed.cert, &files.key);
    }
    // The lineage is recorded from the first issuance.
    let list = admin.get("/v1/certs?identity=brief").await.expect(200);
    assert_eq!(list["items"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn renewals_stop_at_the_lineage_cap() {
    let home = Home::new();
    let server = Server::start_with_config(&home, "[certificates]\nmax_lineage_seconds = 3\n");
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let started = now_unix();
    let first = issue_generated(&admin, dir.path(), "lineage", 60).await;
    let original = server.client(&first.cert, &first.key);

    // Within the cap: renewals work, and none outlives the lineage's end.
    let v = original
        .post("/v1/certs/renew", json!({"ttl_seconds": 60}))
        .await
        .expect(201);
    assert!(unix(&v, "not_after") <= started + 3 + 1, "{v}");
    let renewed = write_issued(&v, dir.path(), "lineage", None);
    let v = server
        .client(&renewed.cert, &first.key)
        .post("/v1/certs/renew", json!({}))
        .await
        .expect(201);
    assert!(unix(&v, "not_after") <= started + 3 + 1, "{v}");

    // Past the cap: the first certificate is still valid, but renewing it is refused, and
    // says why.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    original.get("/v1/whoami").await.expect(200);
    let r = original
        .post("/v1/certs/renew", json!({}))
        .await
        .expect(409);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_lineage_seconds"),
        "{r}"
    );
    // A new issuance starts a new lineage.
    let fresh = issue_generated(&admin, dir.path(), "lineage", 60).await;
    server
        .client(&fresh.cert, &fresh.key)
        .post("/v1/certs/renew", json!({}))
        .await
        .expect(201);
}

/// The serials a CRL (PEM, as served) lists, uppercase hex as openssl prints them.
async fn crl_text(admin: &Api, dir: &Path) -> String {
    let pem = admin.get("/v1/pki/crl?format=pem").await.text;
    let p = dir.join("now.crl");
    std::fs::write(&p, pem).unwrap();
    let (ok, text) = openssl(&["crl", "-noout", "-text", "-in", p.to_str().unwrap()]);
    assert!(ok, "{text}");
    text
}

/// Whether a new connection with this certificate gets a 200 from whoami.
async fn connects(server: &Server, ca: &Path, c: &CertFiles, key: &Path) -> bool {
    let config = Arc::new(client_config(ca, Some((&c.cert, key))));
    match RawConn::connect(server.addr, config).await {
        Ok(mut conn) => matches!(conn.request("GET", "/v1/whoami", None).await, Ok((200, _))),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_key_compromise_revokes_every_certificate_of_the_key_and_the_lineage() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let ca = home.certs().join("ca.pem");

    // first -> same key -> new key (CSR): one lineage, two key pairs.
    let first = issue_generated(&admin, dir.path(), "victim", 3600).await;
    let v = server
        .client(&first.cert, &first.key)
        .post("/v1/certs/renew", json!({}))
        .await
        .expect(201);
    let same_key = write_issued(&v, dir.path(), "victim", None);
    let (pem, new_key) = csr(dir.path(), "victim-next", P256, &[]);
    let v = server
        .client(&same_key.cert, &first.key)
        .post("/v1/certs/renew", json!({"csr": pem}))
        .await
        .expect(201);
    let rekeyed = write_issued(&v, dir.path(), "victim-next", None);
    // Another lineage holding the same key pair (the same CSR issued twice).
    let (twin_csr, twin_key) = csr(dir.path(), "twin", P256, &[]);
    let mut twin = Vec::new();
    for name in ["twin-a", "twin-b"] {
        let v = admin
            .post("/v1/certs", json!({"identity": name, "csr": twin_csr}))
            .await
            .expect(201);
        twin.push(write_issued(&v, dir.path(), name, None));
    }
    let bystander = issue_generated(&admin, dir.path(), "bystander", 3600).await;

    let holders: Vec<(&CertFiles, &Path)> = vec![
        (&first, &first.key),
        (&same_key, &first.key),
        (&rekeyed, &new_key),
    ];
    let mut kept = Vec::new();
    for (c, key) in &holders {
        assert!(connects(&server, &ca, c, key).await, "{}", c.serial);
        let config = Arc::new(client_config(&ca, Some((&c.cert, key))));
        let mut conn = RawConn::connect(server.addr, config).await.unwrap();
        assert_eq!(
            conn.request("GET", "/v1/whoami", None).await.unwrap().0,
            200
        );
        kept.push(conn);
    }

    let r = admin
        .post(
            &format!("/v1/certs/{}/revoke", first.serial),
            json!({"reason": "key_compromise"}),
        )
        .await
        .expect(200);
    assert_eq!(r["serial"], first.serial.as_str());
    assert_eq!(r["state"], "revoked");

    // Every certificate of the lineage: refused on kept connections and on new ones, listed
    // in the CRL, revoked in its record.
    let crl = crl_text(&admin, dir.path()).await;
    for ((c, key), conn) in holders.iter().zip(kept.iter_mut()) {
        let (status, body) = conn.request("GET", "/v1/whoami", None).await.unwrap();
        assert_eq!(status, 401, "kept connection of {}: {body}", c.serial);
        assert!(!connects(&server, &ca, c, key).await, "{}", c.serial);
        assert!(
            crl.contains(&c.serial.to_uppercase()),
            "{} in {crl}",
            c.serial
        );
        let rec = admin
            .get(&format!("/v1/certs/{}", c.serial))
            .await
            .expect(200);
        assert_eq!(rec["revocation_reason"], "key_compromise", "{rec}");
    }
    // An unrelated certificate: still valid.
    assert!(connects(&server, &ca, &bystander, &bystander.key).await);
    assert!(!crl.contains(&bystander.serial.to_uppercase()));

    // The key index reaches across lineages: revoking one twin ends the other.
    for t in &twin {
        assert!(connects(&server, &ca, t, &twin_key).await);
    }
    admin
        .post(
            &format!("/v1/certs/{}/revoke", twin[0].serial),
            json!({"reason": "key_compromise"}),
        )
        .await
        .expect(200);
    for t in &twin {
        assert!(!connects(&server, &ca, t, &twin_key).await, "{}", t.serial);
    }
}

#[tokio::test]
async fn a_superseded_revocation_revokes_that_serial_only() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let ca = home.certs().join("ca.pem");
    let old = issue_generated(&admin, dir.path(), "rolling", 3600).await;
    let v = server
        .client(&old.cert, &old.key)
        .post("/v1/certs/renew", json!({}))
        .await
        .expect(201);
    let new = write_issued(&v, dir.path(), "rolling", None);
    admin
        .post(
            &format!("/v1/certs/{}/revoke", old.serial),
            json!({"reason": "superseded"}),
        )
        .await
        .expect(200);
    assert!(!connects(&server, &ca, &old, &old.key).await);
    assert!(connects(&server, &ca, &new, &old.key).await);
    let crl = crl_text(&admin, dir.path()).await;
    assert!(crl.contains(&old.serial.to_uppercase()));
    assert!(!crl.contains(&new.serial.to_uppercase()));
}
