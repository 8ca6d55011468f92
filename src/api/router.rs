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
/// probes do not); `acting` wraps the routes whose POSTs act on sessions (the
/// `Idempotency-Key` layer: every POST action route, single and fleet, goes in there).
fn routes(
    protect: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
    acting: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
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
        .merge(acting(
            OpenApiRouter::new()
                .routes(routes!(super::fleet::bulk_message))
                .routes(routes!(super::fleet::bulk_action))
                .nest(SESSION, session),
        ))
        .routes(routes!(h::read_audit))
        .routes(routes!(super::jobs::list_jobs))
        .routes(routes!(super::jobs::get_job))
        .routes(routes!(super::jobs::cancel_job));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(h::healthz))
        .routes(routes!(h::readyz))
        .merge(protect(protected))
}

/// The OpenAPI document of every route, with what all operations share ([`Contract`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut acting = Vec::new();
    let mut doc = routes(
        |r| r,
        |r| {
            acting.extend(r.get_openapi().paths.paths.keys().cloned());
            r
        },
    )
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

/// The application router with all layers.
pub fn router(st: AppState, body_limit: usize, cors: Option<CorsLayer>) -> Router {
    let auth = from_fn_with_state(st.clone(), middleware::authenticate);
    let idem = from_fn_with_state(st.clone(), super::idempotency::idempotency);
    let (api, _) = routes(|r| r.route_layer(auth), |r| r.route_layer(idem)).split_for_parts();
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
