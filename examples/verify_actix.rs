//! A downstream actix-web service that verifies Tessera API keys in process, following the
//! signed change feed (`tessera-verify`). See README, "Verification at the edge".
//!
//! ```sh
//! TESSERA_URL=https://localhost:8443 TESSERA_CA=certs/ca.pem \
//! TESSERA_CERT=orders.pem TESSERA_KEY=orders.key TESSERA_SCOPE=api:<id> \
//! TESSERA_FEED_KEY=<hex from GET /v1/feed/key> cargo run --example verify_actix
//! curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8080/orders
//! ```

mod common;

use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, HttpServer, web};
use tessera_verify::{Source, Verified, Verifier, actix::VerifyKey};

async fn orders(req: HttpRequest) -> HttpResponse {
    let Some(v) = req.extensions().get::<Verified>().cloned() else {
        return HttpResponse::Unauthorized().finish();
    };
    HttpResponse::Ok().json(serde_json::json!({
        "key_id": v.verdict.key_id,
        "tenant": v.verdict.tenant,
        "source": if v.source == Source::Local { "local" } else { "tessera" },
        "verdict": *v.verdict,
    }))
}

async fn health(verifier: web::Data<Verifier>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "fresh": verifier.is_fresh(),
        "feed_seq": verifier.feed_seq(),
        "cached": verifier.cached(),
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let config = common::config().map_err(std::io::Error::other)?;
    let verifier = Verifier::start(config).map_err(std::io::Error::other)?;
    let scopes = common::scopes();
    let server = HttpServer::new(move || {
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        App::new()
            .app_data(web::Data::new(verifier.clone()))
            .route("/healthz", web::get().to(health))
            .service(
                web::scope("/orders")
                    .wrap(VerifyKey::new(verifier.clone()).scopes(&scopes))
                    .route("", web::get().to(orders)),
            )
    })
    .workers(1)
    .bind(common::listen())?;
    for addr in server.addrs() {
        println!("listening on http://{addr}");
    }
    server.run().await
}
