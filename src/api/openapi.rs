//! The OpenAPI document: this header plus the operations the router registers (see
//! `router.rs`), then [`Contract`], the pass that states what every operation shares (its error
//! answers, path-parameter bounds, optional bodies, links). `openapi.yaml` at the repository
//! root is this output, committed; a test fails when they differ.

use super::problem::Problem;
use crate::domain::StateFilter;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, Ref, RefOr, Response, ResponseBuilder,
        extensions::Extensions,
        link::LinkBuilder,
        path::{Operation, ParameterIn},
        schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type},
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiongate",
        description = "One audited API to list, log off, disconnect, message, lock and unlock remote-desktop sessions on Azure Virtual Desktop (ARM), Windows Virtual Desktop classic, RD Session Host and MultiPoint servers. Every call is authenticated, authorised and written to a tamper-evident audit log. Errors are application/problem+json with a stable `code` and the `request_id`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem, StateFilter)),
    modifiers(&Security),
    tags(
        (name = "sessions", description = "Pools, hosts and sessions"),
        (name = "actions", description = "Audited session actions"),
        (name = "fleet", description = "Actions on many sessions: one result per item, each item audited"),
        (name = "audit", description = "The audit log"),
        (name = "health", description = "Probes (no authentication)"),
        (name = "webhooks", description = "Deliveries from ticketing systems and Standard Webhooks senders (authenticated by each source's own scheme)"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (sg_...) or a Microsoft Entra ID access token",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The media type of every error answer.
const PROBLEM_JSON: &str = "application/problem+json";

/// The largest `GET /audit` page (`limit`), as the audit store enforces it.
pub const AUDIT_LIMIT_MAX: u32 = 1000;

/// `{pool}` and `{host}`: letters, digits and `@ . - _ space`, not dots only (see
/// `domain::name_ok`); written without look-around so every generator can use it.
const NAME_PATTERN: &str = r"^[A-Za-z0-9@._ -]*[A-Za-z0-9@_ -][A-Za-z0-9@._ -]*$";

/// The error answers, by status, with the situations that produce them. Descriptions name the
/// kind of problem, not each `code` (the table in `docs/api.md` lists the codes), so a new code
/// of an existing kind needs no change here.
fn problem(status: &str) -> Option<&'static str> {
    Some(match status {
        "400" => {
            "Bad request: a path parameter, query parameter or body was rejected (problem `code` says which; see docs/api.md)"
        }
        "401" => {
            "No credential, or one that was refused (`WWW-Authenticate` says how to authenticate)"
        }
        "403" => {
            "The caller lacks the permission, or the session is protected (`missing_permission`)"
        }
        "404" => "The pool, host or session does not exist, or the caller may not see it",
        "409" => {
            "Nothing was done: the session belongs to another user, or the pool does not offer this action"
        }
        "413" => "The body exceeds the configured limit",
        "415" => "A body was sent that is not JSON",
        "422" => {
            "Well-formed JSON that does not fit this operation (unknown field, wrong type, a value out of bounds)"
        }
        "429" => "The caller exceeded its action rate (`Retry-After`)",
        "502" => "The backend refused, failed or could not be reached",
        "503" => {
            "Temporarily unavailable: the audit log cannot record the call, the backend throttles, or the request timed out (`Retry-After` where known)"
        }
        "504" => "The backend did not answer in time; the action may or may not have happened",
        _ => return None,
    })
}

fn problem_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build()
        .into()
}

/// The statuses an operation can answer besides its own, from what it has: every route may
/// refuse its query (400) or time out (503); a credential means 401/403; a path naming a pool
/// means 404 and the backend's answers (502/503/504); a body means the body errors; an action
/// (POST) may be refused as a conflict or rate-limited.
fn common_statuses(
    op: &Operation,
    has_path_params: bool,
    talks_upstream: bool,
) -> Vec<&'static str> {
    let mut s = vec!["400", "503"];
    if op.security.as_ref().is_some_and(|v| !v.is_empty()) {
        s.extend(["401", "403"]);
    }
    if has_path_params {
        s.push("404");
    }
    if talks_upstream {
        s.extend(["502", "504"]);
    }
    if op.request_body.is_some() {
        s.extend(["409", "413", "415", "422", "429"]);
    }
    s
}

/// The schema of a path parameter, matching the server's validation (`domain.rs`).
fn path_param_schema(name: &str) -> Option<Schema> {
    let name_schema = |max: usize, what: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(max))
            .pattern(Some(NAME_PATTERN))
            .description(Some(format!(
                "{what}: 1-{max} characters of letters, digits, '@', '.', '-', '_' or space, not dots only"
            )))
            .build()
    };
    Some(Schema::Object(match name {
        "pool" => name_schema(64, "Pool name as configured"),
        "host" => name_schema(255, "Session host name (FQDN)"),
        "id" => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(u32::MAX))
            .description(Some(
                "Windows session id (the server also takes an ARM session name or id ending in it)",
            ))
            .build(),
        _ => return None,
    }))
}

