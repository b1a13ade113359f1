//! The OpenAPI 3.1 description of the HTTP API, generated from the code: handlers carry
//! `#[utoipa::path]`, bodies derive `ToSchema`, and this module adds what is written once for
//! every route (the validated string types, the security schemes, the error answers the shared
//! extractors and middleware give). `GET /openapi.json` serves it; `openapi.json` at the top
//! of the repository is the same document, kept in sync by a test.

use std::{borrow::Cow, sync::LazyLock};

use actix_web::HttpResponse;
use utoipa::{
    Modify, PartialSchema, ToSchema,
    openapi::{
        ContentBuilder, HttpMethod, OpenApi, Ref, RefOr, ResponseBuilder,
        link::LinkBuilder,
        path::{Operation, ParameterIn},
        schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{
    access::{PermSet, Permission, RoleName},
    clock::{Day, Timestamp},
    crypto::{apikey::KeyPrefix, secret::SecretString},
    identity::{Serial, ServiceName},
    ids::{ApiId, CaId, KeyId, TenantId, TenantName},
    keys::model::{BoundTo, Metadata, Scope, Scopes, Text},
};

/// The spec as served and committed (pretty JSON with a final newline).
///
/// Two spellings are put right after utoipa (5.5) writes the document: unsigned integers are
/// `uint64` (and `uint32`, ...), the API taking the whole unsigned range that `int64` would
/// wrongly cap, where utoipa writes `u-int64`; and a link's target is `operationId`, where
/// utoipa writes `operation_id` (no schema here has a property of that name).
pub fn document() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let spec = <super::routes::ApiDoc as utoipa::OpenApi>::openapi();
        let mut s = spec
            .to_pretty_json()
            .unwrap_or_default()
            .replace("\"format\": \"u-int", "\"format\": \"uint")
            .replace("\"operation_id\": ", "\"operationId\": ");
        s.push('\n');
        s
    });
    &DOCUMENT
}

/// `GET /openapi.json` (public: it describes the API, no secret).
#[utoipa::path(
    get, path = "/openapi.json", tag = "health", operation_id = "openapi",
    responses((status = 200, description = "This document.", content_type = "application/json")),
    security(()),
)]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

fn string(pattern: Option<&str>, min: Option<usize>, max: Option<usize>, desc: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(pattern)
        .min_length(min)
        .max_length(max)
        .description(Some(desc))
        .into()
}

/// A validated string type: its schema is a string with the pattern its parser enforces.
macro_rules! string_schema {
    ($($t:ty => $name:literal, $pattern:expr, $min:expr, $max:expr, $desc:literal;)*) => {$(
        impl PartialSchema for $t {
            fn schema() -> RefOr<Schema> {
                string($pattern, $min, $max, $desc).into()
            }
        }
        impl ToSchema for $t {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    )*};
}

string_schema! {
    ApiId => "ApiId", Some("^api_[0-9A-Za-z]{17,32}$"), None, None, "An API's id.";
    KeyId => "KeyId", Some("^key_[0-9A-Za-z]{17,32}$"), None, None,
        "A key's public id (never the secret).";
    TenantId => "TenantId", Some("^ten_[0-9A-Za-z]{17,32}$"), None, None,
        "A tenant's internal id.";
    CaId => "CaId", Some("^ca_[0-9A-Za-z]{17,32}$"), None, None,
        "A certificate authority's id.";
    TenantName => "TenantName", Some("^[a-z0-9-]{1,63}$"), None, None,
        "A tenant's immutable name.";
    RoleName => "RoleName", Some("^[a-z0-9-]{1,63}$"), None, None, "A role's name.";
    ServiceName => "ServiceName", Some("^[a-z0-9][a-z0-9._-]{0,62}$"), None, None,
        "A service name within a tenant: the last segment of its SPIFFE id.";
    KeyPrefix => "KeyPrefix", Some("^[a-z][a-z0-9]{0,15}$"), None, None,
        "The prefix of an API's keys (`tsr` is reserved for root keys).";
    Scope => "Scope", Some("^[A-Za-z0-9_.:/*-]{1,128}$"), None, None, "A scope.";
    Serial => "Serial", Some("^(0|[1-9a-f][0-9a-f]{0,39})$"), None, None,
        "A certificate serial number in minimal lowercase hex.";
    BoundTo => "BoundTo", Some("^(sha256:[0-9a-f]{64}|spiffe://[!-~]+/[!-~]*)$"), None,
        Some(2048),
        "The identity a sender-constrained key is bound to: a SPIFFE id, or a client \
         certificate's SHA-256 fingerprint `sha256:<64 lowercase hex>`.";
    SecretString => "Secret", None, None, Some(512),
        "A secret (an API key, a token, an unseal share). Sent once, never returned.";
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .max_length(Some(40))
            .description(Some(
                "An instant, RFC 3339; answers are UTC with milliseconds.",
            ))
            .into()
    }
}

