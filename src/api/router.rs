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

/// How each group of routes is guarded: `protect` wraps those that always need a credential
/// (the probes never do); `docs` and `metrics` those whose need is configured.
struct Guards<P, D, M> {
    protect: P,
    docs: D,
    metrics: M,
}

type Wrap = fn(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>;

/// The routes with their operations.
fn routes<P, D, M>(g: Guards<P, D, M>) -> OpenApiRouter<AppState>
where
    P: FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
    D: FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
    M: FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
{
    let session = OpenApiRouter::new()
        .routes(routes!(h::get_session))
        .routes(routes!(h::logoff))
        .routes(routes!(h::disconnect))
        .routes(routes!(h::message))
        .routes(routes!(h::lock))
        .routes(routes!(h::unlock));
    let docs = OpenApiRouter::new()
        .routes(routes!(h::openapi_yaml))
        .routes(routes!(super::ops::docs))
        .routes(routes!(super::ops::docs_init))
        .routes(routes!(super::ops::docs_css))
        .routes(routes!(super::ops::docs_bundle));
    let metrics = OpenApiRouter::new().routes(routes!(super::ops::metrics));
    let protected = OpenApiRouter::new()
        .routes(routes!(h::list_pools))
        .routes(routes!(h::list_hosts))
        .routes(routes!(h::list_sessions))
        .routes(routes!(h::list_host_sessions))
        .routes(routes!(super::fleet::bulk_message))
        .routes(routes!(super::fleet::bulk_action))
        .nest(SESSION, session)
        .routes(routes!(h::read_audit));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(h::healthz))
        .routes(routes!(h::readyz))
        .merge((g.docs)(docs))
        .merge((g.metrics)(metrics))
        .merge((g.protect)(protected))
}

/// The OpenAPI document of every route, with what all operations share ([`Contract`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes(Guards::<Wrap, Wrap, Wrap> {
        protect: |r| r,
        docs: |r| r,
        metrics: |r| r,
    })
    .into_openapi();
    Contract.modify(&mut doc);
    doc
}

/// The router of the separate metrics address (`[metrics] listen`): `GET /metrics` only, with
/// the same request context (audit, request metrics) as the API.
pub fn metrics_router(st: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(super::ops::metrics_separate).route_layer(from_fn_with_state(
                st.clone(),
                super::ops::guard_metrics_separate,
            )),
        )
        .fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(from_fn_with_state(st.clone(), middleware::context))
        .with_state(st)
}

/// The application router with all layers.
pub fn router(st: AppState, body_limit: usize, cors: Option<CorsLayer>) -> Router {
    let auth = from_fn_with_state(st.clone(), middleware::authenticate);
    let docs = from_fn_with_state(st.clone(), super::ops::guard_docs);
    let metrics = from_fn_with_state(st.clone(), super::ops::guard_metrics);
    let (api, _) = routes(Guards {
        protect: |r: OpenApiRouter<AppState>| r.route_layer(auth),
        docs: |r: OpenApiRouter<AppState>| r.route_layer(docs),
        metrics: |r: OpenApiRouter<AppState>| r.route_layer(metrics),
    })
    .split_for_parts();
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
