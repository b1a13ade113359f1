//! A downstream axum service that verifies Tessera API keys in process with the tower layer
//! of `tessera-verify`. Configured like `verify_actix` (see README, "Verification at the
//! edge").

mod common;

use axum::{Extension, Json, Router, routing::get};
use tessera_verify::{Source, Verified, Verifier, tower::VerifyKeyLayer};

async fn orders(Extension(v): Extension<Verified>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "key_id": v.verdict.key_id,
        "tenant": v.verdict.tenant,
        "source": if v.source == Source::Local { "local" } else { "tessera" },
        "verdict": *v.verdict,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let verifier = Verifier::start(common::config()?).map_err(|e| e.to_string())?;
    let scopes = common::scopes();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let health = {
        let v = verifier.clone();
        move || async move {
            Json(
                serde_json::json!({"fresh": v.is_fresh(), "feed_seq": v.feed_seq(), "cached": v.cached()}),
            )
        }
    };
    let app = Router::new()
        .route(
            "/orders",
            get(orders).layer(VerifyKeyLayer::new(verifier.clone()).scopes(&scopes)),
        )
        .route("/healthz", get(health));
    let listener = tokio::net::TcpListener::bind(common::listen())
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