impl ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}

impl PartialSchema for Day {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Date,
            )))
            .pattern(Some("^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))
            .description(Some("A calendar date, YYYY-MM-DD."))
            .into()
    }
}

impl ToSchema for Day {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Day")
    }
}

impl<const MAX: usize> PartialSchema for Text<MAX> {
    fn schema() -> RefOr<Schema> {
        string(
            Some("^[^\\u0000-\\u001f\\u007f-\\u009f]*$"),
            Some(1),
            Some(MAX),
            "Free text without control characters.",
        )
        .into()
    }
}

impl<const MAX: usize> ToSchema for Text<MAX> {
    fn name() -> Cow<'static, str> {
        Cow::Owned(format!("Text{MAX}"))
    }
}

impl PartialSchema for Scopes {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Scope::schema())
            .max_items(Some(crate::keys::model::MAX_SCOPES))
            .description(Some(
                "A set of scopes (answers are sorted, without duplicates).",
            ))
            .into()
    }
}

impl ToSchema for Scopes {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Scopes")
    }
}

impl PartialSchema for Metadata {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Any JSON object of at most 4096 bytes, returned by verify.",
            ))
            .into()
    }
}

impl ToSchema for Metadata {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Metadata")
    }
}

impl PartialSchema for PermSet {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(Permission::ALL.iter().map(|p| p.as_str()))),
            )
            .max_items(Some(Permission::ALL.len() * 2))
            .description(Some("Permissions."))
            .into()
    }
}

impl ToSchema for PermSet {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Permissions")
    }
}

/// Adds what every operation shares: the security schemes, and the error answers that come
/// from the shared extractors and middleware rather than from the handler.
pub struct Shared;

impl Modify for Shared {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "mtls",
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate issued by Tessera (the admin's, or a service's \
                     `spiffe://<trust-domain>/tenant/<t>/svc/<name>`)."
                        .into(),
                ),
                extensions: None,
            },
        );
        components.add_security_scheme(
            "root_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tsr_…")
                    .description(Some("A root key: `Authorization: Bearer tsr_…`."))
                    .build(),
            ),
        );
        error_components(components);
        add_links(api);
        let global_security = api.security.clone().unwrap_or_default();
        for item in api.paths.paths.values_mut() {
            for (method, op) in [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Put, &mut item.put),
                (HttpMethod::Patch, &mut item.patch),
                (HttpMethod::Delete, &mut item.delete),
                (HttpMethod::Head, &mut item.head),
                (HttpMethod::Options, &mut item.options),
                (HttpMethod::Trace, &mut item.trace),
            ] {
                if let Some(op) = op {
                    let secured = match &op.security {
                        None => !global_security.is_empty(),
                        Some(reqs) => reqs.iter().any(|r| r != &Default::default()),
                    };
                    add_errors(op, method, secured);
                    optional_bodies(op);
                    binary_contents(op);
                }
            }
        }
    }
}

/// Links from an operation's answer: (operation, status, target operations, the targets'
/// parameters as (name, runtime expression)); each link is named after its target.
type Links = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

const ID: &str = "$response.body#/id";
const TENANT: (&str, &str) = ("t", "$response.body#/tenant");

/// Where an answer's ids lead. Clients and stateful testers (schemathesis) follow these.
const LINKS: &[Links] = &[
    (
        "createApi",
        "201",
        &["getApi", "updateApi", "deleteApi"],
        &[("id", ID)],
    ),
    (
        "createApi",
        "201",
        &["createKey", "listKeys"],
        &[("api_id", ID)],
    ),
    (
        "createKey",
        "201",
        &["getKey", "updateKey", "rotateKey", "revokeKey"],
        &[("id", ID)],
    ),
    ("rotateKey", "201", &["getKey", "revokeKey"], &[("id", ID)]),
    (
        "issueCert",
        "201",
        &["getCert", "revokeCert"],
        &[("serial", "$response.body#/serial")],
    ),
    (
        "enrol",
        "201",
        &["getCert"],
        &[("serial", "$response.body#/serial")],
    ),
    (
        "createTenant",
        "201",
        &["getTenant", "listRoles", "createRole", "listBindings"],
        &[("t", "$response.body#/name")],
    ),
    (
        "createRole",
        "201",
        &["getRole", "putRole", "deleteRole"],
        &[TENANT, ("role", "$response.body#/name")],
    ),
    (
        "putBinding",
        "200",
        &["getBinding", "deleteBinding"],
        &[TENANT, ("identity", "$response.body#/identity")],
    ),
    (
        "createRootKey",
        "201",
        &["getRootKey", "rotateRootKey", "revokeRootKey"],
        &[("id", ID)],
    ),
];