/// Links from a list to what can be done with its first item, so stateful testers (and
/// readers) can chain list → get → act.
fn links_of(operation_id: &str) -> Vec<(&'static str, &'static [(&'static str, &'static str)])> {
    const ACTIONS: [&str; 6] = [
        "get_session",
        "logoff",
        "disconnect",
        "message",
        "lock",
        "unlock",
    ];
    let to_all = |params: &'static [(&'static str, &'static str)]| {
        ACTIONS
            .iter()
            .map(move |a| (*a, params))
            .collect::<Vec<_>>()
    };
    match operation_id {
        "list_pools" => vec![
            (
                "list_hosts",
                &[("pool", "$response.body#/pools/0/name")][..],
            ),
            (
                "list_sessions",
                &[("pool", "$response.body#/pools/0/name")][..],
            ),
        ],
        "list_hosts" => vec![(
            "list_host_sessions",
            &[
                ("pool", "$request.path.pool"),
                ("host", "$response.body#/hosts/0/name"),
            ][..],
        )],
        "list_sessions" => to_all(&[
            ("pool", "$request.path.pool"),
            ("host", "$response.body#/sessions/0/host"),
            ("id", "$response.body#/sessions/0/id"),
        ]),
        "list_host_sessions" => to_all(&[
            ("pool", "$request.path.pool"),
            ("host", "$request.path.host"),
            ("id", "$response.body#/sessions/0/id"),
        ]),
        "get_session" => to_all(&[
            ("pool", "$request.path.pool"),
            ("host", "$request.path.host"),
            ("id", "$request.path.id"),
        ])
        .into_iter()
        .filter(|(a, _)| *a != "get_session")
        .collect(),
        _ => Vec::new(),
    }
}

/// What every operation shares, stated once over the generated document so routes added later
/// get it too: the common error answers (problem+json), path-parameter bounds, the `/audit`
/// `limit` bounds, optional bodies that are absent (never `null`), and links between lists
/// and the operations on their items.
pub struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                contract(op);
            }
        }
    }
}

fn contract(op: &mut Operation) {
    let mut has_path_params = false;
    let mut talks_upstream = false;
    // `{pool}`, `{host}` and `{id}` of the pool routes (a job's `{id}` is a UUID of its own).
    let pool_route = op
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Path && p.name == "pool");
    for p in op.parameters.iter_mut().flatten() {
        match p.parameter_in {
            ParameterIn::Path => {
                has_path_params = true;
                talks_upstream |= p.name == "pool";
                if let Some(schema) = path_param_schema(&p.name).filter(|_| pool_route) {
                    p.schema = Some(schema.into());
                }
            }
            ParameterIn::Query if p.name == "limit" => {
                p.schema = Some(
                    Schema::Object(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1))
                            .maximum(Some(AUDIT_LIMIT_MAX))
                            .description(Some(format!(
                                "Page size, 1-{AUDIT_LIMIT_MAX} (default 100)"
                            )))
                            .build(),
                    )
                    .into(),
                );
            }
            // Opaque: only a `next_cursor` handed out earlier is valid, never an empty one.
            ParameterIn::Query if p.name == "cursor" => {
                if let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() {
                    o.min_length = Some(1);
                }
            }
            ParameterIn::Query if matches!(p.name.as_str(), "since" | "until") => {
                if let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() {
                    o.format = Some(SchemaFormat::KnownFormat(KnownFormat::DateTime));
                }
            }
            _ => {}
        }
    }
    // An optional body is sent or left out; `null` is not a body (422).
    if let Some(body) = op.request_body.as_mut() {
        for content in body.content.values_mut() {
            if let Some(RefOr::T(Schema::OneOf(one))) = &content.schema {
                let non_null: Vec<_> = one
                    .items
                    .iter()
                    .filter(|s| !matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == Type::Null.into()))
                    .cloned()
                    .collect();
                if let [only] = non_null.as_slice() {
                    content.schema = Some(only.clone());
                }
            }
        }
    }
    for status in common_statuses(op, has_path_params, talks_upstream) {
        if let Some(description) = problem(status) {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| problem_response(description));
        }
    }
    if let Some(id) = op.operation_id.clone()
        && let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200")
    {
        for (target, params) in links_of(&id) {
            // utoipa 5.5 writes `Link::operation_id` as `operation_id`, which OpenAPI does
            // not know: the key goes in as a (flattened) extension member, spelt `operationId`.
            let mut link = LinkBuilder::new()
                .extensions(Some(Extensions::from_iter([("operationId", target)])));
            for (name, expr) in params {
                link = link.parameter(*name, *expr);
            }
            ok.links.insert(target.to_owned(), link.build().into());
        }
    }
}

/// The document as YAML.
pub fn yaml() -> Result<String, String> {
    let mut doc = super::router::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_yaml().map_err(|e| e.to_string())
}
