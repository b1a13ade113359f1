//! Known-answer checks of the documented formats (DESIGN.md "Formats and rules", the README's
//! "API keys" and "Tamper evidence", `src/store/backup.rs`'s header): each is recomputed here
//! by a small implementation written from the documentation alone (CRC32 bit by bit, base62,
//! the chain hash's byte layout, the checkpoint text, the backup framing), never by calling
//! Tessera's own code, and compared with what the running server produced.

use ring::{digest, signature};
use serde_json::{Value, json};

use crate::helpers::{Home, Server};

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Base62 with the digits `0-9A-Za-z`, most significant first, zero-padded to `width`.
fn base62(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    assert_eq!(n, 0, "does not fit in {width} digits");
    String::from_utf8(out).unwrap()
}

/// The documented key shape and checksum: `<prefix>_` + 33 of `[0-9A-Za-z]` + the base62 CRC32
/// of everything before it, zero-padded to 6.
fn check_key(key: &str, prefix: &str) {
    let (p, rest) = key.split_once('_').unwrap();
    assert_eq!(p, prefix, "{key}");
    assert_eq!(rest.len(), 39, "{key}");
    assert!(rest.bytes().all(|c| c.is_ascii_alphanumeric()), "{key}");
    let (body, sum) = key.split_at(key.len() - 6);
    assert_eq!(
        sum,
        base62(u64::from(crc32(body.as_bytes())), 6),
        "checksum of {body}"
    );
}

#[test]
fn the_independent_crc32_and_base62_match_their_references() {
    // The standard CRC-32 check value, and base62 by hand.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(base62(0, 6), "000000");
    assert_eq!(base62(61, 2), "0z");
    assert_eq!(base62(62, 2), "10");
    assert_eq!(base62(u64::from(u32::MAX), 6), "4gfFC3");
}

/// A pinned vector: docs/keys.md's example key, whose checksum is the documented formula's.
/// (It used to end in `242P1H`, which is not its checksum.)
#[test]
fn a_pinned_example_key_has_the_documented_checksum() {
    check_key("bill_3So1MAbUX6rwFQHdiiaaSVq13Dz67VU9h2oibuw", "bill");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/keys.md"))
        .unwrap_or_default();
    assert!(
        doc.contains("bill_3So1MAbUX6rwFQHdiiaaSVq13Dz67VU9h2oibuw"),
        "docs/keys.md shows this key"
    );
    assert_ne!(
        base62(
            u64::from(crc32(b"bill_3So1MAbUX6rwFQHdiiaaSVq13Dz67VU9h")),
            6
        ),
        "242P1H"
    );
}

/// SHA-256("tessera-log-v1" || prev || seq as u64 BE || body), `body` the entry as compact
/// JSON with the fields in the documented order (`detail` last, when present).
fn chain_hash(prev: &[u8], seq: u64, body: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"tessera-log-v1");
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(body.as_bytes());
    hex(ctx.finish().as_ref())
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The canonical body, written out field by field.
fn canonical(e: &Value) -> String {
    let mut fields = Vec::new();
    for name in [
        "time",
        "request_id",
        "principal",
        "tenant",
        "action",
        "object",
        "outcome",
        "source",
    ] {
        fields.push(format!("\"{name}\":{}", e[name]));
    }
    if let Some(d) = e.get("detail") {
        fields.push(format!("\"detail\":{d}"));
    }
    format!("{{{}}}", fields.join(","))
}

