//! Request bodies and query strings: JSON parsed strictly into domain input types (an object
//! where a struct is expected, each key once, bounded depth and size), with the failing field
//! named in our own words.

use std::{future::Future, pin::Pin};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, http::header, web};
use futures_util::StreamExt;
use ring::digest;
use serde::de::DeserializeOwned;

use super::super::{
    error::ApiError,
    state::AppState,
    strict::{Node, Strict},
};

/// Deepest JSON nesting accepted in a body.
pub const MAX_JSON_DEPTH: usize = 32;

/// A JSON body parsed into `T`, with the SHA-256 of the raw bytes (for idempotency).
pub struct Json<T> {
    pub value: T,
    /// Only a retry with the same `Idempotency-Key` compares it: without that header it is
    /// not computed (all zeros), which spares the verify path a hash of every body.
    pub digest: [u8; 32],
}

/// The digest of [`Json::digest`].
fn digest_of(req: &HttpRequest, bytes: &[u8]) -> [u8; 32] {
    let mut d = [0u8; 32];
    if req
        .headers()
        .contains_key(super::super::idempotency::HEADER)
    {
        d.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    }
    d
}

/// Like [`Json`], but an empty body means `T::default()` (for actions like revoke).
pub struct OptionalJson<T>(pub Json<T>);

fn limit(req: &HttpRequest) -> usize {
    req.app_data::<web::Data<AppState>>()
        .map_or(crate::config::DEFAULT_BODY_LIMIT, |s| s.config.body_limit)
}

/// The raw body, at most the configured body limit (a 413 beyond it).
pub async fn read_body(req: HttpRequest, mut payload: Payload) -> Result<web::BytesMut, ApiError> {
    let limit = limit(&req);
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_body("could not read the body"))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn is_json(req: &HttpRequest) -> bool {
    req.mime_type().ok().flatten().is_some_and(|m| {
        m.type_() == mime::APPLICATION
            && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
    })
}

/// Refuses bodies nested deeper than [`MAX_JSON_DEPTH`] before parsing them.
fn check_depth(bytes: &[u8]) -> Result<(), ApiError> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::bad_body("the body is nested too deeply"));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A field name taken from the client's own input, made safe to echo.
fn safe_name(s: &str) -> String {
    let clean: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    clean
}

/// A path into the client's body (`a.b[2].c`), made safe to echo: every segment as
/// [`safe_name`] makes it, at most 8 segments deep (the deepest are kept).
fn safe_path(path: &str) -> String {
    if path == "." {
        return path.to_owned();
    }
    let segments: Vec<String> = path.split('.').map(safe_name).collect();
    let keep = segments.len().saturating_sub(8);
    segments[keep..].join(".")
}

/// `path.name`, unless the path already ends with the name (serde_path_to_error includes an
/// unknown field's own name in its path, but not a missing field's).
fn join(path: &str, name: &str) -> String {
    if path == "." || path.is_empty() {
        name.to_owned()
    } else if path == name || path.ends_with(&format!(".{name}")) {
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Turns a deserialisation error into a 400 naming the field, with our own words (never the
/// library's text, which could echo input back).
fn describe(path: &str, msg: &str) -> ApiError {
    let path = &safe_path(path);
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    let field = if path == "." {
        None
    } else {
        Some(path.to_owned())
    };
    let named = |prefix: &str| {
        msg.strip_prefix(prefix)
            .and_then(|r| r.split('`').next())
            .map(|n| join(path, &safe_name(n)))
    };
    if let Some(f) = named("unknown field `") {
        return ApiError::bad(f, "is not a known field");
    }
    if let Some(f) = named("missing field `") {
        return ApiError::bad(f, "is required");
    }
    if let Some(f) = named("duplicate field `") {
        return ApiError::bad(f, "is given more than once");
    }
    let message = if msg.starts_with("must ") {
        msg.to_owned()
    } else if msg.starts_with("invalid type") {
        "has the wrong type".to_owned()
    } else if msg.starts_with("unknown variant") {
        "is not one of the allowed values".to_owned()
    } else if msg.starts_with("invalid length") {
        "has the wrong length".to_owned()
    } else {
        "is not valid".to_owned()
    };
    match field {
        Some(f) => ApiError::bad(f, message),
        None => ApiError::bad_body(format!("the body {message}")),
    }
}

/// Parses JSON bytes into `T`: an object where `T` has a struct, each key once (see
/// [`super::strict`]). Errors are rare: the fast pass tracks no paths, and only a failure is
/// read again with serde_path_to_error to name the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_depth(bytes)?;
    let parsed = serde_json::from_slice::<Node>(bytes)
        .ok()
        .and_then(|node| T::deserialize(Strict(node)).ok());
    match parsed {
        Some(value) => Ok(value),
        None => Err(parse_error::<T>(bytes)),
    }
}

/// Why `bytes` is not a `T`, naming the field.
fn parse_error<T: DeserializeOwned>(bytes: &[u8]) -> ApiError {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let node: Node = match serde_path_to_error::deserialize(&mut de) {
        // A repeated key.
        Err(e) if e.inner().classify() == serde_json::error::Category::Data => {
            return describe(&e.path().to_string(), &e.inner().to_string());
        }
        Err(_) => return ApiError::bad_body("the body is not valid JSON"),
        Ok(node) => node,
    };
    if de.end().is_err() {
        return ApiError::bad_body("the body is not valid JSON");
    }
    match serde_path_to_error::deserialize::<_, T>(Strict(node)) {
        Err(e) => describe(&e.path().to_string(), &e.inner().to_string()),
        Ok(_) => ApiError::bad_body("the body is not valid"),
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            if !is_json(&req) {
                return Err(ApiError::UnsupportedMediaType);
            }
            let bytes = read_body(req.clone(), payload).await?;
            let value = parse_json(&bytes)?;
            let digest = digest_of(&req, &bytes);
            Ok(Json { value, digest })
        })
    }
}

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let has_type = req.headers().contains_key(header::CONTENT_TYPE);
            let bytes = read_body(req.clone(), payload).await?;
            if bytes.is_empty() {
                return Ok(OptionalJson(Json {
                    value: T::default(),
                    digest: [0; 32],
                }));
            }
            if !has_type || !is_json(&req) {
                return Err(ApiError::UnsupportedMediaType);
            }
            let value = parse_json(&bytes)?;
            let digest = digest_of(&req, &bytes);
            Ok(OptionalJson(Json { value, digest }))
        })
    }
}

