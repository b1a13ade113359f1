//! The OpenAPI description: the committed `openapi.json` is the generated one, every route is
//! in it (and nothing else), and the server serves it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::helpers::{Home, Server};

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
const ROUTES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/routes/mod.rs");

/// `TESSERA_BLESS=1 cargo test openapi` rewrites the committed file.
#[test]
fn the_committed_spec_is_the_generated_one() {
    let generated = tessera::http::openapi::document();
    if std::env::var_os("TESSERA_BLESS").is_some() {
        std::fs::write(SPEC, generated).unwrap();
    }
    let committed = std::fs::read_to_string(SPEC).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is stale: run `TESSERA_BLESS=1 cargo test openapi` and commit it"
    );
}

/// A path with its parameter names blanked (`/v1/apis/{}/keys`): the route table and the
/// document may name a parameter differently (the route's name is in audit actions and metric
/// labels, so it stays; the document's is the field that errors name).
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// `(method, path shape)` of every route in the route table, read from its source: the route
/// table is the truth the spec must match.
fn routed() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(ROUTES).unwrap();
    let mut out = BTreeSet::new();
    for (i, _) in src.match_indices("resource(\"") {
        let rest = &src[i + "resource(\"".len()..];
        let path = &rest[..rest.find('"').unwrap()];
        // The console's files (`/ui/`) are a page for people, not part of the API.
        if path == "/ui" || path.starts_with("/ui/") {
            continue;
        }
        let path = shape(path);
        let after = &rest[rest.find('"').unwrap() + 1..];
        let methods = if let Some(m) = after.strip_prefix(", \"") {
            m[..m.find('"').unwrap()].to_owned()
        } else {
            // Forward auth answers any method; the spec describes it as GET.
            "GET".to_owned()
        };
        for m in methods.split(", ") {
            out.insert((m.to_lowercase(), path.clone()));
        }
    }
    assert!(out.len() > 50, "the route table was not read: {out:?}");
    out
}

/// `(method, path shape)` → the document's path, for every operation it describes.
fn described(spec: &Value) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in ["get", "post", "put", "patch", "delete"] {
            if item.get(m).is_some() {
                out.insert((m.to_owned(), shape(path)), path.clone());
            }
        }
    }
    out
}

#[test]
fn every_route_is_described_and_nothing_else() {
    let spec: Value = serde_json::from_str(tessera::http::openapi::document()).unwrap();
    let routed = routed();
    let operations = described(&spec);
    let shapes: BTreeSet<_> = operations.keys().cloned().collect();
    let missing: Vec<_> = routed.difference(&shapes).collect();
    let extra: Vec<_> = shapes.difference(&routed).collect();
    let described: BTreeSet<(String, String)> = operations
        .iter()
        .map(|((m, _), path)| (m.clone(), path.clone()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a description: {missing:?}"
    );
    assert!(extra.is_empty(), "descriptions without a route: {extra:?}");

    // Every operation has an id, a success answer, and its error answers described with a
    // body schema; secured ones say 401 and 403.
    let mut ids = BTreeSet::new();
    for (method, path) in &described {
        let op = &spec["paths"][path][method];
        let id = op["operationId"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success answer"
        );
        for s in ["429", "500", "503"] {
            assert!(responses.contains_key(s), "{method} {path}: no {s}");
        }
        let public = op["security"]
            .as_array()
            .is_some_and(|r| r.iter().all(|x| x.as_object().unwrap().is_empty()));
        if !public {
            for s in ["401", "403"] {
                assert!(responses.contains_key(s), "{method} {path}: no {s}");
            }
        }
        if path.contains('{') {
            assert!(responses.contains_key("404"), "{method} {path}: no 404");
        }
    }
    // Links name operations that exist, with the parameters those operations take.
    let mut links = 0;
    for (method, path) in &described {
        for (status, response) in spec["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
        {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                links += 1;
                let to = link["operationId"].as_str().unwrap_or_else(|| {
                    panic!("{method} {path} {status} link {name}: no operationId: {link}")
                });
                assert!(ids.contains(to), "{method} {path}: link to unknown {to}");
                let target = described
                    .iter()
                    .map(|(m, p)| &spec["paths"][p][m])
                    .find(|op| op["operationId"] == to)
                    .unwrap();
                for p in link["parameters"].as_object().unwrap().keys() {
                    let takes = target["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["name"] == p.as_str());
                    assert!(takes, "link {name}: {to} has no parameter {p}");
                }
            }
        }
    }
    assert!(links >= 20, "{links} links");
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["mtls"]["type"], "mutualTLS");
    assert_eq!(schemes["root_key"]["scheme"], "bearer");
    assert_eq!(spec["openapi"].as_str().unwrap().get(..3), Some("3.1"));
    // Each body is its own schema (utoipa keeps one of two types of the same name silently).
    let body = |path: &str| {
        let b = &spec["paths"][path]["post"]["requestBody"];
        let r = b["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: {b}"));
        let name = r.rsplit('/').next().unwrap().to_owned();
        (b.clone(), spec["components"]["schemas"][name].clone())
    };
    let (revoke_cert, schema) = body("/v1/certs/{serial}/revoke");
    assert!(schema["properties"]["reason"].is_object(), "{schema}");
    // An optional body may be left out; it is never `null`.
    assert_ne!(revoke_cert["required"], true);
    let (_, schema) = body("/v1/keys/{id}/revoke");
    assert!(
        schema["properties"]
            .as_object()
            .is_none_or(|p| p.is_empty())
    );
    // Bytes are bytes.
    let backup = &spec["paths"]["/v1/sys/backup"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        backup["application/octet-stream"]["schema"]["type"],
        "string"
    );
    // Request bodies refuse unknown fields.
    assert_eq!(
        spec["components"]["schemas"]["NewKey"]["additionalProperties"],
        false
    );
}

#[tokio::test]
async fn the_server_serves_its_spec_without_a_credential() {
    let home = Home::new();
    let server = Server::start(&home);
    let r = server.anonymous().get("/openapi.json").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, tessera::http::openapi::document());
    let spec: Value = serde_json::from_str(&r.text).unwrap();
    assert!(spec["paths"]["/v1/keys/verify"]["post"].is_object());
}
