//! Every route, in one place.

use super::{AppState, handlers as h, middleware};
use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware::from_fn_with_state,
    routing::{get, post},
};
use tower_http::{catch_panic::CatchPanicLayer, cors::CorsLayer};

const SESSION: &str = "/hostpools/{pool}/sessionhosts/{host}/sessions/{id}";

/// The application router with all layers.
pub fn router(st: AppState, body_limit: usize, cors: Option<CorsLayer>) -> Router {
    let protected = Router::new()
        .route("/openapi.yaml", get(h::openapi_yaml))
        .route("/hostpools", get(h::list_pools))
        .route("/hostpools/{pool}/sessionhosts", get(h::list_hosts))
        .route("/hostpools/{pool}/sessions", get(h::list_sessions))
        .route(
            "/hostpools/{pool}/sessionhosts/{host}/sessions",
            get(h::list_host_sessions),
        )
        .route(SESSION, get(h::get_session))
        .route(&format!("{SESSION}/logoff"), post(h::logoff))
        .route(&format!("{SESSION}/disconnect"), post(h::disconnect))
        .route(&format!("{SESSION}/message"), post(h::message))
        .route(&format!("{SESSION}/lock"), post(h::lock))
        .route(&format!("{SESSION}/unlock"), post(h::unlock))
        .route("/audit", get(h::read_audit))
        .route_layer(from_fn_with_state(st.clone(), middleware::authenticate));

    let app = Router::new()
        .route("/healthz", get(h::healthz))
        .route("/readyz", get(h::readyz))
        .merge(protected)
        .fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(from_fn_with_state(st.clone(), middleware::context))
        .layer(CatchPanicLayer::custom(|_| {
            super::problem::ApiError::internal("handler panicked").render("", "")
        }))
        .with_state(st);
    match cors {
        Some(c) => app.layer(c),
        None => app,
    }
}
