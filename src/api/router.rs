//! Every route, in one place: each handler is registered once, together with its OpenAPI
//! operation (`routes!` reads the path from the handler's `#[utoipa::path]`), and the OpenAPI
//! document is taken from this same router, so the spec cannot miss or misspell a route.

use super::{
    AppState, handlers as h,
    known_query::{self, QueryRules},
    middleware,
    openapi::{ApiDoc, Contract},
    problem::ApiError,
};
use axum::{Router, extract::DefaultBodyLimit, middleware::from_fn_with_state};
use std::sync::Arc;
use tower_http::{catch_panic::CatchPanicLayer, cors::CorsLayer};
use utoipa::{Modify, OpenApi};
use utoipa_axum::{router::OpenApiRouter, routes};

/// One session; its read and its actions are nested here (their handlers name the rest).
const SESSION: &str = "/hostpools/{pool}/sessionhosts/{host}/sessions/{id}";

/// The routes with their operations. `protect` wraps those that need a credential (the
/// probes do not).
fn routes(
    protect: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    let session = OpenApiRouter::new()
        .routes(routes!(h::get_session))
        .routes(routes!(h::logoff))
        .routes(routes!(h::disconnect))
        .routes(routes!(h::message))
        .routes(routes!(h::lock))
        .routes(routes!(h::unlock));
    let protected = OpenApiRouter::new()
        .routes(routes!(h::openapi_yaml))
        .routes(routes!(h::list_pools))
        .routes(routes!(h::list_hosts))
        .routes(routes!(h::list_sessions))
        .routes(routes!(h::list_host_sessions))
        .routes(routes!(super::fleet::bulk_message))
        .routes(routes!(super::fleet::bulk_action))
        .routes(routes!(super::fleet::host_message))
        .routes(routes!(super::fleet::host_logoff))
        .routes(routes!(super::fleet::host_disconnect))
        .routes(routes!(super::fleet::host_lock))
        .routes(routes!(super::fleet::host_unlock))
        .routes(routes!(super::fleet::user_sessions))
        .routes(routes!(super::fleet::user_message))
        .routes(routes!(super::fleet::user_action))
        .routes(routes!(super::fleet::my_sessions))
        .routes(routes!(super::fleet::my_action))
        .nest(SESSION, session)
        .routes(routes!(h::read_audit));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(h::healthz))
        .routes(routes!(h::readyz))
        .merge(protect(protected))
}

/// The OpenAPI document of every route, with what all operations share ([`Contract`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes(|r| r).into_openapi();
    Contract.modify(&mut doc);
    doc
}

/// The application router with all layers.
pub fn router(st: AppState, body_limit: usize, cors: Option<CorsLayer>) -> Router {
    let auth = from_fn_with_state(st.clone(), middleware::authenticate);
    let (api, _) = routes(|r| r.route_layer(auth)).split_for_parts();
    let queries = Arc::new(QueryRules::from_openapi(&openapi()));
    let app = api
        .fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(from_fn_with_state(queries, known_query::refuse_unknown))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            middleware::declared_length(body_limit, req, next)
        }))
        .layer(from_fn_with_state(st.clone(), middleware::context))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked").render("", "")
        }))
        .with_state(st);
    match cors {
        Some(c) => app.layer(c),
        None => app,
    }
}
