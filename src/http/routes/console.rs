//! The web console at `/ui/`: static files compiled into the binary (`ui/` in the repository),
//! served with a policy that lets the page run only its own script and talk only to this
//! origin. The console is a client of the public API like curl: it holds no credential of its
//! own and the server gives it nothing the API would not.

use actix_web::{HttpResponse, http::header, web};

use crate::http::error::ApiError;

/// The console's files: name, media type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../ui/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../../ui/icon.svg"),
    ),
];

/// Only this origin's own files and API, no inline code, no frames, no form posts, and DOM
/// writes from strings refused outright (Trusted Types with no policy): the console builds
/// its pages from elements and text nodes, so an injected string can never become markup.
pub const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

/// `GET /ui` sends the browser to `/ui/` (relative links resolve under it).
pub async fn root() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

/// `GET /ui/` and `GET /ui/{file}`.
pub async fn file(name: Option<web::Path<String>>) -> Result<HttpResponse, ApiError> {
    let name = name.as_deref().map_or("index.html", String::as_str);
    let (_, media, body) = FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or(ApiError::NotFound)?;
    // The page itself shows secrets once (a new key, a generated private key): never kept.
    // The other files hold none; they are checked again on every load so an upgrade is seen.
    let cache = if name == "index.html" {
        "no-store"
    } else {
        "no-cache"
    };
    Ok(HttpResponse::Ok()
        .content_type(*media)
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY))
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header(("cross-origin-opener-policy", "same-origin"))
        .body(*body))
}