/// A query string parsed into `T` (use `deny_unknown_fields` on `T`).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let q = req.query_string();
        let result = if q.len() > 2048 {
            Err(ApiError::bad_body("the query string is too long"))
        } else {
            let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
            serde_path_to_error::deserialize(de)
                .map(Query)
                .map_err(|e| describe(&e.path().to_string(), &e.inner().to_string()))
        };
        std::future::ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: crate::keys::model::Text<5>,
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
    }

    fn field_of(body: &str) -> (Option<String>, String) {
        match parse_json::<Outer>(body.as_bytes()) {
            Err(ApiError::BadRequest { field, message }) => (field, message),
            other => panic!("expected a 400, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn errors_name_the_field_in_our_words() {
        assert_eq!(
            field_of(r#"{"name":"a","inner":{"n":1},"bogus":1}"#)
                .0
                .as_deref(),
            Some("bogus")
        );
        assert_eq!(
            field_of(r#"{"name":"a","inner":{"n":1,"x":2}}"#)
                .0
                .as_deref(),
            Some("inner.x")
        );
        assert_eq!(field_of(r#"{"inner":{"n":1}}"#).0.as_deref(), Some("name"));
        let (f, m) = field_of(r#"{"name":"toolong","inner":{"n":1}}"#);
        assert_eq!(f.as_deref(), Some("name"));
        assert_eq!(m, "must be 1 to 5 characters");
        let (f, m) = field_of(r#"{"name":"a","inner":{"n":"x"}}"#);
        assert_eq!(f.as_deref(), Some("inner.n"));
        assert_eq!(m, "has the wrong type");
        assert_eq!(
            field_of(r#"{"name":"a","inner":{"n":1},"list":[{"n":1},{"n":-1}]}"#)
                .0
                .as_deref(),
            Some("list[1].n")
        );
        assert_eq!(field_of(r#"{"name":"a""#).0, None);
        assert_eq!(field_of(r#"{"name":"a","inner":{"n":1}} trailing"#).0, None);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(check_depth(deep.as_bytes()).is_err());
        assert!(check_depth(br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#).is_ok());
    }

    #[test]
    fn echoed_paths_are_sanitised_whole() {
        // serde_path_to_error's path holds the raw unknown name: it must not be echoed.
        for (body, field) in [
            (r#"{"name":"a","inner":{"n":1},"a b":1}"#, "a?b"),
            (
                "{\"name\":\"a\",\"inner\":{\"n\":1},\"na\u{ef}ve\":1}",
                "na?ve",
            ),
        ] {
            assert_eq!(field_of(body).0.as_deref(), Some(field), "{body}");
        }
        let long = "x".repeat(70);
        let (f, _) = field_of(&format!(r#"{{"name":"a","inner":{{"n":1}},"{long}":1}}"#));
        assert_eq!(f.as_deref(), Some("x".repeat(64).as_str()));
    }

    #[test]
    fn echoed_names_are_sanitised() {
        assert_eq!(safe_name("a\u{7}b<script>"), "a?b<script>");
        assert_eq!(safe_name(&"x".repeat(100)).len(), 64);
    }
}