/// Keys (default and custom prefix, root keys), every audit entry's hash, a checkpoint's
/// signed text, and a backup's framing, from a live server.
#[tokio::test]
async fn keys_audit_chain_checkpoints_and_backups_follow_their_documented_formats() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("vectors").await;
    let custom = admin
        .post(
            "/v1/apis",
            json!({"name": "bills", "purpose": "t", "owner": "qa", "risk": "low", "key_prefix": "bill"}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..10 {
        check_key(&admin.issue(&api, json!({})).await.1, "tsk");
        check_key(&admin.issue(&custom, json!({})).await.1, "bill");
    }
    let root = admin
        .post(
            "/v1/root-keys",
            json!({"name": "vec", "permissions": ["keys:read"]}),
        )
        .await
        .expect(201);
    check_key(root["key"].as_str().unwrap(), "tsr");
    let serial = admin
        .post("/v1/certs", json!({"identity": "vec", "generate": true}))
        .await
        .expect(201)["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    admin
        .post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await
        .expect(200);
    // A refused call, so that entries of other outcomes (and null fields) are covered too.
    server.anonymous().get("/v1/apis").await;

    // The chain: every entry's hash from its documented parts.
    let mut prev = vec![0u8; 32];
    let mut after = 0u64;
    let mut checked = 0;
    loop {
        let page = admin
            .get(&format!("/v1/audit?after_seq={after}&limit=100"))
            .await
            .expect(200);
        let items = page["items"].as_array().unwrap().clone();
        let Some(last) = items.last() else { break };
        after = last["seq"].as_u64().unwrap();
        for e in &items {
            let seq = e["seq"].as_u64().unwrap();
            assert_eq!(e["prev_hash"].as_str().unwrap(), hex(&prev), "seq {seq}");
            assert_eq!(
                e["hash"].as_str().unwrap(),
                chain_hash(&prev, seq, &canonical(e)),
                "seq {seq}: the documented formula gives another hash for {e}"
            );
            prev = unhex(e["hash"].as_str().unwrap());
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} entries");

    // A checkpoint: Ed25519 over `tessera-audit-checkpoint-v1\n<seq>\n<hash>\n<time>\n`.
    let cp = admin
        .get("/v1/audit/checkpoint?fresh=true")
        .await
        .expect(200);
    let text = format!(
        "tessera-audit-checkpoint-v1\n{}\n{}\n{}\n",
        cp["seq"],
        cp["hash"].as_str().unwrap(),
        cp["time"].as_str().unwrap()
    );
    assert_eq!(cp["algorithm"], "ed25519", "{cp}");
    signature::UnparsedPublicKey::new(
        &signature::ED25519,
        unhex(cp["public_key"].as_str().unwrap()),
    )
    .verify(text.as_bytes(), &unhex(cp["signature"].as_str().unwrap()))
    .unwrap_or_else(|_| {
        panic!("the checkpoint's signature is not over the documented text {text:?}")
    });
    assert_eq!(
        cp["hash"].as_str().unwrap(),
        hex(&prev),
        "the head is the last hash"
    );
    let bad = text.replace("-v1\n", "-v2\n");
    assert!(
        signature::UnparsedPublicKey::new(
            &signature::ED25519,
            unhex(cp["public_key"].as_str().unwrap())
        )
        .verify(bad.as_bytes(), &unhex(cp["signature"].as_str().unwrap()))
        .is_err()
    );

    // A backup: magic, header length (u32 BE), JSON header, (u32 BE length, key, u32 BE
    // length, value) * entries, 32 bytes of HMAC-SHA256.
    let bytes = admin
        .http
        .get(admin.url("/v1/sys/backup"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let magic = b"TESSERA-BACKUP-2\n";
    assert_eq!(&bytes[..magic.len()], magic);
    let mut at = magic.len();
    let mut take = |n: usize| {
        let s = &bytes[at..at + n];
        at += n;
        s.to_vec()
    };
    let u32be = |b: Vec<u8>| u32::from_be_bytes(b.try_into().unwrap()) as usize;
    let hlen = u32be(take(4));
    let header: Value = serde_json::from_slice(&take(hlen)).unwrap();
    let mut names: Vec<&str> = header
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "audit_head_seq",
            "created_at",
            "data_format",
            "entries",
            "revoked_serials",
            "trust_domain",
            "version"
        ],
        "{header}"
    );
    assert_eq!(header["version"], 2);
    assert_eq!(header["trust_domain"], "tessera.local");
    assert!(
        header["revoked_serials"]
            .as_array()
            .unwrap()
            .contains(&json!(serial)),
        "{header}"
    );
    assert!(
        header["audit_head_seq"].as_u64().unwrap() >= after,
        "{header}"
    );
    for _ in 0..header["entries"].as_u64().unwrap() {
        let k = u32be(take(4));
        take(k);
        let v = u32be(take(4));
        take(v);
    }
    let trailer = bytes.len() - at;
    assert_eq!(
        trailer, 32,
        "after the header's {} entries",
        header["entries"]
    );
}