fn add_links(api: &mut OpenApi) {
    for item in api.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let id = op.operation_id.clone().unwrap_or_default();
            for (_, status, targets, params) in LINKS.iter().filter(|l| l.0 == id) {
                let Some(RefOr::T(response)) = op.responses.responses.get_mut(*status) else {
                    continue;
                };
                for to in *targets {
                    let link = params
                        .iter()
                        .fold(LinkBuilder::new().operation_id(*to), |l, (p, expr)| {
                            l.parameter(*p, *expr)
                        })
                        .build();
                    response.links.insert((*to).to_owned(), RefOr::T(link));
                }
            }
        }
    }
}

/// The shared error answers: (status, component name, description).
const ERRORS: [(&str, &str, &str); 11] = [
    (
        "400",
        "BadRequest",
        "Bad input: `error.field` names the offending field; nothing was changed.",
    ),
    (
        "401",
        "Unauthenticated",
        "Not authenticated (the one uniform answer, whatever the reason).",
    ),
    ("403", "Forbidden", "Authenticated, but not allowed."),
    (
        "404",
        "NotFound",
        "No such object visible to the caller (another tenant's object answers the same).",
    ),
    (
        "409",
        "Conflict",
        "A concurrent change to the same object won; nothing was changed, retry.",
    ),
    ("413", "PayloadTooLarge", "The request body is too large."),
    (
        "415",
        "UnsupportedMediaType",
        "The body must be `application/json`.",
    ),
    (
        "429",
        "TooManyRequests",
        "Too many requests, or the source is locked out after failed authentication; see \
         `Retry-After`.",
    ),
    (
        "431",
        "HeadersTooLarge",
        "The request headers are too large.",
    ),
    (
        "500",
        "Internal",
        "Internal error (logged with the request id).",
    ),
    (
        "503",
        "Unavailable",
        "The server is sealed, or storage cannot accept writes right now; nothing was changed.",
    ),
];

fn error_components(components: &mut utoipa::openapi::Components) {
    for (_, name, description) in ERRORS {
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        components
            .responses
            .insert(name.to_owned(), RefOr::T(response));
    }
}

/// POSTs that change nothing stored, so no concurrent change can conflict with them.
const READ_ONLY_POSTS: [&str; 2] = ["verifyKey", "verifyCert"];

fn add_errors(op: &mut Operation, method: HttpMethod, secured: bool) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
    let has_input = !params.is_empty() || op.request_body.is_some();
    let read_only = op
        .operation_id
        .as_deref()
        .is_some_and(|id| READ_ONLY_POSTS.contains(&id));
    let writes = !read_only
        && matches!(
            method,
            HttpMethod::Post | HttpMethod::Put | HttpMethod::Patch | HttpMethod::Delete
        );
    let has_body = op.request_body.is_some();
    for (status, name, _) in ERRORS {
        let applies = match status {
            "400" => has_input,
            "401" | "403" => secured,
            "404" => has_path,
            "409" => writes,
            "413" | "415" => has_body,
            _ => true,
        };
        if applies && !op.responses.responses.contains_key(status) {
            op.responses.responses.insert(
                status.to_owned(),
                RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))),
            );
        }
    }
}

/// An optional body (`request_body(content = Option<T>)`) may be left out, not sent as
/// `null`: utoipa describes it as `oneOf [null, T]`; keep `T` (the body stays not required).
fn optional_bodies(op: &mut Operation) {
    let Some(body) = op.request_body.as_mut() else {
        return;
    };
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let is_null = |s: &RefOr<Schema>| {
            matches!(s, RefOr::T(Schema::Object(o))
                if o.schema_type == SchemaType::Type(Type::Null))
        };
        let rest: Vec<_> = one_of.items.iter().filter(|s| !is_null(s)).collect();
        if let [only] = rest[..]
            && rest.len() < one_of.items.len()
        {
            content.schema = Some(only.clone());
        }
    }
}

/// Binary answers (a backup, a DER CRL) are bytes, not a JSON array of numbers.
fn binary_contents(op: &mut Operation) {
    for response in op.responses.responses.values_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        for (media, content) in response.content.iter_mut() {
            if matches!(
                media.as_str(),
                "application/octet-stream" | "application/pkix-crl"
            ) {
                content.schema = Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .content_media_type(media.clone())
                        .into(),
                );
            }
        }
    }
}
