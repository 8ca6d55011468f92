//! CORS for browser portals: only the configured origins, only what the API needs.
//! No credentials mode: the API authenticates with headers (`Authorization`, `X-API-Key`),
//! never with cookies, so `Access-Control-Allow-Credentials` is never sent.

use super::config::{CorsConfig, parse_origin};
use http::{HeaderName, Method, header};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The CORS layer for `[auth.cors]`, or `None` when no origin is configured (then no CORS
/// header is ever sent and browsers refuse cross-origin calls). Origins that do not parse
/// are skipped here; [`super::AuthConfig::validate`] refuses them at start.
pub fn cors_layer(cfg: &CorsConfig) -> Option<CorsLayer> {
    let origins: Vec<http::HeaderValue> = cfg
        .allowed_origins
        .iter()
        .filter_map(|o| parse_origin(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([HeaderName::from_static("x-request-id")])
            .max_age(Duration::from_secs(600)),
    )
}
