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
/// (the probes and the console's static assets never do); `docs` and `metrics` those whose
/// need is configured; `console` the console (`[console] enabled`); `acting` the
/// routes whose POSTs act on sessions (the `Idempotency-Key` layer: every POST action route,
/// single and fleet, goes in there).
struct Guards<P, D, M, C, A> {
    protect: P,
    docs: D,
    metrics: M,
    console: C,
    acting: A,
}

type R = OpenApiRouter<AppState>;

/// The routes with their operations.
fn routes<P, D, M, C, A>(g: Guards<P, D, M, C, A>) -> OpenApiRouter<AppState>
where
    P: FnOnce(R) -> R,
    D: FnOnce(R) -> R,
    M: FnOnce(R) -> R,
    C: FnOnce(R) -> R,
    A: FnOnce(R) -> R,
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
    let console = OpenApiRouter::new()
        .routes(routes!(super::console::console_page))
        .routes(routes!(super::console::console_js))
        .routes(routes!(super::console::console_css));
    let protected = OpenApiRouter::new()
        .routes(routes!(h::list_pools))
        .routes(routes!(h::list_hosts))
        .routes(routes!(h::list_sessions))
        .routes(routes!(h::list_host_sessions))
        .merge((g.acting)(
            OpenApiRouter::new()
                .routes(routes!(super::fleet::bulk_message))
                .routes(routes!(super::fleet::bulk_action))
                .routes(routes!(super::fleet::host_message))
                .routes(routes!(super::fleet::host_logoff))
                .routes(routes!(super::fleet::host_disconnect))
                .routes(routes!(super::fleet::host_lock))
                .routes(routes!(super::fleet::host_unlock))
                .routes(routes!(super::fleet::user_message))
                .routes(routes!(super::fleet::user_action))
                .routes(routes!(super::fleet::my_action))
                .nest(SESSION, session),
        ))
        .routes(routes!(super::fleet::user_sessions))
        .routes(routes!(super::fleet::my_sessions))
        .routes(routes!(h::read_audit))
        .routes(routes!(super::jobs::list_jobs))
        .routes(routes!(super::jobs::get_job))
        .routes(routes!(super::jobs::cancel_job));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(h::healthz))
        // Authenticated by each source's own scheme (signature, key header or token), inside.
        .routes(routes!(super::webhooks::receive))
        .routes(routes!(h::readyz))
        .merge((g.docs)(docs))
        .merge((g.metrics)(metrics))
        .merge((g.console)(console))
        .merge((g.protect)(protected))
}

/// The OpenAPI document of every route, with what all operations share ([`Contract`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut acting = Vec::new();
    let mut doc = routes(Guards {
        protect: |r: R| r,
        docs: |r: R| r,
        metrics: |r: R| r,
        console: |r: R| r,
        acting: |r: R| {
            acting.extend(r.get_openapi().paths.paths.keys().cloned());
            r
        },
    })
    .into_openapi();
    Contract.modify(&mut doc);
    declare_idempotency_key(&mut doc, &acting);
    doc
}

/// Declares the `Idempotency-Key` header on every POST of the acting routes.
fn declare_idempotency_key(doc: &mut utoipa::openapi::OpenApi, acting: &[String]) {
    use utoipa::openapi::{
        Required,
        path::{ParameterBuilder, ParameterIn},
        schema::{ObjectBuilder, Type},
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if !acting.contains(path) {
            continue;
        }
        let Some(op) = item.post.as_mut() else {
            continue;
        };
        let p = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Makes a retry safe: the same key (per caller) with the same method, path and \
                 body within `idempotency.retention_hours` (24) answers the stored status and \
                 body (header `Idempotency-Replayed: true`) and does nothing again; with another \
                 body it is 422 `idempotency_key_reused`; while the first is still running, \
                 409 `idempotency_in_progress` with `Retry-After`.",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(255))
                    .pattern(Some("^[\\x20-\\x7E]+$")),
            ))
            .build();
        op.parameters.get_or_insert_with(Vec::new).push(p);
    }
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
    let idem = from_fn_with_state(st.clone(), super::idempotency::idempotency);
    let docs = from_fn_with_state(st.clone(), super::ops::guard_docs);
    let metrics = from_fn_with_state(st.clone(), super::ops::guard_metrics);
    let console = from_fn_with_state(st.clone(), super::console::guard_console);
    let (api, _) = routes(Guards {
        protect: |r: R| r.route_layer(auth),
        docs: |r: R| r.route_layer(docs),
        metrics: |r: R| r.route_layer(metrics),
        console: |r: R| r.route_layer(console),
        acting: |r: R| r.route_layer(idem),
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
