//! What both examples read from the environment: where Tessera is, the service's identity,
//! the scope to follow and the pinned feed key.

use std::time::Duration;

use tessera_verify::{Config, WhenStale};

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn file(name: &str) -> Result<Vec<u8>, String> {
    let path = var(name)?;
    std::fs::read(&path).map_err(|e| format!("{name}={path}: {e}"))
}

/// The verifier's configuration: `TESSERA_URL`, `TESSERA_CA`, `TESSERA_CERT`, `TESSERA_KEY`
/// (PEM files), `TESSERA_SCOPE` (`api:<id>` or `tenant:<name>`), `TESSERA_FEED_KEY` (hex,
/// from `GET /v1/feed/key`), optionally `TESSERA_MAX_STALENESS_MS` and `TESSERA_WHEN_STALE`
/// (`refuse`, the default, or `ask`).
pub fn config() -> Result<Config, String> {
    let mut identity = file("TESSERA_CERT")?;
    identity.extend(file("TESSERA_KEY")?);
    let mut c = Config::new(
        var("TESSERA_URL")?,
        file("TESSERA_CA")?,
        identity,
        var("TESSERA_SCOPE")?,
        var("TESSERA_FEED_KEY")?,
    );
    if let Ok(ms) = var("TESSERA_MAX_STALENESS_MS") {
        let ms = ms
            .parse()
            .map_err(|_| "TESSERA_MAX_STALENESS_MS must be a number".to_owned())?;
        c.max_staleness = Duration::from_millis(ms);
    }
    c.when_stale = match var("TESSERA_WHEN_STALE").as_deref() {
        Err(_) | Ok("refuse") => WhenStale::Refuse,
        Ok("ask") => WhenStale::AskTessera,
        Ok(_) => return Err("TESSERA_WHEN_STALE must be refuse or ask".into()),
    };
    Ok(c)
}

/// `LISTEN` (default `127.0.0.1:8080`; port 0 picks a free one).
pub fn listen() -> String {
    var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into())
}

/// `REQUIRED_SCOPES`: comma-separated scopes a key needs for `/orders` (default
/// `orders:read`).
pub fn scopes() -> Vec<String> {
    var("REQUIRED_SCOPES")
        .unwrap_or_else(|_| "orders:read".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
